"""Browser-bound OAuth state, shared by the DigitalOcean and ATProto sign-ins, on both backends."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from wid.store import browser_state, storage

DO = browser_state.Binding("digitalocean", "wid_do_oauth", "/auth/digitalocean/v1/")
AT = browser_state.Binding("atproto", "wid_atproto_oauth", "/auth/atproto/")


def _cookie(set_cookie: str) -> str:
    return set_cookie.split(";", 1)[0]


def test_state_is_accepted_once_from_its_browser_and_returns_what_was_sealed(backend: str) -> None:
    state, set_cookie = browser_state.issue(AT, {"verifier": "v", "did": "did:plc:abc"})
    assert "HttpOnly" in set_cookie and "SameSite=Lax" in set_cookie and "Path=/auth/atproto/" in set_cookie
    assert browser_state.consume(AT, state, _cookie(set_cookie)) == {"verifier": "v", "did": "did:plc:abc"}
    with pytest.raises(browser_state.StateError, match="already used"):
        browser_state.consume(AT, state, _cookie(set_cookie))
    with storage.database().transaction(write=False) as tx:
        stored = tx.execute("SELECT state_hash, browser_hash FROM oauth_states")
    assert all(state not in row and _cookie(set_cookie).split("=", 1)[1] not in row for row in stored)


def test_a_state_of_one_flow_is_not_accepted_by_another(backend: str) -> None:
    state, set_cookie = browser_state.issue(DO)
    with pytest.raises(browser_state.StateError, match="not issued"):
        browser_state.consume(AT, state, _cookie(set_cookie).replace("wid_do_oauth", "wid_atproto_oauth"))


@pytest.mark.parametrize(("cookie", "message"), [
    (None, "no cookie"),
    ("wid_do_oauth=someone-elses-secret", "different browser"),
    ("wid_do_oauth=\x00bad", "no cookie"),
])
def test_wrong_browser_spends_the_state(backend: str, cookie: str | None, message: str) -> None:
    state, set_cookie = browser_state.issue(DO)
    with pytest.raises(browser_state.StateError, match=message):
        browser_state.consume(DO, state, cookie)
    with pytest.raises(browser_state.StateError, match="already used"):  # no second try, even with the right cookie
        browser_state.consume(DO, state, _cookie(set_cookie))


def test_forged_missing_and_expired_states(backend: str) -> None:
    with pytest.raises(browser_state.StateError, match="no state parameter"):
        browser_state.consume(DO, None, "wid_do_oauth=x")
    with pytest.raises(browser_state.StateError, match="not issued"):
        browser_state.consume(DO, "forged", "wid_do_oauth=x")
    state, set_cookie = browser_state.issue(DO)
    with storage.database().transaction() as tx:
        tx.execute("UPDATE oauth_states SET expires_at = ?", (int(time.time()) - 1,))
    with pytest.raises(browser_state.StateError, match="expired"):
        browser_state.consume(DO, state, _cookie(set_cookie))


def test_concurrent_callbacks_with_one_state_succeed_once(backend: str) -> None:
    state, set_cookie = browser_state.issue(DO)

    def attempt(_: int) -> bool:
        try:
            browser_state.consume(DO, state, _cookie(set_cookie))
            return True
        except browser_state.StateError:
            return False

    with ThreadPoolExecutor(max_workers=6) as pool:
        outcomes = list(pool.map(attempt, range(6)))
    assert outcomes.count(True) == 1

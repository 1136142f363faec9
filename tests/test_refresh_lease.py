"""Refreshing a team's DigitalOcean token under a lease, with no database lock held across the call
(wid.upstreams.credential_refresh), on SQLite and PostgreSQL, with real processes racing each other.

The stand-in's token endpoint is held by a gate (devkit/standins/_http.py `fail_next(gate=...)`), so a
refresh stays "in flight" exactly as long as a test needs: what other processes do meanwhile is
checked while it is provably still under way, without timing anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from devkit.standins.digitalocean import PROXY_OAUTH_SCOPES, DigitalOceanStandIn
from wid import config
from wid.core.errors import Forbidden, Unavailable, UpstreamFailed
from wid.store import audit, audit_queries, credentials, storage
from wid.upstreams import credential_refresh
from wid.upstreams.digitalocean import api as upstream_digitalocean

API = "DigitalOcean"
CLIENT_ID = "wid-lease-client"
CLIENT_SECRET = "wid-lease-client-secret"
# A process that asks for a team's token once and prints what it got (the token or the error).
WORKER = """
import json, sys
from wid.core.errors import WidError
from wid.upstreams.digitalocean import api
try:
    print(json.dumps({"token": api.team_token(sys.argv[1])}))
except WidError as exc:
    print(json.dumps({"error": type(exc).__name__, "id": exc.code, "message": exc.message}))
"""


@pytest.fixture
def do_env(backend: str, do_api: DigitalOceanStandIn, monkeypatch: pytest.MonkeyPatch) -> Iterator[DigitalOceanStandIn]:
    """This test's database (SQLite or PostgreSQL) wired to the DigitalOcean stand-in, for us and our workers."""
    for name, value in {"DIGITALOCEAN_API_URL": do_api.url, "DIGITALOCEAN_OAUTH_URL": do_api.url,
                        "DIGITALOCEAN_OAUTH_CLIENT_ID": CLIENT_ID, "DIGITALOCEAN_OAUTH_CLIENT_SECRET": CLIENT_SECRET,
                        "WID_UPSTREAM_TIMEOUT": "20"}.items():
        monkeypatch.setenv(name, value)
    config.settings.cache_clear()
    do_api.add_oauth_client(CLIENT_ID, CLIENT_SECRET)
    storage.database().migrate()
    yield do_api
    do_api.clear_faults()


def connect(do_api: DigitalOceanStandIn, name: str, *, expires_in: int) -> str:
    """A team whose OAuth tokens the proxy holds; the stored access token expires in `expires_in` s."""
    team = do_api.add_team(name)
    access = do_api.add_token(team.uuid, PROXY_OAUTH_SCOPES, kind="oauth", client_id=CLIENT_ID)
    now = int(time.time())
    credentials.store(API, team.uuid, {
        "access_token": access, "refresh_token": do_api.tokens[access].pair, "token_type": "bearer",
        "scope": " ".join(PROXY_OAUTH_SCOPES), "expires_at": now + expires_in, "lifetime": 30 * 86400,
        "team_name": name, "connected_at": now, "refreshed_at": now})
    return team.uuid


def stored(team: str) -> credentials.Credential:
    cred = credentials.get(API, team)
    assert cred is not None
    return cred


def refreshes(do_api: DigitalOceanStandIn, team: str) -> int:
    """Refresh requests DigitalOcean received with one of this team's refresh tokens."""
    count = 0
    for request in do_api.requests_to("/v1/oauth/token"):
        value = request.form().get("refresh_token", [""])[0]
        token = do_api.tokens.get(value)
        count += token is not None and token.team_uuid == team
    return count


def worker(team: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", WORKER, team], env=dict(os.environ), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def result(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    answer: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return answer


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        time.sleep(0.02)


def lease_row(team: str) -> tuple[str, int] | None:
    with storage.database().transaction(write=False) as tx:
        row = tx.one("SELECT holder, expires_at FROM leases WHERE name = ?",
                     (credential_refresh.lease_name(API, team),))
    return (row[0], int(row[1])) if row else None


def audited(team: str, decision: str) -> int:
    return len(audit_queries.entries(actx=team, event="oauth_refresh", decision=decision))


def test_a_refresh_in_flight_blocks_no_one(do_env: DigitalOceanStandIn) -> None:
    due = connect(do_env, "Due Team", expires_in=600)  # less than an hour left: refresh now, use it meanwhile
    other = connect(do_env, "Other Team", expires_in=30 * 86400)
    old = stored(due).data["access_token"]
    gate = threading.Event()
    do_env.fail_next("/v1/oauth/token", None, gate=gate)
    holder = worker(due)
    try:
        wait_until(lambda: refreshes(do_env, due) == 1, "the holder's refresh request")
        lease = lease_row(due)
        assert lease is not None and lease[1] > time.time()  # claimed, and the claim is committed

        # Meanwhile: the same team's other requests use the current token at once, other teams are
        # untouched, and the database takes writes (no transaction spans the call).
        same, elsewhere = [worker(due), worker(due)], worker(other)
        assert [result(p) for p in same] == [{"token": old}] * 2
        assert result(elsewhere) == {"token": stored(other).data["access_token"]}
        audit.record("lease_test_write", "info", actx=other)
        assert upstream_digitalocean.team_token(due) == old
        assert holder.poll() is None and refreshes(do_env, due) == 1  # still in flight, still one refresh
    finally:
        gate.set()
    fresh = result(holder)["token"]
    assert fresh != old and fresh == stored(due).data["access_token"]
    assert refreshes(do_env, due) == 1 and audited(due, "allow") == 1
    assert lease_row(due) is None  # released with the result


def test_processes_refreshing_at_once_spend_the_refresh_token_once(do_env: DigitalOceanStandIn) -> None:
    team = connect(do_env, "Racing Team", expires_in=-5)  # expired: every request needs the refreshed token
    spent = stored(team).data["refresh_token"]
    gate = threading.Event()
    do_env.fail_next("/v1/oauth/token", None, gate=gate)
    racers = [worker(team) for _ in range(4)]
    try:
        wait_until(lambda: refreshes(do_env, team) >= 1, "a refresh request")
    finally:
        gate.set()
    answers = [result(p) for p in racers]
    after = stored(team)
    assert answers == [{"token": after.data["access_token"]}] * 4  # the waiters got the holder's token
    assert refreshes(do_env, team) == 1 and after.status == credentials.ACTIVE
    assert after.data["refresh_token"] != spent and do_env.tokens[spent].used
    assert audited(team, "allow") == 1 and audited(team, "deny") == 0


def test_a_refresh_that_lost_the_race_does_not_revoke(do_env: DigitalOceanStandIn) -> None:
    team = connect(do_env, "Lost Race Team", expires_in=600)
    gate = threading.Event()
    do_env.fail_next("/v1/oauth/token", None, gate=gate)
    slow = worker(team)
    try:
        wait_until(lambda: refreshes(do_env, team) == 1, "the slow refresh request")
        # The slow holder stalls past its lease (as a paused process would); another process takes the
        # lease over and refreshes first, with the same refresh token.
        with storage.database().transaction() as tx:
            tx.execute("UPDATE leases SET expires_at = 0 WHERE name = ?", (credential_refresh.lease_name(API, team),))
        winner = result(worker(team))["token"]
        assert winner == stored(team).data["access_token"]
    finally:
        gate.set()
    # DigitalOcean now refuses the slow holder's spent refresh token (invalid_grant); it re-reads,
    # sees the winner's credential, and uses it instead of revoking the team.
    assert result(slow) == {"token": winner}
    assert refreshes(do_env, team) == 2
    after = stored(team)
    assert after.status == credentials.ACTIVE and after.data["access_token"] == winner
    assert audited(team, "deny") == 0 and audited(team, "allow") == 1
    assert upstream_digitalocean.team_token(team) == winner  # not due any more


def test_a_crashed_holders_lease_expires_and_its_refusal_alone_revokes_nothing(
        do_env: DigitalOceanStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WID_UPSTREAM_TIMEOUT", "1")  # waiters give up after 1 + WAIT_SLACK_SECONDS
    config.settings.cache_clear()
    team = connect(do_env, "Crashed Holder Team", expires_in=-5)
    due = connect(do_env, "Due Neighbour", expires_in=600)
    # A holder crashed after DigitalOcean had spent the refresh token, before it stored the new one.
    spent = stored(team).data["refresh_token"]
    answer = requests.post(f"{do_env.url}/v1/oauth/token", timeout=10, data={
        "grant_type": "refresh_token", "refresh_token": spent, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET})
    assert answer.status_code == 200
    with storage.database().transaction() as tx:
        for actx in (team, due):
            tx.execute("INSERT INTO leases (name, holder, claimed_at, expires_at) VALUES (?, 'crashed', ?, ?)",
                       (credential_refresh.lease_name(API, actx), int(time.time()), int(time.time()) + 300))
    before = refreshes(do_env, team)

    # While its lease lasts: a token that still works is used at once; an expired one waits, bounded.
    assert upstream_digitalocean.team_token(due) == stored(due).data["access_token"]
    with pytest.raises(Unavailable) as waited:  # 503
        upstream_digitalocean.team_token(team)
    assert waited.value.code == "refresh_in_progress" and waited.value.retry_after == "5"
    assert refreshes(do_env, team) == before

    # The lease expires: the next request takes it over. DigitalOcean refuses the spent refresh token,
    # but after a takeover that refusal may be the crashed holder's doing: the team stays connected.
    with storage.database().transaction() as tx:
        tx.execute("UPDATE leases SET expires_at = 0 WHERE name = ?", (credential_refresh.lease_name(API, team),))
    with pytest.raises(UpstreamFailed) as inconclusive:  # 502
        upstream_digitalocean.team_token(team)
    assert inconclusive.value.code == "oauth_refresh_inconclusive"
    assert "invalid_grant" in inconclusive.value.message and "next refresh decides" in inconclusive.value.message
    assert stored(team).status == credentials.ACTIVE and lease_row(team) is None

    # The next refresh, with a clean lease, is refused too: now the authorization is gone for sure.
    with pytest.raises(Forbidden) as gone:  # 403
        upstream_digitalocean.team_token(team)
    assert gone.value.code == "team_authorization_revoked"
    after = stored(team)
    assert after.status == credentials.REVOKED and "refresh_token" not in after.data
    assert refreshes(do_env, team) == before + 2 and audited(team, "deny") == 1

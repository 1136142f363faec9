"""End to end, through Caddy and the CGI handlers on SQLite: DigitalOcean's token endpoint takes
SLOW_REFRESH_SECONDS to answer a refresh, and that stalls only the request that waits for it.

Before the refresh took a lease (wid.upstreams.credential_refresh), the refreshing process held SQLite's write
lock for the whole call, so every exchange and every other team's request was answered 503
"database is locked" after SQLite's 10 s busy timeout. The default delay (12 s) is past that timeout;
WID_TEST_SLOW_REFRESH_SECONDS=25 replays the reported case exactly.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from devkit.do_world import World
from devkit.seed import mint
from tests.test_oauth_flow import connected_team, db_get, set_expiry, token_requests
from tests.worlds import serve_world

SLOW_REFRESH_SECONDS = float(os.environ.get("WID_TEST_SLOW_REFRESH_SECONDS", "12"))
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT = "urn:ietf:params:oauth:token-type:jwt"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from serve_world(tmp_path_factory.mktemp("slow-refresh") / "data",
                           {"WID_UPSTREAM_TIMEOUT": str(int(SLOW_REFRESH_SECONDS) + 20)})


def exchange(world: World, team: str) -> requests.Response:
    """A workload's RFC 8693 exchange (writes its audit row and nonce like any exchange)."""
    audience = f"api://DigitalOcean?actx={team}"
    return requests.post(f"{world.url}/v1/oidc/token", timeout=30, data={
        "grant_type": EXCHANGE, "subject_token_type": JWT, "audience": audience,
        "subject_token": mint(world.proxy, audience, f"actx:{team}:role:ex-database-and-spaces-keys-access"),
        "scope": f"actx:{team}:role:database-and-spaces-keys-access"})


def test_a_slow_refresh_stalls_only_the_request_that_waits_for_it(world: World) -> None:
    slow, other = connected_team(world, "Slow Refresh Team"), connected_team(world, "Bystander Team")
    old = world.credential(slow.uuid).data["access_token"]
    set_expiry(world, slow.uuid, 600)  # due for a refresh, still valid for ten minutes
    before = token_requests(world, "refresh_token")
    world.stand_in.fail_next("/v1/oauth/token", None, delay_seconds=SLOW_REFRESH_SECONDS)

    waiting: list[requests.Response] = []
    token = world.jwt(slow.uuid)
    refresher = threading.Thread(target=lambda: waiting.append(requests.get(
        f"{world.url}/v2/databases?tag_name=my-tag", headers={"Authorization": f"Bearer {token}"},
        timeout=SLOW_REFRESH_SECONDS + 30)))
    refresher.start()
    deadline = time.monotonic() + 30
    while token_requests(world, "refresh_token") == before:
        assert time.monotonic() < deadline, "the refresh never reached DigitalOcean"
        time.sleep(0.05)

    # While DigitalOcean sits on the refresh: the same team's requests, other teams' requests and
    # exchanges are all answered, none of them 503.
    answers = []
    for _ in range(3):
        answers += [db_get(world, slow.uuid), db_get(world, other.uuid), exchange(world, slow.uuid),
                    exchange(world, other.uuid)]
    assert [r.status_code for r in answers] == [200] * len(answers), [r.text for r in answers if r.status_code != 200]
    assert refresher.is_alive()  # all of that happened while the refresh was still under way
    used = {r.authorization for r in world.stand_in.requests_to("/v2/databases")[-6:]}
    assert f"Bearer {old}" in used  # the slow team's requests went out with its current token

    refresher.join(SLOW_REFRESH_SECONDS + 30)
    assert [r.status_code for r in waiting] == [200]
    after = world.credential(slow.uuid).data["access_token"]
    assert after != old and token_requests(world, "refresh_token") == before + 1

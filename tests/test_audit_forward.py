"""Every call forwarded with a team's stored token is in the audit log, recorded before it is made:
who (jti, sub), what (method, path), why (deciding policy and rule) and what came of it (status).
If the audit write fails, the call is not made (503). Through Caddy + fcgiwrap and the DigitalOcean stand-in.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from devkit.do_world import DATABASE_UUID, World
from devkit.standins.digitalocean import Team

DB_PATH = f"/v2/databases/{DATABASE_UUID}"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World.start(tmp_path_factory.mktemp("audit-forward") / "data")
    yield w
    w.stop()


@pytest.fixture(scope="module")
def team(world: World) -> Team:
    t = world.connect_team("Audited Team")
    world.stand_in.add_database(t.uuid, "backend", ["my-tag"], uuid=DATABASE_UUID, password="s3cret")
    return t


def rows(world: World, *args: str) -> list[dict[str, Any]]:
    out = world.proxy.wid("audit", "--json", "--limit", "1000", *args).stdout
    return [json.loads(line) for line in out.splitlines()]


def claims_of(token: str) -> dict[str, Any]:
    import base64

    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return decoded


def test_a_database_credential_read_is_recorded_with_its_rule_and_status(world: World, team: Team) -> None:
    token = world.jwt(team.uuid)
    response = requests.get(f"{world.url}{DB_PATH}", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert response.status_code == 200 and "s3cret" in response.text
    [row] = rows(world, "--path", DB_PATH, f"--jti={claims_of(token)['jti']}")
    assert (row["event"], row["decision"], row["method"], row["status"]) == ("forward", "allow", "GET", 200)
    assert row["actx"] == team.uuid and row["sub"] == f"actx:{team.uuid}:role:database-and-spaces-keys-access"
    assert row["detail"]["policy"] == "database-credential-read" and row["detail"]["rule"] == DB_PATH
    assert row["detail"]["route"] == "GET /v2/databases/+"
    assert "s3cret" not in json.dumps(row) and token not in json.dumps(row)


def test_spaces_keys_and_the_generic_proxy_are_recorded(world: World, team: Team) -> None:
    token = world.jwt(team.uuid)
    key: dict[str, Any] = {"name": "bucket-111-read-token-droplet", "grants": [{"bucket": "111", "permission": "read"}]}
    created = requests.post(f"{world.url}/v2/spaces/keys", json=key, timeout=30,
                            headers={"Authorization": f"Bearer {token}"})
    assert created.status_code in (200, 201), created.text
    jti = claims_of(token)["jti"]
    [row] = rows(world, "--path", "/v2/spaces/keys", f"--jti={jti}")
    assert row["method"] == "POST" and row["status"] == created.status_code and row["detail"]["policy"] == "spaces-keys"
    assert created.json()["key"]["secret_key"] not in json.dumps(row)
    # A refused call is a deny row with its path, and nothing is forwarded.
    before = len(world.stand_in.requests_to("/v2/spaces/keys"))
    refused = requests.post(f"{world.url}/v2/spaces/keys", timeout=30, headers={"Authorization": f"Bearer {token}"},
                            json={**key, "grants": [{"bucket": "222", "permission": "read"}]})
    assert refused.status_code == 403
    assert len(world.stand_in.requests_to("/v2/spaces/keys")) == before
    denied = [r for r in rows(world, f"--jti={jti}", "--decision", "deny") if r["path"] == "/v2/spaces/keys"]
    assert denied and denied[-1]["method"] == "POST" and "222" in denied[-1]["detail"]["reason"]


def test_a_team_that_is_not_connected_is_recorded_with_the_refusal(world: World) -> None:
    stranger = world.stand_in.add_team("Never Connected")
    world.install_rbac(stranger.uuid)
    token = world.jwt(stranger.uuid)
    response = requests.get(f"{world.url}{DB_PATH}", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert response.status_code == 403 and response.json()["id"] == "team_not_connected"
    [row] = rows(world, f"--jti={claims_of(token)['jti']}", "--event", "forward")
    assert (row["status"], row["outcome"], row["path"]) == (403, "team_not_connected", DB_PATH)


def test_no_audit_row_no_call(world: World, team: Team) -> None:
    """The audit write fails (the database is locked for writing): 503, and DigitalOcean sees nothing."""
    token = world.jwt(team.uuid)
    seen = len(world.stand_in.requests_to(DB_PATH))
    database = world.proxy.data_dir / "wid.sqlite3"
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(database, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        locked.set()
        release.wait(60)
        conn.execute("ROLLBACK")
        conn.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(10)
        started = time.monotonic()
        response = requests.get(f"{world.url}{DB_PATH}", headers={"Authorization": f"Bearer {token}"}, timeout=60)
        assert response.status_code == 503, response.text
        assert response.json()["id"] == "service_unavailable" and time.monotonic() - started < 30
    finally:
        release.set()
        holder.join()
    assert len(world.stand_in.requests_to(DB_PATH)) == seen
    assert rows(world, f"--jti={claims_of(token)['jti']}") == []

"""The provisioning state on both storage backends (SQLite and a real PostgreSQL): the handlers run
in-process as WSGI applications against the DigitalOcean stand-in and real sshds, and concurrent
uses of one nonce or one refresh token are decided exactly once."""

from __future__ import annotations

import io
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from devkit.sshd import Sshd, pool
from devkit.standins.digitalocean import DigitalOceanStandIn
from wid import config
from wid.service import provisioning
from wid.store import credentials, refresh, storage
from wid.web import app as web
from wid.web.handlers import droplet_create, oidc_prove

DROPLET = {"region": "nyc3", "size": "s-1vcpu-1gb", "image": "ubuntu-24-04-x64"}


@pytest.fixture(scope="module")
def do() -> Iterator[DigitalOceanStandIn]:
    with DigitalOceanStandIn() as stand_in:
        yield stand_in
    assert stand_in.handler_errors == []


@pytest.fixture
def env(backend: str, do: DigitalOceanStandIn, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("DIGITALOCEAN_API_URL", do.url)
    monkeypatch.setenv("WID_DROPLET_SSH_PORT", str(pool().port))
    monkeypatch.setenv("WID_DROPLET_SSH_TIMEOUT", "3")
    config.settings.cache_clear()
    return backend


def call(handler: Any, path: str, body: Any, token: str | None = None) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode()
    environ = {"REQUEST_METHOD": "POST", "REQUEST_URI": path, "CONTENT_TYPE": "application/json",
               "CONTENT_LENGTH": str(len(data)), "wsgi.input": io.BytesIO(data)}
    if token:
        environ["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    status: list[str] = []
    out = b"".join(web.wsgi(handler)(environ, lambda s, h: status.append(s)))
    return int(status[0].split()[0]), json.loads(out)


def sign(key: Path, data: str, namespace: str) -> str:
    return subprocess.run(["ssh-keygen", "-Y", "sign", "-f", str(key), "-n", namespace], input=data.encode(),
                          capture_output=True, check=True).stdout.decode()


def team_with_droplet(do: DigitalOceanStandIn, server: Sshd, names: list[str] | None = None
                      ) -> tuple[str, list[int], str]:
    team = do.add_team()
    credentials.store("DigitalOcean", team.uuid, {"access_token": do.add_token(team.uuid, kind="oauth")})
    body: dict[str, Any] = {**DROPLET, "tags": ["oidc-sub:role:web"]}
    body.update({"names": names} if names else {"name": "web"})
    status, created = call(droplet_create.handler, "/v2/droplets", body, do.add_token(team.uuid))
    assert status == 202, created
    ids = [d["id"] for d in created.get("droplets") or [created["droplet"]]]
    for droplet_id in ids:
        do.set_droplet_ipv4(droplet_id, server.address)
    user_data = do.droplets[ids[0]]["user_data"]
    token = next(arg for arg in user_data.split('"') if arg.startswith("eyJ"))
    return team.uuid, ids, token


def test_prove_refresh_recover_in_process(env: str, do: DigitalOceanStandIn) -> None:
    server = pool().shared(0)
    team, [droplet_id], token = team_with_droplet(do, server)
    key = server.host_key("ed25519")
    signature = sign(key, token, "droplet-provisioning@wid")
    status, proved = call(oidc_prove.handler, "/v1/oidc/prove", {"signature": signature}, token)
    assert status == 200, proved
    status, rotated = call(oidc_prove.handler, "/v1/oidc/refresh", {"refresh_token": proved["refresh_token"]})
    assert status == 200, rotated
    status, reused = call(oidc_prove.handler, "/v1/oidc/refresh", {"refresh_token": proved["refresh_token"]})
    assert status == 401 and reused["id"] == "invalid_grant"
    status, challenge = call(oidc_prove.handler, "/v1/oidc/recover/challenge",
                             {"team_uuid": team, "droplet_id": droplet_id})
    assert status == 200
    status, recovered = call(oidc_prove.handler, "/v1/oidc/recover",
                             {"challenge": challenge["challenge"],
                              "signature": sign(key, challenge["challenge"], "droplet-recovery@wid")})
    assert status == 200, recovered
    with storage.database().transaction(write=False) as tx:
        families = tx.execute("SELECT state, revoked_reason FROM refresh_families WHERE droplet_id = ? "
                              "ORDER BY created_at, state", (droplet_id,))
    assert sorted(f[0] for f in families) == ["active", "revoked"]
    assert any(f[1] == "refresh token reused" for f in families)


def test_concurrent_proofs_of_one_nonce(env: str, do: DigitalOceanStandIn) -> None:
    server = pool().shared(0)
    _, [droplet_id], token = team_with_droplet(do, server)
    signature = sign(server.host_key("ed25519"), token, "droplet-provisioning@wid")
    barrier = threading.Barrier(6)

    def attempt(_: int) -> int:
        barrier.wait()
        try:
            return call(oidc_prove.handler, "/v1/oidc/prove", {"signature": signature}, token)[0]
        finally:
            storage.database().close()

    with ThreadPoolExecutor(max_workers=6) as executor:
        statuses = sorted(executor.map(attempt, range(6)))
    assert statuses == [200] + [401] * 5
    with storage.database().transaction(write=False) as tx:
        row = tx.one("SELECT COUNT(*) FROM refresh_families WHERE droplet_id = ?", (droplet_id,))
    assert row is not None and row[0] == 1


def test_claim_and_rotate_are_decided_once_under_concurrency(env: str) -> None:
    now = int(time.time())
    with storage.database().transaction() as tx:
        tx.execute("INSERT INTO provisioning_nonces (nonce, team_uuid, jti, state, created_at, expires_at) "
                   "VALUES ('n' || ?, 't', 'j', 'bound', ?, ?)", ("x" * 40, now, now + 900))
        tx.execute("INSERT INTO provisioning_droplets (droplet_id, nonce, team_uuid) VALUES (7, ?, 't')",
                   ("n" + "x" * 40,))
        _, first = refresh.start_family(tx, "t", 7, now, 3600)
    barrier = threading.Barrier(8)

    def claim(_: int) -> bool:
        barrier.wait()
        try:
            with storage.database().transaction() as tx:
                tx.lock("nonce:n")
                return provisioning.claim(tx, "n" + "x" * 40, 7, now)
        finally:
            storage.database().close()

    with ThreadPoolExecutor(max_workers=8) as executor:
        assert sorted(executor.map(claim, range(8))) == [False] * 7 + [True]

    record = refresh.lookup(first)
    assert record is not None
    barrier = threading.Barrier(8)

    def rotate(_: int) -> str:
        barrier.wait()
        try:
            with storage.database().transaction() as tx:
                tx.lock(f"refresh:{record.family_id}")
                try:
                    refresh.rotate(tx, record, now, 3600)
                    return "rotated"
                except refresh.Reused:
                    return "reused"
        finally:
            storage.database().close()

    with ThreadPoolExecutor(max_workers=8) as executor:
        outcomes = sorted(executor.map(rotate, range(8)))
    assert outcomes == ["reused"] * 7 + ["rotated"]

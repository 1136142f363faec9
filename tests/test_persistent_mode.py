"""WID_MODE=persistent: the same handlers in long-lived uWSGI workers behind the same Caddy.

The rest of the suite runs in CGI mode; here are the flows whose behaviour can differ once a process
serves many requests: the route families as Caddy decides them, a token exchange and a DigitalOcean
call, a push seen by every worker at once, a PostgreSQL outage and recovery without a restart, a
worker killed with SIGKILL, and SIGTERM letting a slow request finish.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from devkit.do_world import DATABASE_UUID, World
from devkit.git_helpers import ARTICLE_FIRST_PUSH, GitUser
from devkit.git_helpers import article_files as push_files
from devkit.proxy import ROOT, ProxyServer
from devkit.seed import article_files as exchange_files
from devkit.seed import install_rbac, mint
from tests.harness import PostgresServer
from tests.raw_http import RawServer
from wid.web import server

DROPLET_ROLE = "ex-database-and-spaces-keys-access"
TARGET_ROLE = "database-and-spaces-keys-access"


def exchange_body(team: str) -> dict[str, Any]:
    return {"aud": f"api://DigitalOcean?actx={team}", "sub": f"actx:{team}:role:{TARGET_ROLE}", "ttl": 300}


def exchange(url: str, token: str, team: str) -> requests.Response:
    return requests.post(f"{url}/v1/oidc/issue", json=exchange_body(team), timeout=30,
                         headers={"Authorization": f"Bearer {token}"})


def served_by(proxy: ProxyServer) -> dict[str, int]:
    """Request id -> the pid of the process that answered it (wid.web's access log line)."""
    pids = {}
    for line in proxy.log_text().splitlines():
        if line.startswith("{") and '"event":"request"' in line:
            entry = json.loads(line)
            pids[entry["request_id"]] = entry["pid"]
    return pids


def until_every_worker(proxy: ProxyServer, send: Callable[[], requests.Response],
                       check: Callable[[requests.Response], None]) -> None:
    """Send batches of concurrent requests until each worker has answered one; every answer must pass `check`."""
    workers = set(proxy.worker_pids())
    ids: list[str] = []
    with ThreadPoolExecutor(max_workers=3 * len(workers)) as pool:
        for _ in range(30):
            for response in pool.map(lambda _: send(), range(3 * len(workers))):
                check(response)
                ids.append(response.headers["X-Request-Id"])
            log = served_by(proxy)
            if workers <= {log[i] for i in ids if i in log}:
                return
    raise AssertionError(f"workers {sorted(workers)} did not all answer in {len(ids)} requests")


@pytest.fixture(scope="module")
def world(persistent_world: World) -> World:
    return persistent_world


# -- routing -----------------------------------------------------------------------------------------


def test_families_are_those_of_cgi_bin_and_the_caddyfile() -> None:
    scripts = {path.stem: path.read_text() for path in (ROOT / "cgi-bin").glob("*.py")}
    assert set(server.FAMILIES) == set(scripts)
    for family, module in server.FAMILIES.items():
        assert f"from {module} import handler\n" in scripts[family]
    caddyfile = (ROOT / "Caddyfile").read_text()
    imported = set(re.findall(r"^\s*import python_\{\$WID_MODE:cgi\} (\w+)$", caddyfile, re.MULTILINE))
    assert imported == set(server.FAMILIES)
    assert "import cgi" not in caddyfile  # every Python route goes through the mode's snippet


def test_a_client_cannot_choose_the_family(world: World) -> None:
    for header in ("X-Wid-Family", "X_Wid_Family", "x-wid-family"):
        response = requests.get(f"{world.url}/v1/oidc/issue", headers={header: "health"}, timeout=10)
        assert response.status_code == 405 and response.json()["id"] == "method_not_allowed"  # still oidc_issue
    ready = requests.get(f"{world.url}/health/ready", headers={"X-Wid-Family": "oidc_issue"}, timeout=10)
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}


def test_a_request_without_a_family_is_not_routed() -> None:
    """What reaches the socket without Caddy's header (or with one it never sends) is a 404."""
    answers: list[str] = []
    environ = {"REQUEST_METHOD": "GET", "REQUEST_URI": "/health/ready", "wsgi.input": io.BytesIO(b""),
               "HTTP_X_WID_FAMILY": "no_such_family"}
    body = b"".join(server.application(environ, lambda status, headers: answers.append(status)))
    assert answers == ["404 Not Found"] and json.loads(body)["id"] == "not_found"


def test_bodies_are_read_as_in_cgi_mode(world: World) -> None:
    team = world.connect_team("Body Team")
    token = world.jwt(team.uuid, DROPLET_ROLE, kind="workload")
    oversized = requests.post(f"{world.url}/v1/oidc/issue", data=b"x" * (2 * 1024 * 1024), timeout=30,
                              headers={"Content-Type": "application/json"})
    assert oversized.status_code == 413 and oversized.json()["id"] == "request_too_large"
    padded = requests.post(f"{world.url}/v1/oidc/issue", json={**exchange_body(team.uuid), "pad": "x" * 20000},
                           headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert padded.status_code == 413  # the exchange's own 16 KiB limit, though the body was read already
    chunked = requests.post(f"{world.url}/v1/oidc/issue", data=iter([json.dumps(exchange_body(team.uuid)).encode()]),
                            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                            timeout=30)
    assert chunked.status_code == 200, chunked.text
    before = len(world.stand_in.requests)
    encoded = requests.get(f"{world.url}/v2/databases/%2e%2e/account", timeout=10,
                           headers={"Authorization": f"Bearer {world.jwt(team.uuid)}"})
    assert encoded.status_code == 400 and "'..'" in encoded.json()["message"]  # checked on the raw target
    assert len(world.stand_in.requests) == before


@pytest.mark.parametrize("stack", ["proxy", "world"])  # `make test`'s CGI mode, then persistent mode
def test_request_heads_up_to_caddys_limit_reach_the_handler_larger_ones_are_431(
        stack: str, request: pytest.FixtureRequest) -> None:
    """Caddy refuses a request head over 48 KiB (Caddyfile, max_header_size) in both modes, so uWSGI's
    65535-byte buffer always holds what reaches it: no head that Caddy forwards ends as a 502."""
    served = request.getfixturevalue(stack)
    url = served.url
    for size in (8 * 1024, 44 * 1024):
        answer = requests.post(f"{url}/v1/oidc/issue", headers={"Authorization": "Bearer x", "X-Padding": "a" * size},
                               json={}, timeout=30)
        assert answer.status_code == 401 and answer.json()["id"] == "unauthorized", (size, answer.text[:200])
    for size in (60 * 1024, 1024 * 1024):
        answer = requests.post(f"{url}/v1/oidc/issue", headers={"X-Padding": "a" * size}, json={}, timeout=30)
        assert answer.status_code == 431, (size, answer.status_code)
    assert requests.get(f"{url}/health/ready", timeout=10).status_code == 200


# -- flows ---------------------------------------------------------------------------------------------


def test_exchange_then_database_read_with_the_role_token(world: World) -> None:
    team = world.connect_team("Persistent Team")
    world.stand_in.add_database(team.uuid, "backend", ["my-tag"], uuid=DATABASE_UUID, password="s3cret")
    workload = world.jwt(team.uuid, DROPLET_ROLE, kind="workload")
    issued = exchange(world.url, workload, team.uuid)
    assert issued.status_code == 200, issued.text
    role_token = issued.json()["token"]
    read = requests.get(f"{world.url}/v2/databases/{DATABASE_UUID}", timeout=30,
                        headers={"Authorization": f"Bearer {role_token}"})
    assert read.status_code == 200, read.text
    assert read.json()["database"]["connection"]["password"] == "s3cret"
    other = requests.get(f"{world.url}/v2/databases/{'0' * 8}-0000-4000-8000-{'0' * 12}", timeout=30,
                         headers={"Authorization": f"Bearer {role_token}"})
    assert other.status_code == 403  # the policy names one database
    audit = world.proxy.wid("audit", "--actx", team.uuid, "--json").stdout
    events = [(e["event"], e["decision"]) for e in map(json.loads, audit.splitlines())]
    assert ("exchange", "allow") in events and ("authorize", "deny") in events


def test_a_push_is_in_force_on_every_worker_once_acknowledged(world: World, tmp_path: Path) -> None:
    team = world.stand_in.add_team("Push Team")
    admin = GitUser(tmp_path / "admin", world.url, world.pat(team.uuid))
    repo = admin.new_repo("rbac", push_files(ARTICLE_FIRST_PUSH))
    admin.git("push", "-u", "deploy", "main", cwd=repo)
    workload = world.jwt(team.uuid, DROPLET_ROLE, kind="workload")

    def allowed(response: requests.Response) -> None:
        assert response.status_code == 200, response.text

    until_every_worker(world.proxy, lambda: exchange(world.url, workload, team.uuid), allowed)  # all cached it

    policy = "policies/ex-database-and-spaces-keys-access.hcl"
    narrowed = (repo / policy).read_text().replace('"ttl" = 300', '"ttl" = 60')
    admin.commit(repo, {policy: narrowed}, "exchanged tokens live one minute")
    assert "main is now" in admin.git("push", "deploy", "main", cwd=repo).stderr

    def denied(response: requests.Response) -> None:
        assert response.status_code == 403, response.text  # ttl 300 is no longer allowed, on any worker

    until_every_worker(world.proxy, lambda: exchange(world.url, workload, team.uuid), denied)


def test_upstream_connections_are_kept_alive(world: World) -> None:
    team = world.connect_team("Keep-alive Team")
    world.stand_in.add_database(team.uuid, "backend", ["my-tag"], uuid=DATABASE_UUID)
    token = world.jwt(team.uuid)
    before = world.stand_in.connections
    for _ in range(40):
        read = requests.get(f"{world.url}/v2/databases/{DATABASE_UUID}", timeout=30,
                            headers={"Authorization": f"Bearer {token}"})
        assert read.status_code == 200, read.text
    # At most one connection per worker thread (3 workers x WID_THREADS 4), each kept for the next request.
    assert world.stand_in.connections - before <= 12


def test_a_kept_connection_closed_by_the_server_is_replaced_for_idempotent_requests_only() -> None:
    from wid.net import upstream

    # Closes every connection after one answer without saying so, as a server whose keep-alive timeout has
    # passed does: the next request on a kept connection finds it closed.
    server = RawServer([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"])
    try:
        first = upstream.send("GET", f"{server.url}/a", service="digitalocean_api", headers={})
        assert first.read() == b"ok" and first.connection.sock is not None  # kept: the answer did not say close
        second = upstream.send("GET", f"{server.url}/b", service="digitalocean_api", headers={})
        assert first.connection.sock is None  # the kept one was taken, found closed by the server, closed here
        assert second.connection is not first.connection  # and the request sent again on a new one
        assert second.read() == b"ok" and server.accepted == 2
        third = upstream.send("POST", f"{server.url}/c", service="digitalocean_api", headers={}, body=b"{}")
        assert third.connection is not second.connection  # a POST never takes a kept connection
        assert third.read() == b"ok" and server.accepted == 3
    finally:
        server.stop()


def test_what_a_process_remembers_is_bounded(app_env: Path) -> None:
    from wid.store import keys, storage

    active = keys.active_key()
    db = storage.database()
    for n in range(50):  # kids named by tokens that no key of ours has
        assert keys.public_jwk(f"unknown-{n}") is None
    assert not [k for k in db.cache if k.startswith("keyring:signing:public:unknown-")]
    assert keys.public_jwk(active.kid) is not None and f"keyring:signing:public:{active.kid}" in db.cache
    for n in range(storage.BoundedCache.MAX_ENTRIES + 100):
        db.cache[f"test:{n}"] = n
    assert len(db.cache) == storage.BoundedCache.MAX_ENTRIES
    assert "test:0" not in db.cache and f"test:{storage.BoundedCache.MAX_ENTRIES + 99}" in db.cache


# -- faults --------------------------------------------------------------------------------------------


def test_a_killed_worker_is_replaced_while_requests_flow(world: World) -> None:
    team = world.connect_team("Kill Team")
    workload = world.jwt(team.uuid, DROPLET_ROLE, kind="workload")
    before = world.proxy.worker_pids()
    statuses: list[tuple[int, str]] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            response = exchange(world.url, workload, team.uuid)
            statuses.append((response.status_code, response.json().get("id", "")))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        while len(statuses) < 20:
            time.sleep(0.05)
        os.kill(before[0], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = world.proxy.worker_pids()
            if len(now) == len(before) and before[0] not in now:
                break
            time.sleep(0.1)
        replaced_at = len(statuses)
        while len(statuses) < replaced_at + 40:
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    now = world.proxy.worker_pids()
    assert len(now) == len(before) and before[0] not in now and set(before[1:]) <= set(now)
    failures = [s for s in statuses if s[0] != 200]
    # Only what the killed worker held is lost (here at most one request per client), as Caddy's 502 in
    # our JSON shape; the other workers never stop answering.
    assert len(failures) <= len(threads) and all(f == (502, "bad_gateway") for f in failures), failures
    assert all(code == 200 for code, _ in statuses[replaced_at:])


def test_postgresql_outage_then_recovery_without_a_restart(tmp_path: Path) -> None:
    pg = PostgresServer()
    pg.start()
    proxy = ProxyServer(tmp_path / "data", {"DATABASE_URI": pg.fresh_database(), "WID_WORKERS": "3"},
                        mode="persistent")
    try:
        proxy.start()
        team = "6d0c3b52-4f0e-4a55-9d5b-5b0a3c3c9a10"
        install_rbac(proxy, team, exchange_files())
        workload = mint(proxy, f"api://DigitalOcean?actx={team}", f"actx:{team}:role:{DROPLET_ROLE}", ttl=3600)

        def allowed(response: requests.Response) -> None:
            assert response.status_code == 200, response.text

        until_every_worker(proxy, lambda: exchange(proxy.url, workload, team), allowed)  # each holds a connection
        workers = proxy.worker_pids()

        pg.halt()
        down = exchange(proxy.url, workload, team)
        assert down.status_code == 503 and down.json()["id"] == "service_unavailable", down.text
        assert requests.get(f"{proxy.url}/health/ready", timeout=30).status_code == 503

        pg.resume()
        # No restart: the same workers answer, each on a connection it re-established by itself.
        until_every_worker(proxy, lambda: exchange(proxy.url, workload, team), allowed)
        assert proxy.worker_pids() == workers
        assert requests.get(f"{proxy.url}/health/ready", timeout=30).status_code == 200
    finally:
        proxy.stop()
        pg.stop()


@pytest.fixture
def draining_world(tmp_path: Path) -> Iterator[World]:
    w = World.start(tmp_path / "data", {"WID_WORKERS": "2", "WID_UPSTREAM_TIMEOUT": "20"}, mode="persistent")
    yield w
    w.stop()


def test_sigterm_lets_a_slow_request_finish(draining_world: World) -> None:
    w = draining_world
    team = w.connect_team("Drain Team")
    w.stand_in.add_database(team.uuid, "backend", ["my-tag"], uuid=DATABASE_UUID, password="s3cret")
    token = w.jwt(team.uuid)
    w.stand_in.fail_next(f"/v2/databases/{DATABASE_UUID}", None, delay_seconds=3)  # DigitalOcean is slow
    answers: list[requests.Response] = []
    slow = threading.Thread(target=lambda: answers.append(requests.get(
        f"{w.url}/v2/databases/{DATABASE_UUID}", headers={"Authorization": f"Bearer {token}"}, timeout=60)))
    slow.start()
    deadline = time.monotonic() + 30
    while not w.stand_in.requests_to(f"/v2/databases/{DATABASE_UUID}") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert w.proxy.process is not None
    w.proxy.process.send_signal(signal.SIGTERM)  # what `docker stop` and App Platform send: run.sh alone
    slow.join(timeout=60)
    assert answers and answers[0].status_code == 200, answers[0].text if answers else "no answer"
    assert answers[0].json()["database"]["connection"]["password"] == "s3cret"
    w.proxy.process.wait(timeout=60)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{w.url}/health", timeout=5)

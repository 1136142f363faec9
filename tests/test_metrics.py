"""GET /metrics (docs/operator.md, "Metrics"): Prometheus' text format, every worker's figures added up.

Persistent mode with two uWSGI workers behind the real Caddy; every scrape is read with
prometheus_client's own parser. The figures must be exact whichever worker answered each request and
each scrape, must survive a worker killed with SIGKILL, must never carry a context, sub or jti in a
label, and must be shown only to a scraper that holds WID_METRICS_TOKEN.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from devkit.do_world import DATABASE_UUID, World
from devkit.proxy import ProxyServer, free_port, wait_for
from tests.test_persistent_mode import DROPLET_ROLE, exchange, exchange_body, served_by
from wid import config
from wid.store import storage
from wid.web.request import METHODS
from wid.web.server import FAMILIES

TOKEN = secrets.token_hex(32)
Labels = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, Labels], float]
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
# Every label and the values it may take (docs/operator.md, "Metrics").
BOUNDED = {
    "route": set(FAMILIES) | {"unrouted"},
    "method": set(METHODS) | {"other"},
    "status": {str(code) for code in range(100, 600)} | {"error", "timeout"},
    "outcome": {"allow", "deny", "info"},
    "service": {"digitalocean_api", "digitalocean_oauth", "atproto_pds", "atproto_auth", "atproto_identity",
                "issuer_keys"},
    "cache": {"signing_keys", "rbac", "issuer_keys", "atproto_client_keys"},
    "result": {"hit", "miss"},
    "le": {"+Inf", *(str(bound) for bound in (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                                              30.0, 60.0))},
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    world = World.start(tmp_path_factory.mktemp("metrics") / "data",
                        {"WID_WORKERS": "2", "WID_METRICS_TOKEN": TOKEN}, mode="persistent")
    yield world
    world.stop()
    assert world.stand_in.handler_errors == []
    assert TOKEN not in world.proxy.log_text()  # not in any log line, whatever was sent


def scrape(world: World) -> Samples:
    response = requests.get(f"{world.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def on_every_worker(world: World, send: Callable[[], requests.Response], status: int) -> int:
    """Send batches of concurrent requests until each worker has answered some; returns how many were sent."""
    workers = set(world.proxy.worker_pids())
    ids: list[str] = []
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(30):
            for response in pool.map(lambda _: send(), range(4)):
                assert response.status_code == status, response.text
                ids.append(response.headers["X-Request-Id"])
            log = served_by(world.proxy)
            if workers <= {log[i] for i in ids if i in log}:
                return len(ids)
    raise AssertionError(f"workers {sorted(workers)} did not all answer in {len(ids)} requests")


def audit_rows(world: World, team: str) -> list[tuple[str, str]]:
    lines = world.proxy.wid("audit", "--actx", team, "--json", "--limit", "10000").stdout.splitlines()
    return [(entry["event"], entry["decision"]) for entry in map(json.loads, lines)]


def test_figures_are_exact_whichever_worker_answered(world: World) -> None:
    team = world.connect_team("Metrics Team")
    world.stand_in.add_database(team.uuid, "backend", ["my-tag"], uuid=DATABASE_UUID)
    workload = world.jwt(team.uuid, DROPLET_ROLE, kind="workload")
    reader = world.jwt(team.uuid)
    before, upstream_before = scrape(world), len(world.stand_in.requests)

    exchanges = on_every_worker(world, lambda: exchange(world.url, workload, team.uuid), 200)
    reads = on_every_worker(world, lambda: requests.get(f"{world.url}/v2/databases/{DATABASE_UUID}", timeout=30,
                                                        headers={"Authorization": f"Bearer {reader}"}), 200)
    denied = requests.post(f"{world.url}/v1/oidc/issue", timeout=30, headers={"Authorization": f"Bearer {workload}"},
                           json={**exchange_body(team.uuid), "sub": f"actx:{team.uuid}:role:no-such-role"})
    assert denied.status_code == 403, denied.text
    after, upstream_calls = scrape(world), len(world.stand_in.requests) - upstream_before

    requests_total = "wid_http_requests_total"
    assert moved(before, after, requests_total, route="oidc_issue", method="POST", status="200") == exchanges
    assert moved(before, after, requests_total, route="oidc_issue", method="POST", status="403") == 1
    assert moved(before, after, requests_total, route="db_read", method="GET", status="200") == reads
    latency = "wid_http_request_duration_seconds"
    assert moved(before, after, f"{latency}_count", route="oidc_issue") == exchanges + 1
    assert moved(before, after, f"{latency}_count", route="db_read") == reads
    assert moved(before, after, f"{latency}_bucket", route="db_read", le="+Inf") == reads

    # Decisions match the audit log (the team is new: all its rows were written since `before`).
    rows = audit_rows(world, team.uuid)
    assert rows.count(("exchange", "allow")) == exchanges and rows.count(("forward", "allow")) == reads
    assert rows.count(("exchange", "deny")) == 1
    decisions = "wid_decisions_total"
    assert moved(before, after, decisions, event="exchange", outcome="allow") == exchanges
    assert moved(before, after, decisions, event="exchange", outcome="deny") == 1
    assert moved(before, after, decisions, event="forward", outcome="allow") == reads

    # Every call the DigitalOcean stand-in received, counted with its status.
    assert upstream_calls == reads
    assert moved(before, after, "wid_upstream_requests_total", service="digitalocean_api", status="200") == reads
    assert moved(before, after, "wid_upstream_request_duration_seconds_count", service="digitalocean_api") == reads

    # A new team's compiled RBAC is read once per worker, then served from the worker's cache.
    rbac_misses = moved(before, after, "wid_cache_requests_total", cache="rbac", result="miss")
    rbac_hits = moved(before, after, "wid_cache_requests_total", cache="rbac", result="hit")
    assert 1 <= rbac_misses and 1 <= rbac_hits and rbac_misses + rbac_hits >= exchanges + reads
    assert moved(before, after, "wid_cache_requests_total", cache="signing_keys", result="hit") >= 1
    assert moved(before, after, "wid_database_errors_total") == 0


def test_labels_are_bounded(world: World) -> None:
    team = world.connect_team("Label Team")
    workload = world.jwt(team.uuid, DROPLET_ROLE, kind="workload")
    issued = exchange(world.url, workload, team.uuid)
    assert issued.status_code == 200, issued.text
    jti = json.loads(world.proxy.wid("audit", "--actx", team.uuid, "--json").stdout.splitlines()[-1])["jti"]
    for path in ("/v2/databases/0b1c0f3e-8d4a-4c55-a3a0-6b0d5d0c9a11", "/v2/droplets/12345/actions"):
        requests.get(f"{world.url}{path}", headers={"Authorization": f"Bearer {world.jwt(team.uuid)}"}, timeout=30)
    samples = scrape(world)
    names = {name for name, _ in samples}
    assert {"wid_http_requests_total", "wid_decisions_total", "wid_upstream_requests_total",
            "wid_cache_requests_total", "wid_database_errors_total"} <= names
    audited = {json.loads(line)["event"] for line in
               world.proxy.wid("audit", "--json", "--limit", "100000").stdout.splitlines()}
    for name, labels in samples:
        for label, found in labels:
            assert found in (audited if label == "event" else BOUNDED[label]), (name, label, found)
            assert not UUID.search(found) and team.uuid not in found and jti not in found and "actx" not in found


def test_counts_survive_a_worker_killed_with_sigkill(world: World) -> None:
    before = scrape(world)
    sent = on_every_worker(world, lambda: requests.get(f"{world.url}/health/ready", timeout=30), 200)
    workers = world.proxy.worker_pids()
    os.kill(workers[0], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = world.proxy.worker_pids()
        if len(now) == len(workers) and workers[0] not in now:
            break
        time.sleep(0.1)
    assert workers[0] not in world.proxy.worker_pids()
    after = scrape(world)  # answered by the survivor or the replacement: both add up every worker's files
    assert moved(before, after, "wid_http_requests_total", route="health", method="GET", status="200") == sent
    assert moved(before, after, "wid_http_request_duration_seconds_count", route="health") == sent


def test_database_errors_are_counted(world: World) -> None:
    """A writer holding SQLite's lock past the workers' busy timeout: the exchange's audit row cannot be written."""
    team = world.connect_team("Locked Team")
    workload = world.jwt(team.uuid, DROPLET_ROLE, kind="workload")
    before = scrape(world)
    holder = sqlite3.connect(world.proxy.data_dir / storage.SQLITE_NAME, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        refused = exchange(world.url, workload, team.uuid)
    finally:
        holder.rollback()
        holder.close()
    assert refused.status_code == 503, refused.text
    after = scrape(world)
    assert moved(before, after, "wid_database_errors_total") >= 1
    assert moved(before, after, "wid_http_requests_total", route="oidc_issue", method="POST", status="503") == 1


# -- who may scrape ------------------------------------------------------------------------------------


def raw_get(world: World, target: str, headers: list[tuple[str, str]]) -> tuple[int, dict[str, str], bytes]:
    """GET with exactly these header lines (requests merges repeated ones)."""
    parts = urlsplit(world.url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        conn.putrequest("GET", target)
        for name, field in headers:
            conn.putheader(name, field)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def test_only_the_tokens_holder_may_scrape(world: World) -> None:
    other = secrets.token_hex(32)  # right length, right alphabet, wrong value
    refused = [
        [],
        [("Authorization", f"Bearer {other}")],
        [("Authorization", f"Bearer {TOKEN[:-1]}")],
        [("Authorization", f"Bearer {TOKEN}x")],
        [("Authorization", f"Bearer{TOKEN}")],
        [("Authorization", f"Bearer {TOKEN} {TOKEN}")],
        [("Authorization", f"Basic {TOKEN}")],
        [("Authorization", f"DPoP {TOKEN}")],
        [("Authorization", TOKEN)],
        [("Authorization", f"Bearer {other}"), ("Authorization", f"Bearer {TOKEN}")],
        [("Authorization", f"Bearer {TOKEN}"), ("Authorization", f"Bearer {TOKEN}")],
        [("X-Metrics-Token", TOKEN)],
    ]
    for headers in refused:
        status, response_headers, body = raw_get(world, "/metrics", headers)
        assert status == 401, (headers, body)
        assert response_headers["www-authenticate"].startswith("Bearer"), headers
        error = json.loads(body)
        assert error["id"] == "unauthorized" and error["request_id"] and TOKEN not in body.decode()
    for query in (f"token={TOKEN}", f"access_token={TOKEN}", f"authorization=Bearer%20{TOKEN}"):
        status, _, body = raw_get(world, f"/metrics?{query}", [])
        assert status == 401 and TOKEN not in body.decode()
        status, _, body = raw_get(world, f"/metrics?{query}", [("Authorization", f"Bearer {TOKEN}")])
        assert status == 400 and "query" in json.loads(body)["message"]
    # RFC 9110 11.1: the scheme is case-insensitive; the token is compared exactly.
    status, _, body = raw_get(world, "/metrics", [("Authorization", f"bearer {TOKEN}")])
    assert status == 200 and b"wid_http_requests_total" in body
    status, _, _ = raw_get(world, "/metrics", [("Authorization", f"Bearer {TOKEN.upper()}")])
    assert status == 401
    post = requests.post(f"{world.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert post.status_code == 405 and post.headers["Allow"] == "GET"


def test_metrics_are_an_unknown_route_when_not_enabled(stack: ProxyServer) -> None:
    """The default: WID_METRICS_TOKEN unset (here in CGI mode, where wid.config refuses it anyway)."""
    unknown = requests.get(f"{stack.url}/no-such-route", timeout=30).json()
    for headers in ({}, {"Authorization": f"Bearer {TOKEN}"}):
        response = requests.get(f"{stack.url}/metrics", headers=headers, timeout=30)
        assert response.status_code == 404 and "WWW-Authenticate" not in response.headers
        assert {k: v for k, v in response.json().items() if k != "request_id"} == \
            {k: v for k, v in unknown.items() if k != "request_id"}


def test_a_real_prometheus_scrapes_with_the_documented_configuration(world: World, tmp_path: Path) -> None:
    """Debian's Prometheus with docs/operator.md's `authorization` block: the holder of the token scrapes,
    a scraper with another token is refused."""
    (tmp_path / "token").write_text(f"{TOKEN}\n")
    (tmp_path / "other").write_text(secrets.token_hex(32))
    target = urlsplit(world.url).netloc
    jobs = [{"job_name": job, "scrape_interval": "1s", "metrics_path": "/metrics",
             "authorization": {"type": "Bearer", "credentials_file": str(tmp_path / job)},
             "static_configs": [{"targets": [target]}]} for job in ("token", "other")]
    (tmp_path / "prometheus.yml").write_text(json.dumps({"scrape_configs": jobs}))  # JSON is YAML
    port = free_port()
    api = f"http://127.0.0.1:{port}/api/v1"
    with subprocess.Popen(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                           f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as prometheus:
        try:
            wait_for(f"http://127.0.0.1:{port}/-/ready", process=prometheus)
            health: dict[str, tuple[str, str]] = {}
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                targets = requests.get(f"{api}/targets", timeout=10).json()["data"]["activeTargets"]
                health = {t["labels"]["job"]: (t["health"], t["lastError"]) for t in targets}
                if all(state != "unknown" for state, _ in health.values()) and len(health) == 2:
                    break
                time.sleep(0.2)
            assert health["token"] == ("up", ""), health
            assert health["other"][0] == "down" and "401" in health["other"][1], health
            # A scrape reports the requests answered before it: its own 200 shows from the next scrape on.
            found: list[Any] = []
            while time.monotonic() < deadline:
                found = requests.get(f"{api}/query", params={"query": 'wid_http_requests_total{route="metrics"}'},
                                     timeout=10).json()["data"]["result"]
                if "200" in {r["metric"]["status"] for r in found}:
                    break
                time.sleep(0.2)
            assert {r["metric"]["job"] for r in found} == {"token"}
            assert {r["metric"]["status"] for r in found} >= {"200"}, found
        finally:
            prometheus.terminate()


# -- the setting ---------------------------------------------------------------------------------------


def test_the_token_is_validated_and_needs_persistent_mode() -> None:
    base = {"WID_MODE": "persistent"}
    assert config.read(base).metrics_token is None
    assert config.read({**base, "WID_METRICS_TOKEN": TOKEN}).metrics_token == TOKEN
    for bad in ("short-but-fine-chars", "x" * 31, "a" * 40 + " spaced", "ä" * 40, "a" * 513, "tok\"en" * 8):
        with pytest.raises(config.ConfigError, match="WID_METRICS_TOKEN must be 32 to 512 characters") as caught:
            config.read({**base, "WID_METRICS_TOKEN": bad})
        assert bad not in str(caught.value)  # a secret is never echoed
    for mode in ({}, {"WID_MODE": "cgi"}):
        with pytest.raises(config.ConfigError) as refused:
            config.read({**mode, "WID_METRICS_TOKEN": TOKEN})
        assert "WID_METRICS_TOKEN" in str(refused.value) and "WID_MODE" in str(refused.value)
        assert TOKEN not in str(refused.value)
    shown = {s.name: s.shown for s in config.sources({**base, "WID_METRICS_TOKEN": TOKEN})[0]}
    assert shown["WID_METRICS_TOKEN"] == "(set)"


def test_cgi_request_paths_never_import_prometheus_client() -> None:
    """CGI mode pays nothing for metrics: wid.metrics loads no module of its own, and no family's handler
    (nor the WSGI layer) loads the library."""
    modules = ", ".join(sorted(set(FAMILIES.values())))
    code = ("import sys, wid.config, wid.log; before = set(sys.modules); import wid.metrics; "
            "print(','.join(sorted(set(sys.modules) - before - {'wid.metrics'}))); "
            f"import wid.web.app, {modules}; "
            "print(','.join(m for m in sys.modules if m.split('.')[0] == 'prometheus_client'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == ["", ""]

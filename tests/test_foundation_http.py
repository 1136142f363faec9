"""The running service through real Caddy + fcgiwrap: metadata, errors, readiness."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from devkit.proxy import ROOT, ProxyServer
from tests.harness import PostgresServer
from wid.store import storage
from wid.web.request import Request


def test_health_endpoints(proxy: ProxyServer) -> None:
    assert requests.get(f"{proxy.url}/health", timeout=5).status_code == 200
    ready = requests.get(f"{proxy.url}/health/ready", timeout=5)
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}


def test_openid_configuration(proxy: ProxyServer) -> None:
    response = requests.get(f"{proxy.url}/.well-known/openid-configuration", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert "max-age" in response.headers["Cache-Control"]
    doc = response.json()
    assert doc["issuer"] == proxy.url
    assert doc["jwks_uri"] == f"{proxy.url}/.well-known/jwks"
    assert doc["id_token_signing_alg_values_supported"] == ["RS256"]
    for field in ("response_types_supported", "subject_types_supported", "claims_supported", "scopes_supported"):
        assert isinstance(doc[field], list) and doc[field]


def test_jwks_lists_signing_keys(proxy: ProxyServer) -> None:
    response = requests.get(f"{proxy.url}/.well-known/jwks", timeout=5)
    assert "max-age" in response.headers["Cache-Control"]
    keys = response.json()["keys"]
    assert keys
    for key in keys:
        assert key["kty"] == "RSA" and key["alg"] == "RS256" and key["use"] == "sig"
        assert {"n", "e", "kid"} <= set(key)
        assert "d" not in key and "p" not in key  # never a private member


def test_errors_are_json_with_request_id(proxy: ProxyServer) -> None:
    response = requests.get(f"{proxy.url}/no/such/route", timeout=5)
    assert response.status_code == 404
    body = response.json()
    assert body["id"] == "not_found" and body["message"]
    assert body["request_id"] == response.headers["X-Request-Id"]


def test_wrong_method_is_405_json(proxy: ProxyServer) -> None:
    response = requests.post(f"{proxy.url}/health/ready", timeout=5)
    assert response.status_code == 405
    assert response.json()["id"] == "method_not_allowed"
    assert response.headers["Allow"] == "GET"


def test_client_cannot_choose_the_request_id(proxy: ProxyServer) -> None:
    response = requests.get(f"{proxy.url}/health/ready", headers={"X-Request-Id": "attacker-chosen-id"}, timeout=5)
    assert response.headers["X-Request-Id"] != "attacker-chosen-id"


def test_oversized_body_is_413_json(proxy: ProxyServer) -> None:
    response = requests.post(f"{proxy.url}/v1/oidc/issue", data=b"x" * (2 * 1024 * 1024),
                             headers={"Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 413
    assert response.json()["id"] == "request_too_large"
    assert response.json()["message"] == "request body larger than 1048576 bytes, the limit set by WID_MAX_BODY_BYTES"


def _caddy_log_entry(proxy: ProxyServer, rid: str) -> dict[str, Any]:
    for line in proxy.log_text().splitlines():
        if line.startswith("{") and rid in line:
            entry: dict[str, Any] = json.loads(line)
            if entry.get("resp_headers", {}).get("X-Request-Id") == [rid]:
                return entry
    raise AssertionError(f"no log line for request {rid}")


def test_a_passthrough_failure_names_the_upstream_and_is_logged(proxy: ProxyServer) -> None:
    """A DigitalOcean token passes straight through Caddy; when DigitalOcean cannot be reached (here: nothing on
    port 9), the 502 says which upstream and what failed, and the proxy's log has one line for it."""
    token = "dop_v1_" + "5" * 64
    response = requests.get(f"{proxy.url}/v2/account?code=oauth-code-never-logged", timeout=10,
                            headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 502
    body = response.json()
    assert body["id"] == "bad_gateway" and body["request_id"] == response.headers["X-Request-Id"]
    assert body["message"] == ("Bad Gateway: the DigitalOcean API (DIGITALOCEAN_API_URL) at 127.0.0.1:9 failed: "
                               "dial tcp 127.0.0.1:9: connect: connection refused")
    entry = _caddy_log_entry(proxy, body["request_id"])
    assert entry["status"] == 502 and entry["level"] == "error"
    assert entry["resp_headers"]["X-Wid-Error"] == [body["message"]]
    assert entry["request"]["uri"] == "/v2/account?code=REDACTED"
    assert token not in proxy.log_text() and "oauth-code-never-logged" not in proxy.log_text()


def test_requests_caddy_answers_well_are_not_logged_by_caddy(proxy: ProxyServer) -> None:
    rid = requests.get(f"{proxy.url}/health", timeout=5).headers["X-Request-Id"]
    missing = requests.get(f"{proxy.url}/no/such/route", timeout=5)
    assert missing.status_code == 404
    assert rid not in proxy.log_text() and missing.headers["X-Request-Id"] not in proxy.log_text()


def test_a_body_the_handler_did_not_read_keeps_its_answer(proxy: ProxyServer) -> None:
    """Refused before its body is read (no token): the refusal, not fcgiwrap's text 502 about an unread body."""
    for body in (b"{" + b" " * 500_000 + b"}", iter([b"{", b" " * 500_000, b"}"])):
        response = requests.post(f"{proxy.url}/v1/oidc/prove", data=body, timeout=30,
                                 headers={"Content-Type": "application/json"})
        assert response.status_code == 401 and response.json()["id"] == "unauthorized", response.text


def test_concurrent_requests(proxy: ProxyServer) -> None:
    with ThreadPoolExecutor(max_workers=12) as pool:
        statuses = list(pool.map(lambda _: requests.get(f"{proxy.url}/health/ready", timeout=30).status_code,
                                 range(36)))
    assert statuses == [200] * 36


def test_logs_are_json_lines_with_request_ids(proxy: ProxyServer) -> None:
    rid = requests.get(f"{proxy.url}/health/ready", timeout=5).headers["X-Request-Id"]
    lines = [json.loads(line) for line in proxy.log_text().splitlines() if line.startswith("{")]
    assert any(entry.get("request_id") == rid and entry.get("event") == "request" for entry in lines)


def test_database_outage_is_503_and_recovers_clearly(tmp_path: Path) -> None:
    pg = PostgresServer()
    pg.start()
    server = ProxyServer(tmp_path / "data", {"DATABASE_URI": pg.fresh_database()})
    try:
        server.start()
        assert requests.get(f"{server.url}/health/ready", timeout=5).status_code == 200
        pg.stop()
        down = requests.get(f"{server.url}/health/ready", timeout=15)
        assert down.status_code == 503
        assert down.json()["id"] == "service_unavailable"
        assert "PostgreSQL" in down.json()["message"]
    finally:
        server.stop()


def test_bad_secret_key_stops_startup_with_a_clear_message(tmp_path: Path) -> None:
    server = ProxyServer(tmp_path / "data", {"WID_SECRET_KEY": "not-a-key"})
    with pytest.raises(RuntimeError, match="WID_SECRET_KEY must be 32 random bytes"):
        server.start(timeout=20)


def test_chunked_body_is_read_to_its_end(app_env: Path) -> None:
    environ = {"REQUEST_METHOD": "POST", "REQUEST_URI": "/x", "CONTENT_LENGTH": "-1",
               "CONTENT_TYPE": "application/json", "wsgi.input": io.BytesIO(b'{"a": 1}')}
    assert Request(environ).json_object() == {"a": 1}


def test_chunked_bodies_are_limited(proxy: ProxyServer) -> None:
    def chunks(size: int) -> Iterator[bytes]:
        yield b"{"
        yield b" " * size
        yield b"}"

    big = requests.post(f"{proxy.url}/v1/oidc/issue", data=chunks(3 * 1024 * 1024), timeout=30,
                        headers={"Content-Type": "application/json"})
    assert big.status_code == 413
    assert big.json()["id"] == "request_too_large"


def _cgi_env() -> dict[str, str]:
    """What fcgiwrap gives a script, with this test run's settings. Without PYTHONUNBUFFERED, which a developer's
    shell may set: fcgiwrap's scripts run with -IS and so buffer their output, and what a buffer holds is
    what a hung-up client leaves to flush."""
    inherited = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    return {**inherited, "PYTHONPATH": str(ROOT / "lib"), "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1", "GATEWAY_INTERFACE": "CGI/1.1"}


def test_a_cgi_process_ends_once_its_answer_and_log_are_out(app_env: Path) -> None:
    """run_cgi (lib/wid/web/app.py) flushes the answer and the log lines, closes the database, and ends the
    process without the interpreter's shutdown: under -v the interpreter reports each module it tears down
    ("# cleanup"), and none may appear. SQLite's last close checkpoints and removes the write-ahead log, so
    a log file left behind would mean the database was not closed."""
    storage.database().migrate()
    wal = Path(f"{storage.database().sqlite_path}-wal")
    storage.close_all()
    assert not wal.exists()
    env = {**_cgi_env(), "REQUEST_METHOD": "GET", "REQUEST_URI": "/health/ready", "SCRIPT_NAME": "/health/ready",
           "HTTP_X_REQUEST_ID": "cgi-exit-test-1"}
    done = subprocess.run([sys.executable, "-v", str(ROOT / "cgi-bin" / "health.py")], env=env, capture_output=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(b"Status: 200 OK\r\n")
    assert done.stdout.endswith(b'\r\n\r\n{"status":"ready"}')
    request_lines = [line for line in done.stderr.splitlines() if b'"event":"request"' in line]
    assert len(request_lines) == 1 and b'"request_id":"cgi-exit-test-1"' in request_lines[0]
    assert b"# cleanup" not in done.stderr
    assert not wal.exists()


def test_a_cgi_process_whose_client_went_away_ends_quietly(app_env: Path) -> None:
    """The reader of the answer is gone before the CGI script writes it (a client that hung up): the write
    fails with a broken pipe, which cgi.serve lets go, and so does run_cgi's flush before its fast exit: the
    process ends with status 0, without a traceback or an "Exception ignored"."""
    storage.database().migrate()
    storage.close_all()
    env = {**_cgi_env(), "REQUEST_METHOD": "GET", "REQUEST_URI": "/health/ready", "SCRIPT_NAME": "/health/ready"}
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will read the answer
    try:
        done = subprocess.run([sys.executable, str(ROOT / "cgi-bin" / "health.py")], env=env, stdout=write_end,
                              stderr=subprocess.PIPE, timeout=60, check=False)
    finally:
        os.close(write_end)
    assert done.returncode == 0, done.stderr[-2000:]
    assert b"Traceback" not in done.stderr and b"Exception ignored" not in done.stderr


_GC_PROBE = '''#!/usr/bin/env python3
"""Reports the collector's state while the script imported and while its handler runs."""
import gc

imported_with_collector = gc.isenabled()
from wid.web.app import run_cgi  # noqa: E402
from wid.web.response import Response  # noqa: E402


def handler(request: object) -> Response:
    return Response.json({"imported_with_collector": imported_with_collector, "collector": gc.isenabled(),
                          "frozen": gc.get_freeze_count()})


run_cgi(handler)
'''


def test_a_rendered_cgi_script_imports_with_the_collector_off_and_serves_with_it_on(app_env: Path,
                                                                                      tmp_path: Path) -> None:
    """render_cgi's prologue turns the cyclic collector off before the script's imports; run_cgi sets what
    was imported aside (gc.freeze) and turns it back on, so a request's own cycles are still collected."""
    from wid.cli.main import render_cgi

    source, target = tmp_path / "source", tmp_path / "rendered"
    source.mkdir()
    (source / "probe.py").write_text(_GC_PROBE)
    render_cgi(source, target)
    rendered = (target / "probe.py").read_text().splitlines()
    assert rendered[0] == f"#!{sys.executable} -IS" and rendered[1:4] == ["import gc", "import sys", "gc.disable()"]
    storage.database().migrate()
    storage.close_all()
    env = {**_cgi_env(), "REQUEST_METHOD": "GET", "REQUEST_URI": "/probe", "SCRIPT_NAME": "/probe"}
    done = subprocess.run([str(target / "probe.py")], env=env, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    state = json.loads(done.stdout.split(b"\r\n\r\n", 1)[1])
    assert state["imported_with_collector"] is False and state["collector"] is True
    assert state["frozen"] > 10_000  # the modules' objects, never scanned again

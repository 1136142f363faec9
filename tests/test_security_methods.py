"""A method is one exact word before a route is chosen (issue 15).

Methods are case-sensitive (RFC 9110 9.1). Caddy's `method` matcher compares exactly, but its FastCGI
transport hands the CGI the method upper-cased, so `post /v2/droplets` with a JWT used to miss the
Droplet-create route and reach the generic API proxy as POST. Now a method that is not exactly one the
proxy serves is a 405 before any route (Caddyfile), and `wid.web.app.wsgi` refuses it again (defence in depth).

Everything runs against the real proxy (Caddy + fcgiwrap + the rendered CGI executables) in front of
the DigitalOcean stand-in, whose received requests show that nothing got through. Odd methods are
sent with http.client and raw sockets (requests and curl normalise or refuse some of them).
"""

from __future__ import annotations

import http.client
import io
import json
import re
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devkit.proxy import ProxyServer
from devkit.standins.digitalocean import DigitalOceanStandIn
from wid.web.app import wsgi
from wid.web.request import METHODS, Request
from wid.web.response import Response

ROOT = Path(__file__).resolve().parent.parent
API = "DigitalOcean"
ALLOW = "GET, HEAD, POST, PUT, PATCH, DELETE"
DROPLET = {"name": "web", "region": "nyc3", "size": "s-1vcpu-1gb", "image": "ubuntu-24-04-x64"}
EVIL_DROPLET = {**DROPLET, "tags": ["oidc-sub:actx:evil"]}  # the Droplet-create handler refuses this tag

# Case variants of served methods, and methods the proxy does not serve at all.
ODD_METHODS = ("post", "Post", "pOST", "get", "Get", "head", "put", "patch", "delete", "Delete",
               "FOO", "OPTIONS", "TRACE", "CONNECT", "PROPFIND", "M-SEARCH")


def rbac_files(database: str) -> dict[str, bytes]:
    files = {
        "roles/data.hcl": """
role "data" {
  aud      = "api://DigitalOcean?actx={actx}"
  sub      = "actx:{actx}:role:data"
  policies = ["data"]
}
""",
        "roles/droplet-creator.hcl": """
role "droplet-creator" {
  aud      = "api://DigitalOcean?actx={actx}"
  sub      = "actx:{actx}:role:droplet-creator"
  policies = ["droplet-create"]
}
""",
        "policies/data.hcl": f"""
path "/v2/databases/{database}" {{
  capabilities = ["read"]
}}
path "/v2/spaces/keys" {{
  capabilities = ["read", "create"]
}}
path "/v2/account" {{
  capabilities = ["read"]
}}
""",
        "policies/droplet-create.hcl": """
path "/v2/droplets" {
  capabilities = ["create"]
}
""",
    }
    return {name: text.encode() for name, text in files.items()}


@dataclass
class Team:
    uuid: str
    pat: str
    oauth: str
    database: str
    data_jwt: str  # role "data": read the database, Spaces keys, the account
    droplet_jwt: str  # role "droplet-creator": create on /v2/droplets


@pytest.fixture(scope="module")
def team(stack: ProxyServer, do_api: DigitalOceanStandIn) -> Team:
    from wid.core.rbac import compiler as rbac_compile
    from wid.store import credentials, signing, storage
    from wid.store import rbac as rbac_store

    team = do_api.add_team("Method Team")
    pat = do_api.add_token(team.uuid)
    oauth = do_api.add_token(team.uuid, kind="oauth")
    database = str(uuid.uuid4())
    do_api.add_database(team.uuid, "backend", uuid=database, password="s3cret")
    with stack.configured():
        credentials.store(API, team.uuid, {"access_token": oauth})
        compiled = rbac_compile.compile_tree(rbac_files(database), api=API, actx=team.uuid)
        with storage.database().transaction() as tx:
            rbac_store.install(tx, API, team.uuid, compiled, "0" * 40)
        jwts = [signing.sign({"aud": f"api://{API}?actx={team.uuid}", "sub": f"actx:{team.uuid}:role:{role}"},
                             kind="exchanged", lifetime=600)[0] for role in ("data", "droplet-creator")]
    return Team(team.uuid, pat, oauth, database, *jwts)


@pytest.fixture
def nothing_reaches_digitalocean(do_api: DigitalOceanStandIn) -> Iterator[None]:
    """The test sends requests that must not reach the DigitalOcean stand-in at all."""
    with do_api.lock:
        before = len(do_api.requests)
    yield
    with do_api.lock:
        received = [f"{r.method} {r.path}" for r in do_api.requests[before:]]
    assert received == []


def routes(team: Team) -> list[tuple[str, str | None, dict[str, Any] | None]]:
    """(path, bearer token, JSON body) for every route family the Caddyfile has."""
    return [
        # JWT routes: the wrapped handlers and the generic policy proxy.
        ("/v2/droplets", team.droplet_jwt, EVIL_DROPLET),
        ("/v2/droplets/", team.droplet_jwt, EVIL_DROPLET),
        (f"/v2/databases/{team.database}", team.data_jwt, None),
        ("/v2/databases", team.data_jwt, None),
        ("/v2/spaces/keys", team.data_jwt, {"name": "k", "grants": [{"bucket": "b", "permission": "read"}]}),
        ("/v2/account", team.data_jwt, None),
        # Passthrough: DigitalOcean tokens go straight to the API (no Python).
        ("/v2/droplets", team.pat, EVIL_DROPLET),
        ("/v2/account", team.pat, None),
        (f"/v2/databases/{team.database}", team.pat, None),
        ("/v2/droplets", team.oauth, DROPLET),
        # Caddy's static answers and the issuer metadata.
        ("/health", None, None),
        ("/health/ready", None, None),
        ("/.well-known/jwks", None, None),
        ("/.well-known/openid-configuration", None, None),
        # Token endpoints, git, ATProto, the landing page and OAuth flow, an unknown path.
        ("/v1/oidc/issue", team.data_jwt, {"audience": "x"}),
        ("/v1/oidc/prove", None, {"signature": "x"}),
        (f"/_rbac/{API}/{team.uuid}/info/refs?service=git-receive-pack", None, None),
        (f"/_rbac/{API}/{team.uuid}/git-receive-pack", None, None),
        ("/info/refs?service=git-upload-pack", team.data_jwt, None),
        ("/git-upload-pack", None, None),
        ("/xrpc/com.atproto.repo.createRecord", team.data_jwt, {"collection": "x"}),
        ("/", None, None),
        ("/auth/digitalocean/v1/authorize", None, None),
        ("/no/such/route", team.pat, None),
    ]


def send(proxy: ProxyServer, method: str, path: str, token: str | None = None,
         body: dict[str, Any] | None = None) -> tuple[http.client.HTTPResponse, bytes]:
    """One request on a fresh connection; http.client sends the method exactly as given."""
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    headers = {"Connection": "close"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    if data is not None:
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=data, headers=headers)
    response = conn.getresponse()
    raw = response.read()
    conn.close()
    return response, raw


def send_raw(proxy: ProxyServer, request_line: bytes, token: str) -> bytes:
    """A request line exactly as given, with a JSON body; returns the whole answer."""
    body = json.dumps(EVIL_DROPLET).encode()
    head = (b"%s\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (request_line, token.encode(), len(body)))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as sock:
        sock.sendall(head + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def assert_method_refused(response: http.client.HTTPResponse, body: bytes, method: str) -> None:
    assert response.status == 405, body
    assert response.getheader("Allow") == ALLOW
    assert response.getheader("Content-Type", "").startswith("application/json")
    error = json.loads(body)
    assert set(error) == {"id", "message", "request_id"}
    assert error["id"] == "method_not_allowed"
    assert f"'{method}' is not a method this proxy serves" in error["message"]
    assert "case-sensitive" in error["message"] and "GET, HEAD, POST, PUT, PATCH or DELETE" in error["message"]
    assert error["request_id"] == response.getheader("X-Request-Id")


@pytest.mark.parametrize("method", ODD_METHODS)
def test_a_method_that_is_not_exactly_one_served_is_405_on_every_route(
        stack: ProxyServer, team: Team, method: str, nothing_reaches_digitalocean: None) -> None:
    for path, token, body in routes(team):
        assert_method_refused(*send(stack, method, path, token, body), method)


def test_lower_case_post_does_not_create_a_droplet_around_its_handler(
        stack: ProxyServer, do_api: DigitalOceanStandIn, team: Team, nothing_reaches_digitalocean: None) -> None:
    # The reproduction in issue 15: `post` missed @droplet_create and the API proxy forwarded it as POST.
    assert_method_refused(*send(stack, "post", "/v2/droplets", team.droplet_jwt, EVIL_DROPLET), "post")
    # The exact method reaches the Droplet-create handler, which refuses the tag itself (so a 405 is
    # not this route answering everything).
    handled, body = send(stack, "POST", "/v2/droplets", team.droplet_jwt, EVIL_DROPLET)
    assert handled.status == 400 and "oidc-sub:actx:evil" in json.loads(body)["message"]
    assert not [d for d in do_api.droplets.values() if d["team_uuid"] == team.uuid]


def test_lower_case_get_on_a_database_is_405_and_GET_still_reads_it(
        stack: ProxyServer, do_api: DigitalOceanStandIn, team: Team) -> None:
    path = f"/v2/databases/{team.database}"
    with do_api.lock:
        before = len(do_api.requests)
    # It used to reach the policy as POST, checked as `create`.
    assert_method_refused(*send(stack, "get", path, team.data_jwt), "get")
    with do_api.lock:
        assert len(do_api.requests) == before
    allowed, body = send(stack, "GET", path, team.data_jwt)
    assert allowed.status == 200 and json.loads(body)["database"]["id"] == team.database
    with do_api.lock:
        forwarded = do_api.requests[before:]
    assert [(r.method, r.path, r.authorization) for r in forwarded] == [("GET", path, f"Bearer {team.oauth}")]


@pytest.mark.parametrize("request_line", [
    b"POST  /v2/droplets HTTP/1.1",  # "POST " then the path
    b"POST\t/v2/droplets HTTP/1.1",
    b" POST /v2/droplets HTTP/1.1",
    b"POST /v2/droplets  HTTP/1.1",
    b"POST /v2/droplets HTTP/1.1 ",
    b"PO ST /v2/droplets HTTP/1.1",
    b"POST\x00 /v2/droplets HTTP/1.1",
])
def test_a_method_with_whitespace_or_control_bytes_is_refused_by_the_http_parser(
        stack: ProxyServer, team: Team, request_line: bytes, nothing_reaches_digitalocean: None) -> None:
    # Go's HTTP/1.1 parser (in front of every Caddy route) refuses these request lines with a plain
    # 400 before Caddy sees a method, so no 405 of ours can answer them: refused is what matters.
    for token in (team.droplet_jwt, team.pat):
        answer = send_raw(stack, request_line, token)
        assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer[:200]


@pytest.mark.parametrize("method", METHODS)
def test_every_served_method_passes_through_to_digitalocean_with_its_own_token(
        stack: ProxyServer, do_api: DigitalOceanStandIn, team: Team, method: str) -> None:
    # The other side of the list: each served method reaches the API unchanged (passthrough, a PAT).
    with do_api.lock:
        before = len(do_api.requests)
    send(stack, method, "/v2/account", team.pat)
    with do_api.lock:
        forwarded = do_api.requests[before:]
    assert [(r.method, r.path, r.authorization) for r in forwarded] == [(method, "/v2/account", f"Bearer {team.pat}")]


def test_caddyfile_serves_exactly_the_methods_of_wid_web_request() -> None:
    caddyfile = (ROOT / "Caddyfile").read_text()
    matcher = re.search(r"^\t@method_not_allowed not method ([A-Z ]+)$", caddyfile, re.MULTILINE)
    assert matcher is not None
    assert tuple(matcher.group(1).split()) == METHODS
    assert f'header Allow "{ALLOW}"' in caddyfile and ", ".join(METHODS) == ALLOW
    site = caddyfile.index(":{$PORT} {")
    assert caddyfile.index("@method_not_allowed", site) < caddyfile.index("route {", site)


# -- defence in depth: wid.web.app refuses what the front end should have refused -----------------------------


def wsgi_call(method: str | None, path: str = "/v2/droplets") -> tuple[str, dict[str, str], bytes, list[str]]:
    seen: list[str] = []

    def handler(request: Request) -> Response:
        seen.append(request.method)
        return Response.json({"ok": True})

    environ: dict[str, Any] = {"REQUEST_URI": path, "CONTENT_LENGTH": "0", "wsgi.input": io.BytesIO()}
    if method is not None:
        environ["REQUEST_METHOD"] = method
    started: list[Any] = []
    body = b"".join(wsgi(handler)(environ, lambda status, headers: started.extend((status, headers))))
    return started[0], dict(started[1]), body, seen


@pytest.mark.parametrize("method", [*ODD_METHODS, "", "POST ", " GET", None])
def test_wid_web_app_refuses_a_method_it_does_not_serve_without_case_folding(method: str | None) -> None:
    status, headers, body, seen = wsgi_call(method)
    assert status == "405 Method Not Allowed" and seen == []
    assert headers["Allow"] == ALLOW
    error = json.loads(body)
    assert error["id"] == "method_not_allowed" and "case-sensitive" in error["message"]
    assert error["request_id"] == headers["X-Request-Id"]


@pytest.mark.parametrize("method", METHODS)
def test_wid_web_app_hands_served_methods_to_the_handler_as_sent(method: str) -> None:
    status, _, _, seen = wsgi_call(method)
    assert status == "200 OK" and seen == [method]


def test_the_droplet_create_cgi_refuses_a_lower_case_method_it_is_handed(
        stack: ProxyServer, team: Team, nothing_reaches_digitalocean: None) -> None:
    # The rendered CGI executable, run as fcgiwrap runs it, given what a front end that passes the
    # method through unchanged would give it.
    script = stack.data_dir / "run" / "cgi-bin" / "droplet_create.py"
    body = json.dumps(EVIL_DROPLET).encode()
    env = {**stack.env, "GATEWAY_INTERFACE": "CGI/1.1", "REQUEST_METHOD": "post", "REQUEST_URI": "/v2/droplets",
           "SCRIPT_NAME": "", "PATH_INFO": "/v2/droplets", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80",
           "SERVER_PROTOCOL": "HTTP/1.1", "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)),
           "HTTP_AUTHORIZATION": f"Bearer {team.droplet_jwt}"}
    done = subprocess.run([str(script)], input=body, env=env, capture_output=True, timeout=60, check=True)
    head, _, answer = done.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"Status: 405 Method Not Allowed\r\n"), done.stdout[:300]
    assert b"\r\nAllow: " + ALLOW.encode() in head
    assert json.loads(answer)["id"] == "method_not_allowed"

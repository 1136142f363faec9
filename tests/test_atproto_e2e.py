"""The ATProto upstream end to end, against a real PLC directory and PDS (tests/atproto).

The proxy runs as `make run` serves it (Caddy + fcgiwrap + CGI) with THIS_ENDPOINT set to a public
https origin, which the peer's PDS reaches through its fetch routing (the PDS accepts confidential
clients only at https URLs on public-looking hosts). A "browser" here is requests + a cookie jar
kept by hand: the proxy's sign-in start, the PDS's real approval page replayed over HTTP, then the
PDS's redirect replayed on the proxy's loopback address. No mock inside the proxy: the faults come
from real servers (a PDS stand-in that answers slowly, with 5xx or with huge bodies; a DID document
changed in the PLC directory; a refresh token reused at the real authorization server).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests

from devkit.git_helpers import ARTICLE_ATPROTO, ARTICLE_ATPROTO_ROLES, atproto_credential_helper
from devkit.proxy import ROOT, ProxyServer
from devkit.seed import install_rbac, mint
from tests.atproto.fixture import (
    AtprotoPeer,
    approve_authorization,
    loopback_url,
    redirect_params,
    reject_authorization,
)
from tests.gha.support import new_team, unverified_claims
from tests.harness import PostgresServer

ORIGIN = "https://wid.fixture.internal"
EXAMPLES = ROOT / "rbac-schema" / "examples"
ATPROTO_TIMEOUT = 3
MAX_RESPONSE = 2 * 1024 * 1024
ATPROTO_ENV = ("ATPROTO_PLC_URL", "ATPROTO_HANDLE_RESOLVER", "ATPROTO_TIMEOUT", "ATPROTO_MAX_RESPONSE_BYTES")


# -- a PDS stand-in for faults: passes through to the real PDS, or misbehaves on demand -----------------------


class FlakyPds:
    """http://localhost:PORT: forwards to the real PDS (rewriting its resource metadata so it describes
    this URL), or answers slowly, with 5xx, with a huge body, or trickling, as `mode` says."""

    def __init__(self, real: str) -> None:
        self.real = real
        self.mode = "pass"
        self.hits: list[str] = []
        flaky = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                flaky.hits.append(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                mode = flaky.mode
                try:
                    if mode == "slow":
                        time.sleep(ATPROTO_TIMEOUT + 3)
                        self._send(200, b"{}")
                    elif mode == "5xx":
                        self._send(503, b'{"error":"Unavailable","message":"down for maintenance"}')
                    elif mode == "huge":
                        self.send_response(200)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Connection", "close")
                        self.end_headers()
                        chunk = b"a" * 65536
                        for _ in range((MAX_RESPONSE // len(chunk)) + 8):
                            self.wfile.write(chunk)
                    elif mode == "drip":
                        self.send_response(200)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", "1000")
                        self.end_headers()
                        for _ in range(ATPROTO_TIMEOUT + 3):
                            self.wfile.write(b" ")
                            self.wfile.flush()
                            time.sleep(1)
                    else:
                        self._pass(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _pass(self, body: bytes) -> None:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                upstream = requests.request(self.command, flaky.real + self.path, headers=headers, data=body or None,
                                            timeout=10, allow_redirects=False)
                content = upstream.content
                if self.path.startswith("/.well-known/oauth-protected-resource"):
                    meta = upstream.json()
                    meta["resource"] = flaky.url
                    content = json.dumps(meta).encode()
                self._send(upstream.status_code, content, upstream.headers.get("Content-Type", "application/json"))

            def _send(self, status: int, content: bytes, content_type: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://localhost:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- session fixtures: one peer, one proxy ------------------------------------------------------------------


@pytest.fixture(scope="module")
def peer() -> Iterator[AtprotoPeer]:
    started = AtprotoPeer()
    started.start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def proxy(peer: AtprotoPeer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyServer]:
    with ProxyServer(tmp_path_factory.mktemp("atproto") / "data", {
            "THIS_ENDPOINT": ORIGIN,
            "ATPROTO_PLC_URL": peer.plc_url,
            "ATPROTO_HANDLE_RESOLVER": peer.pds_url,
            "ATPROTO_TIMEOUT": str(ATPROTO_TIMEOUT),
            "ATPROTO_MAX_RESPONSE_BYTES": str(MAX_RESPONSE),
            "WID_ALLOW_INSECURE_ISSUERS": "1",
        }) as server:
        peer.route(ORIGIN, server.url)
        yield server


@pytest.fixture(scope="module")
def flaky(peer: AtprotoPeer) -> Iterator[FlakyPds]:
    server = FlakyPds(peer.pds_url)
    yield server
    server.stop()


@contextmanager
def configured(proxy: ProxyServer) -> Iterator[None]:
    """Library code in this process against the proxy's database, with its ATProto settings."""
    saved = {name: os.environ.get(name) for name in ATPROTO_ENV}
    os.environ.update({name: proxy.env[name] for name in ATPROTO_ENV})
    try:
        with proxy.configured():
            yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# -- a browser --------------------------------------------------------------------------------------------------


class Browser:
    """Cookies by hand (the proxy's are Secure: it believes it is served over https)."""

    def __init__(self, proxy: ProxyServer) -> None:
        self.proxy = proxy
        self.cookies: dict[str, str] = {}
        self.http = requests.Session()
        self.http.trust_env = False

    def _take(self, response: requests.Response) -> None:
        for header in response.raw.headers.getlist("Set-Cookie"):
            name, _, value = header.split(";", 1)[0].partition("=")
            if "Max-Age=0" in header or not value:
                self.cookies.pop(name.strip(), None)
            else:
                self.cookies[name.strip()] = value

    def headers(self, accept: str) -> dict[str, str]:
        headers = {"Accept": accept}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        return headers

    def start(self, identifier: str, accept: str = "text/html") -> requests.Response:
        response = self.http.post(f"{self.proxy.url}/auth/atproto/authorize", data={"identifier": identifier},
                                  headers=self.headers(accept), allow_redirects=False, timeout=30)
        self._take(response)
        return response

    def authorize_url(self, identifier: str) -> str:
        response = self.start(identifier)
        assert response.status_code == 303, response.text
        location = response.headers["Location"]
        assert "/oauth/authorize?" in location
        return location

    def callback(self, redirect: str, accept: str = "application/json") -> requests.Response:
        origin = self.proxy.env["THIS_ENDPOINT"]
        response = self.http.get(loopback_url(redirect, origin, self.proxy.url), headers=self.headers(accept),
                                 allow_redirects=False, timeout=30)
        self._take(response)
        return response


def sign_in(proxy: ProxyServer, handle: str, password: str, identifier: str | None = None) -> dict[str, Any]:
    browser = Browser(proxy)
    redirect = approve_authorization(browser.authorize_url(identifier or handle), handle, password)
    response = browser.callback(redirect)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def credential(proxy: ProxyServer, did: str) -> Any:
    from wid.store import credentials

    with configured(proxy):
        return credentials.get("ATProto", did)


def expire_access_token(proxy: ProxyServer, did: str) -> None:
    """What an hour does: the stored access token is due for a refresh."""
    from wid.store import credentials

    with configured(proxy), credentials.locked("ATProto", did) as (tx, cred):
        assert cred is not None
        credentials.put(tx, "ATProto", did, {**cred.data, "expires_at": int(time.time()) - 5})


def forget_did(proxy: ProxyServer, did: str) -> None:
    """Drop the proxy's cached DID document (as ATPROTO_DID_CACHE_SECONDS passing would)."""
    from wid.upstreams.atproto import identity as atproto_identity

    with configured(proxy):
        atproto_identity.forget(did)


def audit_count(proxy: ProxyServer, event: str, decision: str, did: str) -> int:
    from wid.store import audit_queries

    with configured(proxy):
        return len(audit_queries.entries(actx=did, event=event, decision=decision, limit=1000))


# -- RBAC for a DID and a team ----------------------------------------------------------------------------------

WRITE_POLICY = (EXAMPLES / "atproto" / "policies" / "atproto-write.hcl").read_bytes()
WRITE_ROLE = (EXAMPLES / "atproto" / "roles" / "atproto-write.hcl").read_text()
ARTICLE_TEAM = "f81d4fae-7dec-11d0-a765-00a0c91e6bf6"


def did_rbac(team: str, extra_policy: bytes = b"") -> dict[str, bytes]:
    return {"roles/atproto-write.hcl": WRITE_ROLE.replace(ARTICLE_TEAM, team).encode(),
            "policies/atproto-write.hcl": WRITE_POLICY + extra_policy}


def team_rbac(did: str) -> dict[str, bytes]:
    ex_atproto = (EXAMPLES / "policies" / "ex-atproto.hcl").read_text().replace(
        "did:plc:ewvi7nxzyoun6zhxrhs64oiz", did)
    return {
        "policies/ex-atproto.hcl": ex_atproto.encode(),
        "policies/ex-database-and-spaces-keys-access.hcl":
            (EXAMPLES / "policies" / "ex-database-and-spaces-keys-access.hcl").read_bytes(),
        "droplet-roles/ex-database-and-spaces-keys-access.hcl":
            (EXAMPLES / "droplet-roles" / "ex-database-and-spaces-keys-access.hcl").read_bytes(),
    }


def write_token(proxy: ProxyServer, did: str, team: str, ttl: int = 300) -> str:
    """What the Droplet's exchange yields: aud = the DID's context, sub = the team's atproto-write role."""
    return mint(proxy, f"api://ATProto?actx={did}", f"actx:{team}:role:atproto-write", kind="exchanged", ttl=ttl)


def new_writer(peer: AtprotoPeer, proxy: ProxyServer, handle: str, password: str,
               extra_policy: bytes = b"") -> tuple[str, str, str]:
    """A new DID, signed in, with the articles' DID policy for a new team: (did, handle, a write token)."""
    did, handle = peer.create_account(handle, password)
    sign_in(proxy, handle, password)
    team = new_team()
    install_rbac(proxy, did, did_rbac(team, extra_policy), api="ATProto")
    return did, handle, write_token(proxy, did, team)


def post(proxy: ProxyServer, token: str, nsid: str, body: Any, **kw: Any) -> requests.Response:
    return requests.post(f"{proxy.url}/xrpc/{nsid}", json=body, headers={"Authorization": f"Bearer {token}"},
                         timeout=30, **kw)


def hello(did: str, text: str = "Hello World") -> dict[str, Any]:
    return {"repo": did, "collection": "app.bsky.feed.post",
            "record": {"$type": "app.bsky.feed.post", "text": text,
                       "createdAt": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())}}


@pytest.fixture(scope="module")
def alice(peer: AtprotoPeer, proxy: ProxyServer) -> dict[str, Any]:
    """Signed in, with the articles' DID policy for a team installed."""
    did, handle = peer.create_account("alice.test", "alice-password-1")
    signed = sign_in(proxy, handle, "alice-password-1")
    team = new_team()
    install_rbac(proxy, did, did_rbac(team), api="ATProto")
    return {"did": did, "handle": handle, "team": team, "signed": signed}


# -- the client's public face -----------------------------------------------------------------------------------


def test_client_metadata_and_jwks(proxy: ProxyServer) -> None:
    meta = requests.get(f"{proxy.url}/oauth/atproto/client-metadata.json", timeout=10)
    assert meta.status_code == 200
    body = meta.json()
    assert body["client_id"] == f"{ORIGIN}/oauth/atproto/client-metadata.json"
    assert body["redirect_uris"] == [f"{ORIGIN}/auth/atproto/callback"]
    assert body["jwks_uri"] == f"{ORIGIN}/oauth/atproto/jwks.json"
    assert body["token_endpoint_auth_method"] == "private_key_jwt"
    assert body["token_endpoint_auth_signing_alg"] == "ES256"
    assert body["dpop_bound_access_tokens"] is True
    assert body["scope"] == "atproto transition:generic"
    assert body["grant_types"] == ["authorization_code", "refresh_token"]
    keys = requests.get(f"{proxy.url}/oauth/atproto/jwks.json", timeout=10).json()["keys"]
    assert len(keys) == 1
    assert {keys[0]["kty"], keys[0]["crv"], keys[0]["alg"], keys[0]["use"]} == {"EC", "P-256", "ES256", "sig"}
    assert "d" not in keys[0] and keys[0]["kid"]


def test_sign_in_page(proxy: ProxyServer) -> None:
    page = requests.get(f"{proxy.url}/auth/atproto/", headers={"Accept": "text/html"}, timeout=10)
    assert page.status_code == 200
    assert 'id="signin-form"' in page.text and f'action="{ORIGIN}/auth/atproto/authorize"' in page.text
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]


# -- sign-in ----------------------------------------------------------------------------------------------------


def test_sign_in_stores_the_session_and_shows_an_rbac_token(peer: AtprotoPeer, proxy: ProxyServer,
                                                            alice: dict[str, Any]) -> None:
    signed = alice["signed"]
    did = alice["did"]
    assert signed["did"] == did and signed["handle"] == "alice.test" and signed["pds"] == peer.pds_url
    assert signed["repo"] == f"{ORIGIN}/_rbac/ATProto/{did}"
    claims = unverified_claims(signed["rbac_token"])
    assert claims["did_plc"] == did  # what the articles read with jq -r .did_plc
    assert claims["aud"] == f"api://ATProto?actx={did}"
    assert claims["sub"].startswith(f"actx:{did}:")
    assert claims["wid_kind"] == "rbac" and claims["iss"] == ORIGIN
    assert 3600 <= claims["exp"] - claims["iat"] <= 43200
    stored = credential(proxy, did)
    assert stored.status == "active"
    assert stored.data["pds"] == peer.pds_url and stored.data["issuer"] == peer.pds_url
    assert stored.data["token_type"] == "DPoP" and stored.data["refresh_token"] and stored.data["dpop_key"]
    # Encrypted at rest: the database file never holds the tokens or the key in clear.
    raw = (Path(proxy.data_dir) / "wid.sqlite3").read_bytes()
    for secret in (stored.data["access_token"], stored.data["refresh_token"]):
        assert secret.encode() not in raw
    assert b"PRIVATE KEY" not in raw
    # An RBAC token is for git only.
    refused = post(proxy, signed["rbac_token"], "com.atproto.repo.createRecord", hello(did))
    assert refused.status_code == 401 and "rbac token cannot be used here" in refused.json()["message"]


def test_sign_in_by_did_in_a_browser_shows_the_token_page(peer: AtprotoPeer, proxy: ProxyServer) -> None:
    did, handle = peer.create_account("hana.test", "hana-password-1")
    browser = Browser(proxy)
    redirect = approve_authorization(browser.authorize_url(did), handle, "hana-password-1")
    page = browser.callback(redirect, accept="text/html")
    assert page.status_code == 200, page.text
    assert 'id="rbac-token"' in page.text and did in page.text
    assert "python -m keyring set oidc-reverse-proxy rbac.did.token" in page.text
    assert page.headers["Cache-Control"] == "no-store"
    assert "wid_atproto_oauth=;" in page.headers["Set-Cookie"]
    token = page.text.split('id="rbac-token" readonly>', 1)[1].split("</textarea>", 1)[0]
    assert unverified_claims(token)["did_plc"] == did
    assert credential(proxy, did).status == "active"


# -- the articles: git push with the RBAC token, the Droplet's exchange and createRecord -----------------------

KEYRING_STUB = '''"""Stand-in for `python -m keyring get|set SERVICE NAME` (keyrings.alt's file backend, in short)."""
import json, os, sys
path = os.path.join(os.environ["HOME"], ".keyring.json")
store = json.load(open(path)) if os.path.exists(path) else {}
action, service, name = sys.argv[1:4]
if action == "set":
    store[f"{service}/{name}"] = sys.stdin.readline().strip()
    json.dump(store, open(path, "w"))
else:
    print(store[f"{service}/{name}"])
'''
FAKE_DOCTL = """#!/usr/bin/env bash
# Stand-in for `doctl account get -o json`.
echo '{"team": {"uuid": "'"$(cat "$HOME/.team")"'"}}'
"""

# The articles' "ATProto Login and RBAC Configuration", verbatim from `mkdir did-rbac` on, except
# that the venv and `pip install` are this test's, and `git config --global --unset` has the earlier
# DigitalOcean helper to remove. The credential helper and the two pushes are the ones
# tests/test_git_push.py runs (devkit/git_helpers.py).
ARTICLE_DID_REPO = r"""
mkdir did-rbac
cd did-rbac

export DID_PLC="$(python -c 'import sys, jwt, json; print(json.dumps(jwt.decode(sys.argv[-1], options={"verify_signature": False})))' $(python -m keyring get oidc-reverse-proxy rbac.did.token) | jq -r .did_plc)"

mkdir -p "${HOME}/.local/scripts/"

tee "${HOME}/.local/scripts/git-credential-rbac-atproto.sh" <<'EOF'
"""  # noqa: E501 - the articles' lines, verbatim
ARTICLE_DID_REPO += atproto_credential_helper("$(python -m keyring get oidc-reverse-proxy rbac.did.token)") + r"""EOF

chmod 755 "${HOME}/.local/scripts/git-credential-rbac-atproto.sh"
""" + ARTICLE_ATPROTO + r"""
mkdir -p roles policies
cat > roles/atproto-write.hcl <<'EOF'
role "atproto-write" {
  aud      = "api://ATProto?actx={actx}"
  # TODO Replace f81d4fae-7dec-11d0-a765-00a0c91e6bf6 with your actual team UUID!
  # doctl account get -o json | jq -r .team.uuid
  sub      = "actx:f81d4fae-7dec-11d0-a765-00a0c91e6bf6:role:atproto-write"
  policies = ["atproto-write"]
}
EOF
sed -i "s/f81d4fae-7dec-11d0-a765-00a0c91e6bf6/$(doctl account get -o json | jq -r .team.uuid)/g" roles/atproto-write.hcl
cat > policies/atproto-write.hcl <<'EOF'
path "/xrpc/com.atproto.repo.createRecord" {
  capabilities = ["create"]
}
EOF
"""  # noqa: E501 - the articles' lines, verbatim
ARTICLE_DID_REPO += ARTICLE_ATPROTO_ROLES

# "ATProto Create Post", verbatim; the three files under /root/secrets come from the environment.
ARTICLE_CREATE_POST = r"""
TOKEN=$(curl -sf \
  -H "Authorization: Bearer ${ID_TOKEN}" \
  -d@<(jq -n -c \
    --arg aud "api://ATProto?actx=${DID_PLC}" \
    --arg sub "${SUBJECT}" \
    --arg ttl 300 \
    '{aud: $aud, sub: $sub, ttl: ($ttl | fromjson)}') \
  "${URL}/v1/oidc/issue" \
  | jq -r .token)

curl -s \
  -X POST \
  -H "Authorization: Bearer ${TOKEN}" \
  -H "Content-Type: application/json" \
  -d '{
        "repo": "'"${DID_PLC}"'",
        "collection": "app.bsky.feed.post",
        "record": {
          "$type": "app.bsky.feed.post",
          "text": "Hello World",
          "createdAt": "'$(date -u +"%Y-%m-%dT%H:%M:%S.%3NZ")'"
        }
      }' \
  "${URL}/xrpc/com.atproto.repo.createRecord" | jq
"""


def admin_home(tmp_path: Path, proxy: ProxyServer, rbac_token: str, team: str) -> dict[str, str]:
    home = tmp_path / "home"
    (home / "bin").mkdir(parents=True)
    (home / "pylib" / "keyring").mkdir(parents=True)
    (home / "pylib" / "keyring" / "__init__.py").write_text("")
    (home / "pylib" / "keyring" / "__main__.py").write_text(KEYRING_STUB)
    (home / "bin" / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')  # the venv has pyjwt
    (home / "bin" / "python").chmod(0o755)
    (home / "bin" / "doctl").write_text(FAKE_DOCTL)
    (home / "bin" / "doctl").chmod(0o755)
    (home / ".team").write_text(team)
    env = {"HOME": str(home), "PATH": f"{home / 'bin'}:/usr/local/bin:/usr/bin:/bin",
           "PYTHONPATH": str(home / "pylib"), "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0",
           "LANG": "C", "LC_ALL": "C", "THIS_ENDPOINT": proxy.url}
    run = lambda script, **kw: subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=home, env=env,  # noqa: E731
                                              capture_output=True, text=True, timeout=120, **kw)
    setup = run("git config --global user.name Admin && git config --global user.email admin@example.com && "
                "git config --global credential.\"${THIS_ENDPOINT}\".helper '!/bin/false' && "
                "python -m keyring set oidc-reverse-proxy rbac.did.token", input=rbac_token + "\n")
    assert setup.returncode == 0, setup.stderr
    return env


def test_the_articles_end_to_end(peer: AtprotoPeer, proxy: ProxyServer, tmp_path: Path) -> None:
    did, handle = peer.create_account("ivan.test", "ivan-password-1")
    signed = sign_in(proxy, handle, "ivan-password-1")
    team = new_team()
    env = admin_home(tmp_path, proxy, signed["rbac_token"], team)

    pushed = subprocess.run(["bash", "-euo", "pipefail", "-c", ARTICLE_DID_REPO], cwd=env["HOME"], env=env,
                            capture_output=True, text=True, timeout=180)
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    compiled = json.loads(pushed.stdout[pushed.stdout.rindex("\n{\n") + 1:])  # the last command's `jq` output
    assert compiled["roles"]["atproto-write"]["aud"] == f"api://ATProto?actx={did}"
    assert compiled["roles"]["atproto-write"]["sub"] == f"actx:{team}:role:atproto-write"

    # The team's side: the Droplet role may ask for the DID's atproto-write token (policies/ex-atproto.hcl).
    install_rbac(proxy, team, team_rbac(did))
    id_token = mint(proxy, f"api://DigitalOcean?actx={team}", f"actx:{team}:role:ex-database-and-spaces-keys-access")
    droplet_env = {"PATH": "/usr/bin:/bin", "URL": proxy.url, "TEAM_UUID": team, "ID_TOKEN": id_token,
                   "DID_PLC": did, "SUBJECT": f"actx:{team}:role:atproto-write"}
    done = subprocess.run(["bash", "-c", ARTICLE_CREATE_POST], env=droplet_env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)
    assert created["uri"].startswith(f"at://{did}/app.bsky.feed.post/"), done.stdout
    record = peer.get_record(did, "app.bsky.feed.post", created["uri"].rsplit("/", 1)[1])
    assert record["value"]["text"] == "Hello World"
    assert record["cid"] == created["cid"]

    # Only what the DID's policy grants: the same token may not delete the post.
    token = write_token(proxy, did, team)
    deleted = post(proxy, token, "com.atproto.repo.deleteRecord",
                   {"repo": did, "collection": "app.bsky.feed.post", "rkey": created["uri"].rsplit("/", 1)[1]})
    assert deleted.status_code == 403, deleted.text
    assert peer.get_record(did, "app.bsky.feed.post", created["uri"].rsplit("/", 1)[1])


def test_rbac_token_opens_only_its_own_dids_repo(peer: AtprotoPeer, proxy: ProxyServer,
                                                  alice: dict[str, Any]) -> None:
    other, _ = peer.create_account("judy.test", "judy-password-1")
    url = f"{proxy.url}/_rbac/ATProto/{other}/info/refs?service=git-receive-pack"
    refused = requests.get(url, auth=("token", alice["signed"]["rbac_token"]), timeout=10)
    assert refused.status_code == 403, refused.text
    own = requests.get(f"{proxy.url}/_rbac/ATProto/{alice['did']}/info/refs?service=git-receive-pack",
                       auth=("token", alice["signed"]["rbac_token"]), timeout=10)
    assert own.status_code == 200, own.text


# -- XRPC forwarding ----------------------------------------------------------------------------------------------


def test_create_record_and_query_through_the_proxy(peer: AtprotoPeer, proxy: ProxyServer,
                                                   alice: dict[str, Any]) -> None:
    did = alice["did"]
    token = write_token(proxy, did, alice["team"])
    created = post(proxy, token, "com.atproto.repo.createRecord", hello(did, "through the proxy"))
    assert created.status_code == 200, created.text
    assert created.headers["Content-Type"].startswith("application/json")
    assert "DPoP-Nonce" not in created.headers and "WWW-Authenticate" not in created.headers
    rkey = created.json()["uri"].rsplit("/", 1)[1]
    assert peer.get_record(did, "app.bsky.feed.post", rkey)["value"]["text"] == "through the proxy"
    # A query is `read`: the articles' policy does not grant it.
    query = requests.get(f"{proxy.url}/xrpc/com.atproto.repo.getRecord",
                         params={"repo": did, "collection": "app.bsky.feed.post", "rkey": rkey},
                         headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert query.status_code == 403 and "/xrpc/com.atproto.repo.getRecord" in query.text


QUERIES = b"""
path "/xrpc/com.atproto.repo.describeRepo" {
  capabilities = ["read"]
}
path "/xrpc/com.atproto.repo.getRecord" {
  capabilities = ["read"]
  allowed_parameters = {
    "?" = { "repo" = "{actx}", "collection" = "app.bsky.feed.post", "rkey" = "*" }
  }
}
"""


def test_queries_with_a_policy_that_allows_them(peer: AtprotoPeer, proxy: ProxyServer,
                                               alice: dict[str, Any]) -> None:
    did, handle, token = new_writer(peer, proxy, "kim.test", "kim-password-1", QUERIES)
    response = requests.get(f"{proxy.url}/xrpc/com.atproto.repo.describeRepo", params={"repo": did},
                            headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["did"] == did and response.json()["handle"] == handle
    # The PDS's own errors come back as the PDS sent them.
    missing = requests.get(f"{proxy.url}/xrpc/com.atproto.repo.getRecord",
                           params={"repo": did, "collection": "app.bsky.feed.post", "rkey": "3zzzzzzzzzzzz"},
                           headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert missing.status_code == 400 and missing.json()["error"] == "RecordNotFound"
    # Queries of other repositories are pinnable by policy (docs/atproto.md): this one names only its own.
    other = requests.get(f"{proxy.url}/xrpc/com.atproto.repo.getRecord",
                         params={"repo": alice["did"], "collection": "app.bsky.feed.post", "rkey": "3zzzzzzzzzzzz"},
                         headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert other.status_code == 403 and "repo" in other.json()["message"], other.text


def test_a_token_for_one_did_never_writes_another_dids_repo(peer: AtprotoPeer, proxy: ProxyServer,
                                                            alice: dict[str, Any]) -> None:
    bob, _ = peer.create_account("bob.test", "bob-password-1")
    did = alice["did"]
    # Even a policy that pins nothing (create on every XRPC method) does not let it through.
    wide = new_team()
    install_rbac(proxy, did, {**did_rbac(wide), "policies/atproto-write.hcl": b'path "/xrpc/*" {\n'
                              b'  capabilities = ["create", "read"]\n}\n'}, api="ATProto")
    try:
        token = write_token(proxy, did, wide)
        before = len(peer.list_records(bob, "app.bsky.feed.post"))
        for nsid, body in [
            ("com.atproto.repo.createRecord", hello(bob)),
            ("com.atproto.repo.putRecord", {**hello(bob), "rkey": "3kabcdefghijk"}),
            ("com.atproto.repo.deleteRecord", {"repo": bob, "collection": "app.bsky.feed.post", "rkey": "x"}),
            ("com.atproto.repo.applyWrites", {"repo": bob, "writes": []}),
            ("com.atproto.repo.createRecord", {**hello(did), "repo": "bob.test"}),
        ]:
            refused = post(proxy, token, nsid, body)
            assert refused.status_code == 403, (nsid, refused.text)
            assert '"repo"' in refused.json()["message"] and did in refused.json()["message"]
        missing = post(proxy, token, "com.atproto.repo.createRecord", {"collection": "app.bsky.feed.post",
                                                                       "record": hello(did)["record"]})
        assert missing.status_code == 400 and "repo" in missing.json()["message"]
        assert len(peer.list_records(bob, "app.bsky.feed.post")) == before
        assert audit_count(proxy, "xrpc", "deny", did) >= 5
    finally:
        install_rbac(proxy, did, did_rbac(alice["team"]), api="ATProto")


def test_tokens_that_are_not_for_this_did_are_refused(peer: AtprotoPeer, proxy: ProxyServer,
                                                      alice: dict[str, Any]) -> None:
    did, team = alice["did"], alice["team"]
    # A DigitalOcean-context token.
    do_token = mint(proxy, f"api://DigitalOcean?actx={team}", f"actx:{team}:role:atproto-write", kind="exchanged")
    refused = post(proxy, do_token, "com.atproto.repo.createRecord", hello(did))
    assert refused.status_code == 403 and "api://ATProto?actx=" in refused.json()["message"]
    # Another team than the role names.
    other = write_token(proxy, did, new_team())
    assert post(proxy, other, "com.atproto.repo.createRecord", hello(did)).status_code == 403
    # No token, a garbage token.
    assert requests.post(f"{proxy.url}/xrpc/com.atproto.repo.createRecord", json=hello(did),
                         timeout=10).status_code == 401
    assert post(proxy, "eyJhbGciOiJub25lIn0.e30.", "com.atproto.repo.createRecord", hello(did)).status_code == 401
    # A DID that never signed in: the policy allows, but there is no session to use.
    nobody, _ = peer.create_account("liam.test", "liam-password-1")
    install_rbac(proxy, nobody, did_rbac(team), api="ATProto")
    unconnected = post(proxy, write_token(proxy, nobody, team), "com.atproto.repo.createRecord", hello(nobody))
    assert unconnected.status_code == 403
    assert unconnected.json()["id"] == "atproto_not_connected" and "/auth/atproto/" in unconnected.json()["message"]
    # Bad paths and methods.
    token = write_token(proxy, did, team)
    headers = {"Authorization": f"Bearer {token}"}
    assert requests.post(f"{proxy.url}/xrpc/not-an-nsid", json={}, headers=headers, timeout=10).status_code == 404
    assert requests.post(f"{proxy.url}/xrpc/com.atproto.repo.createRecord/x", json={}, headers=headers,
                         timeout=10).status_code == 404
    assert requests.put(f"{proxy.url}/xrpc/com.atproto.repo.createRecord", json={}, headers=headers,
                        timeout=10).status_code == 405
    assert requests.post(f"{proxy.url}/xrpc/com.atproto.repo.createRecord", data=b'{"repo": 1, "repo": 2}',
                         headers={**headers, "Content-Type": "application/json"}, timeout=10).status_code == 400


# -- sign-in attacks and faults -----------------------------------------------------------------------------------


def test_forged_replayed_and_foreign_state_are_refused(peer: AtprotoPeer, proxy: ProxyServer) -> None:
    did, handle = peer.create_account("mia.test", "mia-password-1")
    browser = Browser(proxy)
    redirect = approve_authorization(browser.authorize_url(handle), handle, "mia-password-1")
    params = redirect_params(redirect)
    # Forged: a state this proxy never issued.
    forged = browser.callback(redirect.replace(params["state"], "forged-" + params["state"][7:]))
    assert forged.status_code == 400 and forged.json()["id"] == "invalid_state"
    # Another browser (no cookie, or the cookie of another sign-in) presenting the real state.
    stranger = Browser(proxy)
    stranger.authorize_url(handle)  # has a cookie of its own
    refused = stranger.callback(redirect)
    assert refused.status_code == 400 and "different browser" in refused.json()["message"]
    assert credential(proxy, did) is None  # nothing stored, and that state is spent now
    again = browser.callback(redirect)
    assert again.status_code == 400 and "already used" in again.json()["message"]
    # A successful callback cannot be replayed either.
    browser = Browser(proxy)
    redirect = approve_authorization(browser.authorize_url(handle), handle, "mia-password-1")
    assert browser.callback(redirect).status_code == 200
    replayed = browser.callback(redirect, accept="text/html")
    assert replayed.status_code == 400 and "already used" in replayed.text and "<html" in replayed.text


def test_callback_from_another_issuer_is_refused(peer: AtprotoPeer, proxy: ProxyServer) -> None:
    did, handle = peer.create_account("noah.test", "noah-password-1")
    browser = Browser(proxy)
    redirect = approve_authorization(browser.authorize_url(handle), handle, "noah-password-1")
    params = redirect_params(redirect)
    assert params["iss"] == peer.pds_url
    parts = urlsplit(redirect)
    evil = urlunsplit(parts._replace(query=parts.query.replace(
        "iss=" + requests.utils.quote(params["iss"], safe=""), "iss=https%3A%2F%2Fevil.example.com")))
    assert evil != redirect
    response = browser.callback(evil)
    assert response.status_code == 400 and response.json()["id"] == "invalid_issuer", response.text
    assert credential(proxy, did) is None


def test_tokens_for_another_account_are_refused(peer: AtprotoPeer, proxy: ProxyServer) -> None:
    wanted, wanted_handle = peer.create_account("olga.test", "olga-password-1")
    other, other_handle = peer.create_account("pete.test", "pete-password-1")
    browser = Browser(proxy)
    # The sign-in is for olga; at the PDS the user signs in as pete.
    redirect = approve_authorization(browser.authorize_url(wanted_handle), other_handle, "pete-password-1")
    response = browser.callback(redirect)
    assert response.status_code == 403, response.text
    assert response.json()["id"] == "wrong_account" and other in response.json()["message"]
    assert credential(proxy, wanted) is None and credential(proxy, other) is None


def test_denied_authorization_stores_nothing(peer: AtprotoPeer, proxy: ProxyServer) -> None:
    did, handle = peer.create_account("quinn.test", "quinn-password-1")
    browser = Browser(proxy)
    redirect = reject_authorization(browser.authorize_url(handle), handle, "quinn-password-1")
    response = browser.callback(redirect, accept="text/html")
    assert response.status_code == 403 and "Authorization was not granted" in response.text
    assert credential(proxy, did) is None


@pytest.mark.parametrize("identifier,status,error_id", [
    ("nobody-here.test", 400, "handle_unresolved"),
    ("not a handle!", 400, "bad_identifier"),
    ("did:plc:notbase32!", 400, "bad_identifier"),
    ("alice.local", 400, "bad_identifier"),
    ("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", 502, "did_unresolved"),
])
def test_identifiers_that_do_not_resolve(proxy: ProxyServer, identifier: str, status: int, error_id: str) -> None:
    response = Browser(proxy).start(identifier, accept="application/json")
    assert response.status_code == status, response.text
    assert response.json()["id"] == error_id
    if error_id == "handle_unresolved":
        assert "resolveHandle" in response.json()["message"] and "DNS TXT" in response.json()["message"]


@pytest.mark.parametrize("mode,status,words", [
    ("5xx", 502, "HTTP 503"),
    ("slow", 504, f"within {ATPROTO_TIMEOUT} s"),
    ("huge", 502, "bytes"),
])
def test_sign_in_with_a_misbehaving_pds(peer: AtprotoPeer, proxy: ProxyServer, flaky: FlakyPds, mode: str,
                                        status: int, words: str) -> None:
    handle = f"sign{mode.replace('5', 'five')}.test"
    did, _ = peer.create_account(handle, "flaky-password-1")
    peer.set_pds_endpoint(did, flaky.url)
    flaky.mode = mode
    try:
        started = time.monotonic()
        response = Browser(proxy).start(handle, accept="application/json")
        assert response.status_code == status, response.text
        assert words in response.json()["message"]
        assert time.monotonic() - started < ATPROTO_TIMEOUT + 2.5
    finally:
        flaky.mode = "pass"
    assert credential(proxy, did) is None


# -- a session that goes wrong after sign-in --------------------------------------------------------------------


@pytest.mark.parametrize("mode,status,words", [
    ("5xx", 502, "HTTP 503 to com.atproto.repo.createRecord (Unavailable: down for maintenance)"),
    ("slow", 504, f"within {ATPROTO_TIMEOUT} s"),
    ("drip", 504, f"within {ATPROTO_TIMEOUT} s"),
    ("huge", 502, f"{MAX_RESPONSE} bytes"),
])
def test_xrpc_with_a_misbehaving_pds_leaves_the_session(peer: AtprotoPeer, proxy: ProxyServer, flaky: FlakyPds,
                                                        mode: str, status: int, words: str) -> None:
    handle = f"xrpc{mode.replace('5', 'five')}.test"
    did, _ = peer.create_account(handle, "flaky-password-1")
    peer.set_pds_endpoint(did, flaky.url)
    flaky.mode = "pass"
    signed = sign_in(proxy, handle, "flaky-password-1")  # the DID document names the stand-in as its PDS
    assert signed["pds"] == flaky.url
    team = new_team()
    install_rbac(proxy, did, did_rbac(team), api="ATProto")
    before = credential(proxy, did)
    flaky.mode = mode
    try:
        response = post(proxy, write_token(proxy, did, team), "com.atproto.repo.createRecord", hello(did))
    finally:
        flaky.mode = "pass"
    assert response.status_code == status, response.text
    assert words in response.json()["message"]
    after = credential(proxy, did)
    assert after.status == "active" and after.data == before.data


def edit_session(proxy: ProxyServer, did: str, **changes: Any) -> None:
    from wid.store import credentials

    with configured(proxy), credentials.locked("ATProto", did) as (tx, cred):
        assert cred is not None
        credentials.put(tx, "ATProto", did, {**cred.data, **changes})


@pytest.mark.parametrize("mode,status,words", [
    ("5xx", 502, "answered HTTP 503 at its token endpoint"),
    ("slow", 504, f"within {ATPROTO_TIMEOUT} s"),
    ("huge", 502, "bytes"),
])
def test_refresh_with_a_misbehaving_authorization_server(peer: AtprotoPeer, proxy: ProxyServer, flaky: FlakyPds,
                                                         mode: str, status: int, words: str) -> None:
    handle = f"as{mode.replace('5', 'five')}.test"
    did, _, token = new_writer(peer, proxy, handle, "as-password-1")
    real = credential(proxy, did).data
    # The authorization server's token endpoint now misbehaves (the stand-in plays it).
    edit_session(proxy, did, token_endpoint=f"{flaky.url}/oauth/token", expires_at=int(time.time()) - 5)
    flaky.mode = mode
    try:
        expired = post(proxy, token, "com.atproto.repo.createRecord", hello(did))
        assert expired.status_code == status, expired.text
        assert words in expired.json()["message"]
        stored = credential(proxy, did)
        assert stored.status == "active" and stored.data["refresh_token"] == real["refresh_token"]
        if mode == "5xx":
            # With time left on the access token, a failed refresh falls back to it.
            edit_session(proxy, did, expires_at=int(time.time()) + 120)
            assert post(proxy, token, "com.atproto.repo.createRecord", hello(did)).status_code == 200
    finally:
        flaky.mode = "pass"
    edit_session(proxy, did, token_endpoint=real["token_endpoint"], expires_at=int(time.time()) - 5)
    assert post(proxy, token, "com.atproto.repo.createRecord", hello(did)).status_code == 200
    assert credential(proxy, did).data["refresh_token"] != real["refresh_token"]


def test_a_dids_pds_that_changed_since_sign_in(peer: AtprotoPeer, proxy: ProxyServer) -> None:
    did, _, token = new_writer(peer, proxy, "rosa.test", "rosa-password-1")
    assert post(proxy, token, "com.atproto.repo.createRecord", hello(did)).status_code == 200
    peer.set_pds_endpoint(did, "http://localhost:9")
    forget_did(proxy, did)
    try:
        moved = post(proxy, token, "com.atproto.repo.createRecord", hello(did))
        assert moved.status_code == 502, moved.text
        assert moved.json()["id"] == "atproto_pds_changed"
        assert "http://localhost:9" in moved.json()["message"] and "sign in again" in moved.json()["message"]
        assert credential(proxy, did).status == "active"
        # A refresh is not attempted against a PDS the DID no longer names either.
        expire_access_token(proxy, did)
        assert post(proxy, token, "com.atproto.repo.createRecord", hello(did)).status_code == 502
    finally:
        peer.set_pds_endpoint(did, peer.pds_url)
        forget_did(proxy, did)
    assert post(proxy, token, "com.atproto.repo.createRecord", hello(did)).status_code == 200


@pytest.fixture(scope="module")
def pg_proxy(peer: AtprotoPeer, postgres: PostgresServer, proxy: ProxyServer,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyServer]:
    """A second proxy, on PostgreSQL (its own client_id: the PDS caches client metadata per URL)."""
    origin = "https://wid-pg.fixture.internal"
    with ProxyServer(tmp_path_factory.mktemp("atproto-pg") / "data", {
            **{name: proxy.env[name] for name in ATPROTO_ENV}, "THIS_ENDPOINT": origin,
            "DATABASE_URI": postgres.fresh_database(), "WID_ALLOW_INSECURE_ISSUERS": "1"}) as server:
        peer.route(origin, server.url)
        yield server


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_racing_refreshes_rotate_the_refresh_token_once(peer: AtprotoPeer, request: pytest.FixtureRequest,
                                                        backend: str) -> None:
    proxy: ProxyServer = request.getfixturevalue("proxy" if backend == "sqlite" else "pg_proxy")
    did, _, token = new_writer(peer, proxy, f"sam{backend[:2]}.test", "sam-password-1")
    first = credential(proxy, did).data
    expire_access_token(proxy, did)
    with ThreadPoolExecutor(max_workers=6) as pool:
        responses = list(pool.map(lambda i: post(proxy, token, "com.atproto.repo.createRecord",
                                                 hello(did, f"race {i}")), range(6)))
    assert [r.status_code for r in responses] == [200] * 6, [r.text for r in responses]
    after = credential(proxy, did).data
    assert after["refresh_token"] != first["refresh_token"] and after["access_token"] != first["access_token"]
    assert audit_count(proxy, "oauth_refresh", "allow", did) == 1
    # The session is still good (a reused refresh token would have revoked it at the PDS).
    expire_access_token(proxy, did)
    assert post(proxy, token, "com.atproto.repo.createRecord", hello(did, "after the race")).status_code == 200
    assert audit_count(proxy, "oauth_refresh", "allow", did) == 2
    assert len(peer.list_records(did, "app.bsky.feed.post")) == 7


def test_a_session_the_pds_revoked(peer: AtprotoPeer, proxy: ProxyServer) -> None:
    from wid.upstreams.atproto.dpop_http import Nonces
    from wid.upstreams.atproto.token_endpoint import token_request
    from wid.upstreams.oauth_client import TokenEndpointError

    did, handle, token = new_writer(peer, proxy, "tara.test", "tara-password-1")
    spent = credential(proxy, did).data
    expire_access_token(proxy, did)
    assert post(proxy, token, "com.atproto.repo.createRecord", hello(did)).status_code == 200  # refreshed
    # Someone presents the spent refresh token: the authorization server revokes the whole session.
    with configured(proxy), pytest.raises(TokenEndpointError):
        token_request(spent, {"grant_type": "refresh_token", "refresh_token": spent["refresh_token"]},
                      nonces=Nonces())
    expire_access_token(proxy, did)
    response = post(proxy, token, "com.atproto.repo.createRecord", hello(did))
    assert response.status_code == 502, response.text
    assert response.json()["id"] == "atproto_session_revoked"
    assert "sign in again" in response.json()["message"] and "/auth/atproto/" in response.json()["message"]
    stored = credential(proxy, did)
    assert stored.status == "revoked" and "access_token" not in stored.data and "refresh_token" not in stored.data
    again = post(proxy, token, "com.atproto.repo.createRecord", hello(did))
    assert again.status_code == 502 and again.json()["id"] == "atproto_session_revoked"
    # Signing in again restores it.
    sign_in(proxy, handle, "tara-password-1")
    assert credential(proxy, did).status == "active"
    assert post(proxy, token, "com.atproto.repo.createRecord", hello(did)).status_code == 200


# -- wid atproto tail --------------------------------------------------------------------------------------------


def test_tail_prints_new_records_as_ndjson(peer: AtprotoPeer, proxy: ProxyServer, alice: dict[str, Any]) -> None:
    did = alice["did"]
    env = {**proxy.env, "PYTHONUNBUFFERED": "1"}
    tail = subprocess.Popen([sys.executable, "-m", "wid.upstreams.atproto.tail", did, "--limit", "1",
                             "--collection", "app.bsky.feed.post"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert tail.stderr is not None and tail.stdout is not None
        line = tail.stderr.readline()
        assert "following" in line and "subscribeRepos" in line, line
        created = post(proxy, write_token(proxy, did, alice["team"]), "com.atproto.repo.createRecord",
                       hello(did, "seen on the stream"))
        assert created.status_code == 200, created.text
        out, err = tail.communicate(timeout=30)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait()
    assert tail.returncode == 0, err
    event = json.loads(out.splitlines()[0])
    assert event["did"] == did and event["action"] == "create" and event["collection"] == "app.bsky.feed.post"
    assert event["uri"] == created.json()["uri"] and event["cid"] == created.json()["cid"]
    assert event["record"]["text"] == "seen on the stream" and event["record"]["$type"] == "app.bsky.feed.post"

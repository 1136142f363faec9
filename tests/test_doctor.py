"""`wid doctor` against a running proxy: every check passes on a healthy server; an address that answers
with another key set, a second process answering on it, a team not connected, a stored configuration a
push would now refuse and bad settings are each found, named, with the fix."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from dulwich.objects import Blob, Commit, Tree

from devkit.proxy import ProxyServer
from devkit.standins.digitalocean import DigitalOceanStandIn
from devkit.standins.github_oidc import GitHubOIDCStandIn

TEAM = "6a7e1f42-3c2d-4e7b-9f10-2b3c4d5e6f70"


@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory, do_api: DigitalOceanStandIn,
            github_oidc: GitHubOIDCStandIn) -> Iterator[ProxyServer]:
    with ProxyServer(tmp_path_factory.mktemp("doctor") / "data", {
            "DIGITALOCEAN_API_URL": do_api.url, "DIGITALOCEAN_OAUTH_URL": do_api.url,
            "DIGITALOCEAN_OAUTH_CLIENT_ID": "doctor-client", "DIGITALOCEAN_OAUTH_CLIENT_SECRET": "doctor-secret",
            "WID_TRUSTED_ISSUERS": github_oidc.issuer, "WID_ALLOW_INSECURE_ISSUERS": "1",
        }) as server:
        yield server


def doctor(server: ProxyServer, **env: str) -> tuple[int, list[dict[str, Any]]]:
    saved = dict(server.env)
    server.env.update(env)
    try:
        done = server.wid("doctor", "--json", check=False)
    finally:
        server.env.clear()
        server.env.update(saved)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, [json.loads(line) for line in done.stdout.splitlines()]


def by_name(results: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [r for r in results if r["name"] == name]


def test_a_healthy_server_passes(healthy: ProxyServer) -> None:
    code, results = doctor(healthy)
    assert code == 0, results
    statuses = {r["name"]: r["status"] for r in results}
    for name in ("settings", "database", "jwks-file", "jwks-served", "oauth-client", "clock", "issuer"):
        assert statuses[name] == "ok", (name, results)
    assert statuses["teams"] == "warn"  # none connected yet: said, with how to connect one
    text = healthy.wid("doctor").stdout
    assert "ok    jwks-served" in text and "fix: an admin signs in at" in text


class _Alternating(BaseHTTPRequestHandler):
    """What a second instance on the same address looks like: every other answer is another key set."""

    sets: list[bytes] = []
    count = 0

    def do_GET(self) -> None:
        type(self).count += 1
        body = self.sets[self.count % len(self.sets)]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        return


def test_an_address_that_answers_with_other_keys_is_found(healthy: ProxyServer, tmp_path: Path) -> None:
    import requests

    ours = requests.get(f"{healthy.url}/.well-known/jwks", timeout=5).content
    _Alternating.sets = [ours, json.dumps({"keys": [{"kty": "RSA", "kid": "stale-replica", "n": "AQAB",
                                                      "e": "AQAB"}]}).encode()]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Alternating)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        code, results = doctor(healthy, THIS_ENDPOINT=f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
    [served] = by_name(results, "jwks-served")
    assert code == 1 and served["status"] == "FAIL"
    assert "2 different key sets" in served["detail"] and "a second instance on PORT" in served["fix"]


def test_another_server_behind_this_endpoint_is_found(healthy: ProxyServer, proxy: ProxyServer) -> None:
    code, results = doctor(healthy, THIS_ENDPOINT=proxy.url)
    [served] = by_name(results, "jwks-served")
    assert code == 1 and served["status"] == "FAIL" and "lacks" in served["detail"]


def test_bad_settings_stop_at_the_first_check(healthy: ProxyServer) -> None:
    code, results = doctor(healthy, WID_MAX_BODY_BYTES="lots")
    assert code == 1 and [r["name"] for r in results] == ["settings"]
    assert "WID_MAX_BODY_BYTES" in results[0]["detail"]


def test_a_revoked_team_and_a_configuration_a_push_would_refuse(healthy: ProxyServer) -> None:
    from wid.core.rbac.compiler import compile_tree
    from wid.store import credentials, rbac_repo, storage
    from wid.store.rbac_repo import ZERO, DbObjectStore, Limits, Pusher, RepoId

    role = (b'role "prod" {\n  iss = "https://token.actions.githubusercontent.com"\n'
            b'  aud = "api://DigitalOcean?actx={actx}"\n  sub = "environment:prod"\n  policies = ["p"]\n}\n')
    policy = b'path "/v2/droplets" {\n  capabilities = ["read"]\n}\n'
    repo = RepoId("DigitalOcean", TEAM)
    objects: list[Any] = []
    root = Tree()
    for folder, name, data in (("gha-roles", "prod.hcl", role), ("policies", "p.hcl", policy)):
        blob, tree = Blob.from_string(data), Tree()
        tree.add(name.encode(), 0o100644, blob.id)
        root.add(folder.encode(), 0o040000, tree.id)
        objects += [blob, tree]
    commit = Commit()
    commit.tree, commit.parents = root.id, []
    commit.author = commit.committer = b"T <t@example.com>"
    commit.author_time = commit.commit_time = 1700000000
    commit.author_timezone = commit.commit_timezone = 0
    commit.message = b"stored before the owner rule"
    objects += [root, commit]
    with healthy.configured():
        store = DbObjectStore(repo)
        for obj in objects:
            store.add_object(obj)
        # As a server before the owner rule compiled it: the role alone, nothing refused.
        compiled = compile_tree({"gha-roles/prod.hcl": role.replace(b"  policies", b"  accept_tokens_of_any_owner = "
                                                                    b"true\n  policies"), "policies/p.hcl": policy},
                                api=repo.api, actx=repo.actx, issuer=healthy.url,
                                trusted_issuers=["https://token.actions.githubusercontent.com"])
        pushed = rbac_repo.apply_push(repo, old=ZERO, new=commit.id.decode(),
                                      objects=rbac_repo.closure(store, commit.id), compiled=compiled,
                                      pusher=Pusher("jwt", sub=f"actx:{TEAM}:admin", iss=healthy.url, jti="j"),
                                      limits=Limits(push_bytes=1 << 20, repo_bytes=1 << 20, object_bytes=1 << 20),
                                      summary={})
        assert pushed.accepted
        with storage.database().transaction() as tx:
            credentials.put(tx, "DigitalOcean", TEAM, {"access_token": "x", "team_name": "Doctor Team"},
                            status=credentials.REVOKED, reason="the refresh token was refused")
    code, results = doctor(healthy, WID_TRUSTED_ISSUERS="https://token.actions.githubusercontent.com")
    [rbac] = [r for r in by_name(results, "rbac") if TEAM in r["detail"]]
    assert rbac["status"] == "warn" and "next push would be refused" in rbac["detail"]
    assert "does not fix whose tokens it accepts" in rbac["detail"]
    [team] = [r for r in by_name(results, "team") if TEAM in r["detail"]]
    assert team["status"] == "FAIL" and "revoked" in team["detail"] and "authorizes again" in team["fix"]
    assert code == 1

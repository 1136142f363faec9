"""RBAC repos over git smart HTTP, end to end: the real git client, the proxy under Caddy + fcgiwrap,
the DigitalOcean stand-in, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from devkit.git_helpers import (
    ARTICLE_FIRST_PUSH,
    ARTICLE_GHA_PUSH,
    GitUser,
    article_files,
    demux,
    ls_remote,
    pkt,
)
from devkit.proxy import ProxyServer
from devkit.standins.digitalocean import READ_ONLY, DigitalOceanStandIn

MiB = 1024 * 1024
GITHUB = "https://token.actions.githubusercontent.com"
ZERO = "0" * 40
GIT_UA = {"User-Agent": "git/2.39.5"}

# The articles' commands, verbatim (series part 2: "Finally, we commit and push the configuration").
ARTICLE_PUSH = r"""
git init
git config --global credential."${THIS_ENDPOINT}".helper \
  '!'"${HOME}/.local/scripts/git-credential-rbac-digitalocean.sh"
git branch -M main
git add .
git commit -sm "feat: configure access from droplet"
git remote add deploy "${THIS_ENDPOINT}"
git push -u deploy main

# View deployed config
git fetch --all && git show deploy/schema:rbac.json | jq
"""
ARTICLE_GHA = r"""
git add .
git commit -sm "feat: configure access from gha"
git push
"""

BROKEN_POLICY = 'path "/v2/droplets" {\n  capabilities = ["raed"]\n}\n'
UNTRUSTED_ROLE = """role "evil" {
  iss      = "https://issuer.evil.example"
  aud      = "api://DigitalOcean?actx={actx}"
  sub      = "repo:evil/repo:ref:refs/heads/main"
  policies = ["spaces-keys"]
}
"""
GIT_ADMIN_ROLE = """role "rbac-admin" {
  aud      = "api://DigitalOcean?actx={actx}"
  sub      = "actx:{actx}:role:rbac-admin"
  policies = ["rbac-admin"]
}
"""
GIT_ADMIN_POLICY = """path "/_rbac/DigitalOcean/{actx}" {
  # Clone and fetch (read) and push (create) this context's RBAC repo.
  capabilities = ["read", "create"]
}
"""


@dataclass
class GitServer:
    proxy: ProxyServer
    do: DigitalOceanStandIn
    backend: str

    @property
    def url(self) -> str:
        return self.proxy.url


@dataclass
class Team:
    uuid: str
    token: str
    email: str


@pytest.fixture(scope="module")
def do_api() -> Iterator[DigitalOceanStandIn]:
    with DigitalOceanStandIn() as do:
        yield do


def start_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                 do_api: DigitalOceanStandIn, mode: str | None = None) -> GitServer:
    base = tmp_path_factory.mktemp(f"git-{request.param}")
    env = {"DIGITALOCEAN_API_URL": do_api.url, "WID_GIT_MAX_PUSH_BYTES": str(3 * MiB)}
    if request.param == "postgresql":
        env["DATABASE_URI"] = request.getfixturevalue("postgres").fresh_database()
    proxy = ProxyServer(base / "data", env, mode)
    proxy.env.pop("WID_TRUSTED_ISSUERS", None)  # the default allowlist: GitHub Actions only
    proxy.start()
    return GitServer(proxy, do_api, str(request.param))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
           do_api: DigitalOceanStandIn) -> Iterator[GitServer]:
    server = start_server(request, tmp_path_factory, do_api)
    yield server
    server.proxy.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def cgi_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
               do_api: DigitalOceanStandIn) -> Iterator[GitServer]:
    """In CGI mode whatever WID_TEST_MODE says: the test replaces the git CGI script to hold a push at its
    commit point (ProxyServer.cgi_replaced). The commit is the same code in persistent mode, where a worker
    killed in the middle of a request is tests/test_persistent_mode.py's."""
    server = start_server(request, tmp_path_factory, do_api, "cgi")
    yield server
    server.proxy.stop()


def new_team(server: GitServer, **token_args: Any) -> Team:
    team = server.do.add_team(f"Team {uuid.uuid4().hex[:8]}")
    return Team(team.uuid, server.do.add_token(team.uuid, **token_args), team.user_email)


@pytest.fixture
def team(server: GitServer) -> Team:
    return new_team(server)


@pytest.fixture
def admin(tmp_path: Path, server: GitServer, team: Team) -> GitUser:
    return GitUser(tmp_path / "admin", server.url, team.token)


def state(server: GitServer, actx: str) -> dict[str, Any]:
    """What the server holds for a DigitalOcean team's repo, read from its database."""
    with server.proxy.configured():
        from wid.store import audit_queries, storage
        from wid.store.rbac_repo import RepoId, read_refs

        refs = read_refs(RepoId("DigitalOcean", actx))
        with storage.database().transaction(write=False) as tx:
            row = tx.one("SELECT version, main_commit, compiled FROM rbac_configs WHERE api = ? AND actx = ?",
                         ("DigitalOcean", actx))
            objects = tx.execute("SELECT sha FROM rbac_repo_objects WHERE api = ? AND actx = ?",
                                 ("DigitalOcean", actx))
        pushes = audit_queries.entries(actx=actx, event="rbac_push", limit=1000)
    return {
        "refs": refs,
        "version": row[0] if row else None,
        "main_commit": row[1] if row else None,
        "compiled": json.loads(row[2]) if row else None,
        "objects": {r[0] for r in objects},
        "allowed": [p for p in pushes if p.decision == "allow"],
        "denied": [p for p in pushes if p.decision == "deny"],
    }


def compile_locally(server: GitServer, actx: str, files: dict[str, str]) -> dict[str, Any]:
    from wid.core.rbac.compiler import compile_tree

    return compile_tree({k: v.encode() for k, v in files.items()}, api="DigitalOcean", actx=actx,
                        issuer=server.url, trusted_issuers=[GITHUB])


def head(user: GitUser, repo: Path, rev: str = "HEAD") -> str:
    return user.git("rev-parse", rev, cwd=repo).stdout.strip()


def push_initial(admin: GitUser, files: dict[str, str] | None = None) -> tuple[Path, str]:
    repo = admin.new_repo("rbac", files or article_files(ARTICLE_FIRST_PUSH))
    admin.git("push", "-u", "deploy", "main", cwd=repo)
    return repo, head(admin, repo)


# -- the articles' sequence ----------------------------------------------------------------------------


def test_article_sequence_verbatim(server: GitServer, team: Team, admin: GitUser) -> None:
    files = article_files(ARTICLE_FIRST_PUSH)
    repo = admin.home / "rbac"
    repo.mkdir()
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)

    run = admin.shell(ARTICLE_PUSH, cwd=repo)

    main = head(admin, repo)
    # `git show deploy/schema:rbac.json | jq` printed the compiled configuration (after git init's and commit's lines).
    shown = json.loads(run.stdout[run.stdout.index("\n{\n") + 1:])
    assert shown == compile_locally(server, team.uuid, files)
    assert set(shown["roles"]) == {"ex-database-and-spaces-keys-access", "database-and-spaces-keys-access"}
    assert shown["roles"]["database-and-spaces-keys-access"]["sub"] == \
        f"actx:{team.uuid}:role:database-and-spaces-keys-access"  # {actx} is the pushing token's team
    assert "remote: wid: main is now" in run.stderr
    assert "-> deploy/schema" in run.stderr
    message = admin.git("log", "-1", "--format=%B", "deploy/schema", cwd=repo).stdout
    assert message.startswith(f"rbac.json compiled from main {main}")

    first = state(server, team.uuid)
    assert first["refs"] == {"refs/heads/main": main, "refs/heads/schema": head(admin, repo, "deploy/schema")}
    assert first["main_commit"] == main and first["compiled"] == shown
    [pushed] = first["allowed"]
    assert pushed.detail["new"] == main and pushed.detail["old"] == ZERO
    assert pushed.sub == f"digitalocean:{team.email}" and pushed.detail["auth"] == "digitalocean_token"
    assert "token" not in json.dumps(pushed.detail).replace("token_sha256", "").replace("digitalocean_token", "")

    # The GitHub Actions part: add the role and policy, commit, `git push`. The compiled configuration
    # used for authorization changes with it, and the request-time cache notices at once.
    with server.proxy.configured():
        from wid.store import rbac as rbac_store

        before = rbac_store.compiled("DigitalOcean", team.uuid)
        assert before is not None and GITHUB not in before.issuers()
        for name, text in article_files(ARTICLE_GHA_PUSH).items():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            (repo / name).write_text(text)
        admin.shell(ARTICLE_GHA, cwd=repo)
        after = rbac_store.compiled("DigitalOcean", team.uuid)
        assert after is not None and GITHUB in after.issuers()
    second = head(admin, repo)
    admin.git("fetch", "--all", cwd=repo)
    schema_log = admin.git("log", "--format=%H %P|%s", "deploy/schema", cwd=repo).stdout.splitlines()
    assert [line.split("|")[1] for line in schema_log] == [f"rbac.json compiled from main {second}",
                                                            f"rbac.json compiled from main {main}"]
    # schema is one history with a commit per push
    assert schema_log[0].split("|")[0].split()[1] == schema_log[1].split()[0]
    now = state(server, team.uuid)
    assert now["main_commit"] == second and now["version"] == first["version"] + 1
    assert "ex-gha-readwrite" in now["compiled"]["roles"]
    assert [p.detail["new"] for p in now["allowed"]] == [main, second]

    # Another clone (the same team's token) gets the same history, at / and at /_rbac/DigitalOcean/{team}.
    other = GitUser(admin.home.parent / "colleague", server.url, team.token)
    other.git("clone", "-q", server.url, "copy", cwd=other.home)
    assert head(other, other.home / "copy") == second
    assert (other.home / "copy" / "gha-roles" / "ex-gha-readwrite.hcl").read_text() == \
        (repo / "gha-roles" / "ex-gha-readwrite.hcl").read_text()
    explicit = f"{server.url}/_rbac/DigitalOcean/{team.uuid}"
    other.git("config", "--global", f"credential.{explicit}.helper", f"!{other.helper}", cwd=other.home)
    assert ls_remote(other, explicit, other.home) == ls_remote(other, server.url, other.home)
    assert ls_remote(other, explicit + "/", other.home) == ls_remote(other, server.url + "/", other.home)


# -- refused pushes ------------------------------------------------------------------------------------


def test_broken_configuration_is_rejected_with_readable_errors(server: GitServer, team: Team, admin: GitUser) -> None:
    repo, main = push_initial(admin)
    before = state(server, team.uuid)

    admin.commit(repo, {"policies/x.hcl": BROKEN_POLICY}, "typo")
    pushed = admin.git("push", "deploy", "main", cwd=repo, check=False)
    assert pushed.returncode != 0
    assert "remote: policies/x.hcl:2: unknown capability 'raed'" in pushed.stderr
    assert "remote: wid: main was not updated: the configuration has 1 error(s):" in pushed.stderr
    assert "! [remote rejected] main -> main (configuration rejected: 1 error(s), shown above)" in pushed.stderr

    # A role naming an issuer that is not on WID_TRUSTED_ISSUERS is refused the same way.
    admin.commit(repo, {"policies/x.hcl": 'path "/v2/droplets" {\n  capabilities = ["read"]\n}\n',
                        "gha-roles/evil.hcl": UNTRUSTED_ROLE}, "untrusted issuer")
    pushed = admin.git("push", "deploy", "main", cwd=repo, check=False)
    assert pushed.returncode != 0
    assert "remote: gha-roles/evil.hcl:2: issuer 'https://issuer.evil.example' is not trusted" in pushed.stderr

    after = state(server, team.uuid)
    assert after["refs"] == before["refs"] and after["main_commit"] == main
    assert after["version"] == before["version"] and after["objects"] == before["objects"]
    reasons = [d.detail["reason"] for d in after["denied"]]
    assert reasons == ["configuration rejected: 1 error(s), shown above"] * 2
    assert after["denied"][0].detail["errors"][0].startswith("policies/x.hcl:2: unknown capability")

    # Fixed, the same branch goes through; files outside the role and policy folders are ignored with a warning.
    (repo / "gha-roles" / "evil.hcl").unlink()
    fixed = admin.commit(repo, {"README.md": "# RBAC\n"}, "fix")
    pushed = admin.git("push", "deploy", "main", cwd=repo)
    assert "remote: wid: warning: README.md: ignored" in pushed.stderr
    assert state(server, team.uuid)["main_commit"] == fixed


@pytest.mark.parametrize("server", ["sqlite"], indirect=True)  # backend-independent: SQLite only
def test_a_github_role_that_does_not_fix_the_owner_is_refused_at_push(server: GitServer, team: Team,
                                                                      admin: GitUser) -> None:
    repo, main = push_initial(admin)
    any_repo = ('role "prod-deploy" {\n  iss = "https://token.actions.githubusercontent.com"\n'
                '  aud = "api://DigitalOcean?actx={actx}"\n  sub = "environment:prod"\n'
                '  policies = ["ex-database-and-spaces-keys-access"]\n}\n')
    admin.commit(repo, {"gha-roles/prod.hcl": any_repo}, "deploy role bound to an environment only")
    pushed = admin.git("push", "deploy", "main", cwd=repo, check=False)
    assert pushed.returncode != 0
    assert ("remote: gha-roles/prod.hcl:1: role 'prod-deploy' trusts issuer https://token.actions.githubusercontent.com"
            " but does not fix whose tokens it accepts") in pushed.stderr
    assert state(server, team.uuid)["main_commit"] == main

    # Binding the owner's immutable id goes through; binding it by name only draws a warning.
    admin.commit(repo, {"gha-roles/prod.hcl": any_repo.replace("  policies", '  repository_owner = "org"\n  policies')},
                 "bind the owner by name")
    pushed = admin.git("push", "deploy", "main", cwd=repo)
    warning = "remote: wid: warning: gha-roles/prod.hcl:1: role 'prod-deploy' binds repository_owner by name"
    assert warning in pushed.stderr
    fixed = admin.commit(repo, {"gha-roles/prod.hcl": any_repo.replace(
        "  policies", '  repository_owner_id = "4242"\n  policies')}, "bind the owner id")
    pushed = admin.git("push", "deploy", "main", cwd=repo)
    assert "prod-deploy" not in pushed.stderr and state(server, team.uuid)["main_commit"] == fixed


@pytest.mark.parametrize("server", ["sqlite"], indirect=True)  # backend-independent: SQLite only
def test_policy_tests_in_the_repo_run_at_push(server: GitServer, team: Team, admin: GitUser) -> None:
    repo, main = push_initial(admin)
    test = ('test "the data role reads the database" {\n'
            '  token  = { sub = "actx:{actx}:role:database-and-spaces-keys-access" }\n'
            '  method = "GET"\n  path   = "/v2/databases/9cc10173-e9ea-4176-9dbc-a4cee4c4ff30"\n'
            '  expect = "EXPECT"\n}\n')
    admin.commit(repo, {"tests/data.hcl": test.replace("EXPECT", "deny")}, "a wrong expectation")
    pushed = admin.git("push", "deploy", "main", cwd=repo, check=False)
    assert pushed.returncode != 0
    assert "remote: 1 of 1 policy test(s) failed:" in pushed.stderr
    failure = "remote: tests/data.hcl:1: test 'the data role reads the database': expected deny, got allow"
    assert failure in pushed.stderr
    assert state(server, team.uuid)["main_commit"] == main
    fixed = admin.commit(repo, {"tests/data.hcl": test.replace("EXPECT", "allow")}, "right")
    pushed = admin.git("push", "deploy", "main", cwd=repo)
    assert "; 1 policy test passed" in pushed.stderr and "tests/data.hcl: ignored" not in pushed.stderr
    after = state(server, team.uuid)
    assert after["main_commit"] == fixed and after["allowed"][-1].detail["tests"] == 1


@pytest.mark.parametrize("server", ["sqlite"], indirect=True)  # backend-independent: SQLite only
def test_only_main_can_be_pushed_and_it_cannot_be_deleted(server: GitServer, team: Team, admin: GitUser) -> None:
    repo, main = push_initial(admin)
    refs = ls_remote(admin, server.url, repo)

    attempts = {
        ("push", "--force", "deploy", "main:schema"): "main -> schema (schema is written by the server",
        ("push", "deploy", "main:feature"): "main -> feature (only main can be pushed here, not refs/heads/feature)",
        ("push", "deploy", ":main"): "[remote rejected] main (deleting main is not allowed",
        ("push", "--force", "deploy", "main:refs/tags/v1"): "main -> v1 (only main can be pushed here",
    }
    for args, message in attempts.items():
        pushed = admin.git(*args, cwd=repo, check=False)
        assert pushed.returncode != 0, args
        assert message in pushed.stderr, (args, pushed.stderr)

    # --atomic: a refused ref takes main down with it.
    admin.commit(repo, {"README.md": "atomic\n"}, "atomic")
    pushed = admin.git("push", "--atomic", "deploy", "main", "main:other", cwd=repo, check=False)
    assert pushed.returncode != 0 and "atomic push failed" in pushed.stderr

    assert ls_remote(admin, server.url, repo) == refs
    assert state(server, team.uuid)["main_commit"] == main


def test_force_push_rewrites_main_and_appends_to_schema(server: GitServer, team: Team, admin: GitUser) -> None:
    repo, first = push_initial(admin)
    second = admin.commit(repo, {"policies/extra.hcl": 'path "/v2/extra" {\n  capabilities = ["read"]\n}\n'},
                          "second")
    admin.git("push", "deploy", "main", cwd=repo)

    admin.git("reset", "-q", "--hard", first, cwd=repo)
    rewritten = admin.commit(repo, {"README.md": "rewritten\n"}, "rewritten history")
    refused = admin.git("push", "deploy", "main", cwd=repo, check=False)
    assert refused.returncode != 0 and "[rejected]" in refused.stderr  # git itself refuses a non-fast-forward
    forced = admin.git("push", "-f", "deploy", "main", cwd=repo)
    assert "+ " in forced.stderr and "(forced update)" in forced.stderr

    now = state(server, team.uuid)
    assert now["refs"]["refs/heads/main"] == rewritten == now["main_commit"]
    assert "extra" not in now["compiled"]["policies"]
    assert [p.detail["new"] for p in now["allowed"]] == [first, second, rewritten]
    clone = GitUser(admin.home.parent / "fresh", server.url, team.token)
    clone.git("clone", "-q", server.url, "copy", cwd=clone.home)
    history = clone.git("log", "--format=%H", cwd=clone.home / "copy").stdout.split()
    assert history == [rewritten, first]
    clone.git("fetch", "-q", "origin", "schema", cwd=clone.home / "copy")
    assert clone.git("log", "--format=%s", "FETCH_HEAD", cwd=clone.home / "copy").stdout.split("\n")[0] == \
        f"rbac.json compiled from main {rewritten}"


# -- authentication and isolation ----------------------------------------------------------------------


def info_refs(server: GitServer, path: str, password: str | None, service: str = "git-upload-pack",
              headers: dict[str, str] | None = None) -> requests.Response:
    auth = ("token", password) if password is not None else None
    return requests.get(f"{server.url}{path}/info/refs", params={"service": service}, auth=auth,
                        headers=headers or GIT_UA, timeout=30)


def sign(server: GitServer, actx: str, sub_name: str, *, kind: str, lifetime: int = 300,
         issued: int | None = None) -> str:
    with server.proxy.configured():
        from wid.store import signing

        token, _ = signing.sign({"aud": f"api://DigitalOcean?actx={actx}", "sub": f"actx:{actx}:{sub_name}"},
                                kind=kind, lifetime=lifetime, now=issued)
    return token


@pytest.mark.parametrize("server", ["sqlite"], indirect=True)  # backend-independent: SQLite only
def test_credentials_and_isolation(server: GitServer, team: Team, admin: GitUser) -> None:
    repo, main = push_initial(admin)
    mine = f"/_rbac/DigitalOcean/{team.uuid}"

    # No credentials: 401 with a Basic challenge, so git asks its credential helper.
    for headers in (GIT_UA, {"User-Agent": "curl/8"}):
        anonymous = info_refs(server, "", None, headers=headers)
        assert anonymous.status_code == 401
        assert anonymous.headers["WWW-Authenticate"].startswith('Basic realm="')
    assert anonymous.json()["id"] == "unauthorized"  # JSON for other clients, text/plain for git
    assert info_refs(server, mine, None).headers["Content-Type"].startswith("text/plain")

    # Wrong password: DigitalOcean does not know the token.
    wrong = info_refs(server, "", "dop_v1_" + "0" * 64)
    assert wrong.status_code == 401 and "DigitalOcean rejected the token" in wrong.text
    admin.set_token("dop_v1_" + "1" * 64)
    pushed = admin.git("push", "deploy", "main", cwd=repo, check=False)
    assert pushed.returncode != 0
    assert "remote: DigitalOcean rejected the token" in pushed.stderr
    assert "Authentication failed" in pushed.stderr
    admin.set_token(team.token)

    # Another team's token: never this team's repo; at / it opens its own (empty) repo.
    other = new_team(server)
    refused = info_refs(server, mine, other.token)
    assert refused.status_code == 403 and "belongs to team" in refused.text
    assert info_refs(server, mine, other.token, "git-receive-pack").status_code == 403
    own = info_refs(server, "", other.token)
    assert own.status_code == 200 and main.encode() not in own.content
    stranger = GitUser(admin.home.parent / "stranger", server.url, other.token)
    cloned = stranger.git("clone", server.url, "empty", cwd=stranger.home)
    assert "cloned an empty repository" in cloned.stderr
    assert not (stranger.home / "empty" / "policies").exists()

    # A token that may not create Droplets can read its team's repo but not push.
    read_only = server.do.add_token(team.uuid, scopes=READ_ONLY)
    assert info_refs(server, mine, read_only).status_code == 200
    denied = info_refs(server, mine, read_only, "git-receive-pack")
    assert denied.status_code == 403 and "may not create Droplets" in denied.text
    admin.set_token(read_only)
    admin.commit(repo, {"README.md": "read only\n"}, "read only")
    pushed = admin.git("push", "deploy", "main", cwd=repo, check=False)
    assert pushed.returncode != 0 and "remote: this DigitalOcean token may not create Droplets" in pushed.stderr
    admin.set_token(team.token)
    assert not [r for r in server.do.droplets.values() if r["team_uuid"] == team.uuid]  # the check created none

    # DigitalOcean tokens open DigitalOcean repos only; unknown APIs and the dumb protocol are refused.
    assert info_refs(server, "/_rbac/ATProto/did:plc:ewvi7nxzyoun6zhxrhs64oiz", team.token).status_code == 403
    assert info_refs(server, "/_rbac/Nope/x", team.token).status_code == 404
    dumb = requests.get(f"{server.url}/info/refs", auth=("token", team.token), timeout=30)
    assert dumb.status_code == 403 and dumb.json()["id"] == "dumb_http_unsupported"

    # JWTs of ours: an rbac token of the context opens it; expired, other-context and foreign ones do not.
    rbac_token = sign(server, team.uuid, "admin:sammy", kind="rbac")
    assert info_refs(server, mine, rbac_token, "git-receive-pack").status_code == 200
    assert info_refs(server, "", rbac_token).status_code == 200  # at / a JWT opens its audience's repo
    expired = sign(server, team.uuid, "admin:sammy", kind="rbac", lifetime=60, issued=int(time.time()) - 600)
    gone = info_refs(server, mine, expired)
    assert gone.status_code == 401 and "expired" in gone.text
    elsewhere = sign(server, other.uuid, "admin:sammy", kind="rbac")
    assert info_refs(server, mine, elsewhere).status_code == 403
    provisioning = sign(server, team.uuid, "role:provisioning:nonce:abc", kind="provisioning")
    assert info_refs(server, mine, provisioning).status_code == 401

    # A workload or exchanged token needs the policy to grant the repo path.
    exchanged = sign(server, team.uuid, "role:rbac-admin", kind="exchanged")
    ungranted = info_refs(server, mine, exchanged, "git-receive-pack")
    assert ungranted.status_code == 403 and "no role matches" in ungranted.text
    admin.commit(repo, {"roles/rbac-admin.hcl": GIT_ADMIN_ROLE, "policies/rbac-admin.hcl": GIT_ADMIN_POLICY},
                 "let the rbac-admin role push")
    admin.git("push", "deploy", "main", cwd=repo)
    admin.set_token(exchanged)  # the credential helper now hands git the exchanged JWT
    granted = admin.commit(repo, {"README.md": "pushed with an exchanged token\n"}, "via JWT")
    admin.git("push", "deploy", "main", cwd=repo)
    last = state(server, team.uuid)["allowed"][-1]
    assert last.detail["new"] == granted and last.sub == f"actx:{team.uuid}:role:rbac-admin"
    assert last.detail["auth"] == "jwt" and last.jti


# -- size limits and bad packs ---------------------------------------------------------------------------


@pytest.mark.parametrize("server", ["sqlite"], indirect=True)  # backend-independent: SQLite only
def test_large_push_is_streamed_and_huge_push_refused(server: GitServer, team: Team, admin: GitUser) -> None:
    repo, _ = push_initial(admin)
    # 1.5 MiB of incompressible data: more than git's postBuffer, so git sends it chunked.
    (repo / "assets").mkdir()
    (repo / "assets" / "big.bin").write_bytes(os.urandom(3 * MiB // 2))
    admin.git("add", ".", cwd=repo)
    admin.git("commit", "-qm", "big", cwd=repo)
    big = head(admin, repo)
    pushed = admin.git("push", "deploy", "main", cwd=repo, env={"GIT_TRACE_CURL": "1", "GIT_TRACE_CURL_NO_DATA": "1"})
    assert "Transfer-Encoding: chunked" in pushed.stderr
    assert "remote: wid: warning: assets/big.bin: ignored" in pushed.stderr
    assert state(server, team.uuid)["main_commit"] == big

    (repo / "assets" / "huge.bin").write_bytes(os.urandom(4 * MiB))
    admin.git("add", ".", cwd=repo)
    admin.git("commit", "-qm", "huge", cwd=repo)
    refused = admin.git("push", "deploy", "main", cwd=repo, check=False)
    assert refused.returncode != 0
    assert f"the push is larger than {3 * MiB} bytes (WID_GIT_MAX_PUSH_BYTES)" in refused.stderr
    assert state(server, team.uuid)["main_commit"] == big


def receive_pack(server: GitServer, team: Team, body: bytes) -> tuple[bytes, str]:
    response = requests.post(f"{server.url}/git-receive-pack", data=body, auth=("token", team.token),
                             headers={**GIT_UA, "Content-Type": "application/x-git-receive-pack-request"}, timeout=60)
    assert response.status_code == 200, response.text
    return demux(response.content)


@pytest.mark.parametrize("server", ["sqlite"], indirect=True)  # backend-independent: SQLite only
def test_malformed_and_inflating_packs_are_refused(server: GitServer, team: Team, admin: GitUser) -> None:
    _, main = push_initial(admin)
    before = state(server, team.uuid)
    command = pkt(f"{main} {'1' * 40} refs/heads/main\0report-status side-band-64k\n") + b"0000"

    status, said = receive_pack(server, team, command + b"PACK\x00\x00\x00\x02\x00\x00\x00\x01garbage" + b"\0" * 20)
    assert b"unpack " in status and b"unpack ok" not in status
    assert b"ng refs/heads/main unpacker error" in status
    assert "nothing was stored" in said

    # A tiny pack whose one blob claims 100 MiB (a zip bomb) is refused before anything is inflated.
    import hashlib
    import zlib

    size = 100 * MiB
    header = bytearray([0x30 | (size & 0x0F)])
    size >>= 4
    while size:
        header[-1] |= 0x80
        header.append(size & 0x7F)
        size >>= 7
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(b"\0" * MiB) for _ in range(100)) + compressor.flush()
    pack = b"PACK\x00\x00\x00\x02\x00\x00\x00\x01" + bytes(header) + data
    pack += hashlib.sha1(pack).digest()  # noqa: S324 - git's pack trailer
    status, said = receive_pack(server, team, command + pack)
    assert b"objects are limited to" in status and "objects are limited to" in said

    after = state(server, team.uuid)
    assert after["refs"] == before["refs"] and after["objects"] == before["objects"]
    assert len(after["denied"]) == 2


# -- concurrency and crashes ---------------------------------------------------------------------------------


def test_twenty_concurrent_pushes_lose_nothing(server: GitServer, team: Team, admin: GitUser) -> None:
    repo, _ = push_initial(admin)
    clones = []
    for i in range(20):
        clone = admin.home / f"clone-{i}"
        subprocess.run(["cp", "-a", str(repo), str(clone)], check=True)
        admin.commit(clone, {f"policies/p{i}.hcl": f'path "/v2/p{i}" {{\n  capabilities = ["read"]\n}}\n'},
                     f"policy {i}")
        clones.append(clone)

    def push(clone: Path) -> subprocess.Popen[str]:
        return subprocess.Popen(["git", "push", "deploy", "main"], cwd=clone, env=admin.env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    started = time.monotonic()
    running = [push(clone) for clone in clones]
    results = [(p.wait(timeout=180), p.stderr.read() if p.stderr else "") for p in running]
    winners = [i for i, (code, _) in enumerate(results) if code == 0]
    assert len(winners) == 1, results  # every push started from the same main: exactly one can win
    for i, (_, err) in enumerate(results):
        if i != winners[0]:
            assert "[remote rejected] main -> main (main moved to" in err or "[rejected]" in err, err
    first_round = state(server, team.uuid)
    winner = head(admin, clones[winners[0]])
    assert first_round["refs"]["refs/heads/main"] == winner == first_round["main_commit"]

    elapsed = time.monotonic() - started

    # Nothing was lost: the refused work is intact in its clones. One admin gathers it onto what won
    # (as each could with `git pull --rebase`) and pushes it in one go.
    gatherer = clones[winners[0]]
    for i, clone in enumerate(clones):
        if i != winners[0]:
            admin.git("fetch", "-q", str(clone), "main", cwd=gatherer)
            admin.git("cherry-pick", "FETCH_HEAD", cwd=gatherer)
    admin.git("push", "-q", "deploy", "main", cwd=gatherer)

    final = state(server, team.uuid)
    main = final["refs"]["refs/heads/main"]
    assert final["main_commit"] == main
    assert {f"p{i}" for i in range(20)} <= set(final["compiled"]["policies"])  # nothing lost
    assert main == head(admin, gatherer)
    assert len(final["allowed"]) == 3 and final["allowed"][-1].detail["new"] == main  # base, winner, gathered
    assert final["version"] == 3
    # Refusals that reached the server (the others were refused by git itself: "fetch first") are audited.
    assert all(d.detail["reason"].startswith("main moved to") for d in final["denied"])
    check = GitUser(admin.home.parent / "checker", server.url, team.token)
    check.git("clone", "-q", server.url, "copy", cwd=check.home)
    copy = check.home / "copy"
    assert sorted(p.name for p in (copy / "policies").glob("p*.hcl")) == sorted(f"p{i}.hcl" for i in range(20))
    check.git("fetch", "-q", "origin", "schema", cwd=copy)
    schema_messages = check.git("log", "--format=%s", "FETCH_HEAD", cwd=copy).stdout.splitlines()
    assert schema_messages[0] == f"rbac.json compiled from main {main}" and len(schema_messages) == 3
    print(f"20 concurrent pushes on {server.backend}: {elapsed:.1f}s")


def test_kill_9_in_the_middle_of_a_push_keeps_the_previous_configuration(cgi_server: GitServer, tmp_path: Path) -> None:
    server = cgi_server
    team = new_team(server)
    admin = GitUser(tmp_path / "admin", server.url, team.token)
    repo, main = push_initial(admin)
    before = state(server, team.uuid)
    attempted = admin.commit(repo, {"policies/late.hcl": 'path "/v2/late" {\n  capabilities = ["read"]\n}\n'},
                             "killed")
    hold_dir = tmp_path / "hold"
    hold_dir.mkdir()
    # The git handler with a hold just before the push's commit (tests/git_hold.py), served for this push only.
    with server.proxy.cgi_replaced("git", f"from pathlib import Path\n\nfrom tests.git_hold import serve\n\n"
                                          f"serve(Path({str(hold_dir)!r}))\n"):
        (hold_dir / "armed").touch()
        pusher = subprocess.Popen(["git", "push", "deploy", "main"], cwd=repo, env=admin.env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        held: list[Path] = []
        while not held and time.monotonic() < deadline:
            held = list(hold_dir.glob("held-*"))
            time.sleep(0.02)
        assert held, "the push never reached its commit"
        pid = int(held[0].name.split("-")[1])
        os.kill(pid, signal.SIGKILL)  # the CGI process, inside its transaction, with everything written
        held[0].unlink()
        assert pusher.wait(timeout=60) != 0

    after = state(server, team.uuid)
    assert after["refs"] == before["refs"] and after["main_commit"] == main
    assert after["version"] == before["version"] and after["objects"] == before["objects"]
    assert after["allowed"] == before["allowed"]
    assert attempted not in after["objects"]

    # Nothing is left locked or torn: the same push goes through now.
    admin.git("push", "deploy", "main", cwd=repo)
    assert state(server, team.uuid)["main_commit"] == attempted


@pytest.mark.parametrize("server", ["sqlite"], indirect=True)  # backend-independent: SQLite only
def test_atproto_repo_with_the_sign_in_token(server: GitServer, team: Team, admin: GitUser) -> None:
    from devkit.git_helpers import ARTICLE_ATPROTO, ARTICLE_ATPROTO_ROLES, ATPROTO_CREDENTIAL_HELPER, EXAMPLES

    did = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
    with server.proxy.configured():
        from wid.core import tokens
        from wid.store import signing

        did_token, _ = signing.sign({"aud": f"api://ATProto?actx={did}", "sub": f"actx:{did}:admin", "did_plc": did},
                                    kind=tokens.RBAC, lifetime=600)
    (admin.home / ".config" / "rbac-did-token").write_text(did_token)
    helper = admin.home / ".local" / "scripts" / "git-credential-rbac-atproto.sh"
    helper.write_text(ATPROTO_CREDENTIAL_HELPER)
    helper.chmod(0o755)
    repo = admin.home / "did-rbac"
    repo.mkdir()
    admin.env["DID_PLC"] = did
    first = admin.shell(ARTICLE_ATPROTO, cwd=repo)
    assert "remote: wid: warning: .gitignore: ignored" in first.stderr

    for name in ("roles/atproto-write.hcl", "policies/atproto-write.hcl"):
        (repo / name).parent.mkdir(exist_ok=True)
        (repo / name).write_text((EXAMPLES / "atproto" / name).read_text())
    run = admin.shell(ARTICLE_ATPROTO_ROLES, cwd=repo)
    shown = json.loads(run.stdout[run.stdout.index("\n{\n") + 1:])
    assert shown["api"] == "ATProto" and shown["actx"] == did
    assert shown["roles"]["atproto-write"]["aud"] == f"api://ATProto?actx={did}"

    # The DID's token opens only the DID's repo; the team's DigitalOcean token cannot open the DID's.
    assert info_refs(server, f"/_rbac/DigitalOcean/{team.uuid}", did_token).status_code == 403
    assert info_refs(server, f"/_rbac/ATProto/{did}", team.token).status_code == 403
    with server.proxy.configured():
        from wid.store import rbac as rbac_store

        assert rbac_store.main_commit("ATProto", did) == head(admin, repo)


@pytest.mark.parametrize("server", ["sqlite"], indirect=True)  # backend-independent: SQLite only
def test_shallow_and_filtered_clones(server: GitServer, team: Team, admin: GitUser) -> None:
    repo, _ = push_initial(admin)
    admin.commit(repo, {"README.md": "second\n"}, "second")
    admin.git("push", "deploy", "main", cwd=repo)

    admin.git("clone", "-q", "--depth", "1", server.url, "shallow", cwd=admin.home)
    shallow = admin.home / "shallow"
    assert admin.git("rev-list", "--count", "HEAD", cwd=shallow).stdout.strip() == "1"
    pushed = admin.commit(shallow, {"README.md": "pushed from a shallow clone\n"}, "from shallow")
    admin.git("push", "origin", "main", cwd=shallow)
    assert state(server, team.uuid)["main_commit"] == pushed

    # Partial clone is not offered: git says so and makes a full clone.
    filtered = admin.git("clone", "--filter=blob:none", server.url, "filtered", cwd=admin.home)
    assert "filtering not recognized by server" in filtered.stderr
    assert admin.git("rev-parse", "HEAD", cwd=admin.home / "filtered").stdout.strip() == pushed

"""A rolling deploy: a replica of the previous release and one of this release share one PostgreSQL
database and both keep serving while this release's migrations are applied under the old one.

The previous release is the source tree just before the newest migration was added (from git; set
WID_TEST_OLD_RELEASE to any commit to test another upgrade path), run with its own scripts/run.sh,
Caddyfile and CGI programs, and this checkout's Python packages.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from devkit.git_helpers import ARTICLE_FIRST_PUSH, GitUser, article_files
from devkit.proxy import ROOT, ProxyServer
from tests.gha.support import audience, new_team, unverified_claims
from tests.harness import PostgresServer
from wid.store import storage

ISSUER = "https://wid.example.test"  # one issuer for both replicas, as behind one load balancer
GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT = "urn:ietf:params:oauth:token-type:jwt"


def previous_release() -> str:
    override = os.environ.get("WID_TEST_OLD_RELEASE")
    if override:
        return override
    migrations = Path(storage.MIGRATIONS_DIR).relative_to(ROOT).as_posix()
    found = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--diff-filter=A", "--format=%H", "--", migrations],
                           capture_output=True, text=True, check=False)
    newest = found.stdout.strip()
    assert found.returncode == 0 and newest, (
        f"this test needs the git history of {migrations} (a full clone) to find the previous release: {found.stderr}")
    return f"{newest}^"


def unpack_release(rev: str, into: Path) -> Path:
    """The release's files (git archive), and a .venv that runs its lib/ with this checkout's packages."""
    into.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(into / ".venv")], check=True)
    ours = next((ROOT / ".venv" / "lib").glob("python3*/site-packages"))
    theirs = next((into / ".venv" / "lib").glob("python3*/site-packages"))
    # Its own lib/ first; our site-packages for the dependencies (its .pth files, among them our
    # editable install of this release's lib/, are not processed from there).
    (theirs / "wid-release.pth").write_text(f"{into / 'lib'}\n{ours}\n")
    # Its commands (`wid`, `wid-serve`), as its pyproject.toml declares them (entry points move between releases).
    for command, entry in tomllib.loads((into / "pyproject.toml").read_text())["project"]["scripts"].items():
        module, function = entry.split(":")
        launcher = into / ".venv" / "bin" / command
        launcher.write_text(f"#!{into / '.venv' / 'bin' / 'python'}\nimport sys\nfrom {module} import {function}\n"
                            f"sys.exit({function}())\n")
        launcher.chmod(0o755)
    # Its install.sh finds its packages installed (the stamp it writes after installing them).
    subprocess.run(["bash", "-c", 'touch ".venv/.installed-$(sha256sum requirements.lock pyproject.toml | sha256sum '
                    '| cut -c1-16)"'], cwd=into, check=True)
    return into


def push_rbac(replica: ProxyServer, team: str, home: Path, files: dict[str, str]) -> str:
    """An admin's `git push` of RBAC files to the replica, with an rbac token it signed (its own git server,
    compiler and store: nothing here depends on the release's module layout)."""
    token = replica.wid("token", "--kind", "rbac", "--aud", audience(team), "--sub", f"actx:{team}:admin").stdout
    remote = f"{replica.url}/_rbac/DigitalOcean/{team}"
    admin = GitUser(home / f"admin-{replica.port}", replica.url, token.strip(), helper_url=replica.url)
    repo = admin.home / "rbac"
    if not repo.exists():
        repo = admin.new_repo("rbac", remote=remote)
        admin.git("pull", "-q", "deploy", "main", cwd=repo, check=False)  # what the other replica stored
    commit = admin.commit(repo, files, "configuration")
    admin.git("push", "-q", "deploy", "main", cwd=repo)
    return commit


def served_main(replica: ProxyServer, team: str, home: Path) -> str:
    """The commit the replica's git server says main is at."""
    token = replica.wid("token", "--kind", "rbac", "--aud", audience(team), "--sub", f"actx:{team}:admin").stdout
    reader = GitUser(home / f"reader-{replica.port}", replica.url, token.strip(), helper_url=replica.url)
    listed = reader.git("ls-remote", f"{replica.url}/_rbac/DigitalOcean/{team}", "refs/heads/main", cwd=reader.home)
    return listed.stdout.split()[0]


def applied_migrations(replica: ProxyServer) -> list[str]:
    import psycopg

    with psycopg.connect(replica.env["DATABASE_URI"]) as conn:
        return [row[0] for row in conn.execute("SELECT name FROM schema_migrations ORDER BY name")]


def mint(proxy: ProxyServer, team: str) -> str:
    """A workload token signed by the replica's `wid token`."""
    return proxy.wid("token", "--kind", "workload", "--aud", audience(team), "--sub",
                     f"actx:{team}:role:ex-database-and-spaces-keys-access").stdout.strip()


def exchange(proxy: ProxyServer, team: str, subject: str) -> requests.Response:
    return requests.post(f"{proxy.url}/v1/oidc/token", timeout=30, data={
        "grant_type": GRANT, "subject_token": subject, "subject_token_type": JWT, "audience": audience(team),
        "scope": f"actx:{team}:role:database-and-spaces-keys-access"})


def jwks_kids(proxy: ProxyServer) -> list[str]:
    return [key["kid"] for key in requests.get(f"{proxy.url}/.well-known/jwks", timeout=5).json()["keys"]]


def serve_each_others_tokens(replicas: list[ProxyServer], team: str) -> set[str]:
    """Every replica exchanges tokens signed by every replica; returns the kids they signed with."""
    kids = set()
    for signer in replicas:
        subject = mint(signer, team)
        kids.add(subject_kid(subject))
        for server in replicas:
            answer = exchange(server, team, subject)
            assert answer.status_code == 200, (signer.root, server.root, answer.text)
            assert unverified_claims(answer.json()["access_token"])["iss"] == ISSUER
        assert requests.get(f"{signer.url}/health/ready", timeout=10).status_code == 200
    return kids


def subject_kid(token: str) -> str:
    header = token.split(".")[0]
    kid: str = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"]
    return kid


@pytest.fixture
def replicas(postgres: PostgresServer, tmp_path: Path) -> Iterator[tuple[ProxyServer, ProxyServer]]:
    """(previous release, this release), configured for one database; started by the test."""
    shared = {"DATABASE_URI": postgres.fresh_database(), "THIS_ENDPOINT": ISSUER,
              "WID_SECRET_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode()}
    release = unpack_release(previous_release(), tmp_path / "release")
    # A release from before uWSGI ran persistent mode under gunicorn, which this checkout no longer installs:
    # it serves in CGI mode (the database and its migrations are what this test is about).
    before_uwsgi = not (release / "lib" / "wid" / "web" / "serve.py").exists()
    old = ProxyServer(tmp_path / "old-data", shared, root=release, mode="cgi" if before_uwsgi else None)
    new = ProxyServer(tmp_path / "new-data", shared)
    yield old, new
    new.stop()
    old.stop()


def test_an_old_and_a_new_replica_serve_side_by_side_across_a_migration(
        replicas: tuple[ProxyServer, ProxyServer], tmp_path: Path) -> None:
    old, new = replicas
    first = article_files(ARTICLE_FIRST_PUSH)
    old.start()
    before = applied_migrations(old)
    added = sorted(set(storage.migration_names()) - set(before))
    assert added, "the previous release must lack a migration of this one, or there is nothing to test"
    team = new_team()
    push_rbac(old, team, tmp_path, first)
    assert serve_each_others_tokens([old], team)

    new.start()  # its `wid setup` applies this release's migrations while the old replica serves
    assert applied_migrations(new) == storage.migration_names()
    assert len(serve_each_others_tokens([old, new], team)) == 1  # one signing key for both
    assert jwks_kids(old) == jwks_kids(new)
    # A push handled by the new release is in force on the old replica too (here: a comment changes).
    changed = {name: f"# pushed to the new release\n{text}" for name, text in first.items()}
    pushed = push_rbac(new, team, tmp_path, changed)
    assert served_main(old, team, tmp_path) == pushed
    serve_each_others_tokens([old, new], team)

    # A key rotation started from the new release while the old replica still runs: the old one
    # publishes the next key as well, and both switch to it once it activates.
    (active,) = jwks_kids(new)
    rotated = new.wid("keys", "rotate").stdout
    pending = rotated.split()[1]
    old.wid("keys", "publish")  # what its once-a-minute publisher does
    assert jwks_kids(old) == jwks_kids(new) == [active, pending]
    assert serve_each_others_tokens([old, new], team) == {active}
    with new.configured(), storage.database().transaction() as tx:  # the clock reaches activate_at
        row = tx.one("SELECT activate_at FROM signing_keys WHERE kid = ?", (pending,))
        assert row is not None
        shift = int(row[0]) - int(time.time()) + 1
        tx.execute("UPDATE signing_keys SET activate_at = activate_at - ?, verify_until = verify_until - ? "
                   "WHERE kid = ?", (shift, shift, pending))
    kids = serve_each_others_tokens([new, old], team)  # the new replica signs first, promoting the key
    assert kids == {pending}
    old.wid("keys", "publish")
    assert jwks_kids(old) == [pending, active]  # the old code sees the promoted key as the active one
    assert set(jwks_kids(new)) == {pending, active}

"""Upgrading over a database made by the code before the package move (commit 7181f99, flat lib/wid/).

The old tree is taken from this repository's history (`git archive`, nothing checked out in place)
and run as its own process with its own `wid setup`. Then this code's `wid setup` upgrades the same
database, on SQLite and on PostgreSQL: the signing key keeps its kid and keeps signing and verifying,
the ATProto client keys keep serving (the retired one its sessions), the stored team credential
decrypts, the compiled RBAC keeps its version and keeps deciding, and every
migration is recorded once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest

from devkit.seed import article_files
from tests.gha.support import audience, new_team
from wid.core import jose, tokens
from wid.core.errors import WidError
from wid.store import signing, storage

BEFORE_THE_MOVE = "7181f99"
REPO = Path(__file__).resolve().parent.parent
WORKLOAD_ROLE = "role:ex-database-and-spaces-keys-access"
TARGET_ROLE = "role:database-and-spaces-keys-access"

# Run by the old code (PYTHONPATH=<old tree>/lib): its setup, a team credential, the articles' RBAC, a token.
OLD_SCRIPT = r"""
import json, sys
from wid import atproto_oauth, cli, credentials, rbac_compile, rbac_store, storage, tokens

job = json.load(sys.stdin)
actx = job["actx"]
if cli.main(["setup"]) != 0:
    sys.exit("old wid setup failed")
credentials.store("DigitalOcean", actx, job["credential"])
files = {name: text.encode() for name, text in job["files"].items()}
with storage.database().transaction() as tx:
    version = rbac_store.install(tx, "DigitalOcean", actx,
                                 rbac_compile.compile_tree(files, api="DigitalOcean", actx=actx), "0" * 40)
token, claims = tokens.sign({"aud": job["aud"], "sub": job["sub"]}, kind=tokens.WORKLOAD, lifetime=600)
atproto_oauth.rotate_client_key()
client_keys = atproto_oauth.rotate_client_key()  # (retired, active), rotated at once as this code did
with storage.database().transaction(write=False) as tx:
    migrations = [row[0] for row in tx.execute("SELECT name FROM schema_migrations ORDER BY name")]
print(json.dumps({"token": token, "version": version, "migrations": migrations, "client_keys": client_keys}))
"""


@pytest.fixture(scope="module")
def old_lib(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """lib/ of the tree before the package move, extracted from this repository's history."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", BEFORE_THE_MOVE, "lib"],
                             capture_output=True, check=True, timeout=60).stdout
    root = tmp_path_factory.mktemp("wid-old")
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        # filter= exists from Python 3.11.4 on (Debian 12 has 3.11.2); the archive is this repository's own
        if hasattr(tarfile, "data_filter"):
            tar.extractall(root, filter="data")
        else:
            tar.extractall(root)  # noqa: S202
    assert (root / "lib" / "wid" / "rbac_compile.py").is_file()  # the flat layout, not this one
    yield root / "lib"


def run_old(old_lib: Path, job: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(old_lib)}
    done = subprocess.run([sys.executable, "-c", OLD_SCRIPT], input=json.dumps(job), env=env, cwd=old_lib,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("database: "), done.stdout  # the old `wid setup` said what it did
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def test_a_database_from_before_the_package_move_keeps_working(backend: str, old_lib: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from wid.cli.main import main as wid
    from wid.service import exchange
    from wid.store import credentials, keys
    from wid.store import rbac as rbac_store
    from wid.upstreams.atproto import client
    from wid.web.errors import status_of

    actx = new_team()
    credential = {"access_token": "do-access-before-the-move", "refresh_token": "do-refresh", "scope": "read"}
    old = run_old(old_lib, {"actx": actx, "credential": credential, "aud": audience(actx),
                            "sub": f"actx:{actx}:{WORKLOAD_ROLE}",
                            "files": {name: text.decode() for name, text in article_files().items()}})
    old_token = str(old["token"])
    old_kid = jose.decode(old_token).kid
    assert old["version"] == 1

    # The upgrade, as an operator runs it: this code's `wid setup`, twice.
    capsys.readouterr()
    assert wid(["setup"]) == 0
    first = capsys.readouterr().out
    new_migrations = sorted(set(storage.migration_names()) - set(old["migrations"]))
    assert new_migrations  # this code has migrations the old one did not (else the test proves less)
    assert f"migrations applied: {len(new_migrations)};" in first
    assert f"active key {old_kid};" in first
    assert wid(["setup"]) == 0
    assert "migrations applied: 0;" in capsys.readouterr().out
    with storage.database().transaction(write=False) as tx:
        recorded = [row[0] for row in tx.execute("SELECT name FROM schema_migrations ORDER BY name")]
    assert recorded == storage.migration_names()  # each once, the old ones kept

    # The key: same kid, verifies what the old code signed and signs for this code.
    assert keys.active_key().kid == old_kid
    assert signing.verify(old_token, kinds={tokens.WORKLOAD})["sub"] == f"actx:{actx}:{WORKLOAD_ROLE}"
    assert keys.public_jwk(old_kid) is not None

    # The ATProto client keys: the active one keeps serving sign-ins, the retired one its sessions, until
    # prune finds no session bound to it (a retired row of the old code has no verify_until).
    retired, active = old["client_keys"]
    assert client.client_key().kid == active and client.client_key(retired).kid == retired
    assert [k["kid"] for k in client.jwks()["keys"]] == [active, retired]
    credentials.store("ATProto", "did:plc:ewvi7nxzyoun6zhxrhs64oiz", {"client_kid": retired})
    assert client.prune_client_keys() == []
    credentials.store("ATProto", "did:plc:ewvi7nxzyoun6zhxrhs64oiz", {"client_kid": active})
    assert client.prune_client_keys() == [retired]

    # The team credential sealed by the old code decrypts.
    stored = credentials.get("DigitalOcean", actx)
    assert stored is not None and stored.data == credential and stored.status == credentials.ACTIVE

    # The compiled RBAC keeps its version and decides: the articles' exchange with the old token.
    with storage.database().transaction(write=False) as tx:
        row = tx.one("SELECT version FROM rbac_configs WHERE api = ? AND actx = ?", ("DigitalOcean", actx))
    assert row is not None and row[0] == 1
    assert rbac_store.compiled("DigitalOcean", actx) is not None
    body = {"aud": audience(actx), "sub": f"actx:{actx}:{TARGET_ROLE}", "ttl": 300}
    issued = exchange.issue_json(old_token, lambda: body, status_of)
    assert jose.decode(issued.token).kid == old_kid
    assert signing.verify(issued.token, kinds={tokens.EXCHANGED})["act"]["sub"] == f"actx:{actx}:{WORKLOAD_ROLE}"
    with pytest.raises(WidError) as refused:
        exchange.issue_json(old_token, lambda: {**body, "ttl": 301}, status_of)
    assert status_of(refused.value) == 403

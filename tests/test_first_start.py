"""Replicas starting at the same moment on one fresh database all come up, with one key.

Each round starts several `wid setup` processes at once (what every replica runs before serving):
on PostgreSQL each with its own data dir, as replicas on separate machines; on SQLite all in one data
dir (the development secret key and the rendered CGI scripts are created there by whoever is first).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest

from devkit.proxy import ROOT
from tests.harness import PostgresServer
from wid.store import storage

PROCESSES = 6
ROUNDS = 5
WID = str(ROOT / ".venv" / "bin" / "wid")


def start_together(envs: list[dict[str, str]], *extra: str) -> list[subprocess.CompletedProcess[str]]:
    """`wid setup` in one process per environment, all started before any is waited for."""
    processes = [subprocess.Popen([WID, "setup", *extra], env=env, text=True, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE) for env in envs]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return results


def published_kids(data_dir: Path) -> list[str]:
    jwks = json.loads((data_dir / "public" / ".well-known" / "jwks").read_text())
    return [key["kid"] for key in jwks["keys"]]


def database_state(env: dict[str, str]) -> tuple[list[tuple[str, str]], int, list[str]]:
    """(kid, state) of every signing key, key_check rows, applied migrations: read through the library."""
    database = storage.Database(env.get("DATABASE_URI"), env["WID_DATA_DIR"])
    try:
        with database.transaction(write=False) as tx:
            keys = [(r[0], r[1]) for r in tx.execute("SELECT kid, state FROM signing_keys")]
            checks = tx.one("SELECT count(*) FROM key_check")
            migrations = [r[0] for r in tx.execute("SELECT name FROM schema_migrations ORDER BY name")]
    finally:
        database.close()
    assert checks is not None
    return keys, int(checks[0]), migrations


def base_env(**overrides: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in {"DATABASE_URI", "WID_SECRET_KEY"}}
    return {**env, "THIS_ENDPOINT": "https://wid.example.test", **overrides}


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_replicas_starting_together_on_fresh_postgresql(postgres: PostgresServer, tmp_path: Path, round_: int) -> None:
    uri = postgres.fresh_database()
    secret = base64.urlsafe_b64encode(os.urandom(32)).decode()
    envs = [base_env(DATABASE_URI=uri, WID_SECRET_KEY=secret, WID_DATA_DIR=str(tmp_path / f"replica{i}"))
            for i in range(PROCESSES)]
    results = start_together(envs)
    assert [r.returncode for r in results] == [0] * PROCESSES, [r.stderr for r in results if r.returncode]
    keys, checks, migrations = database_state(envs[0])
    assert len(keys) == 1 and keys[0][1] == "active" and checks == 1
    assert migrations == storage.migration_names()  # each applied once
    for env in envs:  # every replica publishes that one key
        assert published_kids(Path(env["WID_DATA_DIR"])) == [keys[0][0]]


def test_a_replica_with_another_secret_key_is_refused(postgres: PostgresServer, tmp_path: Path) -> None:
    uri = postgres.fresh_database()
    secrets_ = [base64.urlsafe_b64encode(os.urandom(32)).decode() for _ in range(2)]
    envs = [base_env(DATABASE_URI=uri, WID_SECRET_KEY=secrets_[i % 2], WID_DATA_DIR=str(tmp_path / f"r{i}"))
            for i in range(PROCESSES)]
    results = start_together(envs)
    # Whichever key recorded its check value first is the database's key; the others stop with a
    # message naming the variable (never two keys writing secrets the other cannot read).
    codes = {r.returncode for r in results}
    assert codes == {0, 2}
    refused = [r for r in results if r.returncode]
    assert all("WID_SECRET_KEY does not decrypt" in r.stderr for r in refused)
    winners = {env["WID_SECRET_KEY"] for env, r in zip(envs, results, strict=True) if r.returncode == 0}
    assert len(winners) == 1


@pytest.mark.parametrize("round_", range(2))
def test_processes_starting_together_on_a_fresh_sqlite_data_dir(tmp_path: Path, round_: int) -> None:
    data = tmp_path / "data"
    env = base_env(WID_DATA_DIR=str(data))
    results = start_together([env] * PROCESSES, "--render-cgi", str(tmp_path / "cgi"),
                             "--cgi-source", str(ROOT / "cgi-bin"))
    assert [r.returncode for r in results] == [0] * PROCESSES, [r.stderr for r in results if r.returncode]
    keys, checks, migrations = database_state(env)
    assert len(keys) == 1 and checks == 1 and migrations == storage.migration_names()
    assert published_kids(data) == [keys[0][0]]
    rendered = sorted(p.name for p in (tmp_path / "cgi").iterdir())
    assert rendered == sorted(p.name for p in (ROOT / "cgi-bin").glob("*.py"))  # no temporary file left
    assert [p.name for p in data.iterdir() if p.name.startswith(".secret")] == []  # nor a candidate key

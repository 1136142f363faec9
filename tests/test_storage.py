"""Storage: one schema on SQLite and a real PostgreSQL, migrations safe under concurrent starts."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devkit.proxy import free_port
from wid import config
from wid.store import storage


def _spawn(code: str, count: int) -> list[subprocess.CompletedProcess[str]]:
    procs = [subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(count)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def test_migrations_apply_once_when_processes_start_together(backend: str) -> None:
    results = _spawn("from wid.store import storage; print(len(storage.database().migrate()))", 6)
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    applied = sorted(int(r.stdout) for r in results)
    assert applied[-1] == len(storage.migration_names())  # exactly one process applied them...
    assert applied[:-1] == [0] * 5  # ...and the others found nothing left to do
    with storage.database().transaction(write=False) as tx:
        names = [row[0] for row in tx.execute("SELECT name FROM schema_migrations ORDER BY name")]
    assert names == storage.migration_names()


def test_unique_violation_is_a_conflict_and_rolls_back(backend: str) -> None:
    db = storage.database()
    with db.transaction() as tx:
        tx.execute("INSERT INTO key_check (id, token) VALUES (1, ?)", (b"x",))
    with pytest.raises(storage.Conflict), db.transaction() as tx:
        tx.execute("INSERT INTO audit_log (ts, event, decision, detail) VALUES (1, 'e', 'info', '{}')")
        tx.execute("INSERT INTO key_check (id, token) VALUES (1, ?)", (b"y",))
    with db.transaction(write=False) as tx:
        assert tx.execute("SELECT count(*) FROM audit_log") == [(0,)]  # the first insert rolled back too


def test_sqlite_uses_wal(app_env: Path) -> None:
    with storage.database().transaction(write=False) as tx:
        assert tx.execute("PRAGMA journal_mode") == [("wal",)]


def test_unreachable_postgresql_is_unavailable(app_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URI", f"postgresql://wid@127.0.0.1:{free_port()}/none")
    monkeypatch.setenv("WID_SECRET_KEY", base64.urlsafe_b64encode(os.urandom(32)).decode())
    config.settings.cache_clear()
    with pytest.raises(storage.DatabaseUnavailable, match=r"cannot connect to PostgreSQL \(DATABASE_URI\)"):
        storage.database().migrate()


def test_unknown_database_scheme_is_a_config_error(app_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URI", "mysql://root@localhost/db")
    config.settings.cache_clear()
    with pytest.raises(config.ConfigError, match="DATABASE_URI must start with postgresql://"):
        storage.database()


def test_unwritable_data_dir_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("WID_DATA_DIR", str(blocker / "data"))
    monkeypatch.delenv("DATABASE_URI", raising=False)
    config.settings.cache_clear()
    try:
        with pytest.raises(config.ConfigError, match="WID_DATA_DIR"):
            storage.database().migrate()
    finally:
        config.settings.cache_clear()


def test_a_single_read_outside_a_transaction(backend: str) -> None:
    """read_one (the per-request key generation check, lib/wid/store/keyring.py) on a kept connection, on
    PostgreSQL also one that died with its server: nothing ran on it, so the read is repeated once."""
    db = storage.database()
    assert db.read_one("SELECT count(*) FROM schema_migrations") == (len(storage.migration_names()),)
    assert db.read_one("SELECT name FROM schema_migrations WHERE name = ?", ("no such",)) is None
    if backend == "postgresql":
        import psycopg

        pid = db.read_one("SELECT pg_backend_pid()")
        assert pid is not None
        with psycopg.connect(str(db.uri), autocommit=True) as other:
            other.execute("SELECT pg_terminate_backend(%s)", (pid[0],))
        again = db.read_one("SELECT pg_backend_pid()")
        assert again is not None and again != pid


def test_a_single_write_commits_alone_and_is_never_repeated(backend: str) -> None:
    """write_one (an audit row on its own, lib/wid/store/audit.py) commits at once: another connection sees
    the row and can write straight after, with no lock left behind. On PostgreSQL a kept connection whose
    server ended it while it sat idle is replaced before the write is sent (storage._hung_up), since a write,
    unlike a read, is never repeated after it failed: it may have been applied."""
    db = storage.database()
    row = db.write_one("INSERT INTO audit_log (ts, event, decision, detail) VALUES (?, ?, ?, ?) RETURNING id",
                       (1, "test", "allow", "{}"))
    assert row is not None
    other = storage.Database(db.uri, db.data_dir)
    try:
        with other.transaction() as tx:  # BEGIN IMMEDIATE on SQLite: would wait out busy_timeout on a held lock
            assert tx.one("SELECT event FROM audit_log WHERE id = ?", (row[0],)) == ("test",)
            tx.execute("UPDATE audit_log SET status = 200 WHERE id = ?", (row[0],))
    finally:
        other.close()
    assert db.write_one("UPDATE audit_log SET outcome = ? WHERE id = ?", ("done", row[0])) is None
    assert db.read_one("SELECT status, outcome FROM audit_log WHERE id = ?", (row[0],)) == (200, "done")
    if backend == "postgresql":
        import psycopg

        pid = db.read_one("SELECT pg_backend_pid()")
        assert pid is not None
        with psycopg.connect(str(db.uri), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid[0],))
            deadline = time.monotonic() + 10
            while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid[0],)).fetchone():
                assert time.monotonic() < deadline, "the backend did not end"
                time.sleep(0.05)
        assert db.write_one("UPDATE audit_log SET outcome = ? WHERE id = ? RETURNING pg_backend_pid()",
                            ("again", row[0])) not in (None, pid)
        assert db.read_one("SELECT outcome FROM audit_log WHERE id = ?", (row[0],)) == ("again",)

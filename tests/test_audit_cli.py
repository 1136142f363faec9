"""`wid audit`: filters by path and jti, says when nothing matched or the limit cut, prunes after exporting;
operator actions (`wid token`, `wid keys rotate|prune`) are audited. On SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from devkit.proxy import ROOT
from wid.store import audit_queries, storage

DB = "/v2/databases/9cc10173-e9ea-4176-9dbc-a4cee4c4ff30"
TEAM = "5a5c4f2e-6d8e-4a43-9f70-0e6f5b8a1c2d"
DAY = 86400


def wid(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ROOT / ".venv" / "bin" / "wid"), *args], env=dict(os.environ), text=True,
                          capture_output=True, timeout=60)


def write(ts: int, event: str, *, path: str | None = None, jti: str | None = None, sub: str = "actx:t:role:r",
          method: str | None = "GET") -> None:
    with storage.database().transaction() as tx:
        tx.execute("INSERT INTO audit_log (ts, event, decision, actx, sub, jti, method, path, detail) "
                   "VALUES (?, ?, 'allow', ?, ?, ?, ?, ?, '{}')", (ts, event, TEAM, sub, jti, method, path))


@pytest.fixture
def migrated(backend: str) -> str:
    assert wid("setup").returncode == 0
    return backend


def test_who_read_a_databases_credentials_today(migrated: str) -> None:
    now = int(time.time())
    write(now - 2 * DAY, "forward", path=DB, jti="old", sub="actx:t:role:yesterday")
    write(now - 60, "forward", path=DB, jti="j1", sub="actx:t:role:reader")
    write(now - 30, "forward", path=DB + "/pool", jti="j2")
    write(now - 10, "forward", path="/v2/DATABASES/9cc10173-e9ea-4176-9dbc-a4cee4c4ff30", jti="j3")
    today = time.strftime("%Y-%m-%d", time.gmtime(now - 60))
    done = wid("audit", "--path", DB, "--since", today, "--json")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["jti"], r["sub"], r["method"], r["path"]) for r in rows] == [("j1", "actx:t:role:reader", "GET", DB)]
    # A trailing * is a prefix, compared exactly (case included); --jti finds what one token did.
    prefixed = wid("audit", "--path", "/v2/databases/*", "--since-seconds", "3600", "--json").stdout.splitlines()
    assert [json.loads(line)["jti"] for line in prefixed] == ["j1", "j2"]
    assert [json.loads(line)["path"] for line in wid("audit", "--jti", "j2", "--json").stdout.splitlines()] == \
        [DB + "/pool"]
    text = wid("audit", "--jti", "j1").stdout
    assert f"GET {DB}" in text and "jti=j1" in text


def test_nothing_matched_and_a_cut_by_the_limit_are_said(migrated: str) -> None:
    none = wid("audit", "--jti", "nobody")
    assert none.returncode == 0 and none.stdout == "" and "no entries match" in none.stderr
    for n in range(3):
        write(int(time.time()) - 3 + n, "forward", path=DB, jti=f"k{n}")
    cut = wid("audit", "--path", DB, "--limit", "2", "--json")
    assert [json.loads(line)["jti"] for line in cut.stdout.splitlines()] == ["k1", "k2"]  # the newest, oldest first
    assert "showing the newest 2 matching entries" in cut.stderr
    assert "showing" not in wid("audit", "--path", DB, "--limit", "3").stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--since-seconds", "-1"], "--since-seconds must be 0 or more"),
    (["--since", "yesterday"], "--since 'yesterday' is not a UTC date"),
    (["--limit", "0"], "--limit must be 1 or more"),
    (["prune"], "prune needs --before DATE"),
    (["prune", "--before", "2999-01-01"], "is in the future"),
    (["prune", "--before", "2020-01-01", "--event", "forward"], "--event does not apply"),
])
def test_usage_errors_exit_2_naming_the_flag(migrated: str, args: list[str], message: str) -> None:
    done = wid("audit", *args)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_prune_exports_then_deletes_only_older_rows(migrated: str, tmp_path: Path) -> None:
    now = int(time.time())
    for n in range(7):
        write(now - 40 * DAY - n, "forward", path=DB, jti=f"old{n}")
    write(now - 5, "forward", path=DB, jti="recent")
    export = tmp_path / "audit-old.jsonl"
    cutoff = time.strftime("%Y-%m-%d", time.gmtime(now - 30 * DAY))
    done = wid("audit", "prune", "--before", cutoff, "--export", str(export))
    assert done.returncode == 0, done.stderr
    assert "pruned 7 audit entries" in done.stdout
    exported = [json.loads(line) for line in export.read_text().splitlines()]
    assert sorted(r["jti"] for r in exported) == sorted(f"old{n}" for n in range(7))
    left = audit_queries.entries(limit=1000)
    assert [e.jti for e in left if e.event == "forward"] == ["recent"]
    [pruned] = [e for e in left if e.event == "audit_prune"]
    assert pruned.detail["pruned"] == 7 and pruned.detail["exported_to"] == str(export)
    # An export file is never overwritten: the second prune refuses before deleting anything.
    write(now - 50 * DAY, "forward", path=DB, jti="older")
    again = wid("audit", "prune", "--before", cutoff, "--export", str(export))
    assert again.returncode == 2 and "--export" in again.stderr
    assert "older" in [e.jti for e in audit_queries.entries(limit=1000)]


def test_prune_in_batches_keeps_every_row_in_the_export(migrated: str, tmp_path: Path) -> None:
    now = int(time.time())
    for n in range(23):
        write(now - 10 * DAY - n, "forward", path=DB, jti=f"b{n}")
    seen: list[str] = []
    assert audit_queries.prune(now - DAY, lambda e: seen.append(str(e.jti)), batch=5) == 23
    assert sorted(seen) == sorted(f"b{n}" for n in range(23)) and audit_queries.entries(limit=100) == []


def test_operator_actions_are_audited(migrated: str) -> None:
    token = wid("token", "--aud", f"api://DigitalOcean?actx={TEAM}", "--sub", f"actx:{TEAM}:role:rbac-admin",
                "--kind", "rbac", "--ttl", "300")
    assert token.returncode == 0, token.stderr
    [row] = json.loads("[" + ",".join(wid("audit", "--event", "operator_token", "--json").stdout.splitlines()) + "]")
    payload = token.stdout.strip().split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert row["jti"] == claims["jti"] and row["sub"] == f"actx:{TEAM}:role:rbac-admin" and row["actx"] == TEAM
    assert row["detail"]["kind"] == "rbac" and row["detail"]["operator"]
    assert token.stdout.strip() not in json.dumps(row)  # by jti, never the token
    assert wid("keys", "rotate").returncode == 0
    assert wid("keys", "prune").returncode == 0
    events = [json.loads(line)["event"] for line in wid("audit", "--json").stdout.splitlines()]
    assert "operator_keys_rotate" in events and "operator_keys_prune" in events

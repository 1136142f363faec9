"""Reading the audit log (wid.store.audit writes it): the rows that match a filter, and pruning with export.

Apart from the writer so that a request, which only writes, does not import what only `wid audit` and the
tests use (each CGI process pays for what it imports: docs/architecture.md, "What a request imports").
"""

import json
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from wid.store import storage


class AuditEntry(NamedTuple):
    id: int
    ts: int
    event: str
    decision: str
    api: str | None
    actx: str | None
    sub: str | None
    iss: str | None
    jti: str | None
    method: str | None
    path: str | None
    status: int | None
    outcome: str | None
    request_id: str | None
    detail: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return self._asdict()


_COLUMNS = "id, ts, event, decision, api, actx, sub, iss, jti, method, path, status, outcome, request_id, detail"


class Filter(NamedTuple):
    """Which rows: every given field must hold. `path` ending in `*` matches that prefix."""

    actx: str | None = None
    event: str | None = None
    decision: str | None = None
    jti: str | None = None
    sub: str | None = None
    path: str | None = None
    since: int | None = None
    before: int | None = None

    def where(self) -> tuple[str, list[object]]:
        clauses: list[str] = []
        params: list[object] = []
        for column in ("actx", "event", "decision", "jti", "sub"):
            value = getattr(self, column)
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if self.path is not None:
            if self.path.endswith("*"):  # a prefix, compared exactly (LIKE folds case in SQLite)
                clauses.append("substr(path, 1, CAST(? AS INTEGER)) = ?")
                params += [len(self.path) - 1, self.path[:-1]]
            else:
                clauses.append("path = ?")
                params.append(self.path)
        if self.since is not None:
            clauses.append("ts >= ?")
            params.append(self.since)
        if self.before is not None:
            clauses.append("ts < ?")
            params.append(self.before)
        return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), params


def _entry(r: Sequence[Any]) -> AuditEntry:
    return AuditEntry(id=r[0], ts=r[1], event=r[2], decision=r[3], api=r[4], actx=r[5], sub=r[6], iss=r[7],
                      jti=r[8], method=r[9], path=r[10], status=r[11], outcome=r[12], request_id=r[13],
                      detail=json.loads(r[14]))


def entries(*, actx: str | None = None, event: str | None = None, decision: str | None = None,
            since: int | None = None, limit: int = 100, which: Filter | None = None) -> list[AuditEntry]:
    """The newest `limit` rows that match, oldest first."""
    which = which or Filter(actx=actx, event=event, decision=decision, since=since)
    clause, params = which.where()
    with storage.database().transaction(write=False) as tx:
        rows = tx.execute(f"SELECT {_COLUMNS} FROM audit_log {clause} ORDER BY id DESC LIMIT ?",  # noqa: S608
                          (*params, limit))
    return [_entry(r) for r in reversed(rows)]


def prune(before: int, export: Callable[[AuditEntry], None] | None = None, batch: int = 5000) -> int:
    """Delete the rows older than `before` (epoch seconds), oldest first, in short transactions.

    Each batch is handed to `export` before it is deleted, so an export is never missing a pruned row;
    a batch is deleted by its exact ids, so rows written meanwhile are never touched.
    """
    db = storage.database()
    pruned = 0
    while True:
        with db.transaction(write=False) as tx:
            rows = tx.execute(f"SELECT {_COLUMNS} FROM audit_log WHERE ts < ? ORDER BY id LIMIT ?",  # noqa: S608
                              (before, batch))
        if not rows:
            return pruned
        found = [_entry(r) for r in rows]
        if export is not None:
            for entry in found:
                export(entry)
        with db.transaction() as tx:
            tx.execute("DELETE FROM audit_log WHERE id >= ? AND id <= ? AND ts < ?",
                       (found[0].id, found[-1].id, before))
        pruned += len(found)

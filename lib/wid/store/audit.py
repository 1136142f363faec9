"""Append-only audit log of every issuance, exchange, proof, refresh, push and denial.

Callers pass identifiers only (jti, sub, iss, actx); never a token, a password or a key.
"""

from __future__ import annotations

import json
import time
from typing import Any, NamedTuple

from wid.log import log, request_id
from wid.store import storage


def record(event: str, decision: str, *, api: str | None = None, actx: str | None = None,
           sub: str | None = None, iss: str | None = None, jti: str | None = None,
           tx: storage.Transaction | None = None, **detail: Any) -> None:
    """Write one audit row (inside `tx` when the event must commit or roll back with other writes)."""
    row = (int(time.time()), event, decision, api, actx, sub, iss, jti, request_id.get(),
           json.dumps(detail, default=str, sort_keys=True))
    sql = ("INSERT INTO audit_log (ts, event, decision, api, actx, sub, iss, jti, request_id, detail) "
           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
    if tx is not None:
        tx.execute(sql, row)
    else:
        with storage.database().transaction() as own:
            own.execute(sql, row)
    log("audit", audit_event=event, decision=decision, actx=actx, sub=sub, jti=jti)


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
    request_id: str | None
    detail: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return self._asdict()


def entries(*, actx: str | None = None, event: str | None = None, decision: str | None = None,
            since: int | None = None, limit: int = 100) -> list[AuditEntry]:
    where: list[str] = []
    params: list[object] = []
    for column, value in (("actx", actx), ("event", event), ("decision", decision)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if since is not None:
        where.append("ts >= ?")
        params.append(since)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    with storage.database().transaction(write=False) as tx:
        rows = tx.execute(f"SELECT id, ts, event, decision, api, actx, sub, iss, jti, request_id, detail "  # noqa: S608
                          f"FROM audit_log {clause} ORDER BY id DESC LIMIT ?", (*params, limit))
    return [AuditEntry(id=r[0], ts=r[1], event=r[2], decision=r[3], api=r[4], actx=r[5], sub=r[6], iss=r[7],
                       jti=r[8], request_id=r[9], detail=json.loads(r[10])) for r in reversed(rows)]

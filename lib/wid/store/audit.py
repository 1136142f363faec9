"""Append-only audit log of every issuance, exchange, proof, refresh, push, forwarded call, operator
action and denial.

Callers pass identifiers only (jti, sub, iss, actx, method, path); never a token, a password or a key.
Rows are pruned only by an operator (`wid audit prune`, docs/operator.md "Audit retention"). This module
writes the log, on the request paths; wid.store.audit_queries reads and prunes it, for operators.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from wid import metrics
from wid.log import log, request_id
from wid.store import storage


def operator() -> str:
    """Who ran an operator command: the login name (recorded with each operator action)."""
    import getpass  # operator commands only: a request would pay for termios

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


_INSERT = ("INSERT INTO audit_log (ts, event, decision, api, actx, sub, iss, jti, method, path, request_id, detail) "
           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


def record(event: str, decision: str, *, api: str | None = None, actx: str | None = None,
           sub: str | None = None, iss: str | None = None, jti: str | None = None, method: str | None = None,
           path: str | None = None, tx: storage.Transaction | None = None, **detail: Any) -> None:
    """Write one audit row (inside `tx` when the event must commit or roll back with other writes)."""
    row = (int(time.time()), event, decision, api, actx, sub, iss, jti, method, path, request_id.get(),
           json.dumps(detail, default=str, sort_keys=True))
    if tx is not None:
        tx.execute(_INSERT, row)
    else:
        storage.database().write_one(_INSERT, row)
    log("audit", audit_event=event, decision=decision, actx=actx, sub=sub, jti=jti)
    metrics.decision(event, decision)


def begin_call(event: str, *, api: str, actx: str, sub: str | None, iss: str | None, jti: str | None,
               method: str, path: str, **detail: Any) -> int:
    """Record a call allowed by policy before it is made with a stored credential; returns the row's id.

    If this write fails the call is not made (the caller's request ends in 503): no allowed call goes
    unrecorded. finish_call() adds what came of it.
    """
    row = (int(time.time()), event, "allow", api, actx, sub, iss, jti, method, path, request_id.get(),
           json.dumps(detail, default=str, sort_keys=True))
    found = storage.database().write_one(f"{_INSERT} RETURNING id", row)
    assert found is not None
    log("audit", audit_event=event, decision="allow", actx=actx, sub=sub, jti=jti, method=method, path=path)
    metrics.decision(event, "allow")
    return int(found[0])


def finish_call(entry: int, status: int, outcome: str | None = None) -> None:
    """The status the call was answered with (the upstream's, or ours when it could not be made)."""
    try:
        storage.database().write_one("UPDATE audit_log SET status = ?, outcome = ? WHERE id = ?",
                                     (status, outcome, entry))
    except storage.DatabaseUnavailable as exc:  # the call was made and is recorded; only its status is lost
        log("audit_finish_failed", level="error", entry=entry, status=status, message=str(exc))

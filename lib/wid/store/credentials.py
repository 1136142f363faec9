"""Credentials the proxy holds for an upstream context (a team's OAuth tokens, a DID's DPoP session).

Stored encrypted with WID_SECRET_KEY, one row per (API, context). `locked()` serialises writers of one
context across processes and replicas (a sign-in storing tokens, a refresh claiming its lease or
storing its result); it is a write transaction, so never hold it across a network call (refreshes:
wid.upstreams.credential_refresh).
"""

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from wid.store import encryption, storage

ACTIVE = "active"
REVOKED = "revoked"


class Credential:
    # A slotted class, not a NamedTuple (docs/architecture.md, "What a request imports").
    __slots__ = ("actx", "api", "data", "status", "status_reason", "updated_at")

    def __init__(self, api: str, actx: str, data: dict[str, Any], status: str, status_reason: str | None,
                 updated_at: int) -> None:
        self.api = api
        self.actx = actx
        self.data = data
        self.status = status
        self.status_reason = status_reason
        self.updated_at = updated_at


def _read(tx: storage.Transaction, api: str, actx: str) -> Credential | None:
    row = tx.one("SELECT sealed, status, status_reason, updated_at FROM upstream_credentials "
                 "WHERE api = ? AND actx = ?", (api, actx))
    if row is None:
        return None
    return Credential(api, actx, json.loads(encryption.unseal(bytes(row[0]))), row[1], row[2], row[3])


def get(api: str, actx: str) -> Credential | None:
    with storage.database().transaction(write=False) as tx:
        return _read(tx, api, actx)


def put(tx: storage.Transaction, api: str, actx: str, data: dict[str, Any], *, status: str = ACTIVE,
        reason: str | None = None) -> None:
    sealed = encryption.seal(json.dumps(data).encode())
    now = int(time.time())
    tx.execute("INSERT INTO upstream_credentials (api, actx, sealed, status, status_reason, created_at, updated_at) "
               "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (api, actx) DO UPDATE SET sealed = excluded.sealed, "
               "status = excluded.status, status_reason = excluded.status_reason, updated_at = excluded.updated_at",
               (api, actx, sealed, status, reason, now, now))


def store(api: str, actx: str, data: dict[str, Any]) -> None:
    with storage.database().transaction() as tx:
        put(tx, api, actx, data)


def contexts(api: str) -> list[tuple[str, str, str | None, int]]:
    """(actx, status, reason, updated_at) for every context of `api` that has a credential."""
    with storage.database().transaction(write=False) as tx:
        rows = tx.execute("SELECT actx, status, status_reason, updated_at FROM upstream_credentials WHERE api = ? "
                          "ORDER BY updated_at DESC", (api,))
    return [(r[0], r[1], r[2], r[3]) for r in rows]


@contextmanager
def locked(api: str, actx: str) -> Iterator[tuple[storage.Transaction, Credential | None]]:
    """A write transaction holding this context's credential lock, with the current value re-read inside it."""
    with storage.database().transaction() as tx:
        tx.lock(f"credential:{api}:{actx}")
        yield tx, _read(tx, api, actx)

"""Leases: one process (of any replica) at a time does a slow job that others must not repeat.

A lease is claimed and released inside the caller's short write transactions (the caller holds the
row lock of what it protects, so it can re-read that state in the same transaction); the job itself
runs between them with no transaction open, so no database lock is held across a network call. A
lease ends when its holder releases it or at `expires_at`, so a holder that crashed blocks no one for
longer than the lease. Whoever claims a lease that expired without a release is told so
(`Claim.took_over`): the crashed or stalled holder may have done part of the job.
"""

import math
import os
import time

from wid.store import storage


class Claim:
    # A slotted class, not a NamedTuple (docs/architecture.md, "What a request imports").
    __slots__ = ("expires_at", "holder", "name", "took_over")

    def __init__(self, name: str, holder: str, expires_at: int, took_over: bool) -> None:
        self.name = name
        self.holder = holder
        self.expires_at = expires_at
        self.took_over = took_over  # the previous holder's lease expired without a release


def claim(tx: storage.Transaction, name: str, seconds: float) -> Claim | None:
    """Take the lease on `name` for `seconds` unless someone else holds it; inside a write transaction."""
    now = time.time()
    row = tx.one("SELECT expires_at FROM leases WHERE name = ?", (name,))
    if row is not None and row[0] > now:
        return None
    # os.urandom, as secrets.token_hex does: importing secrets loads hmac and hashlib (7 M instructions of
    # every forwarded API call, which imports this module).
    lease = Claim(name, os.urandom(12).hex(), math.ceil(now + seconds), row is not None)
    tx.execute("INSERT INTO leases (name, holder, claimed_at, expires_at) VALUES (?, ?, ?, ?) ON CONFLICT (name) "
               "DO UPDATE SET holder = excluded.holder, claimed_at = excluded.claimed_at, "
               "expires_at = excluded.expires_at", (name, lease.holder, int(now), lease.expires_at))
    return lease


def release(tx: storage.Transaction, lease: Claim) -> bool:
    """End our lease; False when it was no longer ours (it expired and someone else claimed it)."""
    row = tx.one("SELECT holder FROM leases WHERE name = ?", (lease.name,))
    if row is None or row[0] != lease.holder:
        return False
    tx.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (lease.name, lease.holder))
    return True

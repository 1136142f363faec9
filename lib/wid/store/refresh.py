"""Refresh token families: opaque secrets, stored as SHA-256 hashes, rotated on every use.

A family starts when a Droplet proves (or recovers) its host key; each refresh marks the presented
token used and adds the next generation. Presenting a token that was already used means two
parties hold the chain (or a response was lost): the whole family is revoked and the event audited,
and the Droplet must come back through recovery (docs/droplets.md).
"""

import hashlib
import secrets
import time
from typing import NamedTuple

from wid.store import storage

PREFIX = "widrt_"
ACTIVE, REVOKED = "active", "revoked"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def looks_like_refresh_token(token: object) -> bool:
    return isinstance(token, str) and token.startswith(PREFIX) and 40 <= len(token) <= 100 and token.isascii()


class RefreshRecord(NamedTuple):
    token_hash: str
    family_id: str
    team_uuid: str
    droplet_id: int
    generation: int
    expires_at: int
    used_at: int | None
    family_state: str
    revoked_reason: str | None


def _new_token(tx: storage.Transaction, family_id: str, generation: int, now: int, ttl: int) -> tuple[str, int]:
    token = PREFIX + secrets.token_urlsafe(32)
    expires = now + ttl
    tx.execute("INSERT INTO refresh_tokens (token_hash, family_id, generation, created_at, expires_at) "
               "VALUES (?, ?, ?, ?, ?)", (token_hash(token), family_id, generation, now, expires))
    return token, expires


def prune(tx: storage.Transaction, now: int) -> None:
    """Forget expired refresh tokens (a used one is kept until it expires, to detect its reuse) and
    revoked or idle families that no longer have any."""
    tx.execute("DELETE FROM refresh_tokens WHERE expires_at < ?", (now,))
    tx.execute("DELETE FROM refresh_families WHERE updated_at < ? AND NOT EXISTS "
               "(SELECT 1 FROM refresh_tokens t WHERE t.family_id = refresh_families.family_id)", (now - 86400,))


def start_family(tx: storage.Transaction, team_uuid: str, droplet_id: int, now: int, ttl: int) -> tuple[str, str]:
    """(family id, first refresh token) for a Droplet that just proved its host key."""
    prune(tx, now)
    family_id = secrets.token_hex(12)
    tx.execute("INSERT INTO refresh_families (family_id, team_uuid, droplet_id, state, created_at, updated_at) "
               "VALUES (?, ?, ?, ?, ?, ?)", (family_id, team_uuid, droplet_id, ACTIVE, now, now))
    token, _ = _new_token(tx, family_id, 1, now, ttl)
    return family_id, token


def lookup(token: str) -> RefreshRecord | None:
    with storage.database().transaction(write=False) as tx:
        return _read(tx, token_hash(token))


def _read(tx: storage.Transaction, digest: str) -> RefreshRecord | None:
    row = tx.one("SELECT t.token_hash, t.family_id, f.team_uuid, f.droplet_id, t.generation, t.expires_at, "
                 "t.used_at, f.state, f.revoked_reason FROM refresh_tokens t JOIN refresh_families f "
                 "ON f.family_id = t.family_id WHERE t.token_hash = ?", (digest,))
    if row is None:
        return None
    return RefreshRecord(row[0], row[1], row[2], int(row[3]), int(row[4]), int(row[5]),
                         None if row[6] is None else int(row[6]), row[7], row[8])


def revoke_family(tx: storage.Transaction, family_id: str, reason: str, now: int | None = None) -> bool:
    """Revoke a family; True if it was active until now."""
    rows = tx.execute("UPDATE refresh_families SET state = ?, revoked_reason = ?, updated_at = ? "
                      "WHERE family_id = ? AND state = ? RETURNING family_id",
                      (REVOKED, reason, now or int(time.time()), family_id, ACTIVE))
    return bool(rows)


def revoke_droplet_families(tx: storage.Transaction, team_uuid: str, droplet_id: int, reason: str,
                            now: int) -> list[str]:
    rows = tx.execute("UPDATE refresh_families SET state = ?, revoked_reason = ?, updated_at = ? "
                      "WHERE team_uuid = ? AND droplet_id = ? AND state = ? RETURNING family_id",
                      (REVOKED, reason, now, team_uuid, droplet_id, ACTIVE))
    return [r[0] for r in rows]


class Reused(Exception):
    """The presented refresh token had been used already (possibly by a concurrent request)."""


class Revoked(Exception):
    """The token's family was revoked (reuse, recovery, a destroyed Droplet)."""


def rotate(tx: storage.Transaction, record: RefreshRecord, now: int, ttl: int) -> tuple[str, int]:
    """Mark `record` used and return (next refresh token, its expiry).

    Raises Revoked or Reused (the caller then revokes the family and commits that). Call inside a
    transaction holding lock(f"refresh:{family_id}"), so concurrent uses are decided one at a time.
    """
    state = tx.one("SELECT state FROM refresh_families WHERE family_id = ?", (record.family_id,))
    if state is None or state[0] != ACTIVE:
        raise Revoked(record.family_id)
    used = tx.execute("UPDATE refresh_tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL "
                      "RETURNING generation", (now, record.token_hash))
    if not used:
        raise Reused(record.family_id)
    tx.execute("UPDATE refresh_families SET updated_at = ? WHERE family_id = ?", (now, record.family_id))
    return _new_token(tx, record.family_id, record.generation + 1, now, ttl)

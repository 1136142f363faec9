"""Key sets with a staged lifecycle: one implementation for every kind of key we publish and sign with,
our token-signing keys (lib/wid/store/keys.py) and the ATProto OAuth client keys
(lib/wid/upstreams/atproto/client.py). A KeyKind names the table and how a key is made and loaded.

States: `next` (published, not signing yet), `active` (signs; exactly one, which a partial unique
index enforces, so two concurrent first requests cannot both create one), `retired` (no longer signs;
stays published and usable until its verify window ends or, for a kind whose retired keys serve
sessions, until prune finds them unused), `revoked` (dropped at once by an emergency rotation: neither
published nor usable).

A scheduled rotation publishes the next key first and lets it sign only from `activate_at`, once every
cached copy of the published set lists it (the kind's activation delay); the first process that needs
the active key after `activate_at` promotes it under the kind's lock. Rows stay readable by code that
predates `next`: such code signs with `state = 'active'`.

Generations: every change to a key set bumps its row in key_generations in the same transaction. A
process caches keys under the generation it read them at and re-reads the generation (one primary-key
read) at every use, so a revoked key stops signing and verifying on every process and replica from
their next request. Entries also expire after ACTIVE_KEY_CACHE_SECONDS, for writers that do not bump
the generation (an older release during a rolling deploy), and at a due activation or verify_until.
"""

import json
import time
from collections.abc import Callable
from typing import Any, Generic, NamedTuple, TypeVar, cast

from wid import metrics
from wid.store import encryption, storage

# The longest a process keeps a cached key without noticing a change that did not bump the generation.
ACTIVE_KEY_CACHE_SECONDS = 30
# Beyond the publication and cache lifetime of a key set, before a next key signs.
ACTIVATION_SLACK_SECONDS = 60

K = TypeVar("K")


class KeyKind(Generic[K]):
    """One kind of key kept by this module. A plain class, not a dataclass: `dataclasses` imports `inspect`,
    which a CGI process would pay for on every request (bench/bench_exchange.py prints the import times)."""

    __slots__ = ("activation_delay", "columns", "generate", "load", "name", "retired_until_pruned", "table")

    def __init__(self, *, name: str, table: str, generate: Callable[[], tuple[K, dict[str, Any], bytes]],
                 load: Callable[[str, bytes], K], activation_delay: Callable[[], int],
                 retired_until_pruned: bool = False, columns: dict[str, str] | None = None) -> None:
        self.name = name  # its row in key_generations, its lock and its cache entries
        self.table = table
        self.generate = generate  # a new key, its public JWK (with kid), what is sealed
        self.load = load  # kid and unsealed bytes: the key
        self.activation_delay = activation_delay  # seconds between publishing a next key and signing with it
        self.retired_until_pruned = retired_until_pruned  # retired keys serve their sessions until pruned
        self.columns = columns or {}  # constant columns of the table (signing_keys.alg)

    @property
    def lock(self) -> str:
        return f"wid-keys-{self.name}"

    @property
    def cache(self) -> str:
        return f"keyring:{self.name}:"

    @property
    def usable(self) -> str:
        """SQL: the rows that are published and may verify (or, for client keys, serve their sessions)."""
        if self.retired_until_pruned:
            return "state IN ('active', 'next', 'retired')"
        return "(state IN ('active', 'next') OR (state = 'retired' AND verify_until > ?))"

    def usable_params(self, now: int) -> tuple[int, ...]:
        return () if self.retired_until_pruned else (now,)


class KeyInfo(NamedTuple):
    kid: str
    state: str
    created_at: int
    retired_at: int | None
    verify_until: int | None
    activate_at: int | None
    jwk: dict[str, Any]


class Rotation(NamedTuple):
    previous: str | None  # scheduled: the key that signs until `activate_at`; emergency: the key dropped
    kid: str  # the new key
    activate_at: int  # when it signs


class RotationError(Exception):
    """A rotation that cannot be done now; the message says why and what to do instead."""


_MISSING = object()


_GENERATION = "SELECT generation FROM key_generations WHERE name = ?"


def _generation(kind: KeyKind[Any], tx: storage.Transaction | None = None) -> int:
    """The key set's generation: in `tx`, or on its own (the check before every use of a cached key)."""
    row = tx.one(_GENERATION, (kind.name,)) if tx else storage.database().read_one(_GENERATION, (kind.name,))
    return int(row[0]) if row else 0


def _bump(tx: storage.Transaction, kind: KeyKind[Any]) -> None:
    tx.execute("INSERT INTO key_generations (name, generation) VALUES (?, 1) ON CONFLICT (name) "
               "DO UPDATE SET generation = key_generations.generation + 1", (kind.name,))


def _cached(db: storage.Database, kind: KeyKind[Any], key: str, now: float) -> tuple[Any, int | None]:
    """The remembered value if the key set's generation still is the one it was read at, else _MISSING; and the
    generation when it was read. Nothing remembered (always so in a CGI process): no read here, the caller
    reads the generation with the rows."""
    with db.cache_lock:
        entry = db.cache.get(key)
    if entry is None:
        metrics.cache(kind.table, hit=False)
        return _MISSING, None
    generation = _generation(kind)
    if entry[0] == generation and now < entry[1]:
        metrics.cache(kind.table, hit=True)
        return entry[2], generation
    metrics.cache(kind.table, hit=False)
    return _MISSING, generation


def _remember(db: storage.Database, key: str, generation: int, until: float, value: Any) -> None:
    with db.cache_lock:
        db.cache[key] = (generation, until, value)


def _insert(tx: storage.Transaction, kind: KeyKind[K], now: int, state: str = "active",
            activate_at: int | None = None, verify_until: int | None = None) -> tuple[str, K]:
    key, jwk, secret = kind.generate()
    names = ", ".join(kind.columns)
    tx.execute(f"INSERT INTO {kind.table} (kid, state, private_key, public_jwk, created_at, activate_at, "  # noqa: S608
               f"verify_until{', ' if names else ''}{names}) VALUES (?, ?, ?, ?, ?, ?, ?{', ?' * len(kind.columns)})",
               (jwk["kid"], state, encryption.seal(secret), json.dumps(jwk), now, activate_at, verify_until,
                *kind.columns.values()))
    _bump(tx, kind)
    return jwk["kid"], key


def _load(kind: KeyKind[K], row: storage.Row) -> K:
    return kind.load(str(row[0]), encryption.unseal(bytes(row[1])))


def _promote_due(tx: storage.Transaction, kind: KeyKind[Any], now: int) -> None:
    """The next key signs from its activate_at: the active key retires, usable as long as the rotation said."""
    row = tx.one(f"SELECT kid, activate_at, verify_until FROM {kind.table} "  # noqa: S608
                 "WHERE state = 'next' AND activate_at <= ?", (now,))
    if row is None:
        return
    grace = int(row[2]) - int(row[1])  # the retiring key's window, fixed when the rotation was scheduled
    tx.execute(f"UPDATE {kind.table} SET state = 'retired', retired_at = ?, verify_until = ? "  # noqa: S608
               "WHERE state = 'active'", (now, now + grace))
    tx.execute(f"UPDATE {kind.table} SET state = 'active', verify_until = NULL WHERE kid = ?", (row[0],))  # noqa: S608
    _bump(tx, kind)


def active(kind: KeyKind[K]) -> K:
    """The key to sign with; created on first need, and a due next key promoted, under the kind's lock."""
    db = storage.database()
    now = int(time.time())
    cached, generation = _cached(db, kind, kind.cache + "active", now)
    if cached is not _MISSING:
        return cast(K, cached)
    with db.transaction(write=False) as tx:
        # The generation before the rows: a change between the two reads is seen at the next use.
        generation = _generation(kind, tx) if generation is None else generation
        rows = tx.execute(f"SELECT kid, private_key, state, activate_at FROM {kind.table} "  # noqa: S608
                          "WHERE state IN ('active', 'next')")
    current = next((r for r in rows if r[2] == "active"), None)
    pending = [int(r[3]) for r in rows if r[2] == "next" and r[3] is not None]
    if current is None or any(at <= now for at in pending):  # no key yet, or a next key is due
        with db.transaction() as tx:
            tx.lock(kind.lock)
            encryption.check_key(tx)
            _promote_due(tx, kind, now)
            row = tx.one(f"SELECT kid, private_key FROM {kind.table} WHERE state = 'active'")  # noqa: S608
            key = _load(kind, row) if row else _insert(tx, kind, now)[1]
            generation = _generation(kind, tx)
            pending = [int(r[0]) for r in tx.execute(f"SELECT activate_at FROM {kind.table} "  # noqa: S608
                                                     "WHERE state = 'next' AND activate_at IS NOT NULL")]
    else:
        key = _load(kind, current)
    _remember(db, kind.cache + "active", generation, min([now + ACTIVE_KEY_CACHE_SECONDS, *pending]), key)
    return key


def usable_key(kind: KeyKind[K], kid: str) -> K | None:
    """The private key `kid` if it is still usable (a session bound to it signs with it); never a revoked one."""
    db = storage.database()
    now = int(time.time())
    cached, generation = _cached(db, kind, f"{kind.cache}key:{kid}", now)
    if cached is not _MISSING:
        return cast(K, cached)
    with db.transaction(write=False) as tx:
        generation = _generation(kind, tx) if generation is None else generation
        row = tx.one(f"SELECT kid, private_key, verify_until, state FROM {kind.table} "  # noqa: S608
                     f"WHERE kid = ? AND {kind.usable}", (kid, *kind.usable_params(now)))
    if row is None:
        return None  # not remembered: a cache of misses would grow without end
    key = _load(kind, row)
    _remember(db, f"{kind.cache}key:{kid}", generation, _until(kind, now, row[3], row[2]), key)
    return key


def public_jwk(kind: KeyKind[Any], kid: str) -> dict[str, Any] | None:
    """A key that may verify now: active, next (its tokens may appear as soon as it activates), or retired
    and still usable; never a revoked one. published() lists the same keys."""
    db = storage.database()
    now = int(time.time())
    cached, generation = _cached(db, kind, f"{kind.cache}public:{kid}", now)
    if cached is not _MISSING:
        return cast(dict[str, Any], cached)
    with db.transaction(write=False) as tx:
        generation = _generation(kind, tx) if generation is None else generation
        row = tx.one(f"SELECT public_jwk, verify_until, state FROM {kind.table} "  # noqa: S608
                     f"WHERE kid = ? AND {kind.usable}", (kid, *kind.usable_params(now)))
    if row is None:
        return None  # not remembered: the kid comes from a token, and a cache of misses would grow without end
    jwk: dict[str, Any] = json.loads(row[0])
    _remember(db, f"{kind.cache}public:{kid}", generation, _until(kind, now, row[2], row[1]), jwk)
    return jwk


def _until(kind: KeyKind[Any], now: int, state: str, verify_until: int | None) -> int:
    """How long a cached key may be trusted without a generation change: a retired one, within its window."""
    if state == "retired" and not kind.retired_until_pruned and verify_until is not None:
        return min(now + ACTIVE_KEY_CACHE_SECONDS, int(verify_until))
    return now + ACTIVE_KEY_CACHE_SECONDS


def published(kind: KeyKind[Any]) -> list[dict[str, Any]]:
    """Every key a verifier may need: the active one first, then the next one, then usable retired ones."""
    now = int(time.time())
    with storage.database().transaction(write=False) as tx:
        rows = tx.execute(f"SELECT public_jwk FROM {kind.table} WHERE {kind.usable} "  # noqa: S608
                          "ORDER BY state = 'active' DESC, state = 'next' DESC, created_at DESC",
                          kind.usable_params(now))
    return [json.loads(r[0]) for r in rows]


def listing(kind: KeyKind[Any]) -> list[KeyInfo]:
    with storage.database().transaction(write=False) as tx:
        rows = tx.execute(f"SELECT kid, state, created_at, retired_at, verify_until, activate_at, "  # noqa: S608
                          f"public_jwk FROM {kind.table} ORDER BY created_at DESC, "
                          # Within one second the states say which key is newer (a rotation's next key...).
                          "CASE state WHEN 'next' THEN 0 WHEN 'active' THEN 1 WHEN 'retired' THEN 2 ELSE 3 END")
    return [KeyInfo(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6])) for r in rows]


def rotate(kind: KeyKind[Any], grace: int) -> Rotation:
    """Publish a next key that signs from now + the kind's activation delay; the active key then retires and
    stays usable for `grace` seconds. Without an active key, the first key signs at once."""
    now = int(time.time())
    with storage.database().transaction() as tx:
        tx.lock(kind.lock)
        encryption.check_key(tx)
        _promote_due(tx, kind, now)
        pending = tx.one(f"SELECT kid, activate_at FROM {kind.table} WHERE state = 'next'")  # noqa: S608
        if pending is not None:
            raise RotationError(f"key {pending[0]} is already published and starts signing at "
                                f"{stamp(pending[1])}; rotate again after that, or use --emergency to drop the "
                                "active key now")
        current = tx.one(f"SELECT kid FROM {kind.table} WHERE state = 'active'")  # noqa: S608
        if current is None:
            return Rotation(None, _insert(tx, kind, now)[0], now)
        activate_at = now + kind.activation_delay()
        # verify_until of a next key: what code predating `next` publishes signing keys by, and (minus
        # activate_at) the retiring key's window once this key is promoted.
        kid, _ = _insert(tx, kind, now, "next", activate_at, activate_at + grace)
    return Rotation(current[0], kid, activate_at)


def rotate_emergency(kind: KeyKind[Any]) -> Rotation:
    """For a compromised active key: drop it at once (it is no longer published nor usable, on any process
    from its next request) and sign with the next key if one is published, else with a new key."""
    now = int(time.time())
    with storage.database().transaction() as tx:
        tx.lock(kind.lock)
        encryption.check_key(tx)
        current = tx.one(f"SELECT kid FROM {kind.table} WHERE state = 'active'")  # noqa: S608
        tx.execute(f"UPDATE {kind.table} SET state = 'revoked', retired_at = ?, verify_until = ? "  # noqa: S608
                   "WHERE state = 'active'", (now, now))
        pending = tx.one(f"SELECT kid FROM {kind.table} WHERE state = 'next'")  # noqa: S608
        if pending is not None:
            tx.execute(f"UPDATE {kind.table} SET state = 'active', activate_at = ?, verify_until = NULL "  # noqa: S608
                       "WHERE kid = ?", (now, pending[0]))
            kid = str(pending[0])
        else:
            kid = _insert(tx, kind, now, activate_at=now)[0]
        _bump(tx, kind)
    return Rotation(current[0] if current else None, kid, now)


def stamp(timestamp: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def prune(kind: KeyKind[Any], keep: frozenset[str] = frozenset()) -> list[str]:
    """Delete revoked keys, and retired keys past their window except those in `keep` (still needed)."""
    now = int(time.time())
    with storage.database().transaction() as tx:
        tx.lock(kind.lock)
        # A retired row written before verify_until was set for this kind counts from its retired_at.
        rows = tx.execute(f"SELECT kid, state FROM {kind.table} WHERE state IN ('retired', 'revoked') AND "  # noqa: S608
                          "COALESCE(verify_until, retired_at) <= ?", (now,))
        gone = [str(r[0]) for r in rows if r[1] == "revoked" or r[0] not in keep]
        for kid in gone:
            tx.execute(f"DELETE FROM {kind.table} WHERE kid = ?", (kid,))  # noqa: S608
        if gone:
            _bump(tx, kind)
    return gone

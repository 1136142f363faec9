"""Signing keys: RSA 2048 for RS256, generated on first need, rotated and pruned by `wid keys`.

States: `next` (published in the JWKS, not signing yet), `active` (signs; exactly one, which a
partial unique index enforces, so two concurrent first requests cannot both create one), `retired`
(no longer signs, keeps verifying and stays published until every token it can have signed has
expired: WID_MAX_TOKEN_TTL, config.Settings.max_token_ttl, bounds every token we sign),
`revoked` (dropped at once by an emergency rotation: neither verifies nor is published).

A scheduled rotation publishes the next key first and lets it sign only from `activate_at`, once
every replica has re-published its JWKS file and every cached copy of the old file has expired
(`activation_delay()`): a verifier never holds a token whose key is missing from the set it fetched.
The first process that needs the active key after `activate_at` promotes the next key (a short
write transaction under the signing-key lock). Rows stay readable by code that predates `next`: such
code looks for `state = 'active'` to sign, and publishes `active` rows and rows with `verify_until`
in the future, which a `next` row has.
"""

from __future__ import annotations

import json
import time
from typing import Any, NamedTuple, cast

from cryptography.hazmat.primitives.asymmetric import rsa

from wid import config, metrics
from wid.core import jose
from wid.store import encryption, storage

# A process caches the active key this long; a key retired by another process may sign until then.
ACTIVE_KEY_CACHE_SECONDS = 30
# Beyond a replica's publish interval and the JWKS max-age, before a next key signs.
ACTIVATION_SLACK_SECONDS = 60


class SigningKey(NamedTuple):
    kid: str
    private_key: rsa.RSAPrivateKey


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


def activation_delay() -> int:
    """Seconds between publishing a next key and signing with it: every replica re-publishes its JWKS
    file within WID_PUBLISH_INTERVAL, and every copy fetched before that expires WID_JWKS_MAX_AGE later."""
    s = config.settings()
    return s.publish_interval + s.jwks_max_age + ACTIVATION_SLACK_SECONDS


def _cached(db: storage.Database, key: str) -> Any:
    with db.cache_lock:
        entry = db.cache.get(key)
    if entry is not None and time.monotonic() - entry[0] < ACTIVE_KEY_CACHE_SECONDS:
        metrics.cache("signing_keys", hit=True)
        return entry[1]
    metrics.cache("signing_keys", hit=False)
    return _MISSING


def _remember(db: storage.Database, key: str, value: Any) -> None:
    with db.cache_lock:
        db.cache[key] = (time.monotonic(), value)


def _forget(db: storage.Database) -> None:
    with db.cache_lock:
        for key in [k for k in db.cache if k.startswith("keys:")]:
            del db.cache[key]


_MISSING = object()


def _new_key() -> tuple[rsa.RSAPrivateKey, dict[str, str]]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return private, jose.rsa_jwk(private.public_key())


def _insert(tx: storage.Transaction, now: int, state: str = "active", activate_at: int | None = None,
            verify_until: int | None = None) -> SigningKey:
    private, jwk = _new_key()
    tx.execute("INSERT INTO signing_keys (kid, alg, state, private_key, public_jwk, created_at, activate_at, "
               "verify_until) VALUES (?, 'RS256', ?, ?, ?, ?, ?, ?)",
               (jwk["kid"], state, encryption.seal(_private_numbers_json(private)), json.dumps(jwk), now,
                activate_at, verify_until))
    return SigningKey(jwk["kid"], private)


# The private key is stored as its RSA numbers (JSON, sealed with Fernet) rather than PEM: rebuilding
# it from numbers needs no `serialization` import (~4 ms per CGI process) and no re-validation of
# parameters that Fernet already authenticated (~65 ms).
_NUMBER_FIELDS = ("p", "q", "d", "dmp1", "dmq1", "iqmp")


def _private_numbers_json(private: rsa.RSAPrivateKey) -> bytes:
    numbers = private.private_numbers()
    fields = {name: getattr(numbers, name) for name in _NUMBER_FIELDS}
    fields.update(e=numbers.public_numbers.e, n=numbers.public_numbers.n)
    return json.dumps({name: format(value, "x") for name, value in fields.items()}).encode()


def _load(kid: str, sealed: bytes) -> SigningKey:
    plain = encryption.unseal(sealed)
    if plain.startswith(b"-----BEGIN"):  # keys written before the numbers format: PKCS#8 PEM
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        pem_key = load_pem_private_key(plain, password=None, unsafe_skip_rsa_key_validation=True)
        if not isinstance(pem_key, rsa.RSAPrivateKey):
            raise config.ConfigError(f"signing key {kid} in the database is not an RSA key")
        return SigningKey(kid, pem_key)
    values = {name: int(value, 16) for name, value in json.loads(plain).items()}
    public = rsa.RSAPublicNumbers(values["e"], values["n"])
    numbers = rsa.RSAPrivateNumbers(public_numbers=public, **{name: values[name] for name in _NUMBER_FIELDS})
    return SigningKey(kid, numbers.private_key(unsafe_skip_rsa_key_validation=True))


def active_key() -> SigningKey:
    """The key to sign with; created on first need, and a due next key promoted, under the signing-key lock."""
    db = storage.database()
    cached = _cached(db, "keys:active")
    if cached is not _MISSING:
        return cast(SigningKey, cached)
    now = int(time.time())
    with db.transaction(write=False) as tx:
        rows = tx.execute("SELECT kid, private_key, state FROM signing_keys WHERE state = 'active' OR "
                          "(state = 'next' AND activate_at <= ?)", (now,))
    row = next((r for r in rows if r[2] == "active"), None)
    if row is None or len(rows) > 1:  # no key yet, or a next key is due
        with db.transaction() as tx:
            tx.lock("wid-signing-keys")
            encryption.check_key(tx)
            _promote_due(tx, now)
            row = tx.one("SELECT kid, private_key FROM signing_keys WHERE state = 'active'")
            key = _load(row[0], row[1]) if row else _insert(tx, now)
    else:
        key = _load(row[0], row[1])
    _remember(db, "keys:active", key)
    return key


def _promote_due(tx: storage.Transaction, now: int) -> None:
    """The next key signs from its activate_at: the active key retires, verifying as long as the rotation said."""
    row = tx.one("SELECT kid, activate_at, verify_until FROM signing_keys WHERE state = 'next' AND activate_at <= ?",
                 (now,))
    if row is None:
        return
    grace = int(row[2]) - int(row[1])  # the retiring key's verify window, fixed when the rotation was scheduled
    tx.execute("UPDATE signing_keys SET state = 'retired', retired_at = ?, verify_until = ? WHERE state = 'active'",
               (now, now + grace))
    tx.execute("UPDATE signing_keys SET state = 'active', verify_until = NULL WHERE kid = ?", (row[0],))


def public_jwk(kid: str) -> dict[str, Any] | None:
    """A key that may verify tokens now: active, next (its tokens may appear as soon as it activates), or
    retired and still within its verify window; never a revoked one. published() lists the same keys."""
    db = storage.database()
    cached = _cached(db, f"keys:public:{kid}")
    if cached is not _MISSING:
        return cast(dict[str, Any] | None, cached)
    with db.transaction(write=False) as tx:
        row = tx.one("SELECT public_jwk FROM signing_keys WHERE kid = ? AND "
                     "(state IN ('active', 'next') OR (state = 'retired' AND verify_until > ?))",
                     (kid, int(time.time())))
    if row is None:
        return None  # not remembered: the kid comes from a token, and a cache of misses would grow without end
    jwk: dict[str, Any] = json.loads(row[0])
    _remember(db, f"keys:public:{kid}", jwk)
    return jwk


def published() -> list[dict[str, Any]]:
    """Every key a verifier may need: the active one first, then the next one, then retired ones still verifying."""
    with storage.database().transaction(write=False) as tx:
        rows = tx.execute("SELECT public_jwk FROM signing_keys WHERE "
                          "state IN ('active', 'next') OR (state = 'retired' AND verify_until > ?) "
                          "ORDER BY state = 'active' DESC, state = 'next' DESC, created_at DESC", (int(time.time()),))
    return [json.loads(r[0]) for r in rows]


def listing() -> list[KeyInfo]:
    with storage.database().transaction(write=False) as tx:
        rows = tx.execute("SELECT kid, state, created_at, retired_at, verify_until, activate_at, public_jwk "
                          "FROM signing_keys ORDER BY created_at DESC")
    return [KeyInfo(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6])) for r in rows]


def rotate(max_token_ttl: int) -> Rotation:
    """Publish a next key that signs from now + activation_delay(); the active key then retires and keeps
    verifying for max_token_ttl + cache time. On a database without a key, the first key signs at once."""
    now = int(time.time())
    db = storage.database()
    with db.transaction() as tx:
        tx.lock("wid-signing-keys")
        encryption.check_key(tx)
        _promote_due(tx, now)
        pending = tx.one("SELECT kid, activate_at FROM signing_keys WHERE state = 'next'")
        if pending is not None:
            raise RotationError(f"key {pending[0]} is already published and starts signing at "
                                f"{_when(pending[1])}; rotate again after that, or use --emergency to drop the "
                                "active key now")
        active = tx.one("SELECT kid FROM signing_keys WHERE state = 'active'")
        if active is None:
            return Rotation(None, _insert(tx, now).kid, now)
        activate_at = now + activation_delay()
        # verify_until of a next key: what code predating `next` publishes by, and (minus activate_at)
        # the retiring key's verify window once this key is promoted.
        grace = max_token_ttl + ACTIVE_KEY_CACHE_SECONDS + 60
        new = _insert(tx, now, "next", activate_at, activate_at + grace)
    _forget(db)
    return Rotation(active[0], new.kid, activate_at)


def rotate_emergency() -> Rotation:
    """For a compromised active key: drop it at once (it stops verifying; every token it signed is refused)
    and sign with the next key if one is published, else with a new key."""
    now = int(time.time())
    db = storage.database()
    with db.transaction() as tx:
        tx.lock("wid-signing-keys")
        encryption.check_key(tx)
        active = tx.one("SELECT kid FROM signing_keys WHERE state = 'active'")
        tx.execute("UPDATE signing_keys SET state = 'revoked', retired_at = ?, verify_until = ? WHERE state = 'active'",
                   (now, now))
        pending = tx.one("SELECT kid FROM signing_keys WHERE state = 'next'")
        if pending is not None:
            tx.execute("UPDATE signing_keys SET state = 'active', activate_at = ?, verify_until = NULL WHERE kid = ?",
                       (now, pending[0]))
            kid = str(pending[0])
        else:
            kid = _insert(tx, now, activate_at=now).kid
    _forget(db)
    return Rotation(active[0] if active else None, kid, now)


def _when(timestamp: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def prune() -> list[str]:
    """Delete retired keys that can no longer have a valid token, and revoked keys."""
    now = int(time.time())
    with storage.database().transaction() as tx:
        rows = tx.execute("SELECT kid FROM signing_keys WHERE state IN ('retired', 'revoked') AND verify_until <= ?",
                          (now,))
        tx.execute("DELETE FROM signing_keys WHERE state IN ('retired', 'revoked') AND verify_until <= ?", (now,))
    return [r[0] for r in rows]

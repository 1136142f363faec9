"""Signing keys: RSA 2048 for RS256, generated on first need, rotated and pruned by `wid keys`.

Exactly one key is active (a partial unique index enforces it, so two concurrent first requests
cannot both create one). A retired key keeps verifying, and stays in the JWKS, until every token it
can have signed has expired: tokens.MAX_TOKEN_TTL bounds every token we sign.
"""

from __future__ import annotations

import json
import time
from typing import Any, NamedTuple, cast

from cryptography.hazmat.primitives.asymmetric import rsa

from wid import config
from wid.core import jose
from wid.store import encryption, storage

# A process caches the active key this long; a key retired by another process may sign until then.
ACTIVE_KEY_CACHE_SECONDS = 30


class SigningKey(NamedTuple):
    kid: str
    private_key: rsa.RSAPrivateKey


class KeyInfo(NamedTuple):
    kid: str
    state: str
    created_at: int
    retired_at: int | None
    verify_until: int | None
    jwk: dict[str, Any]


def _cached(db: storage.Database, key: str) -> Any:
    with db.cache_lock:
        entry = db.cache.get(key)
    if entry and time.monotonic() - entry[0] < ACTIVE_KEY_CACHE_SECONDS:
        return entry[1]
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


def _insert_active(tx: storage.Transaction, now: int) -> SigningKey:
    private, jwk = _new_key()
    tx.execute("INSERT INTO signing_keys (kid, alg, state, private_key, public_jwk, created_at) "
               "VALUES (?, 'RS256', 'active', ?, ?, ?)",
               (jwk["kid"], encryption.seal(_private_numbers_json(private)), json.dumps(jwk), now))
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
    """The key to sign with; created on first need under the database's write lock."""
    db = storage.database()
    cached = _cached(db, "keys:active")
    if cached is not _MISSING:
        return cast(SigningKey, cached)
    with db.transaction(write=False) as tx:
        row = tx.one("SELECT kid, private_key FROM signing_keys WHERE state = 'active'")
    if row is None:
        with db.transaction() as tx:
            tx.lock("wid-signing-keys")
            encryption.check_key(tx)
            row = tx.one("SELECT kid, private_key FROM signing_keys WHERE state = 'active'")
            key = _load(row[0], row[1]) if row else _insert_active(tx, int(time.time()))
    else:
        key = _load(row[0], row[1])
    _remember(db, "keys:active", key)
    return key


def public_jwk(kid: str) -> dict[str, Any] | None:
    """A key that may verify tokens now (active, or retired and still within its verify window)."""
    db = storage.database()
    cached = _cached(db, f"keys:public:{kid}")
    if cached is not _MISSING:
        return cast(dict[str, Any] | None, cached)
    with db.transaction(write=False) as tx:
        row = tx.one("SELECT public_jwk FROM signing_keys WHERE kid = ? AND "
                     "(state = 'active' OR verify_until > ?)", (kid, int(time.time())))
    jwk = json.loads(row[0]) if row else None
    _remember(db, f"keys:public:{kid}", jwk)
    return jwk


def published() -> list[dict[str, Any]]:
    """Every key a verifier may need: the active one first, then retired ones still verifying."""
    with storage.database().transaction(write=False) as tx:
        rows = tx.execute("SELECT public_jwk FROM signing_keys WHERE state = 'active' OR verify_until > ? "
                          "ORDER BY state = 'active' DESC, created_at DESC", (int(time.time()),))
    return [json.loads(r[0]) for r in rows]


def listing() -> list[KeyInfo]:
    with storage.database().transaction(write=False) as tx:
        rows = tx.execute("SELECT kid, state, created_at, retired_at, verify_until, public_jwk FROM signing_keys "
                          "ORDER BY created_at DESC")
    return [KeyInfo(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]


def rotate(max_token_ttl: int) -> tuple[str | None, str]:
    """Retire the active key (it keeps verifying for max_token_ttl + cache time) and activate a new one."""
    now = int(time.time())
    db = storage.database()
    with db.transaction() as tx:
        tx.lock("wid-signing-keys")
        encryption.check_key(tx)
        row = tx.one("SELECT kid FROM signing_keys WHERE state = 'active'")
        if row:
            tx.execute("UPDATE signing_keys SET state = 'retired', retired_at = ?, verify_until = ? WHERE kid = ?",
                       (now, now + max_token_ttl + ACTIVE_KEY_CACHE_SECONDS + 60, row[0]))
        new = _insert_active(tx, now)
    _forget(db)
    return (row[0] if row else None), new.kid


def prune() -> list[str]:
    """Delete retired keys that can no longer have a valid token."""
    now = int(time.time())
    with storage.database().transaction() as tx:
        rows = tx.execute("SELECT kid FROM signing_keys WHERE state = 'retired' AND verify_until <= ?", (now,))
        tx.execute("DELETE FROM signing_keys WHERE state = 'retired' AND verify_until <= ?", (now,))
    return [r[0] for r in rows]

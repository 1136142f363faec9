"""Secrets at rest (signing keys, OAuth tokens) are Fernet tokens under WID_SECRET_KEY.

In development, with WID_SECRET_KEY unset, a key is generated once into the data dir (mode 0600).
A key that cannot decrypt what the database holds is refused up front, never used to produce garbage.
"""

from __future__ import annotations

import base64
import binascii
import os
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken

from wid import config
from wid.store import storage

_CHECK_PLAINTEXT = b"wid secret key check v1"


def _validate(key: str, source: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(key.encode())
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise config.ConfigError(f"{source} must be 32 random bytes in urlsafe base64 (Fernet key format); "
                                 "make one with: python3 -c 'import base64,os; "
                                 "print(base64.urlsafe_b64encode(os.urandom(32)).decode())'")
    return key.encode()


def _development_key(data_dir: str) -> bytes:
    """The data dir's key, created on first use. Processes starting at once agree on one key: each
    writes a complete candidate file and links it into place, and only one link can succeed."""
    path = os.path.join(data_dir, "secret.key")
    storage.ensure_data_dir(data_dir)
    if not os.path.exists(path):
        candidate = os.path.join(data_dir, f".secret.key.{os.getpid()}.{os.urandom(4).hex()}")
        fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(Fernet.generate_key().decode() + "\n")
            os.link(candidate, path)
        except FileExistsError:
            pass  # another process's key won
        finally:
            os.unlink(candidate)
    with open(path) as stored:
        return _validate(stored.read().strip(), path)


@lru_cache(maxsize=4)
def _fernet(key: bytes) -> Fernet:
    return Fernet(key)


def fernet() -> Fernet:
    s = config.settings()  # with DATABASE_URI, WID_SECRET_KEY is set (wid.config requires it)
    key = s.secret_key.encode() if s.secret_key else _development_key(s.data_dir)  # wid.config checked its format
    return _fernet(key)


def check_key(tx: storage.Transaction) -> None:
    """Record a check value on first use; afterwards refuse a key that cannot read it.

    Idempotent when several processes start at once: the first insert wins, and every process then
    checks its key against the stored value (so two replicas started with different keys cannot both
    come up).
    """
    box = fernet()
    row = tx.one("SELECT token FROM key_check WHERE id = 1")
    if row is None:
        tx.execute("INSERT INTO key_check (id, token) VALUES (1, ?) ON CONFLICT (id) DO NOTHING",
                   (box.encrypt(_CHECK_PLAINTEXT),))
        row = tx.one("SELECT token FROM key_check WHERE id = 1")
        assert row is not None  # inserted, or another process's committed row
    try:
        box.decrypt(bytes(row[0]))
    except InvalidToken:
        raise config.ConfigError("WID_SECRET_KEY does not decrypt the secrets already stored in this database; "
                                 "set the key the data was written with") from None


def seal(plaintext: bytes) -> bytes:
    return fernet().encrypt(plaintext)


def unseal(token: bytes) -> bytes:
    try:
        return fernet().decrypt(bytes(token))
    except InvalidToken:
        raise config.ConfigError("WID_SECRET_KEY cannot decrypt a stored secret; it is not the key the data "
                                 "was written with") from None

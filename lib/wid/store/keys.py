"""Signing keys: RSA 2048 for RS256, generated on first need, rotated and pruned by `wid keys`.

Their lifecycle (next / active / retired / revoked, staged activation, emergency revocation, the
caches keyed by the key set's generation) is lib/wid/store/keyring.py, shared with the ATProto client
keys. Here: how a signing key is made and stored, and the windows. A retired key keeps verifying until
every token it can have signed has expired (WID_MAX_TOKEN_TTL, config.Settings.max_token_ttl, bounds
every token we sign); a next key signs once every replica has re-published its JWKS file and every
cached copy of the old file has expired (`activation_delay()`): a verifier never holds a token whose
key is missing from the set it fetched. Rows stay readable by code that predates `next`: such code
signs with `state = 'active'` and publishes `active` rows and rows with `verify_until` in the future,
which a `next` row has.
"""

import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from wid import config
from wid.core import jose
from wid.store import keyring


class SigningKey:
    # A slotted class, not a NamedTuple (docs/architecture.md, "What a request imports").
    __slots__ = ("kid", "private_key")

    def __init__(self, kid: str, private_key: rsa.RSAPrivateKey) -> None:
        self.kid = kid
        self.private_key = private_key


def activation_delay() -> int:
    """Seconds between publishing a next key and signing with it: every replica re-publishes its JWKS
    file within WID_PUBLISH_INTERVAL, and every copy fetched before that expires WID_JWKS_MAX_AGE later."""
    s = config.settings()
    return s.publish_interval + s.jwks_max_age + keyring.ACTIVATION_SLACK_SECONDS


def _new_key() -> tuple[SigningKey, dict[str, Any], bytes]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = jose.rsa_jwk(private.public_key())
    return SigningKey(jwk["kid"], private), jwk, _private_numbers_json(private)


# The private key is stored as its RSA numbers (JSON, sealed with Fernet) rather than PEM: rebuilding
# it from numbers needs no `serialization` import (~4 ms per CGI process) and no re-validation of
# parameters that Fernet already authenticated (~65 ms).
_NUMBER_FIELDS = ("p", "q", "d", "dmp1", "dmq1", "iqmp")


def _private_numbers_json(private: rsa.RSAPrivateKey) -> bytes:
    numbers = private.private_numbers()
    fields = {name: getattr(numbers, name) for name in _NUMBER_FIELDS}
    fields.update(e=numbers.public_numbers.e, n=numbers.public_numbers.n)
    return json.dumps({name: format(value, "x") for name, value in fields.items()}).encode()


def _load(kid: str, plain: bytes) -> SigningKey:
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


SIGNING = keyring.KeyKind[SigningKey](name="signing", table="signing_keys", generate=_new_key, load=_load,
                                      activation_delay=activation_delay, columns={"alg": "RS256"})


def active_key() -> SigningKey:
    """The key to sign with: created on first need, a due next key promoted (keyring.active)."""
    return keyring.active(SIGNING)


def public_jwk(kid: str) -> dict[str, Any] | None:
    """A key that may verify tokens now (active, next, retired within its window); never a revoked one."""
    return keyring.public_jwk(SIGNING, kid)


def published() -> list[dict[str, Any]]:
    """Every key a verifier may need: the active one first, then the next one, then retired ones still verifying."""
    return keyring.published(SIGNING)


def listing() -> list[keyring.KeyInfo]:
    return keyring.listing(SIGNING)


def rotate(max_token_ttl: int) -> keyring.Rotation:
    """Publish a next key that signs from now + activation_delay(); the active key then retires and keeps
    verifying for max_token_ttl + cache time. On a database without a key, the first key signs at once."""
    return keyring.rotate(SIGNING, max_token_ttl + keyring.ACTIVE_KEY_CACHE_SECONDS + 60)


def rotate_emergency() -> keyring.Rotation:
    """For a compromised active key: drop it at once (it stops verifying; every token it signed is refused)
    and sign with the next key if one is published, else with a new key."""
    return keyring.rotate_emergency(SIGNING)


def prune() -> list[str]:
    """Delete retired keys that can no longer have a valid token, and revoked keys."""
    return keyring.prune(SIGNING)

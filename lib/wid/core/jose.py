"""Compact JWS, built on `cryptography` alone: PyJWT's import costs more than our whole request budget.

Only what a strict verifier needs: split and decode, a fixed algorithm allowlist (never `none`, never
HMAC), signature check against one JWK, RFC 7638 thumbprints, and RS256 signing.

The allowlist is exactly what tests/test_jose_vectors.py checks against published vectors (RFC 7515
appendix A, RFC 7520 section 4, Wycheproof; tests/fixtures/jose/SOURCE.md). A key verifies only the
algorithm it fits: an RSA key for RS*/PS*, a P-256 key for ES256, a P-384 key for ES384, and, when the
JWK names an `alg`, only that one. Our own tokens are RS256 only (lib/wid/store/signing.py checks).
"""

import base64
import binascii
import functools
import json
from typing import TYPE_CHECKING, Any, NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

if TYPE_CHECKING:  # loaded by the functions that meet an EC key: our own tokens are RS256 (module docstring)
    from cryptography.hazmat.primitives.asymmetric import ec

from wid.core import strictjson


class Alg:
    """What one JWS algorithm needs of its key and how it checks (RFC 7518 section 3)."""
    # A slotted class, not a NamedTuple (docs/architecture.md, "What a request imports").
    __slots__ = ("crv", "hash", "kty", "pss")

    def __init__(self, kty: str, crv: str | None, hash: type[hashes.HashAlgorithm], pss: bool = False) -> None:
        self.kty = kty
        self.crv = crv  # the one curve an ES* algorithm is defined on
        self.hash = hash
        self.pss = pss


# Anything not listed is refused before a key is even looked up.
ALLOWED_ALGS: dict[str, Alg] = {
    "RS256": Alg("RSA", None, hashes.SHA256),
    "RS384": Alg("RSA", None, hashes.SHA384),
    "RS512": Alg("RSA", None, hashes.SHA512),
    "PS256": Alg("RSA", None, hashes.SHA256, pss=True),
    "ES256": Alg("EC", "P-256", hashes.SHA256),
    "ES384": Alg("EC", "P-384", hashes.SHA384),
}
# Headers that would make a verifier fetch or trust a key the token itself names: never honoured.
FORBIDDEN_HEADERS = frozenset({"jku", "x5u", "jwk", "x5c", "crit"})
MAX_TOKEN_BYTES = 16 * 1024


class JoseError(Exception):
    """The token is malformed or its signature does not verify; the message says which."""


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Unpadded base64url in its one canonical spelling: a last character carrying bits beyond the data
    (`QR` for `QQ`) is refused, so no token has a second spelling that verifies too."""
    # strip() leaves nothing exactly when every character is in the alphabet (a check in C: a token has
    # hundreds of characters, and a per-character Python loop was a fifth of an exchange's CPU).
    if not text or text.strip(_B64URL) or len(text) % 4 == 1:
        raise JoseError("not base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise JoseError("not base64url") from None
    if b64url_encode(data) != text:
        raise JoseError("not base64url (non-canonical: the last character has bits set beyond the data)")
    return data


_B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = strictjson.loads(data)
    except strictjson.StrictJsonError as exc:
        raise JoseError(f"{what}: {exc}") from None
    if not isinstance(value, dict):
        raise JoseError(f"{what} is not a JSON object")
    return value


class Jws(NamedTuple):
    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes

    @property
    def alg(self) -> str:
        return str(self.header.get("alg"))

    @property
    def kid(self) -> str | None:
        kid = self.header.get("kid")
        return kid if isinstance(kid, str) and kid else None


def _allowed(alg: object) -> Alg:
    spec = ALLOWED_ALGS.get(alg) if isinstance(alg, str) else None
    if spec is not None:
        return spec
    why = ""
    if alg == "none":
        why = ": an unsigned token is never accepted"
    elif isinstance(alg, str) and alg.startswith("HS"):
        why = ": a shared-secret MAC is never accepted, tokens must be signed with a public key"
    raise JoseError(f"algorithm {alg!r} is not allowed{why} (allowed: {', '.join(ALLOWED_ALGS)})")


def decode(token: str) -> Jws:
    """Parse without trusting anything; the algorithm and forbidden headers are checked here."""
    if len(token) > MAX_TOKEN_BYTES:
        raise JoseError(f"token is longer than {MAX_TOKEN_BYTES} bytes")
    parts = token.split(".")
    if len(parts) != 3:
        raise JoseError("token is not a compact JWS (three dot-separated parts)")
    header = _json_object(b64url_decode(parts[0]), "JOSE header")
    _allowed(header.get("alg"))
    bad = FORBIDDEN_HEADERS.intersection(header)
    if bad:
        raise JoseError(f"header parameter {sorted(bad)[0]!r} is not accepted")
    claims = _json_object(b64url_decode(parts[1]), "claims")
    return Jws(header, claims, f"{parts[0]}.{parts[1]}".encode("ascii"), b64url_decode(parts[2]))


def _param(jwk: dict[str, Any], name: str) -> str:
    value = jwk.get(name)
    if not isinstance(value, str):
        raise JoseError(f"JWK has no {name!r}")
    return value


def _int(value: str) -> int:
    return int.from_bytes(b64url_decode(value), "big")


def public_key(jwk: dict[str, Any]) -> "rsa.RSAPublicKey | ec.EllipticCurvePublicKey":
    kty = jwk.get("kty")
    if kty == "RSA":
        return _rsa_public_key(_param(jwk, "e"), _param(jwk, "n"))
    if kty == "EC":
        return _ec_public_key(str(jwk.get("crv")), _param(jwk, "x"), _param(jwk, "y"))
    raise JoseError(f"key type {kty!r} is not supported")


# The same few keys verify token after token (ours, an issuer's): a long-lived process builds each once.
# Keyed by the JWK's own parameters, so a cached key is exactly the one they describe; bounded; a refused
# key raises and is not remembered.
@functools.lru_cache(maxsize=64)
def _rsa_public_key(e: str, n: str) -> rsa.RSAPublicKey:
    try:
        key = rsa.RSAPublicNumbers(_int(e), _int(n)).public_key()
    except ValueError:  # cryptography's checks: e odd and at least 3, n odd and larger than e...
        raise JoseError("RSA key parameters n and e do not form a public key") from None
    if key.key_size < 2048:
        raise JoseError("RSA keys shorter than 2048 bits are refused")
    return key


@functools.lru_cache(maxsize=64)
def _ec_public_key(crv: str, x: str, y: str) -> "ec.EllipticCurvePublicKey":
    from cryptography.hazmat.primitives.asymmetric import ec

    curves: dict[str, ec.EllipticCurve] = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1()}
    curve = curves.get(crv)
    if curve is None:
        raise JoseError(f"EC curve {crv!r} is not supported")
    try:
        return ec.EllipticCurvePublicNumbers(_int(x), _int(y), curve).public_key()
    except ValueError:
        raise JoseError("EC key is not on its curve") from None


def verify(jws: Jws, jwk: dict[str, Any]) -> None:
    """Check the signature with `jwk`, which must fit the token's algorithm (kty, crv, the JWK's own alg)."""
    spec = _allowed(jws.alg)
    kid = jwk.get("kid")
    if jwk.get("kty") != spec.kty:
        raise JoseError(f"key {kid!r} is {jwk.get('kty')}, the token says {jws.alg} (needs {spec.kty})")
    if spec.crv is not None and jwk.get("crv") != spec.crv:
        raise JoseError(f"key {kid!r} is on curve {jwk.get('crv')!r}, the token says {jws.alg} (needs {spec.crv})")
    if jwk.get("alg") not in (None, jws.alg):
        raise JoseError(f"key {kid!r} is for {jwk.get('alg')}, the token says {jws.alg}")
    if jwk.get("use") not in (None, "sig"):
        raise JoseError(f"key {kid!r} is not a signing key")
    key = public_key(jwk)
    try:
        if isinstance(key, rsa.RSAPublicKey):
            pad: padding.AsymmetricPadding = (
                padding.PSS(padding.MGF1(spec.hash()), padding.PSS.DIGEST_LENGTH) if spec.pss else padding.PKCS1v15())
            key.verify(jws.signature, jws.signing_input, pad, spec.hash())
        else:
            from cryptography.hazmat.primitives.asymmetric import ec
            from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

            # JWS carries the raw r || s, each the curve's size (RFC 7518 section 3.4); DER is refused.
            size = (key.curve.key_size + 7) // 8
            if len(jws.signature) != 2 * size:
                raise JoseError(f"{jws.alg} signature is {len(jws.signature)} bytes, not the {2 * size} of r || s")
            r = int.from_bytes(jws.signature[:size], "big")
            s = int.from_bytes(jws.signature[size:], "big")
            key.verify(encode_dss_signature(r, s), jws.signing_input, ec.ECDSA(spec.hash()))
    except InvalidSignature:
        raise JoseError("signature does not verify") from None


def rsa_jwk(key: rsa.RSAPublicKey) -> dict[str, str]:
    numbers = key.public_numbers()
    jwk = {
        "kty": "RSA",
        "n": b64url_encode(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
        "e": b64url_encode(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")),
    }
    return {**jwk, "kid": thumbprint(jwk), "alg": "RS256", "use": "sig"}


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638: SHA-256 over the required members in lexicographic order, no whitespace."""
    required = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}
    members = required.get(str(jwk.get("kty")))
    if members is None:
        raise JoseError(f"cannot take the thumbprint of key type {jwk.get('kty')!r}")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    # Here only: hashlib loads OpenSSL's _hashlib (11 M instructions), and an exchange takes no thumbprint
    # (only a new key or a DPoP proof does).
    import hashlib

    return b64url_encode(hashlib.sha256(canonical.encode()).digest())


def sign_rs256(key: rsa.RSAPrivateKey, header: dict[str, Any], claims: dict[str, Any]) -> str:
    encoded = (b64url_encode(json.dumps(header, separators=(",", ":")).encode()) + "."
               + b64url_encode(json.dumps(claims, separators=(",", ":")).encode()))
    signature = key.sign(encoded.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return f"{encoded}.{b64url_encode(signature)}"

"""ES256 JWS for the ATProto OAuth profile: DPoP proofs (RFC 9449) and client assertions (RFC 7523).

`cryptography` only (no PyJWT on request paths). A DPoP key is one P-256 key per DID session; a proof
names the method and the URL exactly as the request is sent (`htu`: scheme, authority and path as the
DID document writes the PDS URL, no query), carries the server's nonce when one is known, and, on
resource requests, `ath` = base64url(SHA-256(access token)).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
import time
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from wid.core.jose import b64url_encode, thumbprint

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# Client assertions may be at most a minute old at the authorization server.
ASSERTION_LIFETIME = 60


def generate_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


# `serialization` is imported by the functions below alone, and not at all to read back a key that
# key_to_pem wrote: it imports cryptography's SSH key module and with it `dataclasses` and `inspect`
# (~44 M instructions, docs/architecture.md "What a request imports"), and every ATProto forward
# reads its session's DPoP key.
_PEM_BEGIN, _PEM_END = "-----BEGIN PRIVATE KEY-----", "-----END PRIVATE KEY-----"
# The PKCS#8 PrivateKeyInfo (RFC 5208) that key_to_pem writes for a P-256 key, around the RFC 5915
# ECPrivateKey's 32-byte private scalar and its 65-byte uncompressed public point.
_P256_HEAD = bytes.fromhex("308187020100301306072a8648ce3d020106082a8648ce3d030107046d306b0201010420")
_P256_MIDDLE = bytes.fromhex("a144034200")
_P256_DER_LENGTH = len(_P256_HEAD) + 32 + len(_P256_MIDDLE) + 65


def key_to_pem(key: ec.EllipticCurvePrivateKey) -> str:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode("ascii")


def key_from_pem(pem: str | bytes) -> ec.EllipticCurvePrivateKey:
    written = _p256_as_written(pem.decode("ascii", "replace") if isinstance(pem, bytes) else pem)
    if written is not None:
        return written
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pem.encode("ascii") if isinstance(pem, str) else pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("not a P-256 private key")
    return key


def _p256_as_written(pem: str) -> ec.EllipticCurvePrivateKey | None:
    """The key, when `pem` is exactly what key_to_pem writes and its public point is the one its scalar
    gives; None for anything else, which cryptography's general loader then reads or refuses."""
    if not (pem.startswith(_PEM_BEGIN) and pem.endswith(_PEM_END + "\n")):
        return None
    try:
        der = base64.b64decode("".join(pem[len(_PEM_BEGIN):-len(_PEM_END) - 1].split()), validate=True)
    except (binascii.Error, ValueError):
        return None
    text = base64.b64encode(der).decode()
    if pem != "\n".join([_PEM_BEGIN, *(text[i:i + 64] for i in range(0, len(text), 64)), _PEM_END, ""]):
        return None  # OpenSSL's PEM, as key_to_pem writes it: 64 characters a line
    scalar_end = len(_P256_HEAD) + 32
    if (len(der) != _P256_DER_LENGTH or not der.startswith(_P256_HEAD)
            or der[scalar_end:scalar_end + len(_P256_MIDDLE)] != _P256_MIDDLE):
        return None
    try:
        key = ec.derive_private_key(int.from_bytes(der[len(_P256_HEAD):scalar_end], "big"), ec.SECP256R1())
    except ValueError:
        return None
    numbers = key.public_key().public_numbers()
    if b"\x04" + numbers.x.to_bytes(32, "big") + numbers.y.to_bytes(32, "big") != der[-65:]:
        return None
    return key


def public_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    return {"kty": "EC", "crv": "P-256", "x": b64url_encode(numbers.x.to_bytes(32, "big")),
            "y": b64url_encode(numbers.y.to_bytes(32, "big"))}


def jwk_thumbprint(key: ec.EllipticCurvePrivateKey) -> str:
    return thumbprint(public_jwk(key))


def _json_b64(value: dict[str, Any]) -> str:
    return b64url_encode(json.dumps(value, separators=(",", ":")).encode())


def sign_es256(key: ec.EllipticCurvePrivateKey, header: dict[str, Any], claims: dict[str, Any]) -> str:
    signing_input = f"{_json_b64(header)}.{_json_b64(claims)}"
    r, s = decode_dss_signature(key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{b64url_encode(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def htu(url: str) -> str:
    """The URL a proof names: as sent, without query or fragment (RFC 9449 4.2)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def access_token_hash(access_token: str) -> str:
    return b64url_encode(hashlib.sha256(access_token.encode("ascii")).digest())


def proof(key: ec.EllipticCurvePrivateKey, method: str, url: str, *, nonce: str | None = None,
          access_token: str | None = None, now: int | None = None) -> str:
    claims: dict[str, Any] = {"jti": secrets.token_urlsafe(18), "htm": method.upper(), "htu": htu(url),
                              "iat": int(time.time()) if now is None else now}
    if nonce:
        claims["nonce"] = nonce
    if access_token:
        claims["ath"] = access_token_hash(access_token)
    return sign_es256(key, {"typ": "dpop+jwt", "alg": "ES256", "jwk": public_jwk(key)}, claims)


def client_assertion(key: ec.EllipticCurvePrivateKey, kid: str, client_id: str, audience: str) -> str:
    """private_key_jwt: iss = sub = client_id, aud = the authorization server's issuer, one minute."""
    now = int(time.time())
    return sign_es256(key, {"alg": "ES256", "typ": "JWT", "kid": kid},
                      {"iss": client_id, "sub": client_id, "aud": audience, "jti": secrets.token_urlsafe(18),
                       "iat": now, "exp": now + ASSERTION_LIFETIME})


def pkce_pair() -> tuple[str, str]:
    """(verifier, S256 challenge)."""
    verifier = secrets.token_urlsafe(48)
    return verifier, b64url_encode(hashlib.sha256(verifier.encode("ascii")).digest())

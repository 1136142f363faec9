"""wid.jose against published vectors: every algorithm it accepts, valid and invalid; everything else refused.

Vectors (tests/fixtures/jose/SOURCE.md): RFC 7515 appendix A, RFC 7520 section 4, and Wycheproof's RSA
PKCS#1 v1.5, RSA-PSS and ECDSA (IEEE P1363, i.e. raw r || s) files for the six accepted algorithms.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from wid.core import jose

FIXTURES = Path(__file__).parent / "fixtures" / "jose"
RFC7515 = json.loads((FIXTURES / "rfc7515_appendix_a.json").read_text())["vectors"]
RFC7520 = json.loads((FIXTURES / "rfc7520_section4.json").read_text())["vectors"]
WYCHEPROOF = {path.stem.removeprefix("wycheproof_"): json.loads(path.read_text())
              for path in sorted(FIXTURES.glob("wycheproof_*.json"))}
# RFC 7515 A.2 and A.3 sign these claims (with CR LF and spaces in the JSON, as the RFC writes them).
RFC7515_CLAIMS = {"iss": "joe", "exp": 1300819380, "http://example.com/is_root": True}


def _cases() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    return [(alg, group["jwk"], test) for alg, data in WYCHEPROOF.items()
            for group in data["groups"] for test in group["tests"]]


def _jws(alg: str, message: bytes, signature: bytes) -> jose.Jws:
    return jose.Jws({"alg": alg}, {}, message, signature)


def _valid(alg: str) -> tuple[dict[str, Any], jose.Jws]:
    """The first valid Wycheproof vector of `alg` with a non-empty message: its key and its signature as a JWS."""
    jwk, test = next((jwk, t) for a, jwk, t in _cases() if a == alg and t["result"] == "valid" and t["msg"])
    return jwk, _jws(alg, bytes.fromhex(test["msg"]), bytes.fromhex(test["sig"]))


def _unchecked(compact: str) -> jose.Jws:
    """Split a compact JWS whose payload is not a JSON object (RFC 7520's is prose), as `decode` would."""
    head, body, signature = compact.split(".")
    header = json.loads(jose.b64url_decode(head))
    return jose.Jws(header, {}, f"{head}.{body}".encode(), jose.b64url_decode(signature))


def _published_keys() -> list[dict[str, Any]]:
    keys = [v["jwk"] for v in (*RFC7515.values(), *RFC7520.values()) if v["jwk"]]
    return keys + [group["jwk"] for data in WYCHEPROOF.values() for group in data["groups"]]


def _other_key(jwk: dict[str, Any]) -> dict[str, Any]:
    """A different published public key of the same type and curve, without `alg`."""
    for other in _published_keys():
        same_kind = other["kty"] == jwk["kty"] and other.get("crv") == jwk.get("crv")
        if same_kind and (other.get("n"), other.get("x")) != (jwk.get("n"), jwk.get("x")):
            return {k: v for k, v in other.items() if k != "alg"}
    raise AssertionError(f"no other published {jwk['kty']} {jwk.get('crv')} key")


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 1]) + data[index + 1:]


# -- the allowlist is exactly what is tested -------------------------------------------------------------------


def test_every_accepted_algorithm_has_valid_and_invalid_vectors() -> None:
    assert set(WYCHEPROOF) == set(jose.ALLOWED_ALGS) == {"RS256", "RS384", "RS512", "PS256", "ES256", "ES384"}
    for alg, data in WYCHEPROOF.items():
        assert data["alg"] == alg
        results = {t["result"] for group in data["groups"] for t in group["tests"]}
        assert {"valid", "invalid"} <= results, alg


@pytest.mark.parametrize(("alg", "jwk", "test"), _cases(), ids=[f"{a}-tc{t['tcId']}" for a, _, t in _cases()])
def test_wycheproof(alg: str, jwk: dict[str, Any], test: dict[str, Any]) -> None:
    """Valid signatures verify; invalid ones, and Wycheproof's 'acceptable' (legacy encodings), are refused."""
    jws = _jws(alg, bytes.fromhex(test["msg"]), bytes.fromhex(test["sig"]))
    if test["result"] == "valid":
        jose.verify(jws, jwk)
    else:
        with pytest.raises(jose.JoseError):
            jose.verify(jws, jwk)


@pytest.mark.parametrize("alg", sorted(jose.ALLOWED_ALGS))
def test_modified_message_or_signature_fails(alg: str) -> None:
    jwk, jws = _valid(alg)
    jose.verify(jws, jwk)
    for index in (0, len(jws.signing_input) - 1):
        with pytest.raises(jose.JoseError, match="signature does not verify"):
            jose.verify(jws._replace(signing_input=_flip(jws.signing_input, index)), jwk)
    for index in (0, len(jws.signature) // 2, len(jws.signature) - 1):
        with pytest.raises(jose.JoseError, match="signature does not verify"):
            jose.verify(jws._replace(signature=_flip(jws.signature, index)), jwk)


@pytest.mark.parametrize("alg", sorted(jose.ALLOWED_ALGS))
def test_wrong_key_fails(alg: str) -> None:
    jwk, jws = _valid(alg)
    with pytest.raises(jose.JoseError, match="signature does not verify"):
        jose.verify(jws, _other_key(jwk))


# -- a key verifies only the algorithm it fits --------------------------------------------------------------------


def test_rsa_key_with_ec_algorithm_and_ec_key_with_rsa_algorithm_are_refused() -> None:
    rsa_key, ec_key = RFC7515["A.2"]["jwk"], RFC7515["A.3"]["jwk"]
    es256 = _unchecked(RFC7515["A.3"]["jws"])
    with pytest.raises(jose.JoseError, match="is RSA, the token says ES256"):
        jose.verify(es256, rsa_key)
    rs256 = _unchecked(RFC7515["A.2"]["jws"])
    with pytest.raises(jose.JoseError, match="is EC, the token says RS256"):
        jose.verify(rs256, ec_key)


@pytest.mark.parametrize(("alg", "curve", "crv", "hash_type"), [
    ("ES256", ec.SECP384R1(), "P-384", hashes.SHA256),
    ("ES384", ec.SECP256R1(), "P-256", hashes.SHA384),
])
def test_ec_key_on_the_wrong_curve_is_refused(alg: str, curve: ec.EllipticCurve, crv: str,
                                              hash_type: type[hashes.HashAlgorithm]) -> None:
    """A signature that is mathematically valid (right hash, r || s of the key's size) still fails on the curve."""
    key = ec.generate_private_key(curve)
    size = (curve.key_size + 7) // 8
    message = b"header.claims"
    der = key.sign(message, ec.ECDSA(hash_type()))
    key.public_key().verify(der, message, ec.ECDSA(hash_type()))
    r, s = decode_dss_signature(der)
    numbers = key.public_key().public_numbers()
    jwk = {"kty": "EC", "crv": crv, "kid": "k1", "x": jose.b64url_encode(numbers.x.to_bytes(size, "big")),
           "y": jose.b64url_encode(numbers.y.to_bytes(size, "big"))}
    with pytest.raises(jose.JoseError, match=f"key 'k1' is on curve '{crv}', the token says {alg}"):
        jose.verify(_jws(alg, message, r.to_bytes(size, "big") + s.to_bytes(size, "big")), jwk)


def test_jwk_alg_must_equal_the_header_alg() -> None:
    jwk, jws = _valid("RS384")
    assert jwk["alg"] == "RS384"
    with pytest.raises(jose.JoseError, match="is for RS384, the token says RS512"):
        jose.verify(jws._replace(header={"alg": "RS512"}), jwk)
    # A genuine PS256 signature under a key declared for RS256 is refused before any signature check,
    pss_key, pss = _valid("PS256")
    with pytest.raises(jose.JoseError, match="is for RS256, the token says PS256"):
        jose.verify(pss, {**pss_key, "alg": "RS256"})
    # and, with no alg on the key, naming the other RSA padding does not verify.
    with pytest.raises(jose.JoseError, match="signature does not verify"):
        jose.verify(pss._replace(header={"alg": "RS256"}), {k: v for k, v in pss_key.items() if k != "alg"})


def test_key_not_for_signing_is_refused() -> None:
    jwk, jws = _valid("ES256")
    with pytest.raises(jose.JoseError, match="is not a signing key"):
        jose.verify(jws, {**jwk, "use": "enc"})


def test_ec_signature_must_be_raw_r_s_not_der() -> None:
    vector = RFC7515["A.3"]
    jws = jose.decode(vector["jws"])
    jose.verify(jws, vector["jwk"])
    der = encode_dss_signature(int.from_bytes(jws.signature[:32], "big"), int.from_bytes(jws.signature[32:], "big"))
    with pytest.raises(jose.JoseError, match=r"ES256 signature is \d+ bytes, not the 64 of r \|\| s"):
        jose.verify(jws._replace(signature=der), vector["jwk"])


# -- RFC 7515 appendix A and RFC 7520 section 4 ---------------------------------------------------------------


@pytest.mark.parametrize("example", ["A.2", "A.3"])
def test_rfc7515_examples_verify(example: str) -> None:
    vector = RFC7515[example]
    jws = jose.decode(vector["jws"])
    assert jws.alg == vector["alg"] and jws.claims == RFC7515_CLAIMS
    jose.verify(jws, vector["jwk"])
    head, _, signature = vector["jws"].split(".")
    forged = jose.b64url_encode(json.dumps({**RFC7515_CLAIMS, "iss": "mallory"}).encode())
    with pytest.raises(jose.JoseError, match="signature does not verify"):
        jose.verify(jose.decode(f"{head}.{forged}.{signature}"), vector["jwk"])
    with pytest.raises(jose.JoseError, match="signature does not verify"):
        jose.verify(jws, _other_key(vector["jwk"]))


def test_rfc7520_rs256_example_verifies() -> None:
    vector = RFC7520["4.1"]
    jws = _unchecked(vector["jws"])
    assert jws.alg == "RS256" and jws.kid == vector["jwk"]["kid"] == "bilbo.baggins@hobbiton.example"
    jose.verify(jws, vector["jwk"])
    with pytest.raises(jose.JoseError, match="signature does not verify"):
        jose.verify(jws._replace(signing_input=jws.signing_input.replace(b".SXTigJlz", b".SXTigJLz")), vector["jwk"])
    # Its payload is prose, not claims: as a token it is refused for that.
    with pytest.raises(jose.JoseError, match=r"^claims: "):
        jose.decode(vector["jws"])


REFUSED = [
    (RFC7515["A.1"], "algorithm 'HS256' is not allowed: a shared-secret MAC is never accepted"),
    (RFC7515["A.4"], "algorithm 'ES512' is not allowed"),
    (RFC7515["A.5"], "algorithm 'none' is not allowed: an unsigned token is never accepted"),
    (RFC7520["4.2"], "algorithm 'PS384' is not allowed"),
    (RFC7520["4.3"], "algorithm 'ES512' is not allowed"),
    (RFC7520["4.4"], "algorithm 'HS256' is not allowed: a shared-secret MAC is never accepted"),
]


@pytest.mark.parametrize(("vector", "message"), REFUSED, ids=["7515-A.1", "7515-A.4", "7515-A.5", "7520-4.2",
                                                             "7520-4.3", "7520-4.4"])
def test_published_vectors_of_other_algorithms_are_refused(vector: dict[str, Any], message: str) -> None:
    """Refused when decoded, and by `verify` too for a JWS put together without `decode`, even with its own key."""
    with pytest.raises(jose.JoseError, match=message):
        jose.decode(vector["jws"])
    head, body, signature = vector["jws"].split(".")
    jws = jose.Jws(json.loads(jose.b64url_decode(head)), {}, f"{head}.{body}".encode(),
                   jose.b64url_decode(signature) if signature else b"")
    with pytest.raises(jose.JoseError, match=message):
        jose.verify(jws, vector["jwk"] or {})


@pytest.mark.parametrize("vector", [RFC7515["A.1"], RFC7520["4.4"]], ids=["7515-A.1", "7520-4.4"])
def test_refused_hmac_vectors_are_genuine(vector: dict[str, Any]) -> None:
    """The HS256 refusals above are about the algorithm: with the published secret, the MAC is right."""
    head, body, signature = vector["jws"].split(".")
    mac = hmac.new(jose.b64url_decode(vector["jwk"]["k"]), f"{head}.{body}".encode(), hashlib.sha256).digest()
    assert hmac.compare_digest(mac, jose.b64url_decode(signature))

"""Fuzz compact JWS decoding and key handling (wid.core.jose): only JoseError escapes; what decodes is exactly
what was encoded (one spelling per token), never with an algorithm or header outside the allowlist."""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzz.budget import scaled
from tests.fuzz.strategies import json_texts, json_values, mutated
from wid.core import jose

_B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
b64url_texts = st.one_of(st.text(_B64URL, max_size=12), st.text(_B64URL + "=+/. \n", max_size=12), st.text(max_size=8))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@scaled(4)
@given(b64url_texts)
@example("QQ")
@example("0000000000")  # found: decoded like "000000000w", so a token's signature had 16 spellings that verified
def test_base64url_has_one_spelling_per_value(text: str) -> None:
    try:
        data = jose.b64url_decode(text)
    except jose.JoseError:
        return
    assert jose.b64url_encode(data) == text  # no padding, no other alphabet, no stray bits in the last character


@scaled(4)
@given(st.one_of(st.text(), mutated(st.text(_B64URL + ".", max_size=40)),
                 st.tuples(json_texts, json_texts, st.binary(max_size=8)).map(
                     lambda parts: f"{b64(parts[0].encode('utf-8', 'surrogatepass'))}."
                                   f"{b64(parts[1].encode('utf-8', 'surrogatepass'))}.{b64(parts[2])}")))
def test_decode_raises_only_jose_error(token: str) -> None:
    try:
        jws = jose.decode(token)
    except jose.JoseError as exc:
        assert str(exc)
        return
    assert jws.alg in jose.ALLOWED_ALGS
    assert not jose.FORBIDDEN_HEADERS.intersection(jws.header)


_ALGS = st.sampled_from([*jose.ALLOWED_ALGS, "none", "None", "HS256", "EdDSA", "rs256", "", None])
headers = st.fixed_dictionaries(
    {"alg": _ALGS},
    optional={"kid": st.one_of(st.text(max_size=8), json_values), "typ": st.just("JWT"),
              "jku": st.just("https://attacker.example/jwks"), "jwk": st.just({"kty": "RSA"}),
              "x5u": st.just("https://attacker.example/c"), "x5c": st.just(["MII"]), "crit": st.just(["exp"]),
              "Alg": st.just("none")},
)


@scaled(2)
@given(headers, st.one_of(st.dictionaries(st.text(max_size=6), json_values, max_size=4), json_values),
       st.binary(max_size=300))
def test_decode_returns_exactly_the_encoded_parts(header: dict[str, Any], claims: Any, signature: bytes) -> None:
    parts = [b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()), b64(signature)]
    try:
        jws = jose.decode(".".join(parts))
    except jose.JoseError:
        assert (header["alg"] not in jose.ALLOWED_ALGS or jose.FORBIDDEN_HEADERS.intersection(header)
                or not isinstance(claims, dict) or len({key.casefold() for key in header}) != len(header)
                or not signature)  # an empty signature is refused: there is no unsigned token
        return
    assert (jws.header, jws.claims, jws.signature) == (header, claims, signature)
    assert jws.signing_input == f"{parts[0]}.{parts[1]}".encode()


_PARAMS = st.one_of(
    st.binary(max_size=70).map(b64), st.sampled_from(["AQAB", "AA", "AQ", "Aw", "", "====", "AP8"]),
    st.integers(min_value=0, max_value=1 << 4100).map(lambda n: b64(n.to_bytes((n.bit_length() + 7) // 8, "big"))),
    json_values)
jwks = st.fixed_dictionaries(
    {"kty": st.sampled_from(["RSA", "EC", "OKP", "oct", None])},
    optional={"n": _PARAMS, "e": _PARAMS, "x": _PARAMS, "y": _PARAMS, "kid": st.text(max_size=4),
              "crv": st.sampled_from(["P-256", "P-384", "P-521", "X25519", None]), "alg": _ALGS,
              "use": st.sampled_from(["sig", "enc", None])},
)


@scaled(2)
@given(jwks)
@example({"kty": "RSA", "n": "AA", "e": "AA"})  # found: cryptography's ValueError escaped
@example({"kty": "RSA", "n": "AQAB", "e": "Ag"})
def test_public_key_raises_only_jose_error(jwk: dict[str, Any]) -> None:
    try:
        jose.public_key(jwk)
    except jose.JoseError as exc:
        assert str(exc)


@scaled(2)
@given(jwks, st.fixed_dictionaries({"alg": st.sampled_from(sorted(jose.ALLOWED_ALGS))},
                                   optional={"kid": st.text(max_size=8), "typ": st.just("JWT")}),
       st.binary(min_size=1, max_size=140))
def test_verify_raises_only_jose_error(jwk: dict[str, Any], header: dict[str, Any], signature: bytes) -> None:
    jws = jose.decode(f"{b64(json.dumps(header).encode())}.{b64(b'{}')}.{b64(signature)}")
    try:
        jose.verify(jws, jwk)
    except jose.JoseError as exc:
        assert str(exc)
    else:
        raise AssertionError("a random signature verified")

"""Fuzz token verification with real keys: our own tokens (wid.core.tokens.verify, signed by the app_env's
key) and an external issuer's (wid.service.authz.authenticate against the GitHub OIDC stand-in). Only
TokenError (or the Unauthenticated error, a 401, that authenticate makes of it) escapes; a token verifies
only when it is, byte for byte, one a trusted key signed, and its claims pass a plain reading of the rules
(DESIGN.md, "Tokens")."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from devkit.standins.github_oidc import GitHubOIDCStandIn
from tests.fuzz.budget import scaled
from tests.fuzz.strategies import json_scalars, json_values
from wid import config
from wid.core import jose, tokens
from wid.core.errors import WidError
from wid.core.rbac import compiler as rbac_compile
from wid.service import authz
from wid.store import keys, signing, storage
from wid.store import rbac as rbac_store
from wid.web.errors import status_of

ISSUER = "https://wid.example.test"  # app_env's THIS_ENDPOINT
TEAM = "f81d4fae-7dec-11d0-a765-00a0c91e6bf6"
AUD = f"api://DigitalOcean?actx={TEAM}"
SUB = f"actx:{TEAM}:role:r"
LEEWAY = 30
MARGIN = 5  # a time within this of a bound is too close to call (the clock moves between checks)
_B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# -- a plain reading of the claim rules ---------------------------------------------------------------


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _valid_text(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate is no text (I-JSON)
        return False
    return True


def _sub_ok(sub: Any) -> bool:
    if not isinstance(sub, str) or not sub.startswith("actx:"):
        return False
    parts = sub[len("actx:"):].split(":")
    width = 3 if parts[0] == "did" else 1  # a DID context is did:{method}:{id}
    context, name = ":".join(parts[:width]), ":".join(parts[width:])
    return len(parts) > width and bool(name) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9:._-]{0,127}", context) is not None


def times_verdict(claims: dict[str, Any], now: float, max_lifetime: int | None = None) -> bool | None:
    """True/False as the rules read; None when a time is within MARGIN of a bound."""
    if not _number(claims.get("exp")) or not _number(claims.get("iat")):
        return False
    if claims.get("nbf") is not None and not _number(claims["nbf"]):
        return False
    bounds = [(claims["exp"], now - LEEWAY, "after"), (claims["iat"], now + LEEWAY, "not after")]
    if claims.get("nbf") is not None:
        bounds.append((claims["nbf"], now + LEEWAY, "not after"))
    if max_lifetime is not None:
        bounds.append((claims["exp"], now + max_lifetime, "not after"))
    verdict: bool | None = True
    for value, bound, rule in bounds:
        if bound - MARGIN < value < bound + MARGIN:  # compared, never subtracted: value may be 10**400
            verdict = None if verdict else verdict
        elif (value > bound) != (rule == "after"):
            return False
    return verdict


def ours_verdict(claims: dict[str, Any], now: float, kinds: set[str]) -> bool | None:
    plain = (_valid_text(claims) and claims.get("iss") == ISSUER and isinstance(claims.get("aud"), str)
             and re.fullmatch(r"api://[A-Za-z][A-Za-z0-9]{0,31}\?actx=[A-Za-z0-9][A-Za-z0-9:._-]{0,127}",
                              claims["aud"]) is not None
             and isinstance(claims.get(tokens.KIND_CLAIM), str) and claims[tokens.KIND_CLAIM] in kinds
             and _sub_ok(claims.get("sub")) and isinstance(claims.get("jti"), str))
    return times_verdict(claims, now) if plain else False


# -- inputs --------------------------------------------------------------------------------------------


class At(NamedTuple):
    """A time claim as an offset from the moment the example runs (examples outlive import time)."""

    delta: float


def resolved(claims: dict[str, Any], now: float) -> dict[str, Any]:
    return {name: int(now) + value.delta if isinstance(value, At) else value for name, value in claims.items()}


_TIMES = st.one_of(st.integers(-10**6, 10**6), st.floats(-1e6, 1e6)).map(At)
_TEXTS = st.sampled_from(["\ud800", "\x00", "a\x00b", "k" * 43, "\u212a"])
_ODD = st.sampled_from([10**400, -10**400, 1e308, -1e308, True, "1700000000", [1], None, 0, 2**63])
claim_values = st.one_of(json_scalars, _TIMES, _ODD, json_values, _TEXTS,
                         st.sampled_from([ISSUER, AUD, SUB, "actx:did:plc:abc:x", "actx:a:", "exchanged", "rbac"]))
_BASE = ("iss", "aud", "sub", "iat", "nbf", "exp", "jti", tokens.KIND_CLAIM)
OUR_CLAIMS = {"iss": ISSUER, "aud": AUD, "sub": SUB, "iat": At(0), "nbf": At(0), "exp": At(300), "jti": "j1",
              tokens.KIND_CLAIM: tokens.EXCHANGED}


@st.composite
def claim_sets(draw: st.DrawFn, good: dict[str, Any]) -> dict[str, Any]:
    claims = dict(good)
    for name in draw(st.sets(st.sampled_from(_BASE), max_size=2)):
        claims.pop(name, None)
    claims.update(draw(st.dictionaries(st.sampled_from([*_BASE, "act", "extra"]), claim_values, max_size=3)))
    return claims


@st.composite
def mutations(draw: st.DrawFn, token: str, public_jwk: dict[str, Any]) -> str:
    """The token changed in one way an attacker might try."""
    head, body, sig = token.split(".")
    edges = sorted({0, len(token) - 1, len(head) - 1, len(head) + 1, len(head) + len(body), len(head) + len(body) + 2})
    kind = draw(st.sampled_from(["char", "header", "claims", "hmac", "none", "truncate", "duplicate"]))
    if kind == "char":
        at = draw(st.one_of(st.sampled_from(edges), st.integers(0, len(token) - 1)))
        char = draw(st.sampled_from(_B64URL + ".=+/% "))
        edit = draw(st.sampled_from([0, 1]))  # replace or insert
        return token[:at] + char + token[at + 1 - edit:]
    if kind == "header":
        header = json.loads(unb64(head))
        header.update(draw(st.dictionaries(st.sampled_from(["alg", "kid", "typ", "jku", "crit"]),
                                           st.one_of(st.sampled_from([*jose.ALLOWED_ALGS, "none", "HS256"]),
                                                     json_scalars), min_size=1, max_size=2)))
        return f"{b64(json.dumps(header).encode())}.{body}.{sig}"
    if kind == "claims":
        claims = json.loads(unb64(body))
        claims.update(draw(st.dictionaries(st.sampled_from(_BASE), claim_values, min_size=1, max_size=2)))
        return f"{head}.{b64(json.dumps(claims).encode())}.{sig}"
    if kind == "hmac":  # algorithm confusion: HMAC keyed with what the verifier knows
        header = b64(json.dumps({"alg": draw(st.sampled_from(["HS256", "RS256"])), "kid": public_jwk["kid"]}).encode())
        secret = draw(st.sampled_from([json.dumps(public_jwk).encode(), public_jwk["n"].encode(), b""]))
        mac = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
        return f"{header}.{body}.{b64(mac)}"
    if kind == "none":
        return f"{b64(json.dumps({'alg': 'none'}).encode())}.{body}."
    if kind == "truncate":
        return token[: draw(st.integers(0, len(token) - 1))]
    repeated = unb64(body)[:-1] + b',"sub":"actx:other:x"}'  # the same claim twice: which one counts?
    return f"{head}.{b64(repeated)}.{sig}"


# -- our own tokens ------------------------------------------------------------------------------------


@pytest.fixture
def signed(app_env: Path) -> tuple[str, dict[str, Any]]:
    return signing.sign({"aud": AUD, "sub": SUB}, kind=tokens.EXCHANGED, lifetime=300)


@scaled(3, fixtures=True)
@given(data=st.data())
def test_only_the_token_we_signed_verifies(signed: tuple[str, dict[str, Any]], data: st.DataObject) -> None:
    token, claims = signed
    mutant = data.draw(mutations(token, keys.public_jwk(keys.active_key().kid) or {}), label="mutant")
    try:
        verified = signing.verify(mutant, kinds={tokens.EXCHANGED})
    except tokens.TokenError as exc:
        assert str(exc)
        return
    assert mutant == token and verified == claims


_KINDS = st.sets(st.sampled_from([tokens.EXCHANGED, tokens.WORKLOAD, tokens.RBAC]), min_size=1)


@scaled(2, fixtures=True)
@given(header=st.dictionaries(st.sampled_from(["kid", "typ", "x5t", "KID"]), claim_values, max_size=1),
       claims=claim_sets(OUR_CLAIMS), kinds=_KINDS)
@example(header={}, claims={**OUR_CLAIMS, tokens.KIND_CLAIM: [1]}, kinds={tokens.EXCHANGED})  # found: TypeError
@example(header={"KID": None}, claims=OUR_CLAIMS, kinds={tokens.EXCHANGED})
@example(header={"typ": "\ud800"}, claims=OUR_CLAIMS, kinds={tokens.EXCHANGED})
def test_signed_claims_verify_exactly_when_the_rules_allow(
        app_env: Path, header: dict[str, Any], claims: dict[str, Any], kinds: set[str]) -> None:
    key = keys.active_key()
    header = {"alg": "RS256", "typ": "JWT", "kid": key.kid, **header}
    now = time.time()
    claims = resolved(claims, now)
    token = jose.sign_rs256(key.private_key, header, claims)
    unique = len({name.casefold() for name in header}) == len(header)  # "kid" and "KID": refused as ambiguous
    plain = header["kid"] == key.kid and unique and _valid_text(header)
    verdict = ours_verdict(claims, now, kinds) if plain else False
    try:
        verified = signing.verify(token, kinds=kinds)
    except tokens.TokenError:
        assert verdict is not True, "a token the rules accept was refused"
        return
    assert verdict is not False, "a token the rules refuse verified"
    assert verified == claims


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
@scaled(1, fixtures=True)
@given(kid=claim_values)
@example(kid="\x00")  # found: PostgreSQL refused the NUL in the key lookup (DataError, a 500)
@example(kid="a\x00b")
def test_a_token_naming_another_key_is_refused_on_either_database(backend: str, kid: Any) -> None:
    key = keys.active_key()
    claims = resolved(OUR_CLAIMS, time.time())
    token = jose.sign_rs256(key.private_key, {"alg": "RS256", "kid": kid}, claims)
    try:
        signing.verify(token, kinds={tokens.EXCHANGED})
    except tokens.TokenError:
        assert kid != key.kid
        return
    assert kid == key.kid


# -- an external issuer's tokens -----------------------------------------------------------------------


@pytest.fixture
def github(app_env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[GitHubOIDCStandIn]:
    with GitHubOIDCStandIn() as gh:
        monkeypatch.setenv("WID_TRUSTED_ISSUERS", gh.issuer)
        monkeypatch.setenv("WID_ALLOW_INSECURE_ISSUERS", "1")
        config.settings.cache_clear()
        role = (f'role "gha" {{\n  iss = "{gh.issuer}"\n  aud = "api://DigitalOcean?actx={{actx}}"\n'
                f'  sub = "repo:o/r:ref:refs/heads/main"\n  policies = ["p"]\n}}\n')
        files = {"gha-roles/gha.hcl": role.encode(),
                 "policies/p.hcl": b'path "/v2/x" {\n  capabilities = ["read"]\n}\n'}
        # The stand-in is GitHub-shaped: GitHub's owner rule (sub repo:OWNER/...) applies to it.
        compiled = rbac_compile.compile_tree(files, api="DigitalOcean", actx=TEAM,
                                             owner_claims={gh.issuer: ("github",)})
        with storage.database().transaction() as tx:
            rbac_store.install(tx, "DigitalOcean", TEAM, compiled, "0" * 40)
        yield gh


def external_verdict(claims: dict[str, Any], issuer: str, now: float) -> bool | None:
    plain = (_valid_text(claims) and claims.get("iss") == issuer and claims.get("aud") == AUD
             and isinstance(claims.get("sub"), str) and claims["sub"] != "")
    return times_verdict(claims, now, config.settings().max_token_ttl) if plain else False


EXTERNAL_CLAIMS = {"aud": AUD, "sub": "repo:o/r:ref:refs/heads/main", "iat": At(0), "nbf": At(-300),
                   "exp": At(300), "jti": "j"}


@scaled(2, fixtures=True)
@given(claims=claim_sets(EXTERNAL_CLAIMS).map(lambda claims: {k: v for k, v in claims.items() if k != "wid_kind"}))
@example(claims={**EXTERNAL_CLAIMS, "exp": 10**400})  # found: OverflowError (int too large to convert to float)
def test_external_tokens_verify_exactly_when_the_rules_allow(github: GitHubOIDCStandIn, claims: dict[str, Any]) -> None:
    now = time.time()
    claims = resolved({"iss": github.issuer, **claims}, now)
    token = github.sign(claims)
    verdict = external_verdict(claims, github.issuer, now)
    try:
        principal = authz.authenticate(token)
    except WidError as exc:
        assert status_of(exc) == 401, exc.message
        assert verdict is not True, f"a token the rules accept was refused: {exc.message}"
        return
    assert verdict is not False, "a token the rules refuse verified"
    assert principal.claims == claims

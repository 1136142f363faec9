"""The tokens this proxy signs, and the strict verifier for them (docs/security.md, "Tokens and where each
is accepted").

Every token: RS256, header `kid` (RFC 7638 thumbprint), claims iss, aud, sub, iat, nbf, exp, jti,
and `wid_kind` naming what it is for, so a token of one kind is never accepted where another is due.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any, NamedTuple

from wid import config
from wid.core import jose, names
from wid.store import keys, wellknown

# Kinds of JWT we sign. Refresh tokens are opaque secrets, not JWTs (see the refresh handler).
PROVISIONING = "provisioning"
WORKLOAD = "workload"
EXCHANGED = "exchanged"
RBAC = "rbac"
KIND_CLAIM = "wid_kind"
# Claims the signer sets; a caller can never choose them.
RESERVED_CLAIMS = frozenset({"iss", "iat", "nbf", "exp", "jti", "act", KIND_CLAIM, "droplet_id"})
LEEWAY_SECONDS = 30
_AUDIENCE = re.compile(rf"api://(?P<api>{names.API.pattern})\?actx=(?P<actx>{names.ACTX.pattern})")


class TokenError(Exception):
    """Why a presented token is refused; safe to show to the caller (it never echoes the token)."""


class Audience(NamedTuple):
    api: str
    actx: str

    def __str__(self) -> str:
        return f"api://{self.api}?actx={self.actx}"


def parse_audience(aud: Any) -> Audience:
    """`api://{API}?actx={actx}` with exactly one actx and nothing else; anything else is refused."""
    if not isinstance(aud, str):
        raise TokenError("aud must be one string of the form api://{API}?actx={actx}")
    match = _AUDIENCE.fullmatch(aud)
    if not match:
        raise TokenError(f"aud {aud!r} is not of the form api://{{API}}?actx={{actx}} with exactly one actx")
    return Audience(match["api"], match["actx"])


def sub_context(sub: Any) -> str:
    """The context that obtained a token: `actx:{actx}:...` -> actx."""
    if not isinstance(sub, str) or not sub.startswith("actx:"):
        raise TokenError("sub must start with actx:{context}:")
    body = sub[len("actx:"):]
    if body.startswith("did:"):  # a DID context has colons of its own: did:{method}:{id}
        parts = body.split(":", 3)
        actx, sep, rest = ":".join(parts[:3]), ":" if len(parts) == 4 else "", parts[3] if len(parts) == 4 else ""
    else:
        actx, sep, rest = body.partition(":")
    if not sep or not names.ACTX.fullmatch(actx) or not rest:
        raise TokenError(f"sub {sub!r} must be actx:{{context}}:{{name}}")
    return actx


def sign(claims: dict[str, Any], *, kind: str, lifetime: int, now: int | None = None) -> tuple[str, dict[str, Any]]:
    """Sign `claims` (aud, sub and extra claims) as a token of `kind` living `lifetime` seconds."""
    settings = config.settings()
    if not 0 < lifetime <= settings.max_token_ttl:
        raise ValueError(f"token lifetime {lifetime}s is outside 1..{settings.max_token_ttl}s (WID_MAX_TOKEN_TTL)")
    parse_audience(claims.get("aud"))
    sub_context(claims.get("sub"))
    issued = int(time.time()) if now is None else now
    full = {
        **claims,
        "iss": settings.this_endpoint,
        "iat": issued,
        "nbf": issued,
        "exp": issued + lifetime,
        "jti": jose.b64url_encode(os.urandom(18)),
        KIND_CLAIM: kind,
    }
    key = keys.active_key()
    wellknown.ensure_published(key.kid)
    return jose.sign_rs256(key.private_key, {"alg": "RS256", "typ": "JWT", "kid": key.kid}, full), full


def check_times(claims: dict[str, Any], now: float | None = None) -> None:
    now = time.time() if now is None else now
    for name in ("exp", "iat", "nbf"):
        value = claims.get(name)
        if name in ("exp", "iat") and value is None:
            raise TokenError(f"token has no {name}")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise TokenError(f"{name} must be a number")
    if claims["exp"] <= now - LEEWAY_SECONDS:
        raise TokenError("token has expired")
    if claims.get("nbf") is not None and claims["nbf"] > now + LEEWAY_SECONDS:
        raise TokenError("token is not valid yet (nbf)")
    if claims["iat"] > now + LEEWAY_SECONDS:
        raise TokenError("token was issued in the future (iat)")


def verify(token: str, *, kinds: frozenset[str] | set[str], audience: str | None = None) -> dict[str, Any]:
    """Verify one of our own tokens: alg, kid, signature, iss, aud, times, kind. Returns its claims."""
    try:
        jws = jose.decode(token)
    except jose.JoseError as exc:
        raise TokenError(f"malformed token: {exc}") from None
    return verify_decoded(jws, kinds=kinds, audience=audience)


def verify_decoded(jws: jose.Jws, *, kinds: frozenset[str] | set[str], audience: str | None = None) -> dict[str, Any]:
    """verify() for a token already split and parsed by jose.decode (nothing of it is trusted yet)."""
    if jws.alg != "RS256":
        raise TokenError(f"algorithm {jws.alg} is not used by this issuer")
    kid = jws.kid
    jwk = keys.public_jwk(kid) if kid else None
    if jwk is None:
        raise TokenError("token is signed by a key this issuer does not know (kid)")
    try:
        jose.verify(jws, jwk)
    except jose.JoseError as exc:
        raise TokenError(str(exc)) from None
    claims = jws.claims
    if claims.get("iss") != config.settings().this_endpoint:
        raise TokenError("token was not issued by this issuer (iss)")
    aud = parse_audience(claims.get("aud"))
    if audience is not None and str(aud) != audience:
        raise TokenError(f"token audience {claims.get('aud')!r} is not {audience!r}")
    check_times(claims)
    if claims.get(KIND_CLAIM) not in kinds:
        expected = " or ".join(sorted(kinds))
        raise TokenError(f"a {claims.get(KIND_CLAIM)} token cannot be used here (expected {expected})")
    sub_context(claims.get("sub"))
    if not isinstance(claims.get("jti"), str):
        raise TokenError("token has no jti")
    return claims

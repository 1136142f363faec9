"""Our own tokens, signed with the active key and verified against the keys this issuer published.

The claim rules (kinds, audience, subject, times) are lib/wid/core/tokens.py; the keys are
lib/wid/store/keys.py, and a key is published in the JWKS (lib/wid/store/wellknown.py) before its
first token is signed.
"""

from __future__ import annotations

import os
import time
from typing import Any

from wid import config
from wid.core import jose, tokens
from wid.store import keys, wellknown


def sign(claims: dict[str, Any], *, kind: str, lifetime: int, now: int | None = None) -> tuple[str, dict[str, Any]]:
    """Sign `claims` (aud, sub and extra claims) as a token of `kind` living `lifetime` seconds."""
    settings = config.settings()
    if not 0 < lifetime <= settings.max_token_ttl:
        raise ValueError(f"token lifetime {lifetime}s is outside 1..{settings.max_token_ttl}s (WID_MAX_TOKEN_TTL)")
    tokens.parse_audience(claims.get("aud"))
    tokens.sub_context(claims.get("sub"))
    issued = int(time.time()) if now is None else now
    full = {
        **claims,
        "iss": settings.this_endpoint,
        "iat": issued,
        "nbf": issued,
        "exp": issued + lifetime,
        "jti": jose.b64url_encode(os.urandom(18)),
        tokens.KIND_CLAIM: kind,
    }
    key = keys.active_key()
    wellknown.ensure_published(key.kid)
    return jose.sign_rs256(key.private_key, {"alg": "RS256", "typ": "JWT", "kid": key.kid}, full), full


def verify(token: str, *, kinds: frozenset[str] | set[str], audience: str | None = None) -> dict[str, Any]:
    """Verify one of our own tokens: alg, kid, signature, iss, aud, times, kind. Returns its claims."""
    try:
        jws = jose.decode(token)
    except jose.JoseError as exc:
        raise tokens.TokenError(f"malformed token: {exc}") from None
    return verify_decoded(jws, kinds=kinds, audience=audience)


def verify_decoded(jws: jose.Jws, *, kinds: frozenset[str] | set[str], audience: str | None = None) -> dict[str, Any]:
    """verify() for a token already split and parsed by jose.decode (nothing of it is trusted yet)."""
    if jws.alg != "RS256":
        raise tokens.TokenError(f"algorithm {jws.alg} is not used by this issuer")
    kid = jws.kid
    jwk = keys.public_jwk(kid) if tokens.is_kid(kid) else None
    if jwk is None:
        raise tokens.TokenError("token is signed by a key this issuer does not know (kid)")
    try:
        jose.verify(jws, jwk)
    except jose.JoseError as exc:
        raise tokens.TokenError(str(exc)) from None
    claims = jws.claims
    if claims.get("iss") != config.settings().this_endpoint:
        raise tokens.TokenError("token was not issued by this issuer (iss)")
    aud = tokens.parse_audience(claims.get("aud"))
    if audience is not None and str(aud) != audience:
        raise tokens.TokenError(f"token audience {claims.get('aud')!r} is not {audience!r}")
    tokens.check_times(claims)
    kind = claims.get(tokens.KIND_CLAIM)
    if not isinstance(kind, str) or kind not in kinds:  # a list is unhashable: refused, never a TypeError
        expected = " or ".join(sorted(kinds))
        raise tokens.TokenError(f"a {kind} token cannot be used here (expected {expected})")
    tokens.sub_context(claims.get("sub"))
    if not isinstance(claims.get("jti"), str):
        raise tokens.TokenError("token has no jti")
    return claims

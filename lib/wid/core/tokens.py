"""The rules of the tokens this proxy signs: kinds, audience, subject and times (docs/security.md,
"Tokens and where each is accepted").

Every token: RS256, header `kid` (RFC 7638 thumbprint), claims iss, aud, sub, iat, nbf, exp, jti,
and `wid_kind` naming what it is for, so a token of one kind is never accepted where another is due.
Signing with the active key and the strict verifier are lib/wid/store/signing.py (they need the keys).
"""

import time
from typing import Any, TypeGuard

from wid.core import names

# Kinds of JWT we sign. Refresh tokens are opaque secrets, not JWTs (see the refresh handler).
PROVISIONING = "provisioning"
WORKLOAD = "workload"
EXCHANGED = "exchanged"
RBAC = "rbac"
KIND_CLAIM = "wid_kind"
# Claims the signer sets; a caller can never choose them.
RESERVED_CLAIMS = frozenset({"iss", "iat", "nbf", "exp", "jti", "act", KIND_CLAIM, "droplet_id"})
LEEWAY_SECONDS = 30
# Our key ids are RFC 7638 SHA-256 thumbprints; any other kid names no key of ours and is refused before
# it reaches the database (where a NUL, say, is an error of its own).
_KID_CHARACTERS = names.LETTERS_DIGITS | frozenset("_-")


def is_kid(value: object) -> TypeGuard[str]:
    """Whether `value` can be one of our key ids: 43 base64url characters."""
    return names.is_word(value, _KID_CHARACTERS, _KID_CHARACTERS, 43, 43)


class TokenError(Exception):
    """Why a presented token is refused; safe to show to the caller (it never echoes the token)."""


class Audience:
    # A slotted class, not a NamedTuple (docs/architecture.md, "What a request imports").
    __slots__ = ("actx", "api")

    def __init__(self, api: str, actx: str) -> None:
        self.api = api
        self.actx = actx

    def __str__(self) -> str:
        return f"api://{self.api}?actx={self.actx}"


def parse_audience(aud: Any) -> Audience:
    """`api://{API}?actx={actx}` with exactly one actx and nothing else; anything else is refused."""
    if not isinstance(aud, str):
        raise TokenError("aud must be one string of the form api://{API}?actx={actx}")
    # Neither name may hold '?', '=' or '&': the first "?actx=" is the only place the two can meet.
    api, separator, actx = aud.removeprefix("api://").partition("?actx=")
    if not aud.startswith("api://") or not separator or not names.is_api(api) or not names.is_actx(actx):
        raise TokenError(f"aud {aud!r} is not of the form api://{{API}}?actx={{actx}} with exactly one actx")
    return Audience(api, actx)


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
    if not sep or not names.is_actx(actx) or not rest:
        raise TokenError(f"sub {sub!r} must be actx:{{context}}:{{name}}")
    return actx


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

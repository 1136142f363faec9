"""The names a token's audience carries, `api://{API}?actx={actx}`: one rule each, used by the token
verifier (lib/wid/core/tokens.py), the RBAC compiler (lib/wid/core/rbac/compiler.py) and the routes.

The limits are the tokens': the compiler refuses a context or API name that no token could carry.
ACTX_MAX fits every context an upstream accepts: a DigitalOcean team UUID (36 characters), a did:plc
(32) and a did:web (at most 128, lib/wid/upstreams/atproto/context.py).
"""

from __future__ import annotations

from typing import TypeGuard

API_MAX = 32
ACTX_MAX = 128
LETTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
LETTERS_DIGITS = LETTERS | frozenset("0123456789")
_ACTX_CHARACTERS = LETTERS_DIGITS | frozenset(":._-")
_LOWER_HEX = frozenset("0123456789abcdef")


def is_word(value: object, first: frozenset[str], rest: frozenset[str], longest: int,
            shortest: int = 1) -> TypeGuard[str]:
    """`value` is a str of `shortest` to `longest` characters, the first in `first` (a subset of `rest`) and
    all in `rest`: the regular expression `[first][rest]{shortest-1,longest-1}` matched whole, without
    compiling one on every request path (each costs a CGI process about 0.6 M instructions)."""
    return (isinstance(value, str) and shortest <= len(value) <= longest and value[0] in first
            and rest.issuperset(value))


def is_api(value: object) -> TypeGuard[str]:
    """A letter, then letters or digits: at most API_MAX characters."""
    return is_word(value, LETTERS, LETTERS_DIGITS, API_MAX)


def is_actx(value: object) -> TypeGuard[str]:
    """A letter or digit, then letters, digits, ':', '.', '_' or '-': at most ACTX_MAX characters."""
    return is_word(value, LETTERS_DIGITS, _ACTX_CHARACTERS, ACTX_MAX)


def is_team_uuid(value: object) -> TypeGuard[str]:
    """A DigitalOcean team (its context id): a lowercase UUID as DigitalOcean's API writes it, 8-4-4-4-12 hex
    digits."""
    return (isinstance(value, str) and len(value) == 36 and value[8] == value[13] == value[18] == value[23] == "-"
            and _LOWER_HEX.issuperset(value.replace("-", "")))


def api_problem(api: str) -> str | None:
    """Why `api` cannot be an API name in a token's audience, or None when it can."""
    if len(api) > API_MAX:
        return f"api {api[:40]!r}... is {len(api)} characters; a token's audience carries at most {API_MAX}"
    if not is_api(api):
        return f"api {api!r} must be a letter then letters or digits (at most {API_MAX} characters)"
    return None


def actx_problem(actx: str) -> str | None:
    """Why `actx` cannot be a context id in a token's audience, or None when it can."""
    if len(actx) > ACTX_MAX:
        return f"actx {actx[:40]!r}... is {len(actx)} characters; a token's audience carries at most {ACTX_MAX}"
    if not is_actx(actx):
        return (f"actx {actx!r} must be a letter or digit then letters, digits, ':', '.', '_' or '-' "
                f"(at most {ACTX_MAX} characters)")
    return None

"""The names a token's audience carries, `api://{API}?actx={actx}`: one rule each, used by the token
verifier (lib/wid/core/tokens.py), the RBAC compiler (lib/wid/core/rbac/compiler.py) and the routes.

The limits are the tokens': the compiler refuses a context or API name that no token could carry.
ACTX_MAX fits every context an upstream accepts: a DigitalOcean team UUID (36 characters), a did:plc
(32) and a did:web (at most 128, lib/wid/upstreams/atproto/context.py).
"""

from __future__ import annotations

import re
from typing import TypeGuard

API_MAX = 32
ACTX_MAX = 128
API = re.compile(rf"[A-Za-z][A-Za-z0-9]{{0,{API_MAX - 1}}}")
ACTX = re.compile(rf"[A-Za-z0-9][A-Za-z0-9:._-]{{0,{ACTX_MAX - 1}}}")
# A DigitalOcean team (its context id): a lowercase UUID as DigitalOcean's API writes it.
TEAM_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"  # compiled at first use (re caches it)


def is_team_uuid(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and re.fullmatch(TEAM_UUID, value) is not None


def api_problem(api: str) -> str | None:
    """Why `api` cannot be an API name in a token's audience, or None when it can."""
    if len(api) > API_MAX:
        return f"api {api[:40]!r}... is {len(api)} characters; a token's audience carries at most {API_MAX}"
    if not API.fullmatch(api):
        return f"api {api!r} must be a letter then letters or digits (at most {API_MAX} characters)"
    return None


def actx_problem(actx: str) -> str | None:
    """Why `actx` cannot be a context id in a token's audience, or None when it can."""
    if len(actx) > ACTX_MAX:
        return f"actx {actx[:40]!r}... is {len(actx)} characters; a token's audience carries at most {ACTX_MAX}"
    if not ACTX.fullmatch(actx):
        return (f"actx {actx!r} must be a letter or digit then letters, digits, ':', '.', '_' or '-' "
                f"(at most {ACTX_MAX} characters)")
    return None

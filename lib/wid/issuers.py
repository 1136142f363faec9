"""Tokens from issuers other than this proxy. Until external issuers are configured, none is accepted."""

from __future__ import annotations

from typing import Any

from wid import jose, tokens


def verify_external(unverified: jose.Jws) -> dict[str, Any]:
    raise tokens.TokenError(f"tokens from issuer {unverified.claims.get('iss')!r} are not accepted here")

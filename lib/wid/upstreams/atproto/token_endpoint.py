"""A session's requests to its authorization server's token endpoint, and what is stored of a session.

Every request is DPoP-bound (lib/wid/upstreams/atproto/dpop_http.py) and authenticated with the
client's `private_key_jwt` (lib/wid/upstreams/atproto/client.py). A grant must be `token_type` DPoP,
name the `sub` (the DID) and include the `atproto` scope.
"""

import json
import time
from collections.abc import Callable
from typing import Any, NamedTuple
from urllib.parse import urlencode

from wid.core import dpop
from wid.core.errors import WidError
from wid.log import log
from wid.net.safe_http import FetchError, HttpResult
from wid.upstreams.atproto.client import client_auth, client_key
from wid.upstreams.atproto.dpop_http import Nonces, dpop_request
from wid.upstreams.oauth_client import TokenEndpointError


class Grant(NamedTuple):
    access_token: str
    refresh_token: str | None
    expires_in: int | None
    scope: str
    sub: str


def oauth_error(result: HttpResult) -> tuple[str, str]:
    try:
        payload = json.loads(result.body)
    except (ValueError, UnicodeDecodeError):
        payload = None
    if not isinstance(payload, dict):
        return f"http_{result.status}", ""
    return str(payload.get("error") or f"http_{result.status}")[:80], str(payload.get("error_description") or "")[:300]


def token_request(data: dict[str, Any], form: dict[str, str], *, nonces: Nonces) -> Grant:
    """POST the token endpoint for a session (`data` has issuer, token_endpoint, dpop_key, client_kid).

    Never inside a transaction: the authorization server may take its whole timeout to answer.
    """
    key = client_key(data.get("client_kid"))
    dpop_key = dpop.key_from_pem(data["dpop_key"])
    issuer = str(data["issuer"])
    result = dpop_request("POST", str(data["token_endpoint"]), dpop_key, service="atproto_auth",
                          what=f"the authorization server {issuer} (token endpoint)", nonces=nonces,
                          headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
                          body=lambda: urlencode({**form, **client_auth(key, issuer)}).encode())
    if result.status >= 500:
        raise FetchError(f"the authorization server {issuer} answered HTTP {result.status} at "
                         "its token endpoint; try again later", retryable=True)
    if result.status != 200:
        error, description = oauth_error(result)
        raise TokenEndpointError(result.status, error, description)
    payload = result.json_object(f"the authorization server {issuer} (token endpoint)")
    access, token_type, sub = payload.get("access_token"), payload.get("token_type"), payload.get("sub")
    if not isinstance(access, str) or not access:
        raise FetchError(f"the authorization server {issuer} answered without an access_token")
    if not isinstance(token_type, str) or token_type.lower() != "dpop":
        raise FetchError(f"the authorization server {issuer} issued a {str(token_type)[:20]!r} "
                         "token; the ATProto profile requires DPoP-bound tokens", code="token_not_dpop")
    if not isinstance(sub, str) or not sub:
        raise FetchError(f"the authorization server {issuer} answered without the sub (DID)")
    scope = payload.get("scope")
    if not isinstance(scope, str) or "atproto" not in scope.split():
        raise FetchError(f"the authorization server {issuer} granted the scope "
                         f"{str(scope)[:100]!r}, without 'atproto'")
    refresh = payload.get("refresh_token")
    expires_in = payload.get("expires_in")
    return Grant(access, refresh if isinstance(refresh, str) and refresh else None,
                 int(expires_in) if isinstance(expires_in, int | float) and expires_in > 0 else None, scope, sub)


def revoke_tokens(data: dict[str, Any], *tokens_: str) -> None:
    """Best effort (RFC 7009): give back tokens we will not keep."""
    revocation = data.get("revocation_endpoint")
    if not isinstance(revocation, str):
        return
    try:
        key = client_key(data.get("client_kid"))
        dpop_key = dpop.key_from_pem(data["dpop_key"])
        nonces = Nonces()
        issuer = str(data["issuer"])

        def form(token: str) -> Callable[[], bytes]:
            return lambda: urlencode({"token": token, **client_auth(key, issuer)}).encode()

        for token in tokens_:
            dpop_request("POST", revocation, dpop_key, service="atproto_auth",
                         what="the authorization server (revocation)", nonces=nonces,
                         headers={"Content-Type": "application/x-www-form-urlencoded"}, body=form(token))
        nonces.flush()
    except (WidError, ValueError) as exc:
        log("atproto_revoke_failed", level="warning", message=str(exc)[:300])


def session_data(flow: dict[str, Any], grant: Grant, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    now = int(time.time())
    previous = previous or {}
    return {
        "did": flow["did"],
        "handle": flow.get("handle"),
        "pds": flow["pds"],
        "issuer": flow["issuer"],
        "token_endpoint": flow["token_endpoint"],
        "revocation_endpoint": flow.get("revocation_endpoint"),
        "client_kid": flow["client_kid"],
        "dpop_key": flow["dpop_key"],
        "access_token": grant.access_token,
        "refresh_token": grant.refresh_token or previous.get("refresh_token"),
        "token_type": "DPoP",
        "scope": grant.scope,
        "expires_at": now + grant.expires_in if grant.expires_in else None,
        "lifetime": grant.expires_in,
        "connected_at": previous.get("connected_at") or now,
        "refreshed_at": now,
    }


def public_view(data: dict[str, Any]) -> dict[str, Any]:
    """What may be shown or kept about a session: never a token or a key."""
    return {k: data.get(k) for k in ("did", "handle", "pds", "issuer", "scope", "expires_at", "connected_at",
                                     "refreshed_at")}

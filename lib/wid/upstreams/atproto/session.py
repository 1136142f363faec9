"""A DID's ATProto session as workloads use it: the access token, refreshed when due.

Refreshes are serialised per DID (`credentials.locked`) and the rotated refresh token is stored before
anything uses it, because reusing a spent one revokes the whole session at the authorization server.
The sign-in that creates a session is `atproto_oauth`.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

from cryptography.hazmat.primitives.asymmetric import ec

from wid.core import dpop
from wid.core.errors import Forbidden, UpstreamFailed, WidError
from wid.log import log
from wid.store import audit, credentials
from wid.upstreams.atproto import identity
from wid.upstreams.atproto.oauth import (
    API,
    REFRESH_BEFORE_SECONDS,
    SIGNIN_PATH,
    Grant,
    Nonces,
    TokenEndpointError,
    client_key,
    endpoint,
    public_view,
    session_data,
    token_request,
)


def sign_in_again(did: str) -> str:
    return f"an admin of {did} must sign in again at {endpoint()}{SIGNIN_PATH}"


def not_connected(did: str) -> WidError:
    return Forbidden(f"{did} has never signed in to this proxy, so it holds no ATProto "
                     f"session to act for it; an admin of {did} must sign in at {endpoint()}{SIGNIN_PATH}",
                     code="atproto_not_connected")


def revoked(did: str, reason: str | None) -> WidError:
    return UpstreamFailed(f"the ATProto session of {did} was revoked or has expired "
                          f"({reason or 'no reason recorded'}); {sign_in_again(did)}", code="atproto_session_revoked")


class Session(NamedTuple):
    did: str
    pds: str
    access_token: str
    dpop_key: ec.EllipticCurvePrivateKey
    expires_at: float | None


def _usable(did: str, cred: credentials.Credential | None) -> dict[str, Any]:
    if cred is None:
        raise not_connected(did)
    if cred.status != credentials.ACTIVE:
        raise revoked(did, cred.status_reason)
    if not isinstance(cred.data.get("access_token"), str):
        raise UpstreamFailed(f"the stored ATProto session of {did} has no access token; "
                             f"{sign_in_again(did)}")
    return cred.data


def stored_session(did: str) -> dict[str, Any]:
    """The stored session data (raises 403 when never signed in, 502 when revoked)."""
    return _usable(did, credentials.get(API, did))


def _due(data: dict[str, Any], now: float) -> bool:
    expires_at = data.get("expires_at")
    if not isinstance(expires_at, int | float):
        return False
    lifetime = data.get("lifetime")
    margin = min(REFRESH_BEFORE_SECONDS, lifetime / 2) if isinstance(lifetime, int | float) and lifetime > 0 \
        else REFRESH_BEFORE_SECONDS
    return float(expires_at) - now < margin


def _session(data: dict[str, Any]) -> Session:
    expires = data.get("expires_at")
    return Session(str(data["did"]), str(data["pds"]), str(data["access_token"]), dpop.key_from_pem(data["dpop_key"]),
                   float(expires) if isinstance(expires, int | float) else None)


def session(did: str, *, rejected: str | None = None, data: dict[str, Any] | None = None) -> Session:
    """The DID's session with a usable access token (refreshed first when due, or when the PDS just
    refused `rejected`). `data`: the stored session, when the caller has just read it."""
    data = data if data is not None and rejected is None else stored_session(did)
    if rejected is None and not _due(data, time.time()):
        return _session(data)
    return _session(refresh(did, rejected=rejected))


def refresh(did: str, *, rejected: str | None = None, force: bool = False) -> dict[str, Any]:
    """Refresh under the DID's lock; returns the session data to use. See the module docstring."""
    data = stored_session(did)
    # Before spending the refresh token: is the DID still on that PDS, with that authorization server?
    # (Fetched fresh, outside the lock: a slow directory must not hold the database's write lock.)
    _check_still_hosted(did, data)
    nonces = Nonces()
    nonces.load(dpop.origin(str(data["token_endpoint"])))
    key = client_key(data.get("client_kid"))
    outcome: Grant | WidError | str
    with credentials.locked(API, did) as (tx, cred):
        data = _usable(did, cred)
        current = str(data["access_token"])
        if rejected is not None and current != rejected:
            return data  # another process refreshed while we waited for the lock
        if rejected is None and not force and not _due(data, time.time()):
            return data  # likewise
        expires_at = data.get("expires_at")
        left = float(expires_at) - time.time() if isinstance(expires_at, int | float) else None
        refresh_token = data.get("refresh_token")
        if not isinstance(refresh_token, str) or not refresh_token:
            if rejected is None and left is not None and left > 0:
                return data  # nothing to refresh with: use it while it lasts
            outcome = "the access token expired or was refused, and the authorization server issued no refresh token"
        else:
            try:
                grant = token_request(data, {"grant_type": "refresh_token", "refresh_token": refresh_token},
                                      nonces=nonces, tx=tx, key=key)
                outcome = grant if grant.sub == did else UpstreamFailed(
                    f"the authorization server refreshed {did}'s session with tokens for {grant.sub[:80]}; the "
                    f"session was left as it was. {sign_in_again(did)}", code="wrong_account")
            except TokenEndpointError as exc:
                if exc.error in {"invalid_grant", "invalid_token", "unauthorized_client", "access_denied"}:
                    outcome = f"the authorization server refused the refresh token ({exc})"
                else:
                    outcome = UpstreamFailed(f"the authorization server refused to refresh "
                                             f"{did}'s session ({exc}); the session was left as it was",
                                             code="atproto_refresh_failed")
            except WidError as exc:  # 502/504: nothing happened, or we cannot know; keep the session
                outcome = exc
        nonces.flush(tx)
        if isinstance(outcome, Grant):
            fresh = session_data(data, outcome, previous=data)
            credentials.put(tx, API, did, fresh)
            audit.record("oauth_refresh", "allow", api=API, actx=did, tx=tx, expires_at=fresh["expires_at"])
            return fresh
        if isinstance(outcome, str):
            credentials.put(tx, API, did, public_view(data), status=credentials.REVOKED, reason=outcome)
            audit.record("oauth_refresh", "deny", api=API, actx=did, tx=tx, reason=outcome)
    if isinstance(outcome, str):
        raise revoked(did, outcome)
    if rejected is None and not force and (left is None or left > 0):
        log("atproto_refresh_failed", level="warning", did=did, message=outcome.message)
        return data  # the current token still works: try again on a later request
    raise outcome


def _check_still_hosted(did: str, data: dict[str, Any]) -> None:
    document = identity.resolve_did(did, max_age=0)
    if document.pds != data["pds"]:
        raise pds_changed(did, data["pds"], document.pds)


def pds_changed(did: str, signed_in: str, now: str) -> WidError:
    return UpstreamFailed(f"the DID document of {did} now names the PDS {now}, not {signed_in} "
                          f"where its session was authorized; the proxy sends nothing to either. {sign_in_again(did)} "
                          "(the stored session was kept)", code="atproto_pds_changed")


def sessions() -> list[dict[str, Any]]:
    """Every DID with a stored session: status and what may be shown."""
    out = []
    for actx, status, reason, updated_at in credentials.contexts(API):
        cred = credentials.get(API, actx)
        view = public_view(cred.data) if cred is not None else {}
        out.append({**view, "did": actx, "status": status, "reason": reason, "updated_at": updated_at})
    return out

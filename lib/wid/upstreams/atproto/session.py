"""A DID's ATProto session as workloads use it: the access token, refreshed when due.

One process of any replica refreshes a DID at a time, under a lease, with no database lock held while
the authorization server answers (wid.upstreams.credential_refresh); the rotated refresh token is stored before
anything uses it, because reusing a spent one revokes the whole session at the authorization server.
The sign-in that creates a session is in lib/wid/upstreams/atproto/oauth.py.
"""

import time
from typing import Any, NamedTuple

from cryptography.hazmat.primitives.asymmetric import ec

from wid import config
from wid.core import dpop
from wid.core.errors import Forbidden, UpstreamFailed, WidError
from wid.store import credentials
from wid.upstreams import credential_refresh
from wid.upstreams.atproto import identity
from wid.upstreams.atproto.client import SIGNIN_PATH, endpoint
from wid.upstreams.atproto.context import API
from wid.upstreams.atproto.dpop_http import Nonces
from wid.upstreams.atproto.token_endpoint import public_view, session_data, token_request
from wid.upstreams.oauth_client import TokenEndpointError

# Refresh when less than this is left (access tokens live about an hour), or half the token's life.
REFRESH_BEFORE_SECONDS = 300


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


class _SessionRefresh:
    """How a DID's session is refreshed (wid.upstreams.credential_refresh does the rest)."""

    api = API
    issued_by = "the authorization server"

    def call_seconds(self) -> float:
        return 3 * config.settings().atproto_timeout  # the DID document, then up to two token requests

    def usable(self, actx: str, cred: credentials.Credential | None) -> dict[str, Any]:
        return _usable(actx, cred)

    def due(self, data: dict[str, Any], now: float) -> bool:
        return _due(data, now)

    def refresh(self, actx: str, data: dict[str, Any]) -> dict[str, Any] | str | WidError:
        # Before spending the refresh token: is the DID still on that PDS? (Raises: nothing is sent.)
        _check_still_hosted(actx, data)
        nonces = Nonces()
        try:
            grant = token_request(data, {"grant_type": "refresh_token", "refresh_token": str(data["refresh_token"])},
                                  nonces=nonces)
        except TokenEndpointError as exc:
            if exc.error in {"invalid_grant", "invalid_token", "unauthorized_client", "access_denied"}:
                return f"the authorization server refused the refresh token ({exc})"
            return UpstreamFailed(f"the authorization server refused to refresh {actx}'s session ({exc}); the "
                                  "session was left as it was", code="atproto_refresh_failed")
        except WidError as exc:  # 502/504: nothing happened, or we cannot know; keep the session
            return exc
        finally:
            nonces.flush()
        if grant.sub != actx:
            return UpstreamFailed(f"the authorization server refreshed {actx}'s session with tokens for "
                                  f"{grant.sub[:80]}; the session was left as it was. {sign_in_again(actx)}",
                                  code="wrong_account")
        return session_data(data, grant, previous=data)

    def public_view(self, data: dict[str, Any]) -> dict[str, Any]:
        return public_view(data)

    def revoked(self, actx: str, reason: str | None) -> WidError:
        return revoked(actx, reason)


_SESSION_REFRESH = _SessionRefresh()


def refresh(did: str, *, rejected: str | None = None) -> dict[str, Any]:
    """The session data to use after a refresh (or someone else's); see wid.upstreams.credential_refresh."""
    return credential_refresh.current(_SESSION_REFRESH, did, rejected=rejected)


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

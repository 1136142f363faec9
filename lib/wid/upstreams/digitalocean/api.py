"""The DigitalOcean upstream's client: the team's OAuth token, and sending with it.

`team_token()` hands out the team's access token, refreshing it with the stored refresh token well
before it expires. One process of any replica refreshes a team at a time, under a lease, with no
database lock held while DigitalOcean's token endpoint answers; the others keep using the current
token meanwhile (lib/wid/upstreams/credential_refresh.py). A refresh that DigitalOcean answers with
`invalid_grant` marks the authorization revoked (unless a lost race explains it): workloads get a
clear 403 and the landing page shows it, until an admin authorizes again.

`send_as_team()` sends a request with the team's token, never a header of the client's. What of the
client's request goes upstream, and how the answer is relayed: lib/wid/web/forward/digitalocean.py.
A context is a team UUID (lib/wid/upstreams/digitalocean/context.py).
"""

from __future__ import annotations

import time
from typing import Any

from wid import config
from wid.core import uri
from wid.core.errors import Forbidden, InvalidRequest, UpstreamFailed, WidError
from wid.net import upstream
from wid.store import credentials
from wid.upstreams import credential_refresh
from wid.upstreams.digitalocean.context import API
from wid.upstreams.oauth_client import TokenEndpointError

# Refresh when less than this is left of the access token's life (DigitalOcean's live 30 days), or
# half its life for tokens that live less than two hours.
REFRESH_BEFORE_SECONDS = 3600
# Characters a query string may carry to the upstream as they are (RFC 3986 query + '%' escapes).


# --------------------------------------------------------------------------------------------------
# The team token, refreshed before it expires
# --------------------------------------------------------------------------------------------------


def _authorize_again() -> str:
    return f"an admin of the team must authorize this proxy at {config.settings().this_endpoint}/"


def not_connected(team_uuid: str) -> WidError:
    return Forbidden(f"team {team_uuid} has never authorized this proxy, so it holds no DigitalOcean token to act "
                     f"for it; {_authorize_again()}", code="team_not_connected")


def revoked(team_uuid: str, reason: str | None) -> WidError:
    return Forbidden(f"team {team_uuid}'s authorization of this proxy was revoked or has expired "
                     f"({reason or 'no reason recorded'}); {_authorize_again()}", code="team_authorization_revoked")


def _usable(team_uuid: str, cred: credentials.Credential | None) -> dict[str, Any]:
    if cred is None:
        raise not_connected(team_uuid)
    if cred.status != credentials.ACTIVE:
        raise revoked(team_uuid, cred.status_reason)
    if not isinstance(cred.data.get("access_token"), str):
        raise UpstreamFailed(f"team {team_uuid}'s stored credential has no access token")
    return cred.data


def _expires_in(data: dict[str, Any], now: float) -> float | None:
    expires_at = data.get("expires_at")
    return float(expires_at) - now if isinstance(expires_at, int | float) else None


def _due(data: dict[str, Any], now: float) -> bool:
    """Refresh when less than an hour (or half the token's life, if that is shorter) is left."""
    left = _expires_in(data, now)
    if left is None:
        return False
    lifetime = data.get("lifetime")
    margin = min(REFRESH_BEFORE_SECONDS, lifetime / 2) if isinstance(lifetime, int | float) and lifetime > 0 \
        else REFRESH_BEFORE_SECONDS
    return left < margin


class _TeamToken:
    """How a team's OAuth token is refreshed (wid.upstreams.credential_refresh does the rest)."""

    api = API
    issued_by = "DigitalOcean"

    def call_seconds(self) -> float:
        return config.settings().upstream_timeout

    def usable(self, actx: str, cred: credentials.Credential | None) -> dict[str, Any]:
        return _usable(actx, cred)

    def due(self, data: dict[str, Any], now: float) -> bool:
        return _due(data, now)

    def refresh(self, actx: str, data: dict[str, Any]) -> dict[str, Any] | str | WidError:
        from wid.upstreams.digitalocean import oauth as do_oauth  # only when a refresh is due

        try:
            grant = do_oauth.refresh_grant(str(data["refresh_token"]))
        except TokenEndpointError as exc:
            if exc.error in {"invalid_grant", "invalid_token", "unauthorized_client"}:
                return f"DigitalOcean refused the refresh token: {exc}"
            return UpstreamFailed(f"DigitalOcean's token endpoint refused to refresh team {actx}'s token ({exc})",
                                  code="oauth_refresh_failed")
        except WidError as exc:  # 502/504 from the HTTP client, 503 when the OAuth client is not configured
            return exc
        return do_oauth.credential_data(grant, team_name=None, previous=data)

    def public_view(self, data: dict[str, Any]) -> dict[str, Any]:
        from wid.upstreams.digitalocean import oauth as do_oauth

        return do_oauth.public_view(data)

    def revoked(self, actx: str, reason: str | None) -> WidError:
        return revoked(actx, reason)


_TEAM_TOKEN = _TeamToken()


def team_token(team_uuid: str, *, rejected: str | None = None) -> str:
    """The team's OAuth access token, refreshed first when it is due (wid.upstreams.credential_refresh).

    `rejected`: DigitalOcean just answered 401 to this token, so refresh now whatever its expiry says.
    """
    data = _usable(team_uuid, credentials.get(API, team_uuid))
    if rejected is None and not _due(data, time.time()):
        return str(data["access_token"])
    return str(credential_refresh.current(_TEAM_TOKEN, team_uuid, rejected=rejected)["access_token"])


# --------------------------------------------------------------------------------------------------
# Sending with the team's token
# --------------------------------------------------------------------------------------------------


def upstream_target(path: str, query_string: str) -> str:
    """The request target sent upstream: the checked (decoded) path re-encoded, the query as checked."""
    if not uri.is_verbatim_query(query_string):
        raise InvalidRequest("the query string has characters that must be percent-encoded")
    target = uri.quote_path(path)
    return f"{target}?{query_string}" if query_string else target


def send_as_team(team_uuid: str, method: str, target: str, *, body: bytes | None,
                 headers: dict[str, str]) -> upstream.UpstreamResponse:
    """Send one request to the DigitalOcean API with the team's token (never a header of the client's).

    A 401 means the token went bad early (revoked, or rotated elsewhere): refresh once and retry; the
    request was not processed, so sending it again is safe.
    """
    s = config.settings()
    token = team_token(team_uuid)
    for attempt in (1, 2):
        response = upstream.send(method, f"{s.do_api_url}{target}", service="digitalocean_api", body=body,
                                 timeout=s.upstream_timeout, headers={**headers, "Authorization": f"Bearer {token}"})
        if response.status != 401:
            return response
        response.connection.close()
        if attempt == 1:
            token = team_token(team_uuid, rejected=token)
    raise UpstreamFailed(f"DigitalOcean answered 401 to team {team_uuid}'s freshly refreshed token; "
                         f"{_authorize_again()}", code="upstream_unauthorized")


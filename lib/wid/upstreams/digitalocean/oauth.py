"""DigitalOcean's OAuth web application flow (docs.digitalocean.com/reference/api/oauth).

An admin's browser starts the flow at START_PATH: we record an unguessable `state` (hashed) bound to a
random browser secret held in an HttpOnly cookie, and send the browser to
`{DIGITALOCEAN_OAUTH_URL}/v1/oauth/authorize`. DigitalOcean sends it back to CALLBACK_PATH with a
code and the state; the state is accepted once, before it expires, and only from the browser that
holds the cookie. The code is exchanged at `{DIGITALOCEAN_OAUTH_URL}/v1/oauth/token`, the team is
resolved with GET /v2/account, and the access and refresh tokens are stored encrypted for the team.

Standard library only (plus the shared HTTP client): refreshes run on the API request path.
"""

import json
import time
from typing import Any, NamedTuple
from urllib.parse import quote, urlencode, urlsplit

from wid import config
from wid.core.errors import InvalidRequest, Unavailable, UpstreamFailed, WidError
from wid.log import log
from wid.net import upstream
from wid.store import audit, browser_state, credentials
from wid.upstreams import oauth_client
from wid.upstreams.digitalocean.account import account_for_token
from wid.upstreams.digitalocean.context import API
from wid.upstreams.oauth_client import TokenEndpointError

START_PATH = "/auth/digitalocean/v1/authorize"
CALLBACK_PATH = "/auth/digitalocean/v1/callback"
COOKIE_PATH = "/auth/digitalocean/v1/"
BINDING = browser_state.Binding("digitalocean", "wid_do_oauth", COOKIE_PATH, ttl_seconds=600)
# Least privilege for what the proxy does with a team's token: resolve the team (account:read); the
# wrapped routes (database:read + database:view_credentials for connection strings, tag:read for
# ?tag_name=, spaces_key:create_credentials/delete with spaces_key:read, which DigitalOcean requires
# beside them); reading Droplets (their public IP for attestation) and creating them with tags, with
# the read scopes DigitalOcean requires for droplet:create (regions, sizes, actions, images) and its
# associated ssh_key:read (--ssh-keys) and tag:create (the oidc-sub: tags). Anything else an admin
# wants to grant workloads through policy needs DIGITALOCEAN_OAUTH_SCOPES.
DEFAULT_SCOPES: tuple[str, ...] = (
    "account:read",
    "actions:read",
    "database:read",
    "database:view_credentials",
    "droplet:create",
    "droplet:read",
    "image:read",
    "regions:read",
    "sizes:read",
    "spaces_key:create_credentials",
    "spaces_key:delete",
    "spaces_key:read",
    "ssh_key:read",
    "tag:create",
    "tag:read",
)
_TOKEN_RESPONSE_LIMIT = 64 * 1024


def scopes() -> tuple[str, ...]:
    """The scopes requested: the operator's (DIGITALOCEAN_OAUTH_SCOPES, checked by wid.config) or the defaults."""
    return config.settings().do_oauth_scopes or DEFAULT_SCOPES


def is_configured() -> bool:
    s = config.settings()
    return bool(s.do_oauth_client_id and s.do_oauth_client_secret)


def not_configured() -> WidError:
    return Unavailable("the DigitalOcean OAuth client is not configured on this proxy: the operator must register an "
                       f"OAuth application with the callback URL {redirect_uri()} and set "
                       "DIGITALOCEAN_OAUTH_CLIENT_ID and DIGITALOCEAN_OAUTH_CLIENT_SECRET",
                       code="oauth_not_configured")


def _client() -> tuple[str, str]:
    s = config.settings()
    if not (s.do_oauth_client_id and s.do_oauth_client_secret):
        raise not_configured()
    return s.do_oauth_client_id, s.do_oauth_client_secret


def redirect_uri() -> str:
    return f"{config.settings().this_endpoint}{CALLBACK_PATH}"


# --------------------------------------------------------------------------------------------------
# State, bound to the browser
# --------------------------------------------------------------------------------------------------


class FlowStart(NamedTuple):
    authorize_url: str
    set_cookie: str  # the Set-Cookie header value that binds the state to this browser


def start() -> FlowStart:
    """Record a new state for a new browser secret; the URL that sends the browser to DigitalOcean."""
    client_id, _ = _client()
    state, set_cookie = browser_state.issue(BINDING)
    query = urlencode({"client_id": client_id, "redirect_uri": redirect_uri(), "response_type": "code",
                       "scope": " ".join(scopes()), "state": state}, quote_via=quote)
    return FlowStart(f"{config.settings().do_oauth_url}/v1/oauth/authorize?{query}", set_cookie)


def consume_state(state: str | None, cookie_header_value: str | None) -> None:
    """Accept `state` once, before it expires, from the browser it was issued to; else raise 400."""
    oauth_client.consume_state(BINDING, state, cookie_header_value, api=API, event="oauth_callback",
                               start_again=f"start again from {config.settings().this_endpoint}/")


# --------------------------------------------------------------------------------------------------
# Token endpoint
# --------------------------------------------------------------------------------------------------


class Grant(NamedTuple):
    access_token: str
    refresh_token: str | None
    expires_in: int | None
    scope: str | None
    token_type: str
    info: dict[str, Any]


def _token_request(params: dict[str, str]) -> Grant:
    client_id, client_secret = _client()
    # Secrets go in a form body, never in the query string (which servers log).
    body = urlencode({**params, "client_id": client_id, "client_secret": client_secret}).encode()
    response = upstream.send("POST", f"{config.settings().do_oauth_url}/v1/oauth/token",
                             service="digitalocean_oauth", headers={"Content-Type": "application/x-www-form-urlencoded",
                                      "Accept": "application/json"},
                             body=body, timeout=config.settings().upstream_timeout)
    raw = response.read(_TOKEN_RESPONSE_LIMIT)
    try:
        payload = json.loads(raw) if raw else None
    except ValueError:
        payload = None
    if response.status >= 500:
        raise UpstreamFailed(f"DigitalOcean's OAuth token endpoint answered {response.status}; try again later")
    if not isinstance(payload, dict):
        raise UpstreamFailed(f"DigitalOcean's OAuth token endpoint answered {response.status} without a JSON object")
    if response.status != 200:
        error = payload.get("error")
        description = payload.get("error_description") or payload.get("message") or ""
        raise TokenEndpointError(response.status, str(error or f"http_{response.status}")[:80],
                                 str(description)[:300])
    access = payload.get("access_token")
    if not isinstance(access, str) or not access:
        raise UpstreamFailed("DigitalOcean's OAuth token endpoint answered without an access_token")
    refresh = payload.get("refresh_token")
    expires_in = payload.get("expires_in")
    info = payload.get("info")
    return Grant(
        access_token=access,
        refresh_token=refresh if isinstance(refresh, str) and refresh else None,
        expires_in=int(expires_in) if isinstance(expires_in, int | float) and expires_in > 0 else None,
        scope=str(payload["scope"]) if isinstance(payload.get("scope"), str) else None,
        token_type=str(payload.get("token_type") or "bearer"),
        info=info if isinstance(info, dict) else {},
    )


def exchange_code(code: str) -> Grant:
    return _token_request({"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri()})


def refresh_grant(refresh_token: str) -> Grant:
    return _token_request({"grant_type": "refresh_token", "refresh_token": refresh_token})


def revoke(token: str) -> None:
    """Best effort: give back a token we will not keep (e.g. its team could not be resolved)."""
    try:
        client_id, client_secret = _client()
        body = urlencode({"token": token, "client_id": client_id, "client_secret": client_secret}).encode()
        response = upstream.send("POST", f"{config.settings().do_oauth_url}/v1/oauth/revoke",
                                 service="digitalocean_oauth",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"},
                                 body=body, timeout=config.settings().upstream_timeout)
        response.read(_TOKEN_RESPONSE_LIMIT)
    except WidError as exc:
        log("oauth_revoke_failed", level="warning", message=exc.message)


# --------------------------------------------------------------------------------------------------
# What is stored per team (sealed with WID_SECRET_KEY by credentials.py)
# --------------------------------------------------------------------------------------------------


def credential_data(grant: Grant, *, team_name: str | None, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """The stored credential after a grant; a refresh keeps the refresh token if none was rotated in."""
    now = int(time.time())
    previous = previous or {}
    return {
        "access_token": grant.access_token,
        "refresh_token": grant.refresh_token or previous.get("refresh_token"),
        "token_type": grant.token_type,
        "scope": grant.scope if grant.scope is not None else previous.get("scope"),
        "expires_at": now + grant.expires_in if grant.expires_in else None,
        "lifetime": grant.expires_in,
        "team_name": team_name if team_name is not None else previous.get("team_name"),
        "connected_at": previous.get("connected_at") or now,
        "refreshed_at": now,
    }


def public_view(data: dict[str, Any]) -> dict[str, Any]:
    """What may be shown about a stored credential: never a token."""
    return {k: data.get(k) for k in ("team_name", "scope", "expires_at", "connected_at", "refreshed_at")}


def connect(code: str) -> tuple[str, str | None]:
    """Exchange the code, resolve the team, store its tokens; returns (team_uuid, team_name)."""
    try:
        grant = exchange_code(code)
    except TokenEndpointError as exc:
        if exc.error == "invalid_client" or exc.status == 401:
            raise UpstreamFailed(f"DigitalOcean rejected this proxy's OAuth client credentials ({exc}); the "
                                 "operator must check DIGITALOCEAN_OAUTH_CLIENT_ID and "
                                 "DIGITALOCEAN_OAUTH_CLIENT_SECRET",
                                 code="oauth_client_rejected") from None
        raise InvalidRequest(f"DigitalOcean did not accept the authorization code ({exc}); "
                             f"start again from {config.settings().this_endpoint}/", code="invalid_grant") from None
    try:
        account = account_for_token(grant.access_token)
        claimed = grant.info.get("team_uuid")
        if claimed is not None and claimed != account.team_uuid:
            raise UpstreamFailed(f"the token response names team {claimed!r} but GET /v2/account "
                                 f"answers team {account.team_uuid!r}", code="team_unresolved")
    except WidError as exc:
        revoke(grant.access_token)  # nothing half-done: we keep no token we cannot attribute to a team
        audit.record("oauth_connect", "deny", api=API, reason=exc.message)
        raise UpstreamFailed("DigitalOcean issued a token, but its team could not be resolved with GET "
                             f"/v2/account: {exc.message}. Nothing was stored; check that the OAuth app requests "
                             "account:read and that you chose a team", code="team_unresolved") from None
    team_name = account.team_name or (grant.info.get("team_name") if isinstance(grant.info.get("team_name"), str)
                                      else None)
    with credentials.locked(API, account.team_uuid) as (tx, existing):
        previous = existing.data if existing is not None and existing.status == credentials.ACTIVE else None
        data = credential_data(grant, team_name=team_name, previous=previous)
        if existing is not None and previous is None:
            data["connected_at"] = int(time.time())  # re-authorized after a revocation
        credentials.put(tx, API, account.team_uuid, data)
        audit.record("oauth_connect", "allow", api=API, actx=account.team_uuid, tx=tx, team_name=team_name,
                     scope=data["scope"], reconnected=existing is not None)
    return account.team_uuid, team_name


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"

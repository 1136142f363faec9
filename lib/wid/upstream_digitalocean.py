"""The DigitalOcean upstream: a context is a team UUID; the credential is the team's OAuth token."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from wid import config, credentials, upstream
from wid.errors import ApiError, bad_gateway, forbidden, unauthorized
from wid.web import Request, Response

API = "DigitalOcean"
_TEAM_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass(frozen=True)
class Account:
    team_uuid: str
    team_name: str | None
    email: str | None


def api_json(method: str, path: str, token: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """Call the DigitalOcean API; returns (status, parsed JSON or None)."""
    s = config.settings()
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    response = upstream.send(method, f"{s.do_api_url}{path}", headers=headers, body=data, timeout=s.upstream_timeout)
    raw = response.read()
    try:
        return response.status, json.loads(raw) if raw else None
    except ValueError:
        if response.status >= 500:
            return response.status, None
        raise bad_gateway(f"DigitalOcean answered {response.status} with a body that is not JSON") from None


def account_for_token(token: str) -> Account:
    """The team a DigitalOcean token belongs to (GET /v2/account)."""
    status, payload = api_json("GET", "/v2/account", token)
    if status == 401:
        raise unauthorized("DigitalOcean rejected the token (GET /v2/account answered 401)")
    if status >= 500:
        raise bad_gateway(f"DigitalOcean answered {status} to GET /v2/account")
    if status != 200 or not isinstance(payload, dict):
        raise ApiError(502, "bad_gateway", f"unexpected answer {status} from GET /v2/account")
    account = payload.get("account") or {}
    team = account.get("team") or {}
    team_uuid = team.get("uuid")
    if not isinstance(team_uuid, str) or not _TEAM_UUID.match(team_uuid):
        raise forbidden("the token's account has no team; the proxy works with team contexts only")
    return Account(team_uuid, team.get("name"), account.get("email"))


def team_token(team_uuid: str) -> str:
    """The team's OAuth access token, as stored by the OAuth web flow."""
    cred = credentials.get(API, team_uuid)
    if cred is None:
        raise forbidden(f"team {team_uuid} has not authorized this proxy; an admin must complete the OAuth flow "
                        f"at {config.settings().this_endpoint}/")
    if cred.status != credentials.ACTIVE:
        raise ApiError(502, "upstream_authorization_revoked",
                       f"team {team_uuid}'s authorization of this proxy is no longer valid ({cred.status_reason}); "
                       f"an admin must authorize again at {config.settings().this_endpoint}/")
    token = cred.data.get("access_token")
    if not isinstance(token, str):
        raise bad_gateway(f"team {team_uuid}'s stored credential has no access token")
    return token


class DigitalOceanUpstream:
    name = API

    def validate_context(self, actx: str) -> None:
        if not _TEAM_UUID.match(actx):
            raise ApiError(400, "bad_context", f"DigitalOcean contexts are team UUIDs, got {actx!r}")

    def forward(self, actx: str, request: Request, path: str) -> Response:
        raise ApiError(501, "not_implemented", "forwarding to DigitalOcean is not implemented yet")


UPSTREAM = DigitalOceanUpstream()

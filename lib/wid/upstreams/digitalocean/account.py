"""Calls to the DigitalOcean API with a token in hand: the team it belongs to (GET /v2/account).

Used by the OAuth callback (lib/wid/upstreams/digitalocean/oauth.py) to attribute a new token to
its team, by git authentication and by Droplet creation with a DigitalOcean token.
"""

import json
from typing import Any, NamedTuple

from wid import config
from wid.core import names
from wid.core.errors import Forbidden, Unauthenticated, UpstreamFailed
from wid.net import upstream


class Account(NamedTuple):
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
    response = upstream.send(method, f"{s.do_api_url}{path}", service="digitalocean_api", headers=headers, body=data,
                             timeout=s.upstream_timeout)
    raw = response.read()
    try:
        return response.status, json.loads(raw) if raw else None
    except ValueError:
        if response.status >= 500:
            return response.status, None
        raise UpstreamFailed(f"DigitalOcean answered {response.status} with a body that is not JSON") from None


def account_for_token(token: str) -> Account:
    """The team a DigitalOcean token belongs to (GET /v2/account)."""
    status, payload = api_json("GET", "/v2/account", token)
    if status == 401:
        raise Unauthenticated("DigitalOcean rejected the token (GET /v2/account answered 401)")
    if status == 403:
        raise Forbidden("DigitalOcean refused GET /v2/account for this token (403): it lacks the account:read scope")
    if status >= 500:
        raise UpstreamFailed(f"DigitalOcean answered {status} to GET /v2/account")
    if status != 200 or not isinstance(payload, dict):
        raise UpstreamFailed(f"unexpected answer {status} from GET /v2/account")
    account = payload.get("account") or {}
    team = account.get("team") or {}
    team_uuid = team.get("uuid")
    if not names.is_team_uuid(team_uuid):
        raise Forbidden("the token's account has no team; the proxy works with team contexts only")
    return Account(team_uuid, team.get("name"), account.get("email"))

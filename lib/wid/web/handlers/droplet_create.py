"""POST /v2/droplets: add the provisioning step to user_data, create upstream, bind the nonce.

Who may create, and with which credential upstream:
- a DigitalOcean token (PAT or OAuth, anything that is not a JWT) is sent upstream as is; its team
  comes from `GET /v2/account`;
- a JWT (ours, or an external issuer's that a role names) must be allowed `create` on `/v2/droplets`
  by the team's policy, with the JSON body as parameters (tags included: they become identities);
  the team's OAuth token is used upstream.

Then: a provisioning token with a fresh nonce, stored as pending before the upstream call; the
user's user_data merged with ours (cloudinit.py); the create forwarded; the nonce bound to the
created Droplet id(s), or marked failed when nothing was created. The response is the upstream's,
unchanged.
"""

from __future__ import annotations

import json
from typing import Any

from wid import config
from wid.core.errors import Forbidden, InvalidRequest, Unauthenticated, WidError
from wid.core.policy import engine as policy
from wid.log import log
from wid.net import upstream
from wid.service import authz, cloudinit, provisioning
from wid.store import audit, storage
from wid.upstreams.digitalocean import api as upstream_digitalocean
from wid.upstreams.digitalocean.account import account_for_token
from wid.upstreams.digitalocean.context import API
from wid.web.app import Router
from wid.web.errors import status_of
from wid.web.forward.relay import relayed_headers
from wid.web.request import Request
from wid.web.response import Response

PATH = "/v2/droplets"


def _is_jwt(token: str) -> bool:
    # The same test Caddy applies to route JWTs to the policy-checked handlers.
    return token.startswith("eyJ")


def _check_body(body: dict[str, Any]) -> list[str]:
    """The names being created; only what the proxy relies on is checked here, the rest upstream."""
    names = body.get("names")
    if names is not None:
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise InvalidRequest("names must be a non-empty array of Droplet names")
        result = list(names)
    elif isinstance(body.get("name"), str):
        result = [body["name"]]
    else:
        raise InvalidRequest("a Droplet create needs name (a string) or names (an array of strings)")
    tags = body.get("tags")
    if tags is not None:
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise InvalidRequest("tags must be an array of strings")
        try:
            provisioning.parse_oidc_sub_tags(tags)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
    user_data = body.get("user_data")
    if user_data is not None and not isinstance(user_data, str):
        raise InvalidRequest("user_data must be a string")
    return result


def _created_ids(status: int, raw: bytes) -> list[int]:
    if not 200 <= status < 300:
        return []
    try:
        payload = json.loads(raw)
    except ValueError:
        return []
    if not isinstance(payload, dict):
        return []
    droplets = payload.get("droplets")
    if not isinstance(droplets, list):
        droplets = [payload.get("droplet")]
    ids = [d.get("id") for d in droplets if isinstance(d, dict)]
    return [i for i in ids if isinstance(i, int) and not isinstance(i, bool) and 0 < i < provisioning.MAX_DROPLET_ID]


def _relay(response: upstream.UpstreamResponse, raw: bytes) -> Response:
    headers = relayed_headers(response.headers)
    headers.append(("Content-Length", str(len(raw))))
    return Response(response.status, raw, headers)


def create(request: Request) -> Response:
    token = request.bearer_token()
    if not token:
        raise Unauthenticated("missing bearer token: send a DigitalOcean token, or a workload token the policy allows")
    request.checked_path()
    raw_body = request.body()
    body = request.json_object()
    names = _check_body(body)
    creator: dict[str, Any]
    upstream_token: str | None
    if _is_jwt(token):
        principal = authz.authenticate(token)
        if principal.api != API:
            raise Forbidden(f"a token for {principal.audience} cannot create DigitalOcean Droplets")
        try:
            params = policy.request_parameters(request.query_string, raw_body)
        except policy.ParameterError as exc:
            raise InvalidRequest(str(exc)) from None
        authz.authorize(principal, "POST", PATH, params)
        team = principal.actx
        upstream_digitalocean.team_token(team)  # refuse before anything if the team never authorized the proxy
        upstream_token = None  # sent with the team's token (refreshed and retried once on a 401)
        creator = {"sub": principal.claims.get("sub"), "iss": principal.issuer,
                   "creator_jti": principal.claims.get("jti"), "credential": "jwt"}
    else:
        team = account_for_token(token).team_uuid
        # The Droplet is looked up with the team's token when it proves: without one, fail now, not at boot.
        upstream_digitalocean.team_token(team)
        upstream_token = token
        creator = {"sub": None, "iss": None, "credential": "digitalocean_token"}

    settings = config.settings()
    prov = provisioning.new_provisioning(team)
    forwarded = dict(body)
    forwarded["user_data"] = cloudinit.merge(body.get("user_data"), settings.this_endpoint, team, prov.token)
    provisioning.store_pending(prov)  # before the upstream call: a created Droplet always finds its nonce

    target = upstream_digitalocean.upstream_target(PATH, request.query_string)
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    data = json.dumps(forwarded).encode()
    detail = {"names": names, "tags": body.get("tags") or [], "creator_iss": creator["iss"],
              "credential": creator["credential"], "creator_jti": creator.get("creator_jti")}
    try:
        if upstream_token is None:
            response = upstream_digitalocean.send_as_team(team, "POST", target, body=data, headers=headers)
        else:
            response = upstream.send("POST", f"{settings.do_api_url}{target}", service="digitalocean_api",
                                     body=data, headers={**headers, "Authorization": f"Bearer {upstream_token}"},
                                     timeout=settings.upstream_timeout)
        raw = response.read()
    except WidError as exc:
        provisioning.fail(prov, f"upstream: {status_of(exc)} {exc.message}")
        audit.record("droplet_create", "info", api=API, actx=team, sub=creator["sub"], jti=prov.claims["jti"],
                     outcome="upstream_failed", status=status_of(exc), reason=exc.message, **detail)
        raise
    ids = _created_ids(response.status, raw)
    try:
        _record(prov, team, creator, ids, response.status, detail)
    except (storage.Conflict, storage.DatabaseUnavailable) as exc:
        # DigitalOcean created the Droplets: the caller must learn that, whatever happened here. The
        # nonce stays unbound, so these Droplets cannot prove (they would need to be created again).
        log("droplet_create_unbound", level="error", actx=team, droplet_ids=ids, jti=prov.claims["jti"],
            error=type(exc).__name__, detail=str(exc)[:300])
    if response.status >= 500:
        raise upstream.server_error("DigitalOcean", response.status, raw, response.header("Retry-After"),
                                    "POST /v2/droplets")
    return _relay(response, raw)


def _record(prov: provisioning.Provisioning, team: str, creator: dict[str, Any], ids: list[int], status: int,
            detail: dict[str, Any]) -> None:
    if ids:
        provisioning.bind(prov, ids)
        audit.record("droplet_create", "allow", api=API, actx=team, sub=creator["sub"], jti=prov.claims["jti"],
                     outcome="created", status=status, droplet_ids=ids, **detail)
    else:
        provisioning.fail(prov, f"upstream answered {status}")
        audit.record("droplet_create", "info", api=API, actx=team, sub=creator["sub"], jti=prov.claims["jti"],
                     outcome="not_created", status=status, **detail)


handler = Router()
handler.add("POST", PATH, create)

"""DigitalOcean API calls made with a JWT of ours: policy check, then forward with the team's token.

Serves the wrapped routes (GET /v2/databases, GET /v2/databases/{uuid}, POST /v2/spaces/keys,
DELETE /v2/spaces/keys/{access_key}) and every other DigitalOcean API path (any method), so admins can
grant any API call in policy. Caddy sends only requests with `Authorization: Bearer eyJ...` here; a
DigitalOcean token never reaches Python (Caddy passes it straight through).

Order of checks: who (401), a path that means one thing (400), parameters that parse (400), policy
(403 with the reason), then the team's credential (403 when the team never authorized the proxy or
revoked it), then upstream (its answer unchanged; 502/504 when it cannot be reached in time).
"""

from __future__ import annotations

from wid.core.errors import Forbidden, InvalidRequest, MethodNotAllowed, NotFound
from wid.core.policy import engine as policy
from wid.service import authz
from wid.upstreams.digitalocean.context import API
from wid.web import audited
from wid.web.forward.digitalocean import forward
from wid.web.request import Request
from wid.web.response import Response

# The routes this proxy wraps by name (docs/digitalocean.md, "Routes"); everything else under /v2/ is the generic proxy.
WRAPPED = (
    ("GET", "/v2/databases"),
    ("GET", "/v2/databases/+"),
    ("POST", "/v2/spaces/keys"),
    ("DELETE", "/v2/spaces/keys/+"),
)


def route_name(method: str, path: str) -> str:
    segments = path.rstrip("/").split("/")
    for wrapped_method, pattern in WRAPPED:
        pattern_segments = pattern.split("/")
        if wrapped_method == method and len(segments) == len(pattern_segments) and all(
                p in ("+", s) for p, s in zip(pattern_segments, segments, strict=True)):
            return f"{wrapped_method} {pattern}"
    return "generic"


def handler(request: Request) -> Response:
    principal = authz.authenticate(request.bearer_token())
    if principal.api != API:
        raise Forbidden(f"this token is for {principal.audience}; the DigitalOcean API routes accept tokens whose "
                        f"aud is api://{API}?actx={{team UUID}}")
    method = request.method
    if method not in policy.CAPABILITY_BY_METHOD:
        raise MethodNotAllowed(f"{method} maps to no policy capability; use one of "
                               f"{', '.join(policy.CAPABILITY_BY_METHOD)}",
                               allowed=list(policy.CAPABILITY_BY_METHOD))
    path = request.checked_path()
    if not path.startswith("/v2/"):
        raise NotFound(f"{path} is not a DigitalOcean API path (they start with /v2/)")
    body = request.body()
    try:
        params = policy.request_parameters(request.query_string, body)
    except policy.ParameterError as exc:
        raise InvalidRequest(f"{exc}; policies check the JSON body and the query string, so a request they cannot "
                             f"read is refused") from None
    decision = authz.authorize(principal, method, path, params)
    return audited.forward(principal, decision, method, path, lambda: forward(principal.actx, request, path),
                           route=route_name(method, path))

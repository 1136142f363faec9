"""Forwarding an authorized DigitalOcean API request with the team's token (lib/wid/web/handlers/do_proxy.py).

What goes upstream: the method, the checked path, the query string and the body exactly as checked,
the content type and a few harmless headers; never the client's Authorization, cookies or other
headers. The answer is relayed unchanged and streamed (lib/wid/web/forward/relay.py); a 5xx becomes
our 502. The team token, its refresh and the retry on a 401 are lib/wid/upstreams/digitalocean/api.py.
"""

from __future__ import annotations

from wid.core.errors import NotFound
from wid.upstreams.digitalocean import api
from wid.upstreams.digitalocean.context import validate_context
from wid.web.forward.relay import relay
from wid.web.request import Request
from wid.web.response import Response

# Request headers passed on besides Authorization (ours) and Content-Type/Content-Length (the body's).
_FORWARDED_HEADERS = ("Accept", "Accept-Language", "User-Agent")


def forward(actx: str, request: Request, path: str) -> Response:
    """Forward an authorized request; `path` is the checked path that policy saw."""
    validate_context(actx)
    if not (path == "/v2" or path.startswith("/v2/")):
        raise NotFound(f"{path} is not a DigitalOcean API path (they start with /v2/)")
    target = api.upstream_target(path, request.query_string)
    body = request.body()
    headers = {name: value for name in _FORWARDED_HEADERS if (value := request.header(name))}
    headers.setdefault("Accept", "application/json")
    content_type = request.header("Content-Type")
    if content_type:
        headers["Content-Type"] = content_type
    response = api.send_as_team(actx, request.method, target, body=body if body or request.method in {
        "POST", "PUT", "PATCH"} else None, headers=headers)
    return relay(response, service="DigitalOcean", what=f"{request.method} {path}")

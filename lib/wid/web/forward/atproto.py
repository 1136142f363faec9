"""Forwarding an authorized XRPC request to the DID's PDS (lib/wid/web/handlers/atproto.py).

What goes to the PDS: method, checked path, query and body as checked; of the client's headers only
the content type and a few harmless ones (never its Authorization, cookies or `atproto-proxy`, which
would make the PDS act for the DID at another service). Answers are relayed with their status, body
(at most ATPROTO_MAX_RESPONSE_BYTES) and the headers listed here (lib/wid/web/forward/relay.py). The
repo rule, the session, DPoP and the PDS checks are lib/wid/upstreams/atproto/xrpc.py.
"""

from __future__ import annotations

from wid.core.errors import MethodNotAllowed
from wid.upstreams.atproto import xrpc
from wid.upstreams.atproto.context import validate_context
from wid.web.forward.relay import relayed_headers
from wid.web.request import Request
from wid.web.response import Response

_FORWARDED_HEADERS = ("Accept", "Accept-Language", "User-Agent", "atproto-accept-labelers")
_RELAYED_HEADERS = frozenset({"content-type", "content-language", "cache-control", "etag", "last-modified",
                              "retry-after", "atproto-repo-rev", "atproto-content-labelers", "ratelimit-limit",
                              "ratelimit-remaining", "ratelimit-reset", "ratelimit-policy", "content-encoding"})


def forward(actx: str, request: Request, path: str) -> Response:
    """Forward an authorized XRPC request; `path` is the checked path that policy saw."""
    validate_context(actx)
    nsid = xrpc.nsid_of(path)
    method = request.method
    if method not in ("GET", "POST"):
        raise MethodNotAllowed("XRPC uses GET (queries) and POST (procedures)", allowed=["GET", "POST"])
    body = request.body() if method == "POST" else b""
    content_type = request.header("Content-Type")
    xrpc.check_repo(actx, method, nsid, content_type, body)
    headers = {name: value for name in _FORWARDED_HEADERS if (value := request.header(name))}
    headers.setdefault("Accept", "application/json")
    if method == "POST":
        headers["Content-Type"] = content_type or "application/json"
    result = xrpc.send(actx, method, nsid, request.query_string, body=body, headers=headers)
    named = [(name if name.startswith("atproto") else name.title(), value) for name, value in result.headers.items()]
    relayed = relayed_headers(named, only=_RELAYED_HEADERS)
    relayed.append(("Content-Length", str(len(result.body))))
    return Response(result.status, result.body, relayed)

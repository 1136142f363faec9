"""What of an upstream's answer crosses the proxy, and relaying it as this proxy's Response.

One rule for every upstream answer a client sees (the DigitalOcean proxy, Droplet creation, XRPC):
never a hop-by-hop header (RFC 9110 7.6.1), a cookie, or the upstream's Content-Length (the relayed
body's own is set, or the body is streamed).
"""

from __future__ import annotations

from collections.abc import Iterable

from wid.net.http1 import ProtocolError
from wid.net.upstream import UpstreamResponse, server_error
from wid.web.response import Response

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "transfer-encoding", "upgrade", "proxy-connection"})
_NEVER_RELAYED = HOP_BY_HOP | {"content-length", "set-cookie"}


def relayed_headers(headers: Iterable[tuple[str, str]], *, only: frozenset[str] | None = None) -> list[tuple[str, str]]:
    """The upstream's response headers that reach the client; with `only` (lower-case names), just those."""
    return [(name, value) for name, value in headers
            if name.lower() not in _NEVER_RELAYED and (only is None or name.lower() in only)]


def relay(response: UpstreamResponse, *, service: str, what: str, buffer: bool = False) -> Response:
    """The upstream's status, meaningful headers and body, unchanged (streamed unless `buffer`); a 5xx is a 502."""
    if response.status >= 500:
        try:
            error_body = response.raw.read(64 * 1024)
        except (OSError, ProtocolError):
            error_body = b""
        finally:
            response.connection.close()
        raise server_error(service, response.status, error_body, response.header("Retry-After"), what)
    headers = relayed_headers(response.headers)
    body = response.read() if buffer else response.stream()
    if isinstance(body, bytes):
        headers.append(("Content-Length", str(len(body))))
    return Response(response.status, body, headers)

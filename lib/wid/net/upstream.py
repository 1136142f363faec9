"""The HTTP client for trusted upstreams (the DigitalOcean API and its OAuth endpoints): one request,
its answer read with a size cap or streamed, and an upstream 5xx as this proxy's 502.

The standard library's client (no `requests` on request paths). Untrusted URLs (issuers, PDSes) go
through lib/wid/net/safe_http.py instead; which upstreams exist is lib/wid/upstreams/registry.py.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from wid.core.errors import UpstreamFailed, UpstreamTimeout, WidError

CHUNK = 64 * 1024


@dataclass
class UpstreamResponse:
    status: int
    headers: list[tuple[str, str]]
    connection: http.client.HTTPConnection
    raw: http.client.HTTPResponse

    def header(self, name: str) -> str | None:
        return self.raw.getheader(name)

    def read(self, limit: int = 10 * 1024 * 1024) -> bytes:
        """The whole body, refusing more than `limit` bytes (an upstream cannot exhaust our memory)."""
        try:
            data = self.raw.read(limit + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise UpstreamFailed("upstream connection failed while reading the response: "
                                 f"{type(exc).__name__}") from None
        finally:
            self.connection.close()
        if len(data) > limit:
            raise UpstreamFailed(f"upstream response is larger than {limit} bytes")
        return data

    def stream(self) -> Iterator[bytes]:
        try:
            while chunk := self.raw.read(CHUNK):
                yield chunk
        finally:
            self.connection.close()


def send(method: str, url: str, *, headers: Mapping[str, str], body: bytes | None = None,
         timeout: float = 30.0) -> UpstreamResponse:
    """One HTTP request; timeouts become 504 and connection failures 502, with nothing half-done here."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise UpstreamFailed(f"upstream URL {url!r} is not http(s)")
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        import ssl  # only for https upstreams: tests and loopback stand-ins stay cheaper

        conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout,
                                           context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    target = parts.path or "/"
    if parts.query:
        target += f"?{parts.query}"
    try:
        conn.request(method, target, body=body, headers=dict(headers))
        raw = conn.getresponse()
    except TimeoutError:
        conn.close()
        raise UpstreamTimeout(f"upstream {parts.hostname} did not answer within {timeout:g}s") from None
    except (OSError, http.client.HTTPException) as exc:
        conn.close()
        raise UpstreamFailed(f"cannot reach upstream {parts.hostname}: {type(exc).__name__}") from None
    return UpstreamResponse(raw.status, raw.getheaders(), conn, raw)


def server_error(service: str, status: int, body: bytes, retry_after: str | None, what: str) -> WidError:
    """An upstream 5xx as our 502 (docs/digitalocean.md, "Errors a workload can meet"): it names the service,
    its status and its own message."""
    detail = ""
    try:
        payload = json.loads(body)
        if isinstance(payload, dict):
            parts = [str(payload[k])[:200] for k in ("id", "error", "message") if isinstance(payload.get(k), str)]
            detail = f" ({': '.join(parts)})" if parts else ""
    except (ValueError, UnicodeDecodeError):
        pass
    return UpstreamFailed(f"{service} answered HTTP {status} to {what}{detail}; nothing was changed "
                          "on this proxy, try again later", retry_after=retry_after)


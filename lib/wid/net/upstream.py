"""Upstream APIs: one small interface, one implementation per API, and the HTTP client they share.

`{API}` in a token's `aud = api://{API}?actx={actx}` selects the implementation. Adding an upstream
means adding a module that provides `UPSTREAM` and a line in `_IMPLEMENTATIONS`; the token, policy
and git code never change. The HTTP client is the standard library's (no `requests` on request paths).

Keep-alive: a connection whose response was read to its end waits, one per origin and thread, for the
next request to the same origin (a persistent-mode worker saves a TCP and TLS handshake per call; a
CGI process simply exits). Only idempotent requests take a waiting connection, and only they are
sent again, once, on a new connection when the kept one turns out to have been closed by the server.
"""

from __future__ import annotations

import http.client
import importlib
import json
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol
from urllib.parse import SplitResult, urlsplit

from wid.core.errors import InvalidRequest, UpstreamFailed, UpstreamTimeout, WidError
from wid.web.request import Request
from wid.web.response import Response

_IMPLEMENTATIONS = {
    "DigitalOcean": "wid.upstreams.digitalocean.api",
    "ATProto": "wid.upstreams.atproto.xrpc",
}
# Hop-by-hop headers (RFC 9110 7.6.1) and what must never cross the proxy in either direction.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "transfer-encoding", "upgrade", "proxy-connection"})
CHUNK = 64 * 1024
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
# What a server that closed a kept-alive connection looks like to the next request sent on it.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)
_idle = threading.local()  # .pool: origin -> the connection kept for it by this thread


class Upstream(Protocol):
    name: str

    def validate_context(self, actx: str) -> None:
        """Raise ApiError 400 when `actx` is not a valid context id for this API."""

    def forward(self, actx: str, request: Request, path: str) -> Response:
        """Send an authorized request to this context's upstream with the credential the proxy holds."""


def known_apis() -> list[str]:
    return sorted(_IMPLEMENTATIONS)


def get(api: str) -> Upstream:
    module = _IMPLEMENTATIONS.get(api)
    if module is None:
        raise InvalidRequest(f"unknown API {api!r}; this proxy serves {', '.join(known_apis())}", code="unknown_api")
    upstream: Upstream = importlib.import_module(module).UPSTREAM
    return upstream


@dataclass
class UpstreamResponse:
    status: int
    headers: list[tuple[str, str]]
    connection: http.client.HTTPConnection
    raw: http.client.HTTPResponse
    origin: tuple[str, str, int | None]

    def header(self, name: str) -> str | None:
        return self.raw.getheader(name)

    def read(self, limit: int = 10 * 1024 * 1024) -> bytes:
        """The whole body, refusing more than `limit` bytes (an upstream cannot exhaust our memory)."""
        try:
            data = self.raw.read(limit + 1)
        except (OSError, http.client.HTTPException) as exc:
            self.connection.close()
            raise UpstreamFailed("upstream connection failed while reading the response: "
                                 f"{type(exc).__name__}") from None
        if len(data) > limit:
            self.connection.close()
            raise UpstreamFailed(f"upstream response is larger than {limit} bytes")
        self._finished()
        return data

    def stream(self) -> Iterator[bytes]:
        finished = False
        try:
            while chunk := self.raw.read(CHUNK):
                yield chunk
            finished = True
        finally:
            if finished:
                self._finished()
            else:
                self.connection.close()

    def _finished(self) -> None:
        """The body was read to its end: keep the connection for the next request unless it must close."""
        if self.raw.will_close:
            self.connection.close()
            return
        pool: dict[tuple[str, str, int | None], http.client.HTTPConnection] = _idle.__dict__.setdefault("pool", {})
        previous = pool.pop(self.origin, None)
        if previous is not None and previous is not self.connection:
            previous.close()
        pool[self.origin] = self.connection


@cache
def _tls_context() -> Any:
    import ssl  # only for https upstreams: tests and loopback stand-ins stay cheaper

    return ssl.create_default_context()  # loading the CA bundle costs milliseconds: once per process


def _connect(parts: SplitResult, timeout: float) -> http.client.HTTPConnection:
    if parts.scheme == "https":
        return http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=timeout, context=_tls_context())
    return http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)


def send(method: str, url: str, *, headers: Mapping[str, str], body: bytes | None = None,
         timeout: float = 30.0) -> UpstreamResponse:
    """One HTTP request; timeouts become 504 and connection failures 502, with nothing half-done here."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise UpstreamFailed(f"upstream URL {url!r} is not http(s)")
    origin = (parts.scheme, parts.hostname, parts.port)
    kept = _idle.__dict__.get("pool", {}).pop(origin, None) if method.upper() in _IDEMPOTENT else None
    target = parts.path or "/"
    if parts.query:
        target += f"?{parts.query}"
    conn = kept or _connect(parts, timeout)
    while True:
        try:
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            conn.request(method, target, body=body, headers=dict(headers))
            raw = conn.getresponse()
        except _STALE as exc:
            conn.close()
            if conn is not kept:
                raise UpstreamFailed(f"cannot reach upstream {parts.hostname}: {type(exc).__name__}") from None
            conn = _connect(parts, timeout)  # the kept connection had been closed by the server: once more
            continue
        except TimeoutError:
            conn.close()
            raise UpstreamTimeout(f"upstream {parts.hostname} did not answer within {timeout:g}s") from None
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise UpstreamFailed(f"cannot reach upstream {parts.hostname}: {type(exc).__name__}") from None
        return UpstreamResponse(raw.status, raw.getheaders(), conn, raw, origin)


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


def relay(response: UpstreamResponse, *, service: str, what: str, buffer: bool = False) -> Response:
    """The upstream's status, meaningful headers and body, unchanged (streamed unless `buffer`); a 5xx is a 502."""
    if response.status >= 500:
        try:
            error_body = response.raw.read(64 * 1024)
        except (OSError, http.client.HTTPException):
            error_body = b""
        finally:
            response.connection.close()
        raise server_error(service, response.status, error_body, response.header("Retry-After"), what)
    headers = [(k, v) for k, v in response.headers
               if k.lower() not in HOP_BY_HOP and k.lower() not in {"content-length", "set-cookie"}]
    body = response.read() if buffer else response.stream()
    if isinstance(body, bytes):
        headers.append(("Content-Length", str(len(body))))
    return Response(response.status, body, headers)

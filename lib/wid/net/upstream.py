"""The HTTP client for trusted upstreams (the DigitalOcean API and its OAuth endpoints): one request,
its answer read with a size cap or streamed, and an upstream 5xx as this proxy's 502.

On lib/wid/net/http1.py's connections (no `requests` or `http.client` on request paths). Untrusted URLs
(issuers, PDSes) go through lib/wid/net/safe_http.py instead; which upstreams exist is
lib/wid/upstreams/registry.py.

Keep-alive: a connection whose response was read to its end waits, one per origin and thread, for the
next request to the same origin (a persistent-mode worker saves a TCP and TLS handshake per call; a
CGI process simply exits). Only idempotent requests take a waiting connection, and only they are
sent again, once, on a new connection when the kept one turns out to have been closed by the server (or to
hold bytes no request asked for, which lib/wid/net/http1.py refuses to read as an answer).
"""

from __future__ import annotations

import json
from _thread import _local as ThreadLocal  # threading.local itself, without `threading`'s import
from collections.abc import Iterator, Mapping
from functools import cache
from typing import Any

from wid import metrics
from wid.config_parsers import split_url
from wid.core.errors import UpstreamFailed, UpstreamTimeout, WidError
from wid.net import tls
from wid.net.http1 import Connection, ProtocolError, RemoteDisconnected, Response

CHUNK = 64 * 1024
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
# What a server that closed a kept-alive connection looks like to the next request sent on it.
_STALE = (RemoteDisconnected, BrokenPipeError, ConnectionResetError)
_idle = ThreadLocal()  # .pool: origin -> the connection kept for it by this thread


class UpstreamResponse:
    """An upstream's answer whose body is still on `connection`. A plain class, not a dataclass:
    `dataclasses` imports `inspect`, a quarter of a CGI request's instructions (docs/architecture.md)."""

    __slots__ = ("connection", "headers", "origin", "raw", "status")

    def __init__(self, *, status: int, headers: list[tuple[str, str]], connection: Connection, raw: Response,
                 origin: tuple[str, str, int | None]) -> None:
        self.status = status
        self.headers = headers
        self.connection = connection
        self.raw = raw
        self.origin = origin

    def header(self, name: str) -> str | None:
        return self.raw.header(name)

    def read(self, limit: int = 10 * 1024 * 1024) -> bytes:
        """The whole body, refusing more than `limit` bytes (an upstream cannot exhaust our memory)."""
        try:
            data = self.raw.read(limit + 1)
        except ProtocolError as exc:
            self.connection.close()
            raise UpstreamFailed(f"upstream {self.origin[1]} answered with something that is not HTTP/1.1 "
                                 f"({exc})") from None
        except OSError as exc:
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
        pool: dict[tuple[str, str, int | None], Connection] = _idle.__dict__.setdefault("pool", {})
        previous = pool.pop(self.origin, None)
        if previous is not None and previous is not self.connection:
            previous.close()
        pool[self.origin] = self.connection


@cache
def _tls_context() -> Any:
    return tls.client_context()  # once per process: a persistent worker keeps it


def _connect(scheme: str, host: str, port: int | None, timeout: float) -> Connection:
    tls = _tls_context() if scheme == "https" else None
    return Connection(host, port or (443 if tls is not None else 80), timeout=timeout, tls=tls)


def send(method: str, url: str, *, service: str, headers: Mapping[str, str], body: bytes | None = None,
         timeout: float = 30.0) -> UpstreamResponse:
    """One HTTP request; timeouts become 504 and connection failures 502, with nothing half-done here.

    `service` names the upstream in the metrics (wid.metrics): a fixed name such as digitalocean_api."""
    return metrics.upstream_call(service, lambda: _send(method, url, headers=headers, body=body, timeout=timeout),
                                 timeout=UpstreamTimeout, failure=UpstreamFailed)


def _send(method: str, url: str, *, headers: Mapping[str, str], body: bytes | None,
          timeout: float) -> UpstreamResponse:
    # The URLs here are a base URL from the settings (read by the same split_url) and a target built by the
    # proxy: one that does not split is a bug, never something to guess at.
    parts = split_url(url)
    if parts is None:
        raise UpstreamFailed(f"upstream URL {url!r} is not an absolute http(s) URL")
    scheme, host, port, target = parts
    origin = (scheme, host, port)
    kept = _idle.__dict__.get("pool", {}).pop(origin, None) if method.upper() in _IDEMPOTENT else None
    target = target or "/"
    conn = kept or _connect(scheme, host, port, timeout)
    while True:
        try:
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            raw = conn.request(method, target, headers, body)
        except _STALE as exc:
            conn.close()
            if conn is not kept:
                raise UpstreamFailed(f"cannot reach upstream {host}: {type(exc).__name__}") from None
            conn = _connect(scheme, host, port, timeout)  # the kept one had been closed by the server: once more
            continue
        except TimeoutError:
            conn.close()
            raise UpstreamTimeout(f"upstream {host} did not answer within {timeout:g}s") from None
        except ProtocolError as exc:
            conn.close()
            raise UpstreamFailed(f"upstream {host} answered with something that is not HTTP/1.1 "
                                 f"({exc})") from None
        except OSError as exc:
            conn.close()
            raise UpstreamFailed(f"cannot reach upstream {host}: {type(exc).__name__}") from None
        return UpstreamResponse(status=raw.status, headers=raw.headers, connection=conn, raw=raw, origin=origin)


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


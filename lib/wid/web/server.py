"""Persistent mode (WID_MODE=persistent): every route family's handler in one WSGI application.

Caddy routes a request to its family exactly as in CGI mode (Caddyfile: `import python_{$WID_MODE} FAMILY`);
in persistent mode the `python_persistent` snippet proxies it to uWSGI's unix socket (wid.web.serve) and
names the family in the X-Wid-Family request header, replacing any a client sent and deleting the names
that differ only by an underscore (X_Wid_Family and the like, which uWSGI would read as the same header).
Were one to get through, uWSGI joins both values with a comma, no family is named so, and the answer is
404. The family table mirrors cgi-bin/ (one script per family; tests/test_persistent_mode.py checks the
two agree).

What differs between uWSGI's environ and a CGI one is smoothed out here, so handlers see the same
request and clients the same answers in both modes: REQUEST_URI is the raw request target in both (the
handlers check the undecoded path); a chunked body has CONTENT_LENGTH -1 (what Caddy's FastCGI passes:
read to the end) and is read through uWSGI's chunked reader; and, as Caddy's FastCGI transport reads a
whole body before the script answers, every family but git reads its body (at most WID_MAX_BODY_BYTES)
before the handler runs, so an oversized body is a 413 whatever else is wrong with the request. Git
streams its bodies and enforces its own limits (docs/git.md).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any

from wid.core.errors import InvalidRequest, NotFound, WidError
from wid.log import log
from wid.web.app import Handler, WsgiApp, wsgi
from wid.web.request import Request
from wid.web.response import Response

FAMILY_HEADER = "HTTP_X_WID_FAMILY"
# Caddy's family name (the cgi-bin/ script's) -> the module whose `handler` serves it.
FAMILIES = {
    "api_proxy": "wid.web.handlers.do_proxy",
    "atproto": "wid.web.handlers.atproto",
    "callback": "wid.web.handlers.callback",
    "db_read": "wid.web.handlers.do_proxy",
    "droplet_create": "wid.web.handlers.droplet_create",
    "git": "wid.web.handlers.git",
    "health": "wid.web.handlers.health",
    "metrics": "wid.web.handlers.metrics",
    "oidc_issue": "wid.web.handlers.oidc_issue",
    "oidc_prove": "wid.web.handlers.oidc_prove",
    "spaces_keys": "wid.web.handlers.do_proxy",
    "wellknown": "wid.web.handlers.wellknown",
}


def _not_routed(request: Request) -> Response:
    raise NotFound(f"no route for {request.method} {request.raw_path}")


def _body_first(handler: Handler) -> Handler:
    def read_then_handle(request: Request) -> Response:
        try:
            request.body()  # kept by the request for the handler
        except WidError:
            # Too large (413) or malformed: take in the rest before answering, so that Caddy finishes
            # sending (or stops at its own limit and answers 413 itself) instead of failing mid-body.
            _discard(request.environ["wsgi.input"])
            raise
        return handler(request)

    return read_then_handle


def _discard(stream: Any, cap: int = 16 * 1024 * 1024) -> None:
    try:
        while cap > 0 and (chunk := stream.read(min(cap, 64 * 1024))):
            cap -= len(chunk)
    except (OSError, WidError):  # Caddy cut the body at its limit, or a chunked one broke off (ChunkedBody)
        pass


def _apps() -> dict[str, WsgiApp]:
    apps = {}
    for family, module in FAMILIES.items():
        handler: Handler = importlib.import_module(module).handler
        apps[family] = wsgi(handler if family == "git" else _body_first(handler), route=family)
    return apps


# How long a chunked body may pause between chunks before the request fails (uwsgi.chunked_read raises).
_CHUNK_TIMEOUT = 30


class ChunkedBody:
    """A chunked request body as a stream (uWSGI's wsgi.input gives nothing for one): read(n) returns up to
    n bytes, fewer only at the end, as a file would."""

    def __init__(self) -> None:
        self._pending = b""
        self._ended = False

    def read(self, size: int = -1) -> bytes:
        import uwsgi  # exists only inside uWSGI's workers

        parts = [self._pending]
        have = len(self._pending)
        while not self._ended and (size < 0 or have < size):
            try:
                chunk = uwsgi.chunked_read(_CHUNK_TIMEOUT)
            except OSError:
                self._ended = True
                raise InvalidRequest("the chunked request body ended without its last chunk, or paused more than "
                                     f"{_CHUNK_TIMEOUT} s between chunks; send it again") from None
            if not chunk:
                self._ended = True
            parts.append(chunk)
            have += len(chunk)
        data = b"".join(parts)
        if size < 0:
            self._pending = b""
            return data
        self._pending = data[size:]
        return data[:size]


# Imported once, in uWSGI's master: workers fork with every handler ready.
_APPS = _apps()
_NOT_ROUTED = wsgi(_not_routed, route="unrouted")


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    family = environ.pop(FAMILY_HEADER, "")
    environ.setdefault("REQUEST_URI", "/")
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        environ["CONTENT_LENGTH"] = "-1"
        environ["wsgi.input"] = ChunkedBody()
    app = _APPS.get(family)
    if app is None:  # only a request that did not come through the Caddyfile's routes
        log("unrouted_request", level="warning", family=family[:40])
        return _NOT_ROUTED(environ, start_response)
    return app(environ, start_response)

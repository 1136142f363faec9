"""A small WSGI layer: every handler is a function Request -> Response, served under CGI or one process.

Nothing here may depend on being a fresh process: the same handlers run under both serving modes.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from wid import config, metrics
from wid.core import names
from wid.core.errors import MethodNotAllowed, Misconfigured, NotFound, Unavailable, WidError
from wid.log import log, request_id
from wid.web.errors import error_response, status_of
from wid.web.request import METHODS, Request
from wid.web.response import Response, status_phrase

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
_REQUEST_ID_CHARACTERS = names.LETTERS_DIGITS | frozenset("._-")

Handler = Callable[[Request], Response]


class Router:
    """Method + exact path dispatch inside one route family (one trailing slash is tolerated)."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, str, Handler]] = []

    def add(self, method: str, path: str, handler: Handler) -> None:
        self._routes.append((path, method.upper(), handler))

    def __call__(self, request: Request) -> Response:
        allowed: list[str] = []
        for path, method, handler in self._routes:
            if request.path not in (path, f"{path}/"):
                continue
            if method == request.method or (method == "GET" and request.method == "HEAD"):
                return handler(request)
            allowed.append(method)
        if allowed:
            raise MethodNotAllowed(f"{request.method} is not allowed on {request.path}; "
                                   f"use {', '.join(sorted(set(allowed)))}",
                                   allowed=sorted(set(allowed)))
        raise NotFound(f"no route for {request.method} {request.path}")


def wsgi(handler: Handler, route: str = "") -> WsgiApp:
    """Wrap a handler: request id, JSON errors (never a traceback), one access log line; in persistent mode
    the request counted under `route`, its family (wid.metrics)."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        incoming = environ.get("HTTP_X_REQUEST_ID", "")
        chosen = names.is_word(incoming, _REQUEST_ID_CHARACTERS, _REQUEST_ID_CHARACTERS, 64, 8)
        token = request_id.set(incoming if chosen else os.urandom(16).hex())
        try:
            started = time.perf_counter()
            request = Request(environ)
            response = _respond(handler, request)
            request.drain()
            start_response(f"{response.status} {status_phrase(response.status)}",
                           [*response.headers, ("X-Request-Id", request_id.get())])
            seconds = time.perf_counter() - started
            log("request", method=request.method, path=request.raw_path, status=response.status, pid=os.getpid(),
                ms=round(seconds * 1000, 2))
            metrics.request(route, request.method if request.method in METHODS else "other", response.status, seconds)
        finally:
            request_id.reset(token)
        if request.method == "HEAD":
            return [b""]
        body = response.body
        return [body] if isinstance(body, bytes) else _stream(body)

    return app


def _respond(handler: Handler, request: Request) -> Response:
    from wid.store import storage  # local import: storage is only needed when a handler touched the database

    try:
        if request.method not in METHODS:
            raise MethodNotAllowed(f"{request.method[:40]!r} is not a method this proxy serves (methods are "
                                   f"case-sensitive); use {', '.join(METHODS)}", allowed=METHODS)
        config.settings()  # every setting valid, or no route runs (each names the variable to fix)
        return handler(request)
    except WidError as err:
        if status_of(err) >= 500:  # an upstream or dependency failed: the operator's log says which, and how
            log("error_response", level="error", status=status_of(err), id=err.code, message=err.message)
        return error_response(err)
    except config.ConfigError as err:
        log("config_error", level="error", message=str(err))
        return error_response(Misconfigured(f"server misconfigured: {err}"))
    except storage.DatabaseUnavailable as err:
        log("database_unavailable", level="error", message=str(err))
        return error_response(Unavailable(str(err)))
    except Exception as exc:  # the last line of defence: log the type, answer JSON, never a traceback
        log("unhandled_exception", level="error", error=type(exc).__name__, detail=str(exc)[:300])
        return error_response(WidError("internal error; see the server log"))


def _stream(chunks: Iterable[bytes]) -> Iterator[bytes]:
    yield from chunks


def run_cgi(handler: Handler) -> None:
    """Entry point of every cgi-bin executable. Once the answer is written and the database closed, the
    process ends at once: the interpreter's own shutdown (tearing down every module it imported, about a
    fifth of an exchange's CPU in a CGI process) would serve nobody. Nothing is left to it: the answer and
    the log lines are flushed, every transaction has ended, and the only threads are daemon threads that
    an ordinary exit abandons too."""
    import gc

    from wid.store import storage  # imported already by _respond
    from wid.web import cgi

    # The rendered script imported with the collector off (wid.cli.main render_cgi): what it imported
    # lives until the process ends, so it is set aside for good, and the request's own objects are
    # collected as usual.
    gc.freeze()
    gc.enable()
    cgi.serve(wsgi(handler))
    storage.close_all()  # SQLite checkpoints on the last close; PostgreSQL is told goodbye
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # the client hung up (cgi.serve let the broken pipe go too): nothing left to deliver
            pass
    os._exit(0)

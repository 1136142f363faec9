"""The CGI side of one request (RFC 3875): the WSGI environ read from the process's environment, and the
application's answer written to stdout as a CGI response.

`wsgiref.handlers.CGIHandler` does the same for any WSGI application; this serves the one application
lib/wid/web/app.py builds (which answers every error itself), and costs a CGI process none of wsgiref's
imports (about 5 M instructions, 3% of an exchange).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

from wid.core.errors import WidError
from wid.log import log
from wid.web.errors import error_response
from wid.web.response import status_phrase

# PEP 3333: the variables that carry the request's own bytes hold them as ISO-8859-1 text; the process's
# environment decoded them as UTF-8 with surrogate escapes. (The same set as wsgiref.handlers.)
_REQUEST_VARIABLES = frozenset({"SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "REQUEST_METHOD", "AUTH_TYPE",
                                "CONTENT_TYPE", "CONTENT_LENGTH", "HTTPS", "REMOTE_USER", "REMOTE_IDENT"})


def _is_request_variable(name: str) -> bool:
    if name.startswith("REDIRECT_"):
        return _is_request_variable(name[9:])
    return name in _REQUEST_VARIABLES or name.startswith(("HTTP_", "SSL_"))


def environ() -> dict[str, Any]:
    """The WSGI environ of this process's request."""
    env: dict[str, Any] = {}
    for name, value in os.environ.items():
        if _is_request_variable(name):
            value = value.encode("utf-8", "surrogateescape").decode("iso-8859-1")
        env[name] = value
    env.update({"wsgi.input": sys.stdin.buffer, "wsgi.errors": sys.stderr, "wsgi.version": (1, 0),
                "wsgi.run_once": True, "wsgi.multithread": False, "wsgi.multiprocess": True,
                "wsgi.url_scheme": "https" if env.get("HTTPS") in ("yes", "on", "1") else "http"})
    return env


def _head(status: str, headers: list[tuple[str, str]], body: Iterable[bytes]) -> bytes:
    """The CGI response head; a one-chunk body's Content-Length is set here when the answer has none."""
    if isinstance(body, list) and len(body) == 1 and all(name.lower() != "content-length" for name, _ in headers):
        headers = [*headers, ("Content-Length", str(len(body[0])))]
    lines = [f"Status: {status}", *(f"{name}: {value}" for name, value in headers)]
    if any("\r" in line or "\n" in line for line in lines):  # one header forging others: response splitting
        raise ValueError("a response header holds a line break")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("iso-8859-1")


def serve(app: Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]) -> None:
    """Run `app` for this process's request and write its answer to stdout. A client that hung up ends it
    quietly; an answer that cannot be written whole is logged, and replaced by a 500 if nothing was sent."""
    out = sys.stdout.buffer
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[..., Any]:
        started.append((status, headers))
        return out.write

    sent = False
    chunks: Iterable[bytes] = ()
    try:
        chunks = app(environ(), start_response)
        pending = _head(*started[-1], chunks)
        for chunk in chunks:
            out.write(pending + chunk)  # the head goes out with the first chunk: one write for most answers
            sent, pending = True, b""
            out.flush()
        if not sent:
            out.write(pending)
            sent = True
        out.flush()
    except (BrokenPipeError, ConnectionResetError):
        return
    except Exception as exc:
        _failed(exc, out, sent)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:  # PEP 3333: a streamed answer releases what it holds (an upstream connection)
            close()


def _failed(exc: Exception, out: Any, sent: bool) -> None:
    log("cgi_answer_failed", level="error", error=type(exc).__name__, detail=str(exc)[:300],
        answer="cut short" if sent else "replaced by a 500")
    if sent:
        return
    answer = error_response(WidError("internal error; see the server log"))
    body = answer.body if isinstance(answer.body, bytes) else b""  # JSON: always bytes
    try:
        out.write(_head(f"{answer.status} {status_phrase(answer.status)}", answer.headers, [body]) + body)
        out.flush()
    except OSError:
        pass

"""A small WSGI layer: every handler is a function Request -> Response, served under CGI or one process.

Nothing here may depend on being a fresh process (DESIGN.md): handlers are also mounted together by
`wid.server` for a long-running server.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote

from wid import config
from wid.core import strictjson
from wid.core.errors import ApiError, bad_request
from wid.log import log, request_id

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
JSON_TYPE = "application/json; charset=utf-8"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
# Encoded '/', '.', '%' (and NUL) would let a path that passed the policy check reach a different upstream path.
_ENCODED_TRICKS = re.compile(r"%(2f|2e|25|00|5c)", re.IGNORECASE)


class Request:
    def __init__(self, environ: dict[str, Any]):
        self.environ = environ
        self.method: str = environ.get("REQUEST_METHOD", "GET").upper()
        raw_uri: str = environ.get("REQUEST_URI") or environ.get("PATH_INFO", "/")
        raw_path, _, self.query_string = raw_uri.partition("?")
        self.raw_path = raw_path or "/"
        self.path = unquote(self.raw_path)
        self._body: bytes | None = None

    def header(self, name: str) -> str | None:
        key = name.upper().replace("-", "_")
        if key in {"CONTENT_TYPE", "CONTENT_LENGTH"}:
            return self.environ.get(key) or None
        return self.environ.get(f"HTTP_{key}")

    @property
    def content_type(self) -> str:
        return (self.header("Content-Type") or "").split(";")[0].strip().lower()

    def checked_path(self) -> str:
        """The decoded path, refusing anything whose meaning could change between check and forward."""
        raw = self.raw_path
        if _ENCODED_TRICKS.search(raw) or "//" in raw or "\\" in raw:
            raise bad_request(f"path {raw!r} contains an encoded '/', '.', '%', a backslash or '//'")
        if any(segment in {".", ".."} for segment in raw.split("/")):
            raise bad_request(f"path {raw!r} contains a '.' or '..' segment")
        if not raw.startswith("/") or any(ord(c) < 0x21 or ord(c) == 0x7F for c in self.path):
            raise bad_request(f"path {raw!r} is not a clean absolute path")
        return self.path

    def query(self) -> list[tuple[str, str]]:
        return parse_qsl(self.query_string, keep_blank_values=True)

    def single_query(self, name: str) -> str | None:
        """A query parameter that must appear at most once (a repeated one could be read two ways)."""
        values = [value for key, value in self.query() if key == name]
        if len(values) > 1:
            raise bad_request(f"the query parameter {name!r} appears more than once")
        return values[0] if values else None

    def body(self, limit: int | None = None) -> bytes:
        if self._body is None:
            limit = config.settings().max_body_bytes if limit is None else limit
            length_raw = self.environ.get("CONTENT_LENGTH") or "0"
            try:
                length = int(length_raw)
            except ValueError:
                raise bad_request(f"Content-Length {length_raw!r} is not a number") from None
            if length > limit:
                raise ApiError(413, "request_too_large", f"request body of {length} bytes exceeds {limit}")
            stream = self.environ["wsgi.input"]
            if length < 0:  # a chunked body: Caddy's FastCGI passes CONTENT_LENGTH -1, the body up to EOF
                data = stream.read(limit + 1)
                if len(data) > limit:
                    raise ApiError(413, "request_too_large", f"request body exceeds {limit} bytes")
            else:
                data = stream.read(length) if length else b""
                if len(data) != length:
                    raise bad_request("request body ended before Content-Length bytes arrived")
            self._body = data
        return self._body

    def json_object(self) -> dict[str, Any]:
        """The body as a JSON object; duplicate keys are refused so no check sees a different value."""
        if self.content_type not in {"application/json", "application/x-www-form-urlencoded", ""}:
            raise ApiError(415, "unsupported_media_type", f"expected application/json, got {self.content_type!r}")
        return parse_json_object(self.body())

    def bearer_token(self) -> str | None:
        auth = self.header("Authorization") or ""
        scheme, _, value = auth.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None
        return value.strip()


def parse_json(data: bytes | str) -> Any:
    """Untrusted JSON: duplicate keys (case variants too) and non-finite numbers are a 400."""
    try:
        return strictjson.loads(data)
    except strictjson.StrictJsonError as exc:
        raise bad_request(f"body is rejected: {exc}") from None


def parse_json_object(data: bytes) -> dict[str, Any]:
    if not data.strip():
        raise bad_request("expected a JSON object body, got an empty body")
    value = parse_json(data)
    if not isinstance(value, dict):
        raise bad_request(f"expected a JSON object body, got {type(value).__name__}")
    return value


class Response:
    def __init__(self, status: int = 200, body: bytes | Iterable[bytes] = b"",
                 headers: list[tuple[str, str]] | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = headers if headers is not None else []

    @classmethod
    def json(cls, payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
        data = json.dumps(payload, separators=(",", ":")).encode()
        hdrs = [("Content-Type", JSON_TYPE), ("Cache-Control", "no-store")]
        hdrs += list((headers or {}).items())
        return cls(status, data, hdrs)

    @classmethod
    def html(cls, text: str, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
        hdrs = [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store")]
        hdrs += list((headers or {}).items())
        return cls(status, text.encode(), hdrs)

    @classmethod
    def redirect(cls, location: str, headers: Mapping[str, str] | None = None) -> Response:
        return cls(303, b"", [("Location", location), ("Cache-Control", "no-store"), *(headers or {}).items()])


# The reason phrases of the statuses we answer; `http.HTTPStatus` would cost every CGI process ~1.5 ms.
_PHRASES = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 301: "Moved Permanently",
            302: "Found", 303: "See Other", 304: "Not Modified", 307: "Temporary Redirect", 400: "Bad Request",
            401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
            413: "Content Too Large", 415: "Unsupported Media Type", 422: "Unprocessable Content",
            429: "Too Many Requests", 500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
            503: "Service Unavailable", 504: "Gateway Timeout"}


def status_phrase(status: int) -> str:
    return _PHRASES.get(status, "Status")


def error_response(err: ApiError) -> Response:
    payload = {"id": err.error_id, "message": err.message, "request_id": request_id.get()}
    return Response.json(payload, err.status, err.headers)


Handler = Callable[[Request], Response]


class Router:
    """Method + path-template dispatch inside one route family; {name} matches one segment."""

    def __init__(self) -> None:
        self._routes: list[tuple[re.Pattern[str], str, Handler]] = []

    def add(self, method: str, template: str, handler: Handler) -> None:
        pattern = re.escape(template).replace(r"\{", "{").replace(r"\}", "}")
        pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern)
        self._routes.append((re.compile(f"^{pattern}/?$"), method.upper(), handler))

    def __call__(self, request: Request) -> Response:
        allowed: list[str] = []
        for pattern, method, handler in self._routes:
            match = pattern.match(request.path)
            if not match:
                continue
            if method == request.method or (method == "GET" and request.method == "HEAD"):
                request.environ["wid.route_args"] = match.groupdict()
                return handler(request)
            allowed.append(method)
        if allowed:
            raise ApiError(405, "method_not_allowed", f"{request.method} is not allowed on {request.path}; "
                           f"use {', '.join(sorted(set(allowed)))}", {"Allow": ", ".join(sorted(set(allowed)))})
        raise ApiError(404, "not_found", f"no route for {request.method} {request.path}")


def route_arg(request: Request, name: str) -> str:
    value: str = request.environ["wid.route_args"][name]
    return value


def wsgi(handler: Handler) -> WsgiApp:
    """Wrap a handler: request id, JSON errors (never a traceback), one access log line."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        incoming = environ.get("HTTP_X_REQUEST_ID", "")
        token = request_id.set(incoming if _REQUEST_ID.match(incoming) else os.urandom(16).hex())
        try:
            started = time.perf_counter()
            request = Request(environ)
            response = _respond(handler, request)
            start_response(f"{response.status} {status_phrase(response.status)}",
                           [*response.headers, ("X-Request-Id", request_id.get())])
            log("request", method=request.method, path=request.raw_path, status=response.status,
                ms=round((time.perf_counter() - started) * 1000, 2))
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
        return handler(request)
    except ApiError as err:
        return error_response(err)
    except config.ConfigError as err:
        log("config_error", level="error", message=str(err))
        return error_response(ApiError(500, "misconfigured", f"server misconfigured: {err}"))
    except storage.DatabaseUnavailable as err:
        log("database_unavailable", level="error", message=str(err))
        return error_response(ApiError(503, "service_unavailable", str(err)))
    except Exception as exc:  # the last line of defence: log the type, answer JSON, never a traceback
        log("unhandled_exception", level="error", error=type(exc).__name__, detail=str(exc)[:300])
        return error_response(ApiError(500, "server_error", "internal error; see the server log"))


def _stream(chunks: Iterable[bytes]) -> Iterator[bytes]:
    yield from chunks


def run_cgi(handler: Handler) -> None:
    """Entry point of every cgi-bin executable."""
    from wsgiref.handlers import CGIHandler

    CGIHandler().run(wsgi(handler))

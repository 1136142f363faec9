"""What a handler answers: a status, headers and a body (bytes, or chunks streamed as they come)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

JSON_TYPE = "application/json; charset=utf-8"


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

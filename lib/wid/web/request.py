"""One HTTP request as handlers see it, under CGI or a long-running WSGI server alike.

Nothing here may depend on being a fresh process: the same handlers run under both.
"""

from __future__ import annotations

from typing import Any

from wid import config
from wid.core.errors import InvalidRequest, TooLarge, UnsupportedMediaType
from wid.core.strictjson import parse_json_object

# The methods this proxy serves, exactly as written (methods are case-sensitive, RFC 9110 9.1). The
# Caddyfile refuses every other method before any route; `wid.web.app.wsgi` refuses them again.
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
# Encoded '/', '.', '%' (and NUL) would let a path that passed the policy check reach a different upstream path.
_ENCODED_TRICKS = ("%2f", "%2e", "%25", "%00", "%5c")  # '/', '.', '%', NUL and '\\', in either case


class Request:
    def __init__(self, environ: dict[str, Any]):
        self.environ = environ
        self.method: str = environ.get("REQUEST_METHOD", "")  # as sent: never case-folded
        raw_uri: str = environ.get("REQUEST_URI") or environ.get("PATH_INFO", "/")
        raw_path, _, self.query_string = raw_uri.partition("?")
        self.raw_path = raw_path or "/"
        self.path = _percent_decoded(self.raw_path)
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
        lowered = raw.lower() if "%" in raw else ""
        if any(trick in lowered for trick in _ENCODED_TRICKS) or "//" in raw or "\\" in raw:
            raise InvalidRequest(f"path {raw!r} contains an encoded '/', '.', '%', a backslash or '//'")
        if any(segment in {".", ".."} for segment in raw.split("/")):
            raise InvalidRequest(f"path {raw!r} contains a '.' or '..' segment")
        if not raw.startswith("/") or any(ord(c) < 0x21 or ord(c) == 0x7F for c in self.path):
            raise InvalidRequest(f"path {raw!r} is not a clean absolute path")
        return self.path

    def query(self) -> list[tuple[str, str]]:
        if not self.query_string:
            return []
        from urllib.parse import parse_qsl  # only a request with a query string: see _percent_decoded

        return parse_qsl(self.query_string, keep_blank_values=True)

    def single_query(self, name: str) -> str | None:
        """A query parameter that must appear at most once (a repeated one could be read two ways)."""
        values = [value for key, value in self.query() if key == name]
        if len(values) > 1:
            raise InvalidRequest(f"the query parameter {name!r} appears more than once")
        return values[0] if values else None

    def body(self, limit: int | None = None) -> bytes:
        """The body, up to WID_MAX_BODY_BYTES or this endpoint's own (smaller, fixed) `limit`."""
        if self._body is None:
            source = "the limit set by WID_MAX_BODY_BYTES" if limit is None else "this endpoint's fixed limit"
            limit = config.settings().max_body_bytes if limit is None else limit
            length_raw = self.environ.get("CONTENT_LENGTH") or "0"
            try:
                length = int(length_raw)
            except ValueError:
                raise InvalidRequest(f"Content-Length {length_raw!r} is not a number") from None
            if length > limit:
                raise TooLarge(f"request body of {length} bytes is larger than {limit} bytes, {source}")
            stream = self.environ["wsgi.input"]
            if length < 0:  # a chunked body: Caddy's FastCGI passes CONTENT_LENGTH -1, the body up to EOF
                data = stream.read(limit + 1)
                if len(data) > limit:
                    raise TooLarge(f"request body larger than {limit} bytes, {source}")
            else:
                data = stream.read(length) if length else b""
                if len(data) != length:
                    raise InvalidRequest("request body ended before Content-Length bytes arrived")
            self._body = data
        elif limit is not None and len(self._body) > limit:  # read before, under a larger limit
            raise TooLarge(f"request body of {len(self._body)} bytes exceeds {limit}")
        return self._body

    def drain(self) -> None:
        """Read and drop what the handler left of the body (up to WID_MAX_BODY_BYTES; Caddy cuts larger ones).

        fcgiwrap answers 502 "An error occurred while reading the request" in place of the handler's response
        when a body of more than its pipe's worth (64 KiB) was left unread: a 401 must stay a 401."""
        if self._body is not None or self.environ.get("wid.git.body_read"):
            return
        try:
            length = int(self.environ.get("CONTENT_LENGTH") or "0")
            budget = config.settings().max_body_bytes
        except (ValueError, config.ConfigError):
            return
        remaining = budget if length < 0 else min(length, budget)
        stream = self.environ.get("wsgi.input")
        while remaining > 0 and stream is not None:
            chunk = stream.read(min(remaining, 65536))
            if not chunk:
                break
            remaining -= len(chunk)

    def json_object(self) -> dict[str, Any]:
        """The body as a JSON object; duplicate keys are refused so no check sees a different value."""
        if self.content_type not in {"application/json", "application/x-www-form-urlencoded", ""}:
            raise UnsupportedMediaType(f"expected application/json, got {self.content_type!r}")
        return parse_json_object(self.body())

    def bearer_token(self) -> str | None:
        auth = self.header("Authorization") or ""
        scheme, _, value = auth.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None
        return value.strip()


def _percent_decoded(path: str) -> str:
    """The path with its %XX escapes decoded as urllib.parse.unquote does. Nearly every path has none, and is
    taken as it is without importing urllib.parse (with `ipaddress`, 9 M instructions a CGI process)."""
    if "%" not in path:
        return path
    from urllib.parse import unquote

    return unquote(path)

"""The body of a git request: chunked or sized, gzip-compressed or not, always read to its end.

git sends large pushes chunked (no CONTENT_LENGTH, or a negative one) and may gzip a fetch
negotiation; the server keeps at most a limit of it and still reads the rest, so the client always
gets the answer instead of a broken pipe. Used by lib/wid/web/handlers/git.py.
"""

from __future__ import annotations

import zlib

from wid.core.errors import InvalidRequest, TooLarge, WidError
from wid.web.request import Request

_READ_CHUNK = 64 * 1024


def read_body(request: Request, limit: int) -> tuple[bytes, bool]:
    """The body (chunked bodies arrive with no or a negative CONTENT_LENGTH: read to the end).

    Keeps at most `limit` bytes and reads (discards) the rest, so the client always gets our answer.
    """
    environ = request.environ
    if environ.get("wid.git.body_read"):
        return b"", False
    environ["wid.git.body_read"] = True
    stream = environ["wsgi.input"]
    raw = environ.get("CONTENT_LENGTH") or ""
    try:
        length: int | None = int(raw)
    except ValueError:
        length = None
    if length is not None and length < 0:
        length = None
    kept = bytearray()
    truncated = False
    remaining = length
    while remaining is None or remaining > 0:
        want = _READ_CHUNK if remaining is None else min(_READ_CHUNK, remaining)
        chunk = stream.read(want)
        if not chunk:
            if remaining:
                raise InvalidRequest("request body ended before Content-Length bytes arrived")
            break
        if remaining is not None:
            remaining -= len(chunk)
        if len(kept) + len(chunk) <= limit:
            kept += chunk
        else:
            truncated = True
    return bytes(kept), truncated


def drain(request: Request) -> None:
    if request.method == "POST":
        try:
            read_body(request, 0)
        except (WidError, OSError):
            pass


def gunzip(data: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise InvalidRequest(f"request body is not valid gzip: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise TooLarge(f"request body inflates beyond {limit} bytes")
    return out

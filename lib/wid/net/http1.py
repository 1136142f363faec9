"""One HTTP/1.1 client connection (RFC 9112): a request at a time, its answer's framing read strictly.

The proxy's two clients sit on it: lib/wid/net/upstream.py (DigitalOcean, kept alive) and
lib/wid/net/safe_http.py (URLs outsiders influence). Why not `http.client`: it imports `email` to parse
headers and `ssl` whatever the scheme, together two fifths of a CGI database read's instructions
(docs/architecture.md, "What a request imports"); here `ssl` comes only with an https connection's context.

Strict where leniency could let a server's answer be read two ways: a status line, header line, chunk size
or Content-Length that is not exactly what RFC 9112 allows is a `ProtocolError`, as are Transfer-Encoding
and Content-Length together, a transfer coding other than chunked, a folded header line, and a body that
ends before its framing says; bytes that arrive after an answer are never read as the next request's.
Heads are bounded (a line, the number of headers); bodies are read only as far as the caller asks (the
caller caps them).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ssl

MAX_LINE = 64 * 1024  # a status line, header line, chunk-size line or trailer line
MAX_HEADERS = 100  # header (or trailer) lines in one answer
MAX_INTERIM = 10  # 1xx answers before the final one: a server cannot keep a request waiting on them
# The octets of each element of RFC 9110/9112's grammar, checked by deleting them (bytes.translate): what is
# left is what does not belong. (No regular expressions: compiling these cost every CGI process 3 M
# instructions; tests/test_http1.py holds each check to the expression it replaced.)
_TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_FIELD_VALUE_OCTETS = bytes([0x09, *range(0x20, 0x7F), *range(0x80, 0x100)])  # HTAB, SP, visible, obs-text
_HEX_DIGITS = b"0123456789ABCDEFabcdef"
_NO_BODY_STATUSES = frozenset({204, 304})
_SENDS_BODY = frozenset({"POST", "PUT", "PATCH"})


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.1 as RFC 9112 frames it; the connection is not reusable."""


class RemoteDisconnected(ConnectionResetError):
    """The server closed the connection before sending a byte of its answer (a kept-alive connection it had
    already given up on looks like this to the next request sent on it), or had sent bytes before the request
    was (then nothing was sent). Either way the request may go again on a new connection."""


class Connection:
    """A connection to one origin. Not thread-safe: one request, then its answer read, at a time."""

    __slots__ = ("_file", "host", "port", "sock", "timeout", "tls")

    def __init__(self, host: str, port: int, *, timeout: float, tls: ssl.SSLContext | None = None) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.tls = tls
        self.sock: Any = None  # a socket.socket or ssl.SSLSocket once connected; None once closed
        self._file: Any = None

    def connect(self, addresses: list[tuple[Any, Any]] | None = None) -> None:
        """Connect to the first of `addresses` ((family, sockaddr) pairs; by default the host's own) that
        answers, then (https) complete the TLS handshake, the certificate verified against `host`."""
        if addresses is None:
            # ASCII names go as bytes: a str host makes getaddrinfo load the IDNA codec (6 M instructions).
            name: Any = self.host.encode("ascii") if self.host.isascii() else self.host
            addresses = [(info[0], info[4]) for info in socket.getaddrinfo(name, self.port, type=socket.SOCK_STREAM)]
        last: OSError | None = None
        for family, sockaddr in addresses:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(sockaddr)
            except OSError as exc:
                sock.close()
                last = exc
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock = sock  # set before the handshake: a watchdog (safe_http) can cut that short too
            if self.tls is not None:
                self.sock = self.tls.wrap_socket(sock, server_hostname=self.host)
            self._file = self.sock.makefile("rb")
            return
        raise last or OSError(f"{self.host} has no address to connect to")

    def close(self) -> None:
        file, sock = self._file, self.sock
        self._file = self.sock = None
        if file is not None:
            file.close()
        if sock is not None:
            sock.close()

    def request(self, method: str, target: str, headers: Mapping[str, str], body: bytes | None = None) -> Response:
        """Send one request and read its answer's head; the body is the returned Response's to read.
        Connects first if not connected. Adds Host, Content-Length and `Accept-Encoding: identity` unless given."""
        head = self._head(method, target, headers, body)
        if self.sock is None:
            self.connect()
        if self._unasked():  # they would be read as this request's answer: a desync, not an answer
            self.close()
            raise RemoteDisconnected("the server sent bytes no request asked for (an answer longer than its "
                                     "framing, or its own timeout notice); the request was not sent")
        if body and len(body) <= 64 * 1024:  # one write for a small request (as one segment, not two)
            head, body = head + body, None
        self.sock.sendall(head)
        if body:
            self.sock.sendall(body)
        return self._response(method)

    def _unasked(self) -> bytes:
        """Bytes already received that no request has asked for, peeked at without waiting."""
        timeout = self.sock.gettimeout()
        self.sock.settimeout(0)
        try:
            return self._file.peek(1) or b""
        except OSError:  # nothing has arrived (over TLS: SSLWantReadError)
            return b""
        finally:
            self.sock.settimeout(timeout)

    def _head(self, method: str, target: str, headers: Mapping[str, str], body: bytes | None) -> bytes:
        if not is_token(method.encode("latin-1", "replace")):
            raise ValueError(f"{method!r} is not an HTTP method")
        if not is_visible(target):
            raise ValueError(f"request target {target[:200]!r} has a space, a control character or non-ASCII")
        given = {name.lower() for name in headers}
        lines = [f"{method} {target} HTTP/1.1"]
        if "host" not in given:
            # The name as getaddrinfo and ssl send it (IDNA A-labels); never a line break into the head.
            host = self.host if self.host.isascii() else self.host.encode("idna").decode("ascii")
            if not is_visible(host):
                raise ValueError(f"host {self.host[:200]!r} is empty or has a space or a control character")
            host = f"[{host}]" if ":" in host else host
            default_port = 443 if self.tls is not None else 80
            lines.append(f"Host: {host}" if self.port == default_port else f"Host: {host}:{self.port}")
        if "content-length" not in given and (body is not None or method in _SENDS_BODY):
            lines.append(f"Content-Length: {len(body or b'')}")
        if "accept-encoding" not in given:
            lines.append("Accept-Encoding: identity")  # a body this client can read as it comes
        for name, value in headers.items():
            if not is_token(name.encode("latin-1", "replace")):
                raise ValueError(f"{name!r} is not an HTTP header name")
            if not is_field_value(value.encode("latin-1", "replace")):
                raise ValueError(f"the {name} header's value has a control character (a line break?)")
            lines.append(f"{name}: {value}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _response(self, method: str) -> Response:
        for interim in range(MAX_INTERIM + 1):
            line = _line(self._file, "status line")
            if not line:
                if not interim:
                    raise RemoteDisconnected("the server closed the connection without answering")
                raise ProtocolError("the server closed the connection after an interim (1xx) answer")
            parsed = status_line(_content(line))
            if parsed is None:
                raise ProtocolError(f"not an HTTP/1.x status line: {line[:100]!r}")
            minor, status, reason = parsed
            headers = _fields(self._file, "header")
            if status == 101 or status < 100:
                raise ProtocolError(f"unexpected status {status}")
            if status >= 200:
                return Response(self, method, status, reason.decode("latin-1"), headers, http10=minor == 0)
            # 100 Continue, 103 Early Hints...: interim answers; the final one follows.
        raise ProtocolError(f"the server sent more than {MAX_INTERIM} interim (1xx) answers")


class Response:
    """An answer whose body is still on the connection: read it with read()."""

    __slots__ = ("_chunk_left", "_chunked", "_connection", "_remaining", "done", "headers", "reason", "status",
                 "will_close")

    def __init__(self, connection: Connection, method: str, status: int, reason: str,
                 headers: list[tuple[str, str]], *, http10: bool) -> None:
        self._connection = connection
        self.status = status
        self.reason = reason
        self.headers = headers
        tokens = {t.strip().lower() for t in (self.header("Connection") or "").split(",")}
        self.will_close = http10 or "close" in tokens
        self._chunked = False
        self._chunk_left: int | None = None  # chunked: bytes left of the current chunk; None: read a size line
        self._remaining: int | None = None  # Content-Length framing: bytes left; None: not framed by length
        codings = self.header("Transfer-Encoding")
        lengths = self.header("Content-Length")
        if method == "HEAD" or status in _NO_BODY_STATUSES:
            self._remaining = 0
        elif codings is not None:
            if lengths is not None:
                raise ProtocolError("the answer has both Transfer-Encoding and Content-Length")
            if http10:  # RFC 9112 6.1: its framing is faulty (it may have passed a hop that did not decode it)
                raise ProtocolError("an HTTP/1.0 answer has Transfer-Encoding")
            if [c.strip().lower() for c in codings.split(",")] != ["chunked"]:
                raise ProtocolError(f"unsupported Transfer-Encoding {codings[:100]!r}")
            self._chunked = True
        elif lengths is not None:
            values = {v.strip() for v in lengths.split(",")}
            value = values.pop() if len(values) == 1 else ""
            if not (value.isdigit() and value.isascii() and len(value) <= 18):
                raise ProtocolError(f"invalid Content-Length {lengths[:100]!r}")
            self._remaining = int(value)
        else:
            self.will_close = True  # the body runs to the end of the connection
        self.done = self._remaining == 0

    def header(self, name: str) -> str | None:
        """The named header's value, several of them joined with ", "; None if absent."""
        key = name.lower()
        values = [value for n, value in self.headers if n.lower() == key]
        return ", ".join(values) if values else None

    def read(self, amount: int | None = None) -> bytes:
        """Up to `amount` bytes of the body (all of it if None): fewer only at its end, b"" once it is read."""
        if self.done:
            return b""
        file = self._connection._file
        if file is None:
            raise ProtocolError("the connection was closed before the answer was read")
        if self._remaining is not None:
            want = self._remaining if amount is None else min(amount, self._remaining)
            data = file.read(want)
            self._remaining -= len(data)
            if len(data) < want:
                raise ProtocolError(f"the answer ended {self._remaining} bytes before its Content-Length")
            self.done = self._remaining == 0
        elif self._chunked:
            data = self._read_chunked(file, amount)
        else:
            data = file.read() if amount is None else file.read(amount)
            self.done = amount is None or len(data) < amount
        return data

    def _read_chunked(self, file: Any, amount: int | None) -> bytes:
        parts: list[bytes] = []
        wanted = amount
        while wanted is None or wanted > 0:
            if self._chunk_left is None:
                line = _line(file, "chunk size line")
                if not line.endswith(b"\n"):
                    raise ProtocolError("the answer ended before its last chunk")
                self._chunk_left = chunk_size(_content(line))
                if self._chunk_left is None:
                    raise ProtocolError(f"invalid chunk size line {line[:100]!r}")
                if self._chunk_left == 0:
                    _fields(file, "trailer")  # read to the blank line that ends the answer; trailers ignored
                    self.done = True
                    break
            take = self._chunk_left if wanted is None else min(wanted, self._chunk_left)
            data = file.read(take)
            if len(data) < take:
                raise ProtocolError("the answer ended inside a chunk")
            parts.append(data)
            self._chunk_left -= take
            if wanted is not None:
                wanted -= take
            if self._chunk_left == 0:
                end = _line(file, "chunk end")
                if not end:
                    raise ProtocolError("the answer ended inside a chunk")
                if end not in (b"\r\n", b"\n"):
                    raise ProtocolError("a chunk is longer than its size says")
                self._chunk_left = None
        return b"".join(parts)


def _line(file: Any, what: str) -> bytes:
    line: bytes = file.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        raise ProtocolError(f"the answer's {what} is longer than {MAX_LINE} bytes")
    return line


def _content(line: bytes) -> bytes:
    """A line without its CRLF (or bare LF, which RFC 9112 lets a recipient accept); no line: b""."""
    return line[:-2] if line.endswith(b"\r\n") else line[:-1] if line.endswith(b"\n") else b""


def _fields(file: Any, what: str) -> list[tuple[str, str]]:
    """Header (or trailer) lines up to the blank line that ends them."""
    fields: list[tuple[str, str]] = []
    while True:
        line = _line(file, f"{what} line")
        if line in (b"\r\n", b"\n"):
            return fields
        if not line.endswith(b"\n"):
            raise ProtocolError(f"the answer ended inside its {what}s")
        if len(fields) == MAX_HEADERS:
            raise ProtocolError(f"the answer has more than {MAX_HEADERS} {what} lines")
        name, colon, value = _content(line).partition(b":")
        if not colon or not is_token(name):  # also a folded line (it starts with a space) or "name :"
            raise ProtocolError(f"malformed {what} line {line[:100]!r}")
        value = value.strip(b" \t")
        if not is_field_value(value):
            raise ProtocolError(f"the {what} {name[:100]!r} has a control character")
        fields.append((name.decode("ascii"), value.decode("latin-1")))


def is_token(data: bytes) -> bool:
    """RFC 9110 `token` (a method, a header name): one or more tchar."""
    return bool(data) and not data.translate(None, _TCHAR)


def is_field_value(data: bytes) -> bool:
    """RFC 9110 `field-value` octets: no control character but HTAB (so no line break)."""
    return not data.translate(None, _FIELD_VALUE_OCTETS)


def is_visible(text: str) -> bool:
    """One or more visible ASCII characters, no space: a request target, a host."""
    return bool(text) and text.isascii() and text.isprintable() and " " not in text


def status_line(content: bytes) -> tuple[int, int, bytes] | None:
    """`HTTP/1.x SP 3DIGIT [SP reason]` as (x, status, reason), or None."""
    version, code, reason = content[:8], content[9:12], content[12:]
    if version not in (b"HTTP/1.0", b"HTTP/1.1") or content[8:9] != b" " or len(code) != 3 or not code.isdigit():
        return None
    if reason and (reason[:1] != b" " or not is_field_value(reason[1:])):
        return None
    return version[7] - 0x30, int(code), reason[1:]


def chunk_size(content: bytes) -> int | None:
    """The size of a chunk-size line (1 to 15 hex digits; whitespace only before an extension), or None."""
    size, semicolon, _ = content.partition(b";")
    size = size.rstrip(b" \t") if semicolon else size
    if not 1 <= len(size) <= 15 or size.translate(None, _HEX_DIGITS):
        return None
    return int(size, 16)

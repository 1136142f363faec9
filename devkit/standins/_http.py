"""Small HTTP plumbing shared by the stand-in servers (standard library + ``cryptography``).

A stand-in subclasses :class:`StandInServer` and implements :meth:`StandInServer.handle`, which
receives a :class:`RecordedRequest` and returns a :class:`Response`. The base class runs a
``ThreadingHTTPServer`` bound to 127.0.0.1 in a background thread, records every request, applies
injected faults (status override, delay, dropped connection) and can serve HTTPS with a throw-away
certificate authority so clients that insist on TLS (pydo, OIDC discovery) can be pointed at it.
"""

from __future__ import annotations

import abc
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

LOOPBACK = "127.0.0.1"
MAX_BODY_BYTES = 16 * 1024 * 1024


class Headers:
    """Case-insensitive, order-preserving, multi-valued header collection."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self.items: list[tuple[str, str]] = list(items)

    def get(self, name: str, default: str | None = None) -> str | None:
        lower = name.lower()
        for key, value in self.items:
            if key.lower() == lower:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        lower = name.lower()
        return [value for key, value in self.items if key.lower() == lower]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def as_dict(self) -> dict[str, str]:
        """Lower-cased names; a repeated header keeps its last value."""
        return {key.lower(): value for key, value in self.items}

    def __repr__(self) -> str:
        return f"Headers({self.items!r})"


@dataclass
class RecordedRequest:
    """One request as the stand-in received it."""

    method: str
    path: str  # raw path, percent-encoding preserved, without the query string
    raw_query: str
    headers: Headers
    body: bytes
    client_address: str
    received_at: float = field(default_factory=time.time)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(self.raw_query, keep_blank_values=True)

    def query_value(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    @property
    def target(self) -> str:
        return self.path + (f"?{self.raw_query}" if self.raw_query else "")

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")

    @property
    def bearer_token(self) -> str | None:
        value = self.authorization
        if value is None:
            return None
        scheme, _, credentials = value.partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            return None
        return credentials.strip()

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON (raises ``ValueError`` when it is not JSON)."""
        return json.loads(self.body.decode("utf-8"))

    def form(self) -> dict[str, list[str]]:
        return parse_qs(self.body.decode("utf-8", errors="replace"), keep_blank_values=True)


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def json(cls, status: int, payload: Any, headers: Iterable[tuple[str, str]] = ()) -> Response:
        body = json.dumps(payload).encode("utf-8")
        return cls(status, body, [("Content-Type", "application/json; charset=utf-8"), *headers])

    @classmethod
    def html(cls, status: int, text: str, headers: Iterable[tuple[str, str]] = ()) -> Response:
        return cls(status, text.encode("utf-8"), [("Content-Type", "text/html; charset=utf-8"), *headers])

    @classmethod
    def redirect(cls, location: str, status: int = 302) -> Response:
        return cls(status, b"", [("Location", location), ("Cache-Control", "no-store")])

    def header(self, name: str) -> str | None:
        lower = name.lower()
        for key, value in self.headers:
            if key.lower() == lower:
                return value
        return None


@dataclass
class Fault:
    """A planned misbehaviour for requests whose path starts with ``path_prefix``."""

    path_prefix: str
    method: str | None = None
    status: int | None = None
    delay_seconds: float = 0.0
    body: bytes | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    drop_connection: bool = False
    times: int = 1  # how many matching requests it applies to; <= 0 means until cleared
    gate: threading.Event | None = None  # hold matching requests (before anything else) until it is set

    def matches(self, request: RecordedRequest) -> bool:
        if self.method is not None and self.method.upper() != request.method:
            return False
        return request.path.startswith(self.path_prefix)


class _DropConnection(Exception):
    pass


class TLSFiles:
    """A throw-away CA and a server certificate for 127.0.0.1 / localhost."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="wid-standin-tls-")
        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wid stand-in test CA")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        server_key = ec.generate_private_key(ec.SECP256R1())
        server_cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name)
            .public_key(server_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOOPBACK))]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        self.ca_file = os.path.join(self.directory, "ca.pem")
        self.cert_file = os.path.join(self.directory, "server.pem")
        self.key_file = os.path.join(self.directory, "server.key")
        with open(self.ca_file, "wb") as handle:
            handle.write(ca_cert.public_bytes(serialization.Encoding.PEM))
        with open(self.cert_file, "wb") as handle:
            handle.write(server_cert.public_bytes(serialization.Encoding.PEM))
        with open(os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as handle:
            handle.write(
                server_key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def cleanup(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "wid-standin"
    sys_version = ""
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            total = 0
            while True:
                size_line = self.rfile.readline(1024)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > MAX_BODY_BYTES:
                    raise ValueError("request body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise ValueError("request body too large")
        return self.rfile.read(length) if length > 0 else b""

    def _serve(self) -> None:
        owner = self.server.owner
        try:
            body = self._read_body()
        except ValueError:
            self._write(Response.json(413, {"id": "request_entity_too_large", "message": "Too large."}))
            self.close_connection = True
            return
        split = urlsplit(self.path)
        request = RecordedRequest(
            method=self.command,
            path=split.path or "/",
            raw_query=split.query,
            headers=Headers(self.headers.items()),
            body=body,
            client_address=self.client_address[0],
        )
        try:
            response = owner._process(request)
        except _DropConnection:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self._write(response, head=self.command == "HEAD")

    def _write(self, response: Response, head: bool = False) -> None:
        try:
            reason = HTTPStatus(response.status).phrase
        except ValueError:
            reason = "Unknown"
        self.send_response(response.status, reason)
        has_length = False
        for name, value in response.headers:
            if name.lower() == "content-length":
                has_length = True
            self.send_header(name, value)
        if not has_length:
            self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if not head and response.body:
            self.wfile.write(response.body)

    do_GET = _serve
    do_POST = _serve
    do_PUT = _serve
    do_PATCH = _serve
    do_DELETE = _serve
    do_HEAD = _serve
    do_OPTIONS = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: StandInServer

    def __init__(self, address: tuple[str, int], owner: StandInServer, tls: TLSFiles | None) -> None:
        self.owner = owner
        self._tls_context = tls.server_context() if tls else None
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[Any, Any]:
        sock, address = super().get_request()
        # As nginx does on kept-alive connections (tcp_nodelay on): BaseHTTPRequestHandler writes the head and
        # the body separately, and with Nagle's algorithm the body would wait for the head's delayed ACK
        # (up to 40 ms on loopback), a stall the real API does not have.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.owner.lock:
            self.owner.connections += 1
        if self._tls_context is not None:
            sock = self._tls_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.settimeout(10)
                request.do_handshake()
                request.settimeout(None)
            except (OSError, ssl.SSLError):
                return
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up mid-request is normal in fault tests; never print tracebacks.
        return


class StandInServer(abc.ABC):
    """Base class: lifecycle, recording and fault injection for a loopback HTTP(S) stand-in."""

    def __init__(self, port: int = 0, tls: bool = False) -> None:
        self._requested_port = port
        self._tls_enabled = tls
        self._tls: TLSFiles | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._faults: list[Fault] = []
        self.lock = threading.RLock()
        self.requests: list[RecordedRequest] = []
        self.connections = 0  # TCP connections accepted (a client that keeps them alive opens few)
        # Tracebacks of exceptions raised inside handle(): the client got a 500; tests of the
        # stand-ins assert this stays empty.
        self.handler_errors: list[str] = []

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> StandInServer:
        if self._server is not None:
            return self
        self._stopping.clear()
        if self._tls_enabled:
            self._tls = TLSFiles()
        self._server = _Server((LOOPBACK, self._requested_port), self, self._tls)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases requests that are sleeping in an injected delay
        server, thread = self._server, self._thread
        self._server = None
        self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        if self._tls is not None:
            self._tls.cleanup()
            self._tls = None

    def __enter__(self) -> Any:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("stand-in is not running")
        return int(self._server.server_address[1])

    @property
    def scheme(self) -> str:
        return "https" if self._tls_enabled else "http"

    @property
    def url(self) -> str:
        """Base URL without a trailing slash, e.g. ``http://127.0.0.1:40123``."""
        return f"{self.scheme}://{LOOPBACK}:{self.port}"

    @property
    def ca_file(self) -> str | None:
        """PEM file of the CA that signed the server certificate (``tls=True`` only)."""
        return self._tls.ca_file if self._tls else None

    # -- recording ---------------------------------------------------------------------------------

    def clear_requests(self) -> None:
        with self.lock:
            self.requests.clear()

    def requests_to(self, path_prefix: str = "/", method: str | None = None) -> list[RecordedRequest]:
        """Recorded requests whose path starts with ``path_prefix`` (and, if given, of ``method``)."""
        with self.lock:
            return [
                r
                for r in self.requests
                if r.path.startswith(path_prefix) and (method is None or r.method == method.upper())
            ]

    @property
    def last_request(self) -> RecordedRequest | None:
        with self.lock:
            return self.requests[-1] if self.requests else None

    # -- fault injection -------------------------------------------------------------------------------

    def fail_next(
        self,
        path_prefix: str = "/",
        status: int | None = 500,
        *,
        method: str | None = None,
        delay_seconds: float = 0.0,
        body: bytes | str | Mapping[str, Any] | None = None,
        headers: Iterable[tuple[str, str]] = (),
        drop_connection: bool = False,
        times: int = 1,
        gate: threading.Event | None = None,
    ) -> Fault:
        """Make the next ``times`` requests under ``path_prefix`` misbehave.

        ``status``: answer with this status instead of handling the request (``None``: handle it
        normally, after the delay). ``delay_seconds``: sleep first (released early by ``stop()``),
        which is how a test makes the upstream hang past a client's timeout. ``body``: the body to
        send with ``status`` (bytes/str verbatim, a mapping as JSON; default: the API's JSON error
        shape for that status). ``drop_connection``: close the socket without any response.
        ``times <= 0`` keeps the fault until :meth:`clear_faults`. ``gate``: hold the request (already
        recorded) until the test sets the event (released early by ``stop()``), then apply the rest;
        with ``status=None`` that is an upstream that answers exactly when the test says.
        """
        if isinstance(body, str):
            body = body.encode("utf-8")
        elif isinstance(body, Mapping):
            body = json.dumps(dict(body)).encode("utf-8")
        fault = Fault(
            path_prefix=path_prefix,
            method=method,
            status=status,
            delay_seconds=delay_seconds,
            body=body,
            headers=list(headers),
            drop_connection=drop_connection,
            times=times,
            gate=gate,
        )
        with self.lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self.lock:
            self._faults.clear()

    def _take_fault(self, request: RecordedRequest) -> Fault | None:
        with self.lock:
            for fault in self._faults:
                if fault.matches(request):
                    if fault.times > 0:
                        fault.times -= 1
                        if fault.times == 0:
                            self._faults.remove(fault)
                    return fault
        return None

    def fault_response(self, request: RecordedRequest, fault: Fault) -> Response:
        """The response for a status fault without an explicit body; subclasses refine the shape."""
        status = fault.status or 500
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        return Response.json(status, {"id": phrase.lower().replace(" ", "_"), "message": phrase})

    def should_record(self, request: RecordedRequest) -> bool:
        return True

    def _process(self, request: RecordedRequest) -> Response:
        if self.should_record(request):
            with self.lock:
                self.requests.append(request)
        fault = self._take_fault(request)
        if fault is not None:
            while fault.gate is not None and not fault.gate.wait(0.05):
                if self._stopping.is_set():
                    raise _DropConnection()
            if fault.delay_seconds > 0 and self._stopping.wait(fault.delay_seconds):
                raise _DropConnection()
            if fault.drop_connection:
                raise _DropConnection()
            if fault.status is not None:
                if fault.body is not None:
                    headers = fault.headers or [("Content-Type", "application/json; charset=utf-8")]
                    return Response(fault.status, fault.body, list(headers))
                response = self.fault_response(request, fault)
                response.headers.extend(fault.headers)
                return response
        try:
            return self.handle(request)
        except Exception:  # a bug in a stand-in must surface as a 500, not a hung client
            with self.lock:
                self.handler_errors.append(traceback.format_exc())
            return Response.json(500, {"id": "server_error", "message": "Unexpected server-side error"})

    @abc.abstractmethod
    def handle(self, request: RecordedRequest) -> Response:
        """The stand-in's answer to one request (faults are applied before it is asked)."""


def json_dumps(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True)


def serve_until_signalled(stand_in: StandInServer, ready: Callable[[], Mapping[str, Any]]) -> int:
    """A stand-in's command line: start it, print ready() as one JSON line, serve until SIGTERM/SIGINT."""
    stopped = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        stopped.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    stand_in.start()
    sys.stdout.write(json.dumps(ready()) + "\n")
    sys.stdout.flush()
    try:
        stopped.wait()
    finally:
        stand_in.stop()
    return 0

"""A raw HTTP/1.1 server on loopback for client tests: it writes canned answers byte for byte (in pieces,
with pauses, then closes or not) and records the raw requests it read (tests/test_http1.py,
tests/test_persistent_mode.py)."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Sequence

# One answer: bytes written at once, or a sequence of bytes to write and pauses (seconds) between them.
Answer = bytes | Sequence[bytes | float]


class RawServer:
    """Answers the n-th request read on a connection with the n-th canned answer, then closes the connection
    (close=True) or waits for the client to close it. Records every connection and every raw request."""

    def __init__(self, answers: Sequence[Answer], *, close: bool = True, tls: ssl.SSLContext | None = None) -> None:
        self.answers = answers
        self.close_after = close
        self.tls = tls
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.accepted = 0
        self.written = threading.Semaphore(0)  # released once an answer's last part is written
        self.requests: list[bytes] = []
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            self.conns.append(conn)
            with conn:
                pending = b""
                for answer in self.answers:
                    request, pending = self._read_request(conn, pending)
                    if request is None:
                        return
                    self.requests.append(request)
                    for part in [answer] if isinstance(answer, bytes) else answer:
                        if isinstance(part, bytes):
                            conn.sendall(part)
                        else:
                            time.sleep(part)
                    self.written.release()
                while not self.close_after and conn.recv(65536):
                    pass
        except OSError:  # the client gave up (a refused certificate, a timeout): nothing more to answer
            return

    @staticmethod
    def _read_request(conn: socket.socket, pending: bytes) -> tuple[bytes | None, bytes]:
        while b"\r\n\r\n" not in pending:
            data = conn.recv(65536)
            if not data:
                return None, b""
            pending += data
        head, _, rest = pending.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            data = conn.recv(65536)
            if not data:
                break
            rest += data
        return head + b"\r\n\r\n" + rest[:length], rest[length:]

    def stop(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

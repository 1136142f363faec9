"""lib/wid/net/http1.py against a hostile or broken server: a real TCP server on loopback writes canned raw
answers (in pieces, with pauses, then closes or not) and records the raw requests the client sent."""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from devkit.standins._http import TLSFiles
from tests.raw_http import Answer, RawServer
from wid.net import http1, tls
from wid.net.http1 import MAX_HEADERS, MAX_INTERIM, MAX_LINE, Connection, ProtocolError, RemoteDisconnected, Response

CRLF = b"\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Servers:
    """Starts RawServers for a test and stops them after it."""

    def __init__(self) -> None:
        self.started: list[RawServer] = []

    def __call__(self, answers: Sequence[Answer], *, close: bool = True,
                 tls: ssl.SSLContext | None = None) -> RawServer:
        server = RawServer(answers, close=close, tls=tls)
        self.started.append(server)
        return server


@pytest.fixture
def serve() -> Iterator[Servers]:
    servers = Servers()
    yield servers
    for server in servers.started:
        server.stop()


def connection(server: RawServer, timeout: float = 5.0, host: str = "127.0.0.1") -> Connection:
    return Connection(host, server.port, timeout=timeout)


def answer(serve: Servers, *parts: bytes | float, method: str = "GET") -> Response:
    """The Response to one GET whose answer the server writes as `parts`, then closes."""
    server = serve([parts])
    return connection(server).request(method, "/", {})


def refused(serve: Servers, *parts: bytes | float, method: str = "GET") -> str:
    """The ProtocolError's message for an answer written as `parts`, whether its head or its body is wrong."""
    with pytest.raises(ProtocolError) as caught:
        answer(serve, *parts, method=method).read()
    return str(caught.value)


# -- requests as sent ------------------------------------------------------------------------------------------


def test_a_get_is_sent_as_a_request_line_host_accept_encoding_and_the_callers_headers(serve: Servers) -> None:
    server = serve([OK])
    response = connection(server).request("GET", "/v2/account?page=2", {"Authorization": "Bearer t", "X-A": "b\tc"})
    assert response.read() == b"ok"
    assert server.requests == [
        b"GET /v2/account?page=2 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAccept-Encoding: identity\r\n"
        b"Authorization: Bearer t\r\nX-A: b\tc\r\n\r\n" % server.port]


def test_the_host_header_has_the_port_unless_default_and_brackets_an_ipv6_literal(serve: Servers) -> None:
    server = serve([OK], close=False)
    to_server = [(socket.AF_INET, ("127.0.0.1", server.port))]  # these names, connected to the loopback server
    for host, port, sent in (("api.example.test", 80, b"api.example.test"),
                             ("api.example.test", 8080, b"api.example.test:8080"),
                             ("::1", 80, b"[::1]"), ("2001:db8::1", 8443, b"[2001:db8::1]:8443")):
        conn = Connection(host, port, timeout=5)
        conn.connect(to_server)
        assert conn.request("GET", "/", {}).read() == b"ok"
        conn.close()
        assert server.requests[-1].split(b"\r\n")[1] == b"Host: " + sent


def test_an_international_host_name_is_sent_as_its_idna_a_labels(serve: Servers) -> None:
    server = serve([OK])
    conn = Connection("b\u00fccher.example", 80, timeout=5)  # as getaddrinfo resolves it and ssl sends it
    conn.connect([(socket.AF_INET, ("127.0.0.1", server.port))])
    assert conn.request("GET", "/", {}).read() == b"ok"
    assert server.requests[0].split(b"\r\n")[1] == b"Host: xn--bcher-kva.example"


@pytest.mark.parametrize("host", ["evil.example\r\nX-Injected: 1", "a b", "a\x00b", "a\nb", ""])
def test_a_host_name_that_would_break_the_host_header_is_refused_before_anything_is_sent(
        serve: Servers, host: str) -> None:
    server = serve([OK])
    conn = Connection(host, server.port, timeout=5)
    conn.connect([(socket.AF_INET, ("127.0.0.1", server.port))])
    with pytest.raises(ValueError, match="is empty or has a space or a control character"):
        conn.request("GET", "/", {})
    assert conn.request("GET", "/", {"Host": "given.example"}).read() == b"ok"  # a given Host is the caller's
    assert server.requests == [b"GET / HTTP/1.1\r\nAccept-Encoding: identity\r\nHost: given.example\r\n\r\n"]


def test_content_length_is_sent_for_a_body_and_as_0_for_a_post_put_patch_without_one(serve: Servers) -> None:
    cases = [("POST", None, b"Content-Length: 0"), ("PUT", None, b"Content-Length: 0"),
             ("PATCH", None, b"Content-Length: 0"), ("POST", b"", b"Content-Length: 0"),
             ("POST", b'{"a":1}', b"Content-Length: 7"), ("DELETE", b"x", b"Content-Length: 1"),
             ("GET", None, None), ("DELETE", None, None), ("HEAD", None, None)]
    server = serve([b"HTTP/1.1 204 No Content\r\n\r\n"] * len(cases))
    conn = connection(server)
    for method, body, length in cases:
        assert conn.request(method, "/x", {}, body).status == 204
        lines = server.requests[-1].split(b"\r\n")
        assert lines[0] == method.encode() + b" /x HTTP/1.1"
        assert [line for line in lines if line.lower().startswith(b"content-length")] == ([length] if length else [])
        assert server.requests[-1].endswith(b"\r\n\r\n" + (body or b""))
    assert server.accepted == 1


def test_a_large_body_arrives_whole(serve: Servers) -> None:
    body = bytes(range(256)) * 1000  # over the 64 KiB sent with the head
    server = serve([OK])
    response = connection(server).request("PUT", "/blob", {"Content-Type": "application/octet-stream"}, body)
    assert response.read() == b"ok"
    assert server.requests[0].endswith(b"\r\nContent-Length: 256000\r\nAccept-Encoding: identity\r\n"
                                       b"Content-Type: application/octet-stream\r\n\r\n" + body)


def test_the_callers_host_content_length_and_accept_encoding_are_kept_not_doubled(serve: Servers) -> None:
    server = serve([OK])
    headers = {"host": "api.example.test", "CONTENT-LENGTH": "3", "Accept-Encoding": "gzip"}
    assert connection(server).request("POST", "/", headers, b"abc").read() == b"ok"
    assert server.requests == [b"POST / HTTP/1.1\r\nhost: api.example.test\r\nCONTENT-LENGTH: 3\r\n"
                               b"Accept-Encoding: gzip\r\n\r\nabc"]


@pytest.mark.parametrize(("method", "target", "headers"), [
    ("GET", "/", {"X-A": "a\r\nX-Injected: 1"}),
    ("GET", "/", {"X-A": "a\nb"}),
    ("GET", "/", {"X-A": "a\rb"}),
    ("GET", "/", {"X-A": "a\x00b"}),
    ("GET", "/", {"X-A": "a\x7f"}),
    ("GET", "/", {"X-A": "\u2028"}),  # not Latin-1: never sent as something else
    ("GET", "/", {"X A": "b"}),
    ("GET", "/", {"X:A": "b"}),
    ("GET", "/", {"": "b"}),
    ("GET", "/", {"X-A\r\nX-Injected": "b"}),
    ("GET /admin", "/", {}),
    ("", "/", {}),
    ("GET\r\n", "/", {}),
    ("GÉT", "/", {}),
    ("GET", "/a b", {}),
    ("GET", "/a\r\nX-Injected: 1", {}),
    ("GET", "/a\n", {}),
    ("GET", "/caf\u00e9", {}),
    ("GET", "", {}),
])
def test_a_request_that_would_not_be_one_request_is_refused_before_anything_is_sent(
        serve: Servers, method: str, target: str, headers: dict[str, str]) -> None:
    server = serve([OK, OK])
    conn = connection(server)
    with pytest.raises(ValueError):
        conn.request(method, target, headers)
    assert conn.sock is None and server.accepted == 0  # not even connected
    assert conn.request("GET", "/first", {}).read() == b"ok"
    with pytest.raises(ValueError):  # on a connected connection: nothing written, the next request is intact
        conn.request(method, target, headers)
    assert conn.request("GET", "/second", {}).read() == b"ok"
    assert [r.split(b"\r\n")[0] for r in server.requests] == [b"GET /first HTTP/1.1", b"GET /second HTTP/1.1"]
    assert all(r.count(b"\r\n\r\n") == 1 and r.endswith(b"\r\n\r\n") for r in server.requests)


# -- answers read --------------------------------------------------------------------------------------------


def test_a_content_length_body_is_read_whole_or_in_pieces(serve: Servers) -> None:
    response = answer(serve, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\nabc", 0.05,
                      b"defghij", 0.05, b"trailing junk the framing does not cover")
    assert (response.status, response.reason, response.will_close) == (200, "OK", False)
    assert response.headers == [("Content-Type", "text/plain"), ("Content-Length", "10")]
    assert [response.read(3), response.read(4), response.done, response.read(100)] == [b"abc", b"defg", False, b"hij"]
    assert response.done and response.read() == b"" and response.read(5) == b""


def test_a_chunked_body_with_extensions_uppercase_hex_and_trailers(serve: Servers) -> None:
    body = b"5;a=b\r\nhello\r\nA;name=\"x y\";q\r\n0123456789\r\n1a ;x\r\n" + b"z" * 26 + b"\r\n"
    server = serve([(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n", body[:9], 0.05, body[9:], 0.05,
                     b"0\r\nX-Checksum: abc\r\nX-Other: d\r\n\r\n"), OK])
    conn = connection(server)
    first = conn.request("GET", "/", {})
    assert first.read() == b"hello0123456789" + b"z" * 26 and first.done
    assert first.header("X-Checksum") is None  # trailers are read past, not merged into the headers
    assert conn.request("GET", "/", {}).read() == b"ok"  # the trailer section was read exactly to its end
    assert server.accepted == 1


def test_a_chunked_body_read_in_pieces_across_chunks(serve: Servers) -> None:
    response = answer(serve, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"5\r\nhello\r\n3\r\nabc\r\n1\r\nZ\r\n0\r\n\r\n")
    pieces = [response.read(n) for n in (2, 4, 0, 3, 10)]
    assert pieces == [b"he", b"lloa", b"", b"bcZ", b""] and response.done


def test_without_length_or_chunks_the_body_runs_to_the_end_of_the_connection(serve: Servers) -> None:
    response = answer(serve, b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\nsome ", 0.05, b"bytes then close")
    assert response.will_close  # nothing else can tell where the body ends
    assert response.read(5) == b"some " and response.read() == b"bytes then close" and response.done


@pytest.mark.parametrize(("method", "status_line"), [
    ("HEAD", b"HTTP/1.1 200 OK"), ("GET", b"HTTP/1.1 204 No Content"), ("GET", b"HTTP/1.1 304 Not Modified"),
])
def test_head_204_and_304_answers_have_no_body_whatever_their_headers_say(
        serve: Servers, method: str, status_line: bytes) -> None:
    server = serve([status_line + b"\r\nContent-Length: 1000\r\nTransfer-Encoding: chunked\r\n\r\n", OK])
    conn = connection(server)
    response = conn.request(method, "/", {})
    assert response.done and response.read() == b"" and not response.will_close
    assert conn.request("GET", "/", {}).read() == b"ok"  # the next answer is read as the next answer


def test_interim_answers_are_skipped_before_the_final_one(serve: Servers) -> None:
    response = answer(serve, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload"
                      b"\r\n\r\n", 0.05, b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
    assert (response.status, response.reason, response.headers) == (201, "Created", [("Content-Length", "2")])
    assert response.read() == b"ok"


def test_connection_close_and_http_1_0_mean_the_connection_is_not_reused(serve: Servers) -> None:
    assert answer(serve, b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive, CLOSE\r\nContent-Length: 2\r\n\r\nok").will_close
    assert answer(serve, b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok").will_close
    kept = answer(serve, b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok")
    assert not kept.will_close


def test_keep_alive_two_requests_in_a_row_get_their_own_answers(serve: Servers) -> None:
    server = serve([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst",
                    b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nsecond\r\n0\r\n\r\n"])
    conn = connection(server)
    first = conn.request("GET", "/1", {})
    assert (first.status, first.read()) == (200, b"first")
    second = conn.request("GET", "/2", {})
    assert (second.status, second.read()) == (404, b"second")
    assert server.accepted == 1 and len(server.requests) == 2


def test_header_joins_repeated_headers_and_ignores_case(serve: Servers) -> None:
    response = answer(serve, b"HTTP/1.1 200 OK\r\nVary: Accept\r\nX-Trace:  a b \r\nvary: Origin\r\n"
                      b"Empty:\r\nContent-Length: 0\r\n\r\n")
    assert response.header("VARY") == "Accept, Origin" and response.header("x-trace") == "a b"
    assert response.header("empty") == "" and response.header("Missing") is None
    assert response.headers[:3] == [("Vary", "Accept"), ("X-Trace", "a b"), ("vary", "Origin")]


def test_bare_lf_line_endings_are_accepted(serve: Servers) -> None:
    response = answer(serve, b"HTTP/1.1 200\nContent-Length: 2\n\nok")
    assert (response.status, response.reason, response.read()) == (200, "", b"ok")
    chunked = answer(serve, b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n2\nok\n0\n\n")
    assert chunked.read() == b"ok"


def test_identical_duplicate_content_lengths_are_one_length(serve: Servers) -> None:
    assert answer(serve, b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhelloX").read() == b"hello"
    assert answer(serve, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhelloX").read() == b"hello"
    assert answer(serve, b"HTTP/1.1 200 OK\r\nContent-Length: 005\r\n\r\nhelloX").read() == b"hello"


def test_limits_are_inclusive(serve: Servers) -> None:
    fields = b"".join(b"X-%d: v\r\n" % n for n in range(MAX_HEADERS - 1))
    longest = b"X-Long: " + b"a" * (MAX_LINE - len(b"X-Long: \r\n")) + b"\r\n"
    response = answer(serve, b"HTTP/1.1 200 OK\r\n" + fields + longest + b"\r\n")
    assert len(response.headers) == MAX_HEADERS and len(response.header("X-Long") or "") == MAX_LINE - 10


# -- answers refused -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("status_line", [
    b"hello", b"HTTP/2 200", b"HTTP/1.1 20 OK", b"HTTP/1.1 2000 OK", b"HTTP/1.1  200 OK", b"http/1.1 200 OK",
    b"HTTP/1.2 200 OK", b"HTTP/1.1 200 O\rK", b"HTTP/1.1 200 O\x00K", b" HTTP/1.1 200 OK", b"HTTP/1.1 2OO OK",
    b"HTTP/1.1 200 OK\rContent-Length: 2\r",  # bare CR line endings are not line endings
])
def test_a_malformed_status_line_is_refused(serve: Servers, status_line: bytes) -> None:
    message = refused(serve, status_line + b"\r\nContent-Length: 2\r\n\r\nok")
    assert message.startswith("not an HTTP/1.x status line: ")


def test_a_status_line_cut_off_by_the_end_of_the_connection_is_refused(serve: Servers) -> None:
    assert refused(serve, b"HTTP/1.1 200 OK") == "not an HTTP/1.x status line: b'HTTP/1.1 200 OK'"


@pytest.mark.parametrize(("status", "expected"), [(b"101", 101), (b"099", 99), (b"000", 0)])
def test_switching_protocols_and_statuses_under_100_are_refused(
        serve: Servers, status: bytes, expected: int) -> None:
    message = refused(serve, b"HTTP/1.1 " + status + b" Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
    assert message == f"unexpected status {expected}"


def test_the_end_of_the_connection_inside_the_headers_is_refused(serve: Servers) -> None:
    assert refused(serve, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n") == "the answer ended inside its headers"
    assert refused(serve, b"HTTP/1.1 200 OK\r\nContent-Len") == "the answer ended inside its headers"


def test_the_end_of_the_connection_after_an_interim_answer_is_refused(serve: Servers) -> None:
    message = refused(serve, b"HTTP/1.1 100 Continue\r\n\r\n")
    assert message == "the server closed the connection after an interim (1xx) answer"


@pytest.mark.parametrize("line", [
    b"Content-Length 2", b"Content-Length : 2", b"Content-Length\t: 2", b": 2", b"X@Y: 1", b" Content-Length: 2",
    b"\tX-A: b", b"\r", b" ",
])
def test_a_malformed_header_line_is_refused(serve: Servers, line: bytes) -> None:
    message = refused(serve, b"HTTP/1.1 200 OK\r\nX-A: a\r\n" + line + b"\r\nContent-Length: 2\r\n\r\nok")
    assert message == f"malformed header line {line + CRLF!r}"


def test_an_obs_fold_continuation_line_is_refused(serve: Servers) -> None:
    message = refused(serve, b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok")
    assert message == "malformed header line b' b\\r\\n'"
    first = refused(serve, b"HTTP/1.1 200 OK\r\n Content-Length: 2\r\n\r\nok")  # folded onto the status line
    assert first == "malformed header line b' Content-Length: 2\\r\\n'"


@pytest.mark.parametrize("value", [b"a\x00b", b"a\rb", b"a\r", b"\x1b[31m", b"a\x7fb", b"a\x0bb"])
def test_a_control_character_in_a_header_value_is_refused(serve: Servers, value: bytes) -> None:
    message = refused(serve, b"HTTP/1.1 200 OK\r\nX-A: " + value + b"\r\nContent-Length: 2\r\n\r\nok")
    assert message == "the header b'X-A' has a control character"


def test_more_than_100_headers_are_refused(serve: Servers) -> None:
    fields = b"".join(b"X-%d: v\r\n" % n for n in range(MAX_HEADERS + 1))
    assert refused(serve, b"HTTP/1.1 200 OK\r\n" + fields + b"\r\n") == "the answer has more than 100 header lines"


def test_a_header_line_over_64_kib_is_refused(serve: Servers) -> None:
    line = b"X-Long: " + b"a" * MAX_LINE + b"\r\n"
    message = refused(serve, b"HTTP/1.1 200 OK\r\n" + line + b"\r\n")
    assert message == "the answer's header line is longer than 65536 bytes"
    endless = refused(serve, b"HTTP/1.1 200 OK" + b"K" * MAX_LINE)  # a status line that never ends
    assert endless == "the answer's status line is longer than 65536 bytes"
    extension = b"5;" + b"x" * MAX_LINE + b"\r\nhello\r\n0\r\n\r\n"
    chunked = refused(serve, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + extension)
    assert chunked == "the answer's chunk size line is longer than 65536 bytes"


@pytest.mark.parametrize("fields", [
    b"Transfer-Encoding: chunked\r\nContent-Length: 5",
    b"Content-Length: 5\r\nTransfer-Encoding: chunked",
    b"Content-Length: 0\r\nTransfer-Encoding: identity",
])
def test_transfer_encoding_with_content_length_is_refused(serve: Servers, fields: bytes) -> None:
    message = refused(serve, b"HTTP/1.1 200 OK\r\n" + fields + b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert message == "the answer has both Transfer-Encoding and Content-Length"


@pytest.mark.parametrize(("fields", "codings"), [
    (b"Transfer-Encoding: gzip, chunked", "gzip, chunked"),
    (b"Transfer-Encoding: chunked, chunked", "chunked, chunked"),
    (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked", "chunked, chunked"),
    (b"Transfer-Encoding: chunked, gzip", "chunked, gzip"),
    (b"Transfer-Encoding: identity", "identity"),
    (b"Transfer-Encoding: ", ""),
    (b"Transfer-Encoding: chunked;q=1", "chunked;q=1"),
    (b"Transfer-Encoding: \xe7hunked", "\u00e7hunked"),
])
def test_a_transfer_coding_other_than_chunked_alone_is_refused(
        serve: Servers, fields: bytes, codings: str) -> None:
    message = refused(serve, b"HTTP/1.1 200 OK\r\n" + fields + b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert message == f"unsupported Transfer-Encoding {codings!r}"


@pytest.mark.parametrize("length", [
    b"-1", b"+5", b"0x10", b"5 5", b"5, 6", b"5,", b"", b"\xb2", "\u00b2".encode(), "\u0661".encode(),
    b"1" * 19, b"5.0", b"1e3", b"5\x0c",
])
def test_a_content_length_that_is_not_one_decimal_length_is_refused(serve: Servers, length: bytes) -> None:
    message = refused(serve, b"HTTP/1.1 200 OK\r\nContent-Length: " + length + b"\r\n\r\nhello")
    assert message in (f"invalid Content-Length {length.decode('latin-1')!r}",
                       "the header b'Content-Length' has a control character")


def test_two_different_content_lengths_are_refused(serve: Servers) -> None:
    message = refused(serve, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!")
    assert message == "invalid Content-Length '5, 6'"


@pytest.mark.parametrize("size", [b"-1", b"0x5", b" 5", b"5 ", b"5\t", b"+5", b"", b"1" * 16, b"g", b"5\x00", b";a=b",
                                  b"\xd9\xa1"])
def test_a_malformed_chunk_size_is_refused(serve: Servers, size: bytes) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    message = refused(serve, head + size + b"\r\nhello\r\n0\r\n\r\n")
    assert message == f"invalid chunk size line {size + CRLF!r}"


def test_chunk_data_longer_than_its_size_is_refused(serve: Servers) -> None:
    message = refused(serve, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n")
    assert message == "a chunk is longer than its size says"


@pytest.mark.parametrize(("body", "expected"), [
    (b"5\r\nhel", "the answer ended inside a chunk"),
    (b"5\r\nhello", "the answer ended inside a chunk"),
    (b"5\r\nhello\r\n", "the answer ended before its last chunk"),
    (b"5\r\nhello\r\n0", "the answer ended before its last chunk"),
    (b"5\r\nhello\r\n0\r\n", "the answer ended inside its trailers"),
    (b"5\r\nhello\r\n0\r\nX-T: 1\r\n", "the answer ended inside its trailers"),
])
def test_the_end_of_the_connection_inside_a_chunked_body_is_refused(
        serve: Servers, body: bytes, expected: str) -> None:
    assert refused(serve, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body) == expected


def test_the_end_of_the_connection_before_the_content_length_is_refused_naming_what_is_missing(
        serve: Servers) -> None:
    assert refused(serve, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc") == (
        "the answer ended 7 bytes before its Content-Length")
    response = answer(serve, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabcdef")
    assert response.read(4) == b"abcd"
    with pytest.raises(ProtocolError) as caught:
        response.read(5)
    assert str(caught.value) == "the answer ended 4 bytes before its Content-Length"


def test_more_than_100_trailer_lines_or_a_malformed_one_are_refused(serve: Servers) -> None:
    trailers = b"".join(b"X-%d: v\r\n" % n for n in range(MAX_HEADERS + 1))
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n"
    assert refused(serve, head + trailers + b"\r\n") == "the answer has more than 100 trailer lines"
    assert refused(serve, head + b"X-A: a\r\n b\r\n\r\n") == "malformed trailer line b' b\\r\\n'"


# -- the server goes away or stalls ------------------------------------------------------------------------------


def test_a_server_that_closes_without_a_byte_is_remote_disconnected(serve: Servers) -> None:
    server = serve([b""])
    with pytest.raises(RemoteDisconnected, match="closed the connection without answering") as caught:
        connection(server).request("GET", "/", {})
    assert isinstance(caught.value, ConnectionResetError)  # what lib/wid/net/upstream.py sends once more on


def test_a_kept_connection_the_server_closed_is_remote_disconnected_on_the_next_request(
        serve: Servers) -> None:
    server = serve([OK])  # one answer, then the server closes without saying so
    conn = connection(server)
    assert conn.request("GET", "/", {}).read() == b"ok"
    with pytest.raises(ConnectionResetError):  # RemoteDisconnected, or the reset a write into a closed one gets
        conn.request("GET", "/", {})


@pytest.mark.parametrize("answers", [
    [OK + b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil", OK],  # one answer longer than its framing
    [(OK, 0.1, b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n"), OK],  # a notice, later
])
def test_bytes_sent_after_an_answer_are_never_read_as_the_next_requests_answer(
        serve: Servers, answers: list[Answer]) -> None:
    server = serve(answers)
    conn = connection(server)
    assert conn.request("GET", "/mine", {}).read() == b"ok"
    assert server.written.acquire(timeout=5)  # written; over loopback that is received
    with pytest.raises(RemoteDisconnected, match="no request asked for"):
        conn.request("GET", "/victim", {"Authorization": "Bearer t"})
    assert conn.sock is None and len(server.requests) == 1  # closed, and the request never sent on it


def test_upstream_sends_again_on_a_new_connection_when_the_kept_one_has_unasked_bytes(serve: Servers) -> None:
    from wid.net import upstream

    server = serve([OK + b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil", b"HTTP/1.1 200 OK\r\n"
                    b"Content-Length: 6\r\n\r\nsecond"], close=False)
    url = f"http://127.0.0.1:{server.port}"
    assert upstream.send("GET", f"{url}/a", service="digitalocean_api", headers={}).read() == b"ok"
    assert server.written.acquire(timeout=5)
    again = upstream.send("GET", f"{url}/b", service="digitalocean_api", headers={})
    assert again.read() == b"ok" and server.accepted == 2  # the first answer of a new connection, not "evil"
    again.connection.close()


def test_upstream_names_what_was_wrong_with_an_answer_it_cannot_read(serve: Servers) -> None:
    from wid.core.errors import UpstreamFailed
    from wid.net import upstream

    server = serve([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhello"])
    with pytest.raises(UpstreamFailed) as head:
        upstream.send("GET", f"{server.url}/a", service="digitalocean_api", headers={})
    assert str(head.value) == ("upstream 127.0.0.1 answered with something that is not HTTP/1.1 "
                               "(the answer has both Transfer-Encoding and Content-Length)")
    server = serve([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel"])
    response = upstream.send("GET", f"{server.url}/b", service="digitalocean_api", headers={})
    with pytest.raises(UpstreamFailed) as body:
        response.read()
    assert str(body.value) == ("upstream 127.0.0.1 answered with something that is not HTTP/1.1 "
                               "(the answer ended 2 bytes before its Content-Length)")


def test_a_server_that_never_answers_times_out(serve: Servers) -> None:
    server = serve([b""], close=False)
    with pytest.raises(TimeoutError):
        connection(server, timeout=0.3).request("GET", "/", {})


def test_a_server_that_stalls_inside_the_head_or_the_body_times_out(serve: Servers) -> None:
    with pytest.raises(TimeoutError):
        connection(serve([b"HTTP/1.1 200 OK\r\nContent-"], close=False), timeout=0.3).request("GET", "/", {})
    stalled = serve([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"], close=False)
    response = connection(stalled, timeout=0.3).request("GET", "/", {})
    with pytest.raises(TimeoutError):
        response.read()
    chunked = serve([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"], close=False)
    response = connection(chunked, timeout=0.3).request("GET", "/", {})
    with pytest.raises(TimeoutError):
        response.read()


# -- size: only what the caller asks for is read --------------------------------------------------------------


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 999999999999999999\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffff\r\n",
    b"HTTP/1.1 200 OK\r\n\r\n",
])
def test_a_body_larger_than_what_the_caller_reads_stays_unread(serve: Servers, head: bytes) -> None:
    server = serve([(head, b"0123456789" * 20)], close=False)
    response = connection(server).request("GET", "/", {})
    assert response.read(10) == b"0123456789"
    assert [len(response.read(n)) for n in (1, 7, 33, 0)] == [1, 7, 33, 0]
    assert not response.done


# -- TLS -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files() -> Iterator[TLSFiles]:
    files = TLSFiles()  # a throw-away CA and a certificate for localhost and 127.0.0.1
    yield files
    files.cleanup()


def test_https_verifies_the_certificate_against_the_host_name(serve: Servers, tls_files: TLSFiles) -> None:
    server = serve([OK, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"],
                   tls=tls_files.server_context())
    trusting = ssl.create_default_context(cafile=tls_files.ca_file)
    to_server = [(socket.AF_INET, ("127.0.0.1", server.port))]
    conn = Connection("localhost", 443, timeout=5, tls=trusting)
    conn.connect(to_server)
    assert conn.request("GET", "/", {}).read() == b"ok"
    assert conn.request("GET", "/", {}).read() == b"ok"  # kept alive over TLS
    assert server.requests[0].split(b"\r\n")[1] == b"Host: localhost"  # 443 is https's default port
    conn.close()
    wrong = Connection("wrong.example.test", server.port, timeout=5, tls=trusting)
    with pytest.raises(ssl.SSLCertVerificationError, match=r"wrong\.example\.test") as caught:
        wrong.connect(to_server)
    assert isinstance(caught.value, OSError)  # what upstream.py and safe_http.py catch
    untrusted = Connection("localhost", server.port, timeout=5, tls=ssl.create_default_context())
    with pytest.raises(ssl.SSLCertVerificationError):  # the right name, but not from a CA the client trusts
        untrusted.request("GET", "/", {})
    assert len(server.requests) == 2  # nothing was sent to a server that failed verification


def _ca_directory(folder: Path, ca_file: str | None) -> str:
    """A CA directory as update-ca-certificates leaves one: each CA linked under its subject hash."""
    folder.mkdir()
    if ca_file:
        shutil.copy(ca_file, folder / "ca.pem")
    subprocess.run(["openssl", "rehash", str(folder)], check=True, capture_output=True)
    return str(folder)


def _connect_with(context: ssl.SSLContext, port: int) -> bytes:
    conn = Connection("localhost", port, timeout=5, tls=context)
    conn.connect([(socket.AF_INET, ("127.0.0.1", port))])
    try:
        return conn.request("GET", "/", {}).read()
    finally:
        conn.close()


def test_the_system_ca_directory_is_read_only_for_the_ca_a_server_names(
        serve: Servers, tls_files: TLSFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """net/tls.py: with a hashed CA directory and no bundle of the operator's, the context holds no CA until
    a server's chain names one (the bundle file would be parsed whole, for every CGI process's https call),
    and verifies with it; a directory without the server's CA refuses it."""
    server = serve([OK, OK], tls=tls_files.server_context())
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.setenv("SSL_CERT_DIR", _ca_directory(tmp_path / "with", tls_files.ca_file))
    context = tls.client_context()
    assert context.cert_store_stats()["x509_ca"] == 0 and context.check_hostname
    assert _connect_with(context, server.port) == b"ok"
    assert context.cert_store_stats()["x509_ca"] == 1  # looked up when the chain named it
    other = TLSFiles()  # another CA altogether
    try:
        monkeypatch.setenv("SSL_CERT_DIR", _ca_directory(tmp_path / "without", other.ca_file))
        with pytest.raises(ssl.SSLCertVerificationError):
            _connect_with(tls.client_context(), server.port)
    finally:
        other.cleanup()


def test_an_operators_own_bundle_is_read_as_openssl_reads_it(
        serve: Servers, tls_files: TLSFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SSL_CERT_FILE naming a bundle other than the system's (a private CA) is honoured, beside a hashed
    directory that does not hold that CA; a directory without hashed links is no CA directory."""
    server = serve([OK, OK], tls=tls_files.server_context())
    monkeypatch.setenv("SSL_CERT_DIR", _ca_directory(tmp_path / "empty", None))
    monkeypatch.setenv("SSL_CERT_FILE", tls_files.ca_file)
    context = tls.client_context()
    assert context.cert_store_stats()["x509_ca"] == 1  # the bundle, read up front
    assert _connect_with(context, server.port) == b"ok"
    unhashed = tmp_path / "unhashed"
    unhashed.mkdir()
    shutil.copy(tls_files.ca_file, unhashed / "ca.pem")
    monkeypatch.delenv("SSL_CERT_FILE")
    monkeypatch.setenv("SSL_CERT_DIR", str(unhashed))
    with pytest.raises(ssl.SSLCertVerificationError):  # OpenSSL would not find ca.pem there: the defaults apply
        _connect_with(tls.client_context(), server.port)


def test_an_http_1_0_answer_with_transfer_encoding_is_refused(serve: Servers) -> None:
    # RFC 9112 6.1: its framing is faulty; it may have passed a hop that did not decode the chunks.
    message = refused(serve, b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
    assert message == "an HTTP/1.0 answer has Transfer-Encoding"


def test_interim_answers_without_end_are_refused(serve: Servers) -> None:
    interim = b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
    final = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    assert answer(serve, interim * MAX_INTERIM + final).read() == b"ok"
    message = refused(serve, interim * (MAX_INTERIM + 1) + final)
    assert message == f"the server sent more than {MAX_INTERIM} interim (1xx) answers"


# The grammar checks, held to the regular expressions they replaced (compiled here, in the test only).
_OCTETS = st.binary(max_size=24) | st.lists(st.sampled_from(
    [b"H", b"T", b"P", b"/", b"1", b".", b"0", b" ", b"\t", b";", b"a", b"F", b"g", b"\r", b"\n", b"\x00", b"\x7f",
     b"\x80", b"\xff", b"!", b"|", b"~", b"(", b":", b"2", b"9"]), max_size=24).map(b"".join)


@settings(max_examples=300)
@given(_OCTETS)
@example(b"HTTP/1.1 200")
@example(b"HTTP/1.0 404 Not \x80Found\t")
@example(b"HTTP/1.1 200OK")
@example(b"1a ; ext")
@example(b" 1a")
def test_the_grammar_checks_are_what_the_expressions_say(data: bytes) -> None:
    assert http1.is_token(data) == (re.fullmatch(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", data) is not None)
    assert http1.is_field_value(data) == (re.fullmatch(rb"[^\x00-\x08\x0a-\x1f\x7f]*", data) is not None)
    status = re.fullmatch(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?", data)
    assert http1.status_line(data) == (None if status is None else
                                       (int(status[1]), int(status[2]), status[3] or b""))
    size = re.fullmatch(rb"([0-9A-Fa-f]{1,15})(?:[ \t]*;.*)?", data, re.DOTALL)  # a line holds no LF anyway
    assert http1.chunk_size(data) == (None if size is None else int(size[1], 16))
    text = data.decode("latin-1")
    assert http1.is_visible(text) == (re.fullmatch(r"[!-~]+", text) is not None)

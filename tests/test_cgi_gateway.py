"""lib/wid/web/cgi.py: the WSGI environ a CGI process builds, and the CGI response it writes.

The suites that go through real Caddy + fcgiwrap exercise it on every request; these pin what they cannot
see: the ISO-8859-1 convention of PEP 3333, headers that would split the response, failures mid-answer.
"""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from wid.web import cgi
from wid.web.app import WsgiApp


class _Stdio:
    def __init__(self, buffer: io.BytesIO) -> None:
        self.buffer = buffer


@pytest.fixture
def stdout(monkeypatch: pytest.MonkeyPatch) -> io.BytesIO:
    """What cgi.serve writes. pytest sets its own sys.stdout as each test phase starts, so serve's module
    gets a `sys` of its own whose stdout is this buffer."""
    out = io.BytesIO()
    fake_sys = type("FakeSys", (), {"stdout": _Stdio(out), "stdin": _Stdio(io.BytesIO()), "stderr": sys.stderr})
    monkeypatch.setattr(cgi, "sys", fake_sys)
    for name in list(os.environ):
        if name.startswith(("HTTP_", "REDIRECT_", "SSL_")) or name in ("PATH_INFO", "HTTPS", "REQUEST_URI"):
            monkeypatch.delenv(name)
    return out


def _answering(status: str, headers: list[tuple[str, str]], body: Iterable[bytes]) -> WsgiApp:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response(status, headers)
        return body
    return app


def test_the_request_variables_carry_the_request_bytes_as_iso_8859_1(monkeypatch: pytest.MonkeyPatch,
                                                                     stdout: io.BytesIO) -> None:
    monkeypatch.setenv("PATH_INFO", "/caf\u00e9")
    monkeypatch.setenv("HTTP_X_NAME", "a\udcffb")  # the byte 0xff, not valid UTF-8, as the environment holds it
    monkeypatch.setenv("REDIRECT_HTTP_X_NAME", "\u00e9")
    monkeypatch.setenv("REQUEST_URI", "/caf\u00e9")  # not a PEP 3333 variable: left as it is
    monkeypatch.setenv("HTTPS", "on")
    env = cgi.environ()
    assert env["PATH_INFO"] == "/caf\u00c3\u00a9"
    assert env["HTTP_X_NAME"] == "a\u00ffb"
    assert env["REDIRECT_HTTP_X_NAME"] == "\u00c3\u00a9"
    assert env["REQUEST_URI"] == "/caf\u00e9"
    assert env["wsgi.url_scheme"] == "https" and env["wsgi.run_once"] is True and env["wsgi.version"] == (1, 0)
    monkeypatch.setenv("HTTPS", "off")
    assert cgi.environ()["wsgi.url_scheme"] == "http"


def test_a_whole_answer_goes_out_with_its_length(stdout: io.BytesIO) -> None:
    cgi.serve(_answering("201 Created", [("Content-Type", "application/json")], [b'{"a":1}']))
    assert stdout.getvalue() == (b"Status: 201 Created\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n"
                                 b'{"a":1}')


def test_an_answer_that_states_its_length_keeps_it(stdout: io.BytesIO) -> None:
    cgi.serve(_answering("200 OK", [("Content-Length", "42")], [b""]))  # a HEAD answer
    assert stdout.getvalue() == b"Status: 200 OK\r\nContent-Length: 42\r\n\r\n"


def test_a_streamed_answer_goes_out_chunk_by_chunk_without_a_length(stdout: io.BytesIO) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"one,"
        assert stdout.getvalue().endswith(b"\r\n\r\none,")  # written before the next chunk is made
        yield b"two"
    cgi.serve(_answering("200 OK", [("Content-Type", "text/plain")], chunks()))
    assert stdout.getvalue() == b"Status: 200 OK\r\nContent-Type: text/plain\r\n\r\none,two"


def test_an_empty_stream_still_sends_the_head(stdout: io.BytesIO) -> None:
    cgi.serve(_answering("204 No Content", [], iter(())))
    assert stdout.getvalue() == b"Status: 204 No Content\r\n\r\n"


@pytest.mark.parametrize("header", [("Location", "/a\r\nSet-Cookie: session=forged"), ("X-A\nSet-Cookie", "x"),
                                    ("Location", "/a\rb")])
def test_a_header_with_a_line_break_is_never_sent(stdout: io.BytesIO, capsys: pytest.CaptureFixture[str],
                                                  header: tuple[str, str]) -> None:
    cgi.serve(_answering("303 See Other", [header], [b""]))
    head, _, body = stdout.getvalue().partition(b"\r\n\r\n")
    assert head.startswith(b"Status: 500 Internal Server Error\r\n")
    assert b"Set-Cookie" not in stdout.getvalue() and b"/a" not in stdout.getvalue()
    assert json.loads(body)["message"] == "internal error; see the server log"
    assert f"Content-Length: {len(body)}".encode() in head
    logged = json.loads(capsys.readouterr().err.splitlines()[-1])
    assert logged["event"] == "cgi_answer_failed" and logged["answer"] == "replaced by a 500"
    assert "forged" not in logged["detail"]


def test_an_application_that_fails_before_answering_gets_a_500(stdout: io.BytesIO,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        raise RuntimeError("boom")
    cgi.serve(app)
    assert stdout.getvalue().startswith(b"Status: 500 Internal Server Error\r\n")
    assert json.loads(capsys.readouterr().err.splitlines()[-1])["error"] == "RuntimeError"


def test_a_stream_that_fails_midway_is_cut_short_and_logged(stdout: io.BytesIO,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"first"
        raise OSError("upstream went away")
    cgi.serve(_answering("200 OK", [], chunks()))
    assert stdout.getvalue() == b"Status: 200 OK\r\n\r\nfirst"  # no second head glued to a half-sent body
    logged = json.loads(capsys.readouterr().err.splitlines()[-1])
    assert logged["event"] == "cgi_answer_failed" and logged["answer"] == "cut short"


def test_a_client_that_hung_up_ends_the_answer_quietly(stdout: io.BytesIO, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    class HungUp(io.BytesIO):
        def write(self, data: Any) -> int:
            raise BrokenPipeError(32, "Broken pipe")
    monkeypatch.setattr(cgi.sys, "stdout", _Stdio(HungUp()))
    cgi.serve(_answering("200 OK", [], [b"x"]))
    assert capsys.readouterr().err == ""


def test_a_streamed_answer_is_closed_however_it_ends(stdout: io.BytesIO, capsys: pytest.CaptureFixture[str]) -> None:
    """PEP 3333: the server calls close() on what the application returned, so a stream lets go of what it
    holds (an upstream connection) when it is read to its end, when it fails midway, and when its head
    cannot be sent at all."""
    closed: list[bool] = []

    def chunks(fail: bool) -> Iterator[bytes]:
        try:
            yield b"a"
            if fail:
                raise OSError("upstream went away")
            yield b"b"
        finally:
            closed.append(True)

    cgi.serve(_answering("200 OK", [], chunks(fail=False)))
    cgi.serve(_answering("200 OK", [], chunks(fail=True)))
    unsent = chunks(fail=False)
    next(unsent)  # started, so that closing it runs its clean-up
    cgi.serve(_answering("200 OK", [("Location", "/a\nb")], unsent))  # refused before any chunk is written
    assert closed == [True, True, True]

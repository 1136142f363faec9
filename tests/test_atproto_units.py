"""The ATProto upstream's parts that need no peer: identifiers, SSRF rules, DPoP/JWS, the client's
keys and metadata, the repo guard, DNS TXT parsing, and the event stream decoding of `wid atproto tail`."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from wid.config import ConfigError
from wid.core import dpop, jose, tokens
from wid.core.errors import WidError
from wid.store import signing
from wid.upstreams import registry
from wid.upstreams.atproto import client, dns, dpop_http, identity
from wid.upstreams.atproto import oauth as atproto_oauth
from wid.upstreams.atproto.xrpc import check_repo, nsid_of
from wid.web.errors import status_of

DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
OTHER = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"


# -- contexts and identifiers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("actx", [DID, "did:web:example.com", "did:web:pds.example.co.uk"])
def test_did_contexts_are_accepted_everywhere_a_context_is(actx: str) -> None:
    registry.validate_context("ATProto", actx)
    assert tokens.parse_audience(f"api://ATProto?actx={actx}").actx == actx


@pytest.mark.parametrize("actx", [
    "did:plc:ewvi7nxzyoun6zhxrhs64oi", "did:plc:EWVI7NXZYOUN6ZHXRHS64OIZ", "did:plc:ewvi7nxzyoun6zhxrhs64oi1",
    "did:web:localhost", "did:web:example.com:user:alice", "did:web:example.com%3A8080", "did:key:z6Mk",
    "f81d4fae-7dec-11d0-a765-00a0c91e6bf6", "alice.bsky.social", "",
])
def test_other_contexts_are_refused(actx: str) -> None:
    with pytest.raises(WidError) as err:
        registry.validate_context("ATProto", actx)
    assert status_of(err.value) == 400 and "DIDs" in err.value.message


@pytest.mark.parametrize("text,expected", [
    ("alice.bsky.social", ("handle", "alice.bsky.social")),
    ("@Alice.Bsky.Social", ("handle", "alice.bsky.social")),
    ("at://alice.test", ("handle", "alice.test")),
    (f" {DID} ", ("did", DID)),
    (f"at://{DID}", ("did", DID)),
])
def test_identifiers(text: str, expected: tuple[str, str]) -> None:
    assert identity.parse_identifier(text) == expected


@pytest.mark.parametrize("text", ["alice", "alice..test", "-a.test", "a.1com", "alice.local", "x.internal",
                                  "did:plc:short", "did:web:localhost", "a b.test", "", "alice.test/path"])
def test_bad_identifiers(text: str) -> None:
    with pytest.raises(WidError) as err:
        identity.parse_identifier(text)
    assert status_of(err.value) == 400 and err.value.code == "bad_identifier"


# -- SSRF rules ----------------------------------------------------------------------------------------------------


@pytest.fixture
def insecure(app_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from wid import config

    monkeypatch.setenv("WID_ALLOW_INSECURE_ISSUERS", "1")
    config.settings.cache_clear()


@pytest.mark.parametrize("url,insecure_allowed,ok", [
    ("https://pds.example.com", False, True),
    ("http://pds.example.com", True, False),
    ("http://localhost:2583", False, False),
    ("http://localhost:2583", True, True),
    ("http://127.0.0.1:2583", True, True),
    ("http://10.0.0.1", True, False),
    ("https://user:pw@pds.example.com", False, False),
    ("ftp://pds.example.com", True, False),
    ("https://pds.example.com/#frag", False, False),
])
def test_which_urls_may_be_fetched(app_env: Path, url: str, insecure_allowed: bool, ok: bool) -> None:
    if ok:
        identity.check_url(url, "test", allow_insecure=insecure_allowed)
    else:
        with pytest.raises(WidError) as err:
            identity.check_url(url, "test", allow_insecure=insecure_allowed)
        assert status_of(err.value) == 502


@pytest.mark.parametrize("url", ["https://10.1.2.3/x", "https://169.254.169.254/latest/meta-data",
                                 "https://[::1]/x", "https://[::ffff:192.168.1.1]/x", "https://localhost:1/x",
                                 "https://0.0.0.0/x", "https://100.64.0.1/x"])
def test_private_and_loopback_addresses_are_never_contacted(app_env: Path, url: str) -> None:
    with pytest.raises(WidError) as err:
        identity.request("GET", url, service="atproto_identity", what="test", allow_insecure=False, timeout=2)
    assert err.value.code == "address_refused", err.value.message


@pytest.fixture
def local_server() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "http://10.0.0.1/")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = b"x" * (4096 if self.path == "/big" else 10)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://localhost:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_loopback_only_when_insecure_is_allowed(insecure: None, local_server: str) -> None:
    assert identity.request("GET", f"{local_server}/", service="atproto_identity", what="test").body == b"x" * 10
    with pytest.raises(WidError) as err:
        identity.request("GET", f"{local_server}/", service="atproto_identity", what="test", allow_insecure=False)
    assert err.value.code == "insecure_url_refused"
    with pytest.raises(WidError) as err:
        identity.request("GET", f"{local_server}/big", service="atproto_identity", what="test", limit=1000)
    assert err.value.code == "response_too_large"
    redirect = identity.request("GET", f"{local_server}/redirect", service="atproto_identity", what="test")
    assert redirect.status == 302  # returned, never followed


# -- DPoP, client assertions, PKCE ---------------------------------------------------------------------------------


def _decode(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    head, body, signature = token.split(".")
    header = json.loads(jose.b64url_decode(head))
    claims = json.loads(jose.b64url_decode(body))
    jws = jose.Jws(header, claims, f"{head}.{body}".encode(), jose.b64url_decode(signature))
    jose.verify(jws, header.get("jwk") or {})
    return header, claims


def test_dpop_proof() -> None:
    key = dpop.generate_key()
    proof = dpop.proof(key, "post", "http://localhost:2583/xrpc/com.atproto.repo.createRecord?x=1",
                       nonce="n-1", access_token="tok")
    header, claims = _decode(proof)
    assert header["typ"] == "dpop+jwt" and header["alg"] == "ES256" and "d" not in header["jwk"]
    assert claims["htm"] == "POST"
    assert claims["htu"] == "http://localhost:2583/xrpc/com.atproto.repo.createRecord"  # as written, no query
    assert claims["nonce"] == "n-1"
    assert claims["ath"] == base64.urlsafe_b64encode(hashlib.sha256(b"tok").digest()).rstrip(b"=").decode()
    again = _decode(dpop.proof(key, "GET", "https://pds.example.com/x"))[1]
    assert again["jti"] != claims["jti"] and "nonce" not in again and "ath" not in again
    assert dpop.key_from_pem(dpop.key_to_pem(key)).private_numbers() == key.private_numbers()


def _pem(label: str, der: bytes) -> str:
    return f"-----BEGIN {label}-----\n{base64.encodebytes(der).decode()}-----END {label}-----\n"


def test_a_stored_dpop_key_reads_back_without_cryptographys_serialization() -> None:
    # Every ATProto forward reads its session's DPoP key; `serialization` would import dataclasses.
    key = dpop.generate_key()
    pem = dpop.key_to_pem(key)
    code = ("import sys\nfrom wid.core import dpop\n"
            "values = {dpop.key_from_pem(sys.argv[1]).private_numbers().private_value,"
            " dpop.key_from_pem(sys.argv[1].encode()).private_numbers().private_value}\n"
            "print(*values, 'cryptography.hazmat.primitives.serialization' in sys.modules)")
    out = subprocess.run([sys.executable, "-I", "-c", code, pem], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(key.private_numbers().private_value), "False"]


def test_a_dpop_key_not_as_key_to_pem_writes_it_is_read_or_refused_as_before() -> None:
    key, other = dpop.generate_key(), dpop.generate_key()
    der = base64.b64decode("".join(dpop.key_to_pem(key).strip().splitlines()[1:-1]))
    other_der = base64.b64decode("".join(dpop.key_to_pem(other).strip().splitlines()[1:-1]))
    # Someone else's public point after our scalar: refused, as cryptography's loader refuses it.
    with pytest.raises(ValueError):
        dpop.key_from_pem(_pem("PRIVATE KEY", der[:-65] + other_der[-65:]))
    # The same key in SEC1 form, and in PKCS#8 on one line (cryptography's loader reads both): the same key.
    sec1 = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption()).decode()
    one_line = f"-----BEGIN PRIVATE KEY-----{base64.b64encode(der).decode()}-----END PRIVATE KEY-----"
    for pem in (sec1, one_line):
        assert dpop.key_from_pem(pem).private_numbers() == key.private_numbers()
    # Another curve, another key type, a truncated key, not base64: refused.
    p384 = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises(ValueError, match="not a P-256 private key"):
        dpop.key_from_pem(p384)
    for bad in (_pem("PRIVATE KEY", der[:-1]), _pem("PRIVATE KEY", der + b"\0"),
                "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n"):
        with pytest.raises(ValueError):
            dpop.key_from_pem(bad)


def test_client_assertion_and_pkce() -> None:
    key = dpop.generate_key()
    token = dpop.client_assertion(key, "kid-1", "https://wid.example.com/m.json", "https://as.example.com")
    head, body, signature = token.split(".")
    header, claims = json.loads(jose.b64url_decode(head)), json.loads(jose.b64url_decode(body))
    jose.verify(jose.Jws(header, claims, f"{head}.{body}".encode(), jose.b64url_decode(signature)),
                dpop.public_jwk(key))
    assert header == {"alg": "ES256", "typ": "JWT", "kid": "kid-1"}
    assert claims["iss"] == claims["sub"] == "https://wid.example.com/m.json"
    assert claims["aud"] == "https://as.example.com" and claims["exp"] - claims["iat"] == 60
    verifier, challenge = dpop.pkce_pair()
    assert 43 <= len(verifier) <= 128
    assert challenge == base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def test_use_dpop_nonce_answers() -> None:
    def result(status: int, body: bytes = b"", **headers: str) -> identity.HttpResult:
        return identity.HttpResult(status, {k.lower().replace("_", "-"): v for k, v in headers.items()}, body, "u")

    assert dpop_http.wants_nonce(result(400, b'{"error":"use_dpop_nonce"}'))
    assert dpop_http.wants_nonce(result(401, www_authenticate='DPoP error="use_dpop_nonce"'))
    assert not dpop_http.wants_nonce(result(401, www_authenticate='DPoP error="invalid_token"'))
    assert not dpop_http.wants_nonce(result(400, b'{"error":"invalid_grant"}'))
    assert not dpop_http.wants_nonce(result(400, b"not json"))


# -- the client's keys and metadata ----------------------------------------------------------------------------------


def test_client_metadata_keys_and_rotation(app_env: Path) -> None:
    meta = client.client_metadata()
    assert meta["client_id"] == "https://wid.example.test/oauth/atproto/client-metadata.json"
    assert meta["jwks_uri"] == "https://wid.example.test/oauth/atproto/jwks.json"
    assert meta["redirect_uris"] == ["https://wid.example.test/auth/atproto/callback"]
    first = client.jwks()["keys"]
    assert len(first) == 1 and first[0]["kid"] == client.client_key().kid
    old, new, _ = client.rotate_client_key()
    assert old == first[0]["kid"] and new != old
    published = [k["kid"] for k in client.jwks()["keys"]]
    assert published == [old, new]  # the next key is published before it serves a sign-in
    assert client.client_key().kid == old  # staged: tests/test_client_key_rotation.py follows it to activation
    assert client.client_key(new).kid == new
    with pytest.raises(WidError):
        client.client_key("no-such-kid")


def test_sign_in_needs_a_public_https_endpoint(app_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from wid import config

    monkeypatch.setenv("THIS_ENDPOINT", "http://localhost:8080")
    config.settings.cache_clear()
    with pytest.raises(WidError) as err:
        atproto_oauth.start("alice.bsky.social")
    assert status_of(err.value) == 503 and "THIS_ENDPOINT" in err.value.message


@pytest.mark.parametrize("name,value", [("ATPROTO_TIMEOUT", "soon"), ("ATPROTO_OAUTH_SCOPE", "transition:generic"),
                                        ("ATPROTO_PLC_URL", "plc.directory"), ("ATPROTO_RBAC_TOKEN_TTL", "10")])
def test_bad_settings_are_named(app_env: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    from wid import config

    monkeypatch.setenv(name, value)
    config.settings.cache_clear()
    with pytest.raises(ConfigError, match=name):
        config.settings()


def test_rbac_token_lifetime_is_the_operators(app_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from wid import config

    monkeypatch.setenv("ATPROTO_RBAC_TOKEN_TTL", "600")
    config.settings.cache_clear()
    token, expires_at = atproto_oauth.rbac_token(DID, "alice.test")
    claims = signing.verify(token, kinds={tokens.RBAC}, audience=f"api://ATProto?actx={DID}")
    assert claims["exp"] - claims["iat"] == 600 == expires_at - claims["iat"]
    assert claims["did_plc"] == claims["did"] == DID and claims["handle"] == "alice.test"
    assert claims["sub"] == f"actx:{DID}:admin"


# -- XRPC paths and the repo guard -----------------------------------------------------------------------------------


def test_nsids() -> None:
    assert nsid_of("/xrpc/com.atproto.repo.createRecord") == "com.atproto.repo.createRecord"
    assert nsid_of("/xrpc/app.bsky.feed.getTimeline") == "app.bsky.feed.getTimeline"
    for path in ("/xrpc/", "/xrpc/createRecord", "/xrpc/com.atproto.repo.createRecord/x", "/xrpc/com..x.y",
                 "/v2/droplets", "/xrpc/com.atproto.repo.1create"):
        with pytest.raises(WidError) as err:
            nsid_of(path)
        assert status_of(err.value) == 404


def test_repo_guard(app_env: Path) -> None:
    create = "com.atproto.repo.createRecord"
    check_repo(DID, "POST", create, "application/json", json.dumps({"repo": DID}).encode())
    check_repo(DID, "GET", "com.atproto.repo.getRecord", None, b"")  # queries: policy's business
    check_repo(DID, "POST", "com.atproto.repo.uploadBlob", "image/png", b"\x89PNG")  # the session's own account
    check_repo(DID, "POST", "app.bsky.actor.putPreferences", "application/json", b'{"repo": "x"}')
    for nsid in ("com.atproto.repo.createRecord", "com.atproto.repo.putRecord", "com.atproto.repo.deleteRecord",
                 "com.atproto.repo.applyWrites"):
        with pytest.raises(WidError) as err:
            check_repo(DID, "POST", nsid, "application/json; charset=utf-8", json.dumps({"repo": OTHER}).encode())
        assert status_of(err.value) == 403 and OTHER in err.value.message
    cases: list[tuple[str | None, bytes, int]] = [
        ("application/json", b"{}", 400),
        ("application/json", b"", 400),
        ("text/plain", b'{"repo": "x"}', 415),
        (None, b'{"repo": "x"}', 415),
        ("application/json", b'{"repo": "' + DID.encode() + b'", "repo": "x"}', 400),
        ("application/json", b'{"repo": "alice.test"}', 403),
    ]
    for content_type, body, status in cases:
        with pytest.raises(WidError) as err:
            check_repo(DID, "POST", create, content_type, body)
        assert status_of(err.value) == status, (content_type, body)


# -- handle resolution by DNS ------------------------------------------------------------------------------------------


def _txt_answer(query: bytes, texts: list[bytes], rcode: int = 0) -> bytes:
    ident = query[:2]
    question = query[12:]
    header = ident + struct.pack(">HHHHH", 0x8180 | rcode, 1, len(texts), 0, 0)
    answers = b""
    for text in texts:
        rdata = bytes([len(text)]) + text
        answers += b"\xc0\x0c" + struct.pack(">HHIH", 16, 1, 300, len(rdata)) + rdata
    return header + question + answers


@pytest.fixture
def dns_server() -> Iterator[tuple[int, dict[str, tuple[list[bytes], int]]]]:
    zone: dict[str, tuple[list[bytes], int]] = {}
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                query, peer = sock.recvfrom(512)
            except TimeoutError:
                continue
            labels, pos = [], 12
            while query[pos]:
                labels.append(query[pos + 1:pos + 1 + query[pos]].decode())
                pos += 1 + query[pos]
            texts, rcode = zone.get(".".join(labels), ([], 3))
            sock.sendto(_txt_answer(query, texts, rcode), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield sock.getsockname()[1], zone
    stop.set()
    thread.join()
    sock.close()


def test_dns_txt(dns_server: tuple[int, dict[str, tuple[list[bytes], int]]]) -> None:
    port, zone = dns_server
    zone["_atproto.alice.example.com"] = ([b"did=" + DID.encode(), b"v=spf1 -all"], 0)
    zone["_atproto.empty.example.com"] = ([], 0)
    values = dns.dns_txt("_atproto.alice.example.com", servers=["127.0.0.1"], port=port)
    assert identity._did_from_txt(values) == DID
    with pytest.raises(ValueError, match="NXDOMAIN"):
        dns.dns_txt("_atproto.nobody.example.com", servers=["127.0.0.1"], port=port)
    with pytest.raises(ValueError, match="no TXT"):
        dns.dns_txt("_atproto.empty.example.com", servers=["127.0.0.1"], port=port)
    with pytest.raises(ValueError):
        identity._did_from_txt([f"did={DID}", f"did={OTHER}"])


# -- the event stream: DAG-CBOR frames with a CAR of blocks ----------------------------------------------------------


def _varint(n: int) -> bytes:
    out = b""
    while True:
        byte = n & 0x7F
        n >>= 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def test_tail_decodes_commit_frames() -> None:
    import cbor2

    from wid.upstreams.atproto import tail as atproto_tail

    record = {"$type": "app.bsky.feed.post", "text": "Hello World", "createdAt": "2026-01-01T00:00:00.000Z",
              "blob": b"\x01\x02"}
    data = cbor2.dumps(record, canonical=True)
    cid = b"\x01\x71\x12\x20" + hashlib.sha256(data).digest()  # CIDv1, dag-cbor, sha2-256
    car_header = cbor2.dumps({"roots": [cbor2.CBORTag(42, b"\x00" + cid)], "version": 1})
    car = _varint(len(car_header)) + car_header + _varint(len(cid) + len(data)) + cid + data
    body = {"repo": DID, "seq": 7, "rev": "3k2", "time": "2026-01-01T00:00:01.000Z", "blocks": car,
            "ops": [{"action": "create", "path": "app.bsky.feed.post/3kabc", "cid": cbor2.CBORTag(42, b"\x00" + cid)},
                    {"action": "delete", "path": "app.bsky.feed.like/3kdef", "cid": None}]}
    frame = cbor2.dumps({"op": 1, "t": "#commit"}) + cbor2.dumps(body)
    header, decoded = atproto_tail.decode_frame(frame)
    events = list(atproto_tail.records(header, decoded, DID))
    assert events[0]["cid"].startswith("bafyrei")
    assert events[0] == {"did": DID, "seq": 7, "time": "2026-01-01T00:00:01.000Z", "rev": "3k2", "action": "create",
                         "collection": "app.bsky.feed.post", "rkey": "3kabc",
                         "uri": f"at://{DID}/app.bsky.feed.post/3kabc", "cid": events[0]["cid"],
                         "record": {**record, "blob": {"$bytes": "AQI"}}}
    assert events[1]["action"] == "delete" and events[1]["record"] is None and events[1]["cid"] is None
    assert list(atproto_tail.records(header, decoded, OTHER)) == []  # another DID's commit
    assert [e["collection"] for e in atproto_tail.records(header, decoded, DID, {"app.bsky.feed.like"})] == \
        ["app.bsky.feed.like"]
    assert list(atproto_tail.records({"op": 1, "t": "#identity"}, {"did": DID}, DID)) == []
    assert atproto_tail.stream_url("https://pds.example.com") == \
        "wss://pds.example.com/xrpc/com.atproto.sync.subscribeRepos"
    assert atproto_tail.stream_url("http://localhost:2583", cursor=5) == \
        "ws://localhost:2583/xrpc/com.atproto.sync.subscribeRepos?cursor=5"


# -- the `wid atproto` commands ----------------------------------------------------------------------------------------


def test_wid_atproto_commands(app_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from wid.store import credentials
    from wid.upstreams.atproto import tail as atproto_tail

    parser = argparse.ArgumentParser(prog="wid")
    atproto_tail.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["atproto", "tail", DID, "--limit", "2", "--collection", "app.bsky.feed.post"])
    assert (args.did, args.limit, args.collection, args.func) == (DID, 2, ["app.bsky.feed.post"],
                                                                   atproto_tail.cmd_tail)
    credentials.store("ATProto", DID, {"did": DID, "handle": "alice.test", "pds": "https://pds.example.com",
                                       "access_token": "secret-access", "refresh_token": "secret-refresh"})
    args = parser.parse_args(["atproto", "sessions"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    row = json.loads(out)
    assert row["did"] == DID and row["status"] == "active" and row["handle"] == "alice.test"
    assert "secret" not in out
    listing = parser.parse_args(["atproto", "client-keys", "list"])
    assert listing.func(listing) == 0  # listing creates nothing
    empty = capsys.readouterr()
    assert empty.out == "" and "none yet" in empty.err
    rotate = parser.parse_args(["atproto", "client-keys", "rotate"])
    assert rotate.func(rotate) == 0 and "serves new sign-ins from now on (the first key)" in capsys.readouterr().out
    assert listing.func(listing) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "active"
    assert rotate.func(rotate) == 0
    assert "is published now and serves new sign-ins from" in capsys.readouterr().out
    assert listing.func(listing) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["state"] for r in rows] == ["active", "next"] and rows[1]["activate_at"] > rows[0]["created_at"]
    bad = parser.parse_args(["atproto", "tail", "did:example:nope"])
    assert bad.func(bad) == 1
    assert "not a did:plc or did:web" in capsys.readouterr().err

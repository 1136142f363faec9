"""The ATProto test peer works: a real PLC directory and PDS, and a full OAuth round trip.

The confidential client below (PAR, PKCE S256, DPoP ES256, private_key_jwt) exists only to prove
that the fixture in tests/atproto is usable; the proxy's own client lives in lib/.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from tests.atproto.fixture import (
    AtprotoPeer,
    approve_authorization,
    build_authorize_url,
    loopback_url,
    pds_endpoint,
    redirect_params,
    reject_authorization,
)

CLIENT_ORIGIN = "https://client.fixture.internal"
CLIENT_ID = f"{CLIENT_ORIGIN}/oauth/client-metadata.json"
REDIRECT_URI = f"{CLIENT_ORIGIN}/oauth/callback"
JWKS_URI = f"{CLIENT_ORIGIN}/oauth/jwks.json"
SCOPE = "atproto transition:generic"
HANDLE = "alice.test"
PASSWORD = "alice-password-1"


# -- JOSE, by hand ------------------------------------------------------------------------------


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64u(numbers.x.to_bytes(32, "big")),
        "y": b64u(numbers.y.to_bytes(32, "big")),
    }


def es256_jws(key: ec.EllipticCurvePrivateKey, header: dict[str, Any], payload: dict[str, Any]) -> str:
    signing_input = ".".join(b64u(json.dumps(part, separators=(",", ":")).encode()) for part in (header, payload))
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{b64u(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def jwt_payload(token: str) -> dict[str, Any]:
    body = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


# -- the client's public face: metadata, JWKS, callback on loopback -----------------------------


class ClientSite:
    """ThreadingHTTPServer on 127.0.0.1 standing for https://client.fixture.internal."""

    def __init__(self, signing_key: ec.EllipticCurvePrivateKey, kid: str) -> None:
        self.metadata = {
            "client_id": CLIENT_ID,
            "client_name": "wid fixture test client",
            "client_uri": CLIENT_ORIGIN,
            "application_type": "web",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "redirect_uris": [REDIRECT_URI],
            "scope": SCOPE,
            "token_endpoint_auth_method": "private_key_jwt",
            "token_endpoint_auth_signing_alg": "ES256",
            "jwks_uri": JWKS_URI,
            "dpop_bound_access_tokens": True,
        }
        self.jwks = {"keys": [{**public_jwk(signing_key), "kid": kid, "use": "sig", "alg": "ES256"}]}
        self.requests: list[tuple[str, dict[str, str]]] = []  # (path, headers)
        self.callbacks: list[dict[str, str]] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                site.requests.append((path, {k.lower(): v for k, v in self.headers.items()}))
                if path == "/oauth/client-metadata.json":
                    self._json(site.metadata)
                elif path == "/oauth/jwks.json":
                    self._json(site.jwks)
                elif path == "/oauth/callback":
                    query = parse_qs(urlsplit(self.path).query)
                    site.callbacks.append({k: v[0] for k, v in query.items()})
                    self._json({"ok": True})
                else:
                    self.send_error(404)

            def _json(self, body: object) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.loopback = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- a minimal confidential client --------------------------------------------------------------


class MiniClient:
    def __init__(self, signing_key: ec.EllipticCurvePrivateKey, kid: str) -> None:
        self.signing_key = signing_key
        self.kid = kid
        self.dpop_key = ec.generate_private_key(ec.SECP256R1())
        self.nonces: dict[str, str] = {}  # origin -> last DPoP-Nonce
        self.http = requests.Session()
        self.http.trust_env = False
        self.nonce_retries: list[tuple[str, int]] = []

    def client_assertion(self, issuer: str) -> str:
        now = int(time.time())
        return es256_jws(
            self.signing_key,
            {"alg": "ES256", "kid": self.kid, "typ": "JWT"},
            {
                "iss": CLIENT_ID,
                "sub": CLIENT_ID,
                "aud": issuer,
                "jti": secrets.token_urlsafe(16),
                "iat": now,
                "exp": now + 60,
            },
        )

    def client_auth(self, issuer: str) -> dict[str, str]:
        return {
            "client_id": CLIENT_ID,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": self.client_assertion(issuer),
        }

    def dpop_proof(self, method: str, url: str, access_token: str | None = None) -> str:
        parts = urlsplit(url)
        payload: dict[str, Any] = {
            "jti": secrets.token_urlsafe(16),
            "htm": method,
            "htu": f"{parts.scheme}://{parts.netloc}{parts.path}",
            "iat": int(time.time()),
        }
        nonce = self.nonces.get(f"{parts.scheme}://{parts.netloc}")
        if nonce:
            payload["nonce"] = nonce
        if access_token:
            payload["ath"] = b64u(hashlib.sha256(access_token.encode()).digest())
        return es256_jws(self.dpop_key, {"typ": "dpop+jwt", "alg": "ES256", "jwk": public_jwk(self.dpop_key)}, payload)

    def dpop_request(
        self, method: str, url: str, *, access_token: str | None = None, make_body: Any = None, **kw: Any
    ) -> requests.Response:
        """Send with a DPoP proof; on use_dpop_nonce (400 from the AS, 401 from the PDS) retry once."""
        origin = "{0.scheme}://{0.netloc}".format(urlsplit(url))
        for attempt in range(2):
            headers = dict(kw.pop("headers", {}) or {})
            headers["DPoP"] = self.dpop_proof(method, url, access_token)
            if access_token:
                headers["Authorization"] = f"DPoP {access_token}"
            data = make_body() if make_body else None  # fresh client assertion on each try
            resp = self.http.request(method, url, headers=headers, data=data, timeout=15, **kw)
            if resp.headers.get("DPoP-Nonce"):
                self.nonces[origin] = resp.headers["DPoP-Nonce"]
            if attempt == 0 and self._wants_nonce(resp):
                self.nonce_retries.append((urlsplit(url).path, resp.status_code))
                kw["headers"] = {k: v for k, v in headers.items() if k not in ("DPoP", "Authorization")}
                continue
            return resp
        raise AssertionError("unreachable")

    @staticmethod
    def _wants_nonce(resp: requests.Response) -> bool:
        if resp.status_code == 401 and "use_dpop_nonce" in resp.headers.get("WWW-Authenticate", ""):
            return True
        if resp.status_code == 400:
            try:
                return resp.json().get("error") == "use_dpop_nonce"
            except ValueError:
                return False
        return False

    def par(self, as_meta: dict[str, Any], state: str, verifier: str, login_hint: str) -> dict[str, Any]:
        challenge = b64u(hashlib.sha256(verifier.encode()).digest())
        resp = self.dpop_request(
            "POST",
            as_meta["pushed_authorization_request_endpoint"],
            make_body=lambda: {
                "response_type": "code",
                "redirect_uri": REDIRECT_URI,
                "scope": SCOPE,
                "state": state,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
                "login_hint": login_hint,
                **self.client_auth(as_meta["issuer"]),
            },
        )
        assert resp.status_code == 201, resp.text
        return resp.json()

    def token(self, as_meta: dict[str, Any], form: dict[str, str]) -> dict[str, Any]:
        resp = self.dpop_request(
            "POST", as_meta["token_endpoint"], make_body=lambda: {**form, **self.client_auth(as_meta["issuer"])}
        )
        assert resp.status_code == 200, resp.text
        return resp.json()


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world() -> Iterator[dict[str, Any]]:
    signing_key = ec.generate_private_key(ec.SECP256R1())
    kid = "fixture-key-1"
    site = ClientSite(signing_key, kid)
    site.start()
    peer = AtprotoPeer(client_origin=CLIENT_ORIGIN, client_loopback=site.loopback)
    try:
        peer.start()
        did, handle = peer.create_account(HANDLE, PASSWORD)
        yield {"peer": peer, "site": site, "did": did, "handle": handle, "signing_key": signing_key, "kid": kid}
    finally:
        code = peer.stop()
        site.stop()
    assert code == 0, f"peer did not stop cleanly ({code}):\n{peer.log_tail()}"


def discover(did: str, peer: AtprotoPeer) -> tuple[str, dict[str, Any], dict[str, Any]]:
    doc = peer.resolve_did(did)
    pds = pds_endpoint(doc)
    prm = requests.get(f"{pds}/.well-known/oauth-protected-resource", timeout=10).json()
    issuer = prm["authorization_servers"][0]
    as_meta = requests.get(f"{issuer}/.well-known/oauth-authorization-server", timeout=10).json()
    return pds, prm, as_meta


# -- tests --------------------------------------------------------------------------------------


def test_peer_is_ready(world: dict[str, Any]) -> None:
    peer: AtprotoPeer = world["peer"]
    assert peer.info["versions"] == {"node": "22.23.3", "pds": "0.5.35", "plc_server": "0.0.1"}
    assert peer.plc_url.startswith("http://localhost:")
    assert peer.pds_url.startswith("http://localhost:")
    assert peer.admin_password
    health = requests.get(f"{peer.pds_url}/xrpc/_health", timeout=10)
    assert health.status_code == 200 and "version" in health.json()
    assert peer.routes() == {CLIENT_ORIGIN: world["site"].loopback}
    assert peer.route("https://other.fixture.internal", "http://127.0.0.1:9") == {
        CLIENT_ORIGIN: world["site"].loopback,
        "https://other.fixture.internal": "http://127.0.0.1:9",
    }
    assert peer.unroute("https://other.fixture.internal") == {CLIENT_ORIGIN: world["site"].loopback}


def test_did_resolves_through_plc_to_the_pds(world: dict[str, Any]) -> None:
    peer: AtprotoPeer = world["peer"]
    did = world["did"]
    assert did.startswith("did:plc:")
    assert world["handle"] == HANDLE
    doc = peer.resolve_did(did)
    assert doc["id"] == did
    assert f"at://{HANDLE}" in doc["alsoKnownAs"]
    assert pds_endpoint(doc) == peer.pds_url
    assert any(m["id"].endswith("#atproto") for m in doc["verificationMethod"])
    assert peer.resolve_handle(HANDLE) == did
    with pytest.raises(Exception, match="HTTP 4"):
        peer.create_account(HANDLE, PASSWORD)  # taken


def test_oauth_metadata(world: dict[str, Any]) -> None:
    peer: AtprotoPeer = world["peer"]
    pds, prm, as_meta = discover(world["did"], peer)
    assert prm["resource"] == pds
    assert prm["authorization_servers"] == [pds]  # the PDS is its own authorization server
    assert as_meta["issuer"] == pds
    assert as_meta["require_pushed_authorization_requests"] is True
    assert as_meta["pushed_authorization_request_endpoint"] == f"{pds}/oauth/par"
    assert as_meta["authorization_endpoint"] == f"{pds}/oauth/authorize"
    assert as_meta["token_endpoint"] == f"{pds}/oauth/token"
    assert {"none", "private_key_jwt"} <= set(as_meta["token_endpoint_auth_methods_supported"])
    assert "ES256" in as_meta["token_endpoint_auth_signing_alg_values_supported"]
    assert "ES256" in as_meta["dpop_signing_alg_values_supported"]
    assert as_meta["code_challenge_methods_supported"] == ["S256"]
    assert as_meta["client_id_metadata_document_supported"] is True
    assert as_meta["authorization_response_iss_parameter_supported"] is True
    assert {"atproto", "transition:generic"} <= set(as_meta["scopes_supported"])


def test_oauth_round_trip_and_dpop_bound_create_record(world: dict[str, Any]) -> None:
    peer: AtprotoPeer = world["peer"]
    site: ClientSite = world["site"]
    did = world["did"]
    pds, _prm, as_meta = discover(did, peer)
    issuer = as_meta["issuer"]
    client = MiniClient(world["signing_key"], world["kid"])

    state, verifier = secrets.token_urlsafe(16), secrets.token_urlsafe(48)
    par = client.par(as_meta, state, verifier, login_hint=HANDLE)
    assert par["request_uri"].startswith("urn:ietf:params:oauth:request_uri:")
    # The PDS fetched our metadata and JWKS through the peer's fetch routing.
    fetched = {path: headers for path, headers in site.requests}
    assert fetched["/oauth/client-metadata.json"]["x-forwarded-host"] == "client.fixture.internal"
    assert fetched["/oauth/client-metadata.json"]["x-forwarded-proto"] == "https"

    authorize = build_authorize_url(as_meta["authorization_endpoint"], CLIENT_ID, par["request_uri"])
    redirect = approve_authorization(authorize, HANDLE, PASSWORD)
    assert redirect.startswith(f"{REDIRECT_URI}?")
    params = redirect_params(redirect)
    assert params["state"] == state
    assert params["iss"] == issuer
    assert params["code"]
    # The browser would now land on the client: replay it on the loopback address.
    assert requests.get(loopback_url(redirect, CLIENT_ORIGIN, site.loopback), timeout=10).json() == {"ok": True}
    assert site.callbacks[-1] == params

    tokens = client.token(
        as_meta,
        {
            "grant_type": "authorization_code",
            "code": params["code"],
            "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier,
        },
    )
    assert tokens["token_type"] == "DPoP"
    assert tokens["sub"] == did
    assert "atproto" in tokens["scope"].split()
    assert tokens["refresh_token"]
    claims = jwt_payload(tokens["access_token"])
    assert claims["sub"] == did
    assert claims["cnf"]["jkt"]  # bound to the DPoP key
    # Both nonce paths of the research note: 400 at the AS, 401 at the PDS (below).
    assert ("/oauth/par", 400) in client.nonce_retries

    # A DPoP-bound write to the DID's repository. Here the PDS is its own authorization server
    # (same origin), so the nonce from the token endpoint is valid at the PDS too; forget it to
    # see the resource server's own nonce challenge (401 + WWW-Authenticate).
    client.nonces.clear()
    text = f"Hello World {secrets.token_hex(4)}"
    record = {
        "$type": "app.bsky.feed.post",
        "text": text,
        "createdAt": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }
    create_url = f"{pds}/xrpc/com.atproto.repo.createRecord"
    resp = client.dpop_request(
        "POST",
        create_url,
        access_token=tokens["access_token"],
        make_body=lambda: json.dumps({"repo": did, "collection": "app.bsky.feed.post", "record": record}),
        headers={"Content-Type": "application/json"},
    )
    assert resp.status_code == 200, resp.text
    created = resp.json()
    assert created["uri"].startswith(f"at://{did}/app.bsky.feed.post/")
    assert ("/xrpc/com.atproto.repo.createRecord", 401) in client.nonce_retries

    # A bearer (non-DPoP) use of the same token is refused.
    bearer = requests.post(
        create_url,
        json={"repo": did, "collection": "app.bsky.feed.post", "record": record},
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
        timeout=10,
    )
    assert bearer.status_code in (400, 401), bearer.text

    rkey = created["uri"].rsplit("/", 1)[1]
    got = peer.get_record(did, "app.bsky.feed.post", rkey)
    assert got["uri"] == created["uri"]
    assert got["cid"] == created["cid"]
    assert got["value"]["text"] == text
    listed = peer.list_records(did, "app.bsky.feed.post")
    assert [r["value"]["text"] for r in listed if r["uri"] == created["uri"]] == [text]

    # Refresh rotates the refresh token.
    refreshed = client.token(as_meta, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert refreshed["sub"] == did
    assert refreshed["refresh_token"] != tokens["refresh_token"]
    assert refreshed["access_token"] != tokens["access_token"]


def test_oauth_rejection(world: dict[str, Any]) -> None:
    peer: AtprotoPeer = world["peer"]
    _pds, _prm, as_meta = discover(world["did"], peer)
    client = MiniClient(world["signing_key"], world["kid"])
    state, verifier = secrets.token_urlsafe(16), secrets.token_urlsafe(48)
    par = client.par(as_meta, state, verifier, login_hint=HANDLE)
    authorize = build_authorize_url(as_meta["authorization_endpoint"], CLIENT_ID, par["request_uri"])
    redirect = reject_authorization(authorize, HANDLE, PASSWORD)
    assert redirect.startswith(f"{REDIRECT_URI}?")
    params = redirect_params(redirect)
    assert params["error"] == "access_denied"
    assert params["state"] == state
    assert params["iss"] == as_meta["issuer"]
    assert "code" not in params


def test_admin_and_plc_update(world: dict[str, Any]) -> None:
    peer: AtprotoPeer = world["peer"]
    did, handle = peer.create_account("carol.test", "carol-password-1")
    info = peer.admin_xrpc("com.atproto.admin.getAccountInfo", params={"did": did})
    assert info["handle"] == handle == "carol.test"
    wrong = requests.get(
        f"{peer.pds_url}/xrpc/com.atproto.admin.getAccountInfo",
        params={"did": did},
        auth=("admin", "wrong"),
        timeout=10,
    )
    assert wrong.status_code == 401
    doc = peer.set_pds_endpoint(did, "http://localhost:9")
    assert pds_endpoint(doc) == "http://localhost:9"
    assert pds_endpoint(peer.resolve_did(did)) == "http://localhost:9"
    assert pds_endpoint(peer.resolve_did(world["did"])) == peer.pds_url  # others unchanged

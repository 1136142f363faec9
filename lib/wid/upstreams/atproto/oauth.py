"""The proxy as an ATProto OAuth confidential client (atproto.com/specs/oauth).

- Client metadata at `{THIS_ENDPOINT}/oauth/atproto/client-metadata.json` (that URL is the
  `client_id`), keys at `{THIS_ENDPOINT}/oauth/atproto/jwks.json`, redirect URI
  `{THIS_ENDPOINT}/auth/atproto/callback`. THIS_ENDPOINT must be a public https URL.
- Sign-in: identifier -> DID -> DID document -> PDS -> protected-resource metadata -> the one
  authorization server -> its metadata (issuer checked). PAR with PKCE (S256), `login_hint`,
  `private_key_jwt` (ES256, one minute) and a DPoP proof made with a new per-session key. `state` is
  bound to the browser by an HttpOnly cookie (both stored as hashes), accepted once, within 10 min.
- Callback: `state` + cookie, then `iss` must be the issuer the sign-in started with, then the code
  is exchanged; the answer must be `token_type` DPoP, `sub` the DID that was asked for, scope with
  `atproto`; the DID's document must still name the same PDS and that PDS the same issuer. Only then
  is anything stored: access + refresh token + DPoP key, encrypted, per DID (wid.store.credentials).
- Use: `access_token(did)` refreshes when the token is about to expire (or the PDS refused it).
  One process of any replica refreshes a DID at a time, under a lease and with no database lock held
  across the call (wid.upstreams.credential_refresh), and the rotated refresh token is committed before the
  new access token is used: presenting a spent
  refresh token revokes the whole session at the PDS. `invalid_grant` marks the session revoked
  (workloads get 502 telling the admin to sign in again); any other failure leaves it as it was.
- DPoP nonces: a `use_dpop_nonce` answer (400 JSON from the authorization server, 401 with
  `WWW-Authenticate: DPoP error="use_dpop_nonce"` from the PDS) is retried once with the server's
  nonce; the last nonce per origin is shared through the database.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from cryptography.hazmat.primitives.asymmetric import ec

from wid import config
from wid.core import dpop
from wid.core.errors import Forbidden, InvalidRequest, Unavailable, UpstreamFailed, WidError
from wid.log import log
from wid.store import audit, browser_state, credentials, encryption, storage
from wid.upstreams.atproto import identity
from wid.upstreams.atproto.identity import FetchError
from wid.upstreams.oauth_client import TokenEndpointError

API = "ATProto"
METADATA_PATH = "/oauth/atproto/client-metadata.json"
JWKS_PATH = "/oauth/atproto/jwks.json"
SIGNIN_PATH = "/auth/atproto/"
START_PATH = "/auth/atproto/authorize"
CALLBACK_PATH = "/auth/atproto/callback"
COOKIE_PATH = "/auth/atproto/"
BINDING = browser_state.Binding("atproto", "wid_atproto_oauth", COOKIE_PATH, ttl_seconds=600)
# Refresh when less than this is left (access tokens live about an hour), or half the token's life.
REFRESH_BEFORE_SECONDS = 300
TOKEN_RESPONSE_LIMIT = 64 * 1024
CLIENT_NAME = "Workload identity proxy"


# --------------------------------------------------------------------------------------------------
# The client's public face
# --------------------------------------------------------------------------------------------------


def endpoint() -> str:
    return config.settings().this_endpoint


def client_id() -> str:
    return f"{endpoint()}{METADATA_PATH}"


def redirect_uri() -> str:
    return f"{endpoint()}{CALLBACK_PATH}"


def require_public_endpoint() -> None:
    parts = urlsplit(endpoint())
    if parts.scheme != "https":
        raise Unavailable(f"signing in with ATProto needs THIS_ENDPOINT to be the proxy's public https URL (it is "
                          f"{endpoint()}): the PDS fetches the client metadata from {client_id()}, and ATProto "
                          "authorization servers accept confidential clients only at https URLs on public host names",
                          code="atproto_client_unavailable")


def client_metadata() -> dict[str, Any]:
    return {
        "client_id": client_id(),
        "client_name": CLIENT_NAME,
        "client_uri": endpoint(),
        "application_type": "web",
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "redirect_uris": [redirect_uri()],
        "scope": config.settings().atproto_oauth_scope,
        "token_endpoint_auth_method": "private_key_jwt",
        "token_endpoint_auth_signing_alg": "ES256",
        "jwks_uri": f"{endpoint()}{JWKS_PATH}",
        "dpop_bound_access_tokens": True,
    }


# --------------------------------------------------------------------------------------------------
# Client keys (ES256), generated on first need
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientKey:
    kid: str
    private_key: ec.EllipticCurvePrivateKey


def _insert_client_key(tx: storage.Transaction) -> ClientKey:
    key = dpop.generate_key()
    jwk = dpop.public_jwk(key)
    kid = dpop.jwk_thumbprint(key)
    published = {**jwk, "kid": kid, "use": "sig", "alg": "ES256"}
    tx.execute("INSERT INTO atproto_client_keys (kid, state, private_key, public_jwk, created_at) "
               "VALUES (?, 'active', ?, ?, ?)",
               (kid, encryption.seal(dpop.key_to_pem(key).encode()), json.dumps(published), int(time.time())))
    return ClientKey(kid, key)


def client_key(kid: str | None = None) -> ClientKey:
    """The active key (created on first need), or the key `kid` a session was authorized with."""
    db = storage.database()
    cache_key = f"atproto:client_key:{kid or 'active'}"
    with db.cache_lock:
        cached = db.cache.get(cache_key)
    if cached is not None and time.monotonic() - cached[0] < 30:
        key: ClientKey = cached[1]
        return key
    sql, params = (("SELECT kid, private_key FROM atproto_client_keys WHERE kid = ?", (kid,)) if kid else
                   ("SELECT kid, private_key FROM atproto_client_keys WHERE state = 'active'", ()))
    with db.transaction(write=False) as tx:
        row = tx.one(sql, params)
    if row is None and kid:
        raise UpstreamFailed(f"the client key {kid} this session was authorized with is gone; sign in again",
                             code="atproto_client_key_missing")
    if row is None:
        with db.transaction() as tx:
            tx.lock("wid-atproto-client-keys")
            encryption.check_key(tx)
            row = tx.one(sql, params)
            found = ClientKey(row[0], dpop.key_from_pem(encryption.unseal(bytes(row[1])))) if row else \
                _insert_client_key(tx)
    else:
        found = ClientKey(row[0], dpop.key_from_pem(encryption.unseal(bytes(row[1]))))
    with db.cache_lock:
        db.cache[cache_key] = (time.monotonic(), found)
    return found


def jwks() -> dict[str, Any]:
    client_key()  # make sure one exists before the first authorization server asks
    with storage.database().transaction(write=False) as tx:
        rows = tx.execute("SELECT public_jwk FROM atproto_client_keys ORDER BY state = 'active' DESC, created_at DESC")
    return {"keys": [json.loads(r[0]) for r in rows]}


def rotate_client_key() -> tuple[str | None, str]:
    """New sign-ins use a new key; the old one stays published and keeps serving its sessions."""
    db = storage.database()
    with db.transaction() as tx:
        tx.lock("wid-atproto-client-keys")
        encryption.check_key(tx)
        row = tx.one("SELECT kid FROM atproto_client_keys WHERE state = 'active'")
        if row:
            tx.execute("UPDATE atproto_client_keys SET state = 'retired', retired_at = ? WHERE kid = ?",
                       (int(time.time()), row[0]))
        new = _insert_client_key(tx)
    with db.cache_lock:
        for name in [k for k in db.cache if k.startswith("atproto:client_key:")]:
            del db.cache[name]
    return (row[0] if row else None), new.kid


def client_keys() -> list[dict[str, Any]]:
    with storage.database().transaction(write=False) as tx:
        rows = tx.execute("SELECT kid, state, created_at, retired_at FROM atproto_client_keys ORDER BY created_at")
    return [{"kid": r[0], "state": r[1], "created_at": r[2], "retired_at": r[3]} for r in rows]


def _client_auth(key: ClientKey, issuer: str) -> dict[str, str]:
    return {"client_id": client_id(), "client_assertion_type": dpop.CLIENT_ASSERTION_TYPE,
            "client_assertion": dpop.client_assertion(key.private_key, key.kid, client_id(), issuer)}


# --------------------------------------------------------------------------------------------------
# DPoP nonces and DPoP requests
# --------------------------------------------------------------------------------------------------


class Nonces:
    """The last DPoP nonce per origin: read from the database once per origin, written when it changes."""

    def __init__(self) -> None:
        self._known: dict[str, str | None] = {}
        self._dirty: dict[str, str] = {}

    def load(self, origin: str) -> str | None:
        if origin not in self._known:
            with storage.database().transaction(write=False) as tx:
                row = tx.one("SELECT nonce FROM atproto_dpop_nonces WHERE origin = ?", (origin,))
            self._known[origin] = row[0] if row else None
        return self._known[origin]

    def seen(self, origin: str, nonce: str) -> None:
        if self._known.get(origin) != nonce:
            self._known[origin] = nonce
            self._dirty[origin] = nonce

    def flush(self) -> None:
        if not self._dirty:
            return
        rows = list(self._dirty.items())
        self._dirty.clear()
        sql = ("INSERT INTO atproto_dpop_nonces (origin, nonce, updated_at) VALUES (?, ?, ?) ON CONFLICT (origin) "
               "DO UPDATE SET nonce = excluded.nonce, updated_at = excluded.updated_at")
        try:
            with storage.database().transaction() as tx:
                for origin, nonce in rows:
                    tx.execute(sql, (origin, nonce[:512], int(time.time())))
        except storage.DatabaseUnavailable as exc:  # only an optimisation: the next request retries once
            log("dpop_nonce_not_saved", level="warning", message=str(exc))


def wants_nonce(result: identity.HttpResult) -> bool:
    if result.status == 401:
        return "use_dpop_nonce" in (result.header("WWW-Authenticate") or "")
    if result.status == 400:
        try:
            return json.loads(result.body).get("error") == "use_dpop_nonce"
        except (ValueError, AttributeError, UnicodeDecodeError):
            return False
    return False


def dpop_request(method: str, url: str, key: ec.EllipticCurvePrivateKey, *, what: str, nonces: Nonces,
                 body: Callable[[], bytes | None] | None = None, headers: dict[str, str] | None = None,
                 access_token: str | None = None, limit: int = TOKEN_RESPONSE_LIMIT) -> identity.HttpResult:
    """Send with a fresh DPoP proof; on `use_dpop_nonce` send once more with the server's nonce.

    `body` is called per attempt (a client assertion must not be sent twice).
    """
    origin = dpop.origin(url)
    nonce = nonces.load(origin)
    for attempt in (1, 2):
        sent = dict(headers or {})
        sent["DPoP"] = dpop.proof(key, method, url, nonce=nonce, access_token=access_token)
        if access_token:
            sent["Authorization"] = f"DPoP {access_token}"
        result = identity.request(method, url, what=what, headers=sent, body=body() if body else None, limit=limit)
        fresh = result.header("DPoP-Nonce")
        if fresh:
            nonces.seen(origin, fresh.strip())
        if attempt == 1 and wants_nonce(result) and fresh and fresh.strip() != nonce:
            nonce = fresh.strip()
            continue
        return result
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuthServer:
    issuer: str
    par_endpoint: str
    authorization_endpoint: str
    token_endpoint: str
    revocation_endpoint: str | None


def _same_url(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def discover(pds: str) -> AuthServer:
    """The PDS's one authorization server, from its protected-resource metadata (RFC 9728) and the
    server's own metadata (RFC 8414), with what the ATProto profile requires of it checked."""
    prm_url = f"{pds}/.well-known/oauth-protected-resource"
    prm = identity.get_json(prm_url, f"the PDS's resource metadata ({prm_url})")
    if not isinstance(prm.get("resource"), str) or not _same_url(prm["resource"], pds):
        raise FetchError(f"{prm_url} describes the resource "
                         f"{str(prm.get('resource'))[:120]!r}, not {pds}", code="pds_metadata_invalid")
    servers = prm.get("authorization_servers")
    if not isinstance(servers, list) or len(servers) != 1 or not isinstance(servers[0], str):
        raise FetchError(f"{prm_url} must name exactly one authorization server", code="pds_metadata_invalid")
    issuer = servers[0].rstrip("/")
    identity.check_url(issuer, "authorization server")
    if urlsplit(issuer).path not in ("", "/"):
        raise FetchError(f"the authorization server {issuer!r} is not an origin", code="pds_metadata_invalid")
    as_url = f"{issuer}/.well-known/oauth-authorization-server"
    meta = identity.get_json(as_url, f"the authorization server's metadata ({as_url})")
    if meta.get("issuer") != issuer:
        raise FetchError(f"{as_url} names the issuer {str(meta.get('issuer'))[:120]!r}, "
                         f"not {issuer}", code="as_metadata_invalid")
    problems = []
    if meta.get("require_pushed_authorization_requests") is not True and \
            not isinstance(meta.get("pushed_authorization_request_endpoint"), str):
        problems.append("no pushed authorization requests")
    if "private_key_jwt" not in (meta.get("token_endpoint_auth_methods_supported") or []):
        problems.append("no private_key_jwt client authentication")
    if "ES256" not in (meta.get("dpop_signing_alg_values_supported") or []):
        problems.append("no ES256 DPoP")
    if "S256" not in (meta.get("code_challenge_methods_supported") or []):
        problems.append("no PKCE S256")
    if "atproto" not in (meta.get("scopes_supported") or []):
        problems.append("no 'atproto' scope")
    if meta.get("authorization_response_iss_parameter_supported") is not True:
        problems.append("no iss in authorization responses")
    endpoints = {}
    for name in ("pushed_authorization_request_endpoint", "authorization_endpoint", "token_endpoint"):
        value = meta.get(name)
        if not isinstance(value, str):
            problems.append(f"no {name}")
            continue
        identity.check_url(value, f"the authorization server's {name}")
        endpoints[name] = value
    revocation = meta.get("revocation_endpoint")
    if problems:
        raise FetchError(f"the authorization server {issuer} does not offer what the "
                         f"ATProto OAuth profile requires: {', '.join(problems)}", code="as_metadata_invalid")
    return AuthServer(issuer, endpoints["pushed_authorization_request_endpoint"], endpoints["authorization_endpoint"],
                      endpoints["token_endpoint"], revocation if isinstance(revocation, str) else None)


# --------------------------------------------------------------------------------------------------
# Starting a sign-in: PAR, state bound to the browser
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlowStart:
    authorize_url: str
    set_cookie: str
    did: str
    handle: str | None


def _oauth_error(result: identity.HttpResult) -> tuple[str, str]:
    try:
        payload = json.loads(result.body)
    except (ValueError, UnicodeDecodeError):
        payload = None
    if not isinstance(payload, dict):
        return f"http_{result.status}", ""
    return str(payload.get("error") or f"http_{result.status}")[:80], str(payload.get("error_description") or "")[:300]


def start(identifier: str) -> FlowStart:
    """Resolve, discover, push the authorization request; the URL to send the browser to."""
    require_public_endpoint()
    who = identity.resolve(identifier)
    server = discover(who.document.pds)
    dpop_key = dpop.generate_key()
    verifier, challenge = dpop.pkce_pair()
    key = client_key()
    scope = config.settings().atproto_oauth_scope
    # Remembered (sealed) until the callback; a state whose pushed request then fails simply expires.
    flow = {"did": who.did, "handle": who.handle, "pds": who.document.pds, "issuer": server.issuer,
            "token_endpoint": server.token_endpoint, "revocation_endpoint": server.revocation_endpoint,
            "verifier": verifier, "dpop_key": dpop.key_to_pem(dpop_key), "client_kid": key.kid,
            "scope": scope}
    state, set_cookie = browser_state.issue(BINDING, flow)
    form = {"response_type": "code", "redirect_uri": redirect_uri(), "scope": scope, "state": state,
            "code_challenge": challenge, "code_challenge_method": "S256", "login_hint": who.handle or who.did}
    nonces = Nonces()
    result = dpop_request("POST", server.par_endpoint, dpop_key, what=f"the authorization server {server.issuer} "
                          "(pushed authorization request)", nonces=nonces,
                          headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
                          body=lambda: urlencode({**form, **_client_auth(key, server.issuer)}).encode())
    nonces.flush()
    if result.status not in (200, 201):
        error, description = _oauth_error(result)
        detail = f"{error}: {description}" if description else error
        if error in ("invalid_client", "unauthorized_client") or "client" in description.lower():
            raise UpstreamFailed(f"the authorization server {server.issuer} rejected this proxy as an OAuth client "
                                 f"({detail}); it must be able to fetch {client_id()} and {endpoint()}{JWKS_PATH} over "
                                 "https from the internet", code="atproto_client_rejected")
        raise UpstreamFailed(f"the authorization server {server.issuer} refused the pushed "
                             f"authorization request (HTTP {result.status}, {detail})", code="par_failed")
    payload = result.json_object("the pushed authorization request")
    request_uri = payload.get("request_uri")
    if not isinstance(request_uri, str) or not request_uri:
        raise UpstreamFailed(f"the authorization server {server.issuer} answered the pushed "
                             "authorization request without a request_uri", code="par_failed")
    audit.record("atproto_signin_start", "info", api=API, actx=who.did, issuer=server.issuer, pds=who.document.pds)
    query = urlencode({"client_id": client_id(), "request_uri": request_uri})
    return FlowStart(f"{server.authorization_endpoint}?{query}", set_cookie, who.did, who.handle)


def invalid_state(message: str) -> WidError:
    return InvalidRequest(f"{message}; nothing was stored. Start again at {endpoint()}{SIGNIN_PATH}",
                          code="invalid_state")


def consume_state(state: str | None, cookie_value: str | None) -> dict[str, Any]:
    """The flow `state` belongs to: once, before it expires, from the browser it was issued to."""
    try:
        return browser_state.consume(BINDING, state, cookie_value)
    except browser_state.StateError as exc:
        audit.record("atproto_callback", "deny", api=API, reason=str(exc))
        raise invalid_state(str(exc)) from None


# --------------------------------------------------------------------------------------------------
# The token endpoint
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    access_token: str
    refresh_token: str | None
    expires_in: int | None
    scope: str
    sub: str


def token_request(data: dict[str, Any], form: dict[str, str], *, nonces: Nonces) -> Grant:
    """POST the token endpoint for a session (`data` has issuer, token_endpoint, dpop_key, client_kid).

    Never inside a transaction: the authorization server may take its whole timeout to answer.
    """
    key = client_key(data.get("client_kid"))
    dpop_key = dpop.key_from_pem(data["dpop_key"])
    issuer = str(data["issuer"])
    result = dpop_request("POST", str(data["token_endpoint"]), dpop_key,
                          what=f"the authorization server {issuer} (token endpoint)", nonces=nonces,
                          headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
                          body=lambda: urlencode({**form, **_client_auth(key, issuer)}).encode())
    if result.status >= 500:
        raise FetchError(f"the authorization server {issuer} answered HTTP {result.status} at "
                         "its token endpoint; try again later", retryable=True)
    if result.status != 200:
        error, description = _oauth_error(result)
        raise TokenEndpointError(result.status, error, description)
    payload = result.json_object(f"the authorization server {issuer} (token endpoint)")
    access, token_type, sub = payload.get("access_token"), payload.get("token_type"), payload.get("sub")
    if not isinstance(access, str) or not access:
        raise FetchError(f"the authorization server {issuer} answered without an access_token")
    if not isinstance(token_type, str) or token_type.lower() != "dpop":
        raise FetchError(f"the authorization server {issuer} issued a {str(token_type)[:20]!r} "
                         "token; the ATProto profile requires DPoP-bound tokens", code="token_not_dpop")
    if not isinstance(sub, str) or not sub:
        raise FetchError(f"the authorization server {issuer} answered without the sub (DID)")
    scope = payload.get("scope")
    if not isinstance(scope, str) or "atproto" not in scope.split():
        raise FetchError(f"the authorization server {issuer} granted the scope "
                         f"{str(scope)[:100]!r}, without 'atproto'")
    refresh = payload.get("refresh_token")
    expires_in = payload.get("expires_in")
    return Grant(access, refresh if isinstance(refresh, str) and refresh else None,
                 int(expires_in) if isinstance(expires_in, int | float) and expires_in > 0 else None, scope, sub)


def revoke_tokens(data: dict[str, Any], *tokens_: str) -> None:
    """Best effort (RFC 7009): give back tokens we will not keep."""
    revocation = data.get("revocation_endpoint")
    if not isinstance(revocation, str):
        return
    try:
        key = client_key(data.get("client_kid"))
        dpop_key = dpop.key_from_pem(data["dpop_key"])
        nonces = Nonces()
        issuer = str(data["issuer"])

        def form(token: str) -> Callable[[], bytes]:
            return lambda: urlencode({"token": token, **_client_auth(key, issuer)}).encode()

        for token in tokens_:
            dpop_request("POST", revocation, dpop_key, what="the authorization server (revocation)", nonces=nonces,
                         headers={"Content-Type": "application/x-www-form-urlencoded"}, body=form(token))
        nonces.flush()
    except (WidError, ValueError) as exc:
        log("atproto_revoke_failed", level="warning", message=str(exc)[:300])


def session_data(flow: dict[str, Any], grant: Grant, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    now = int(time.time())
    previous = previous or {}
    return {
        "did": flow["did"],
        "handle": flow.get("handle"),
        "pds": flow["pds"],
        "issuer": flow["issuer"],
        "token_endpoint": flow["token_endpoint"],
        "revocation_endpoint": flow.get("revocation_endpoint"),
        "client_kid": flow["client_kid"],
        "dpop_key": flow["dpop_key"],
        "access_token": grant.access_token,
        "refresh_token": grant.refresh_token or previous.get("refresh_token"),
        "token_type": "DPoP",
        "scope": grant.scope,
        "expires_at": now + grant.expires_in if grant.expires_in else None,
        "lifetime": grant.expires_in,
        "connected_at": previous.get("connected_at") or now,
        "refreshed_at": now,
    }


def public_view(data: dict[str, Any]) -> dict[str, Any]:
    """What may be shown or kept about a session: never a token or a key."""
    return {k: data.get(k) for k in ("did", "handle", "pds", "issuer", "scope", "expires_at", "connected_at",
                                     "refreshed_at")}


# --------------------------------------------------------------------------------------------------
# The callback
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Connected:
    did: str
    handle: str | None
    pds: str
    rbac_token: str
    rbac_expires_at: int


def complete(params: dict[str, str | None], cookie_value: str | None) -> Connected:
    """Check the callback, exchange the code, store the session, issue the admin's RBAC token."""
    flow = consume_state(params.get("state"), cookie_value)
    did = str(flow["did"])
    iss = params.get("iss")
    if iss != flow["issuer"]:
        reason = (f"the callback's iss {str(iss)[:120]!r} is not the authorization server this sign-in started with "
                  f"({flow['issuer']})")
        audit.record("atproto_callback", "deny", api=API, actx=did, reason=reason)
        raise InvalidRequest(f"{reason}; nothing was stored. Start again at {endpoint()}{SIGNIN_PATH}",
                             code="invalid_issuer")
    error = params.get("error")
    if error is not None:
        code_name = error if error.replace("_", "").isalnum() and len(error) <= 64 else "unknown_error"
        description = (params.get("error_description") or "")[:300]
        detail = f"{code_name}: {description}" if description else code_name
        audit.record("atproto_callback", "deny", api=API, actx=did, reason=detail)
        if code_name == "access_denied":
            raise Forbidden(f"the authorization was not granted ({detail}); nothing was stored. "
                            f"Start again at {endpoint()}{SIGNIN_PATH}", code="access_denied")
        raise InvalidRequest(f"the authorization server ended the sign-in with an error ({detail}); "
                             "nothing was stored", code="oauth_error")
    code = params.get("code")
    if not code:
        raise InvalidRequest("the callback has neither a code nor an error parameter")
    nonces = Nonces()
    try:
        grant = token_request(flow, {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri(),
                                     "code_verifier": flow["verifier"]}, nonces=nonces)
    except TokenEndpointError as exc:
        audit.record("atproto_callback", "deny", api=API, actx=did, reason=str(exc))
        raise InvalidRequest(f"the authorization server did not accept the authorization code ({exc}); "
                             f"nothing was stored. Start again at {endpoint()}{SIGNIN_PATH}",
                             code="invalid_grant") from None
    finally:
        nonces.flush()
    try:
        _check_grant(flow, grant)
    except WidError as exc:
        revoke_tokens(flow, *[t for t in (grant.refresh_token, grant.access_token) if t])
        audit.record("atproto_callback", "deny", api=API, actx=did, reason=exc.message)
        raise
    with credentials.locked(API, did) as (tx, existing):
        previous = existing.data if existing is not None and existing.status == credentials.ACTIVE else None
        data = session_data(flow, grant, previous={"connected_at": previous.get("connected_at")} if previous else None)
        credentials.put(tx, API, did, data)
        audit.record("atproto_connect", "allow", api=API, actx=did, tx=tx, handle=flow.get("handle"), pds=flow["pds"],
                     issuer=flow["issuer"], scope=grant.scope, reconnected=existing is not None)
    identity.forget(did)  # the next request re-reads the DID document this sign-in just checked
    token, expires_at = rbac_token(did, flow.get("handle"))
    return Connected(did, flow.get("handle"), str(flow["pds"]), token, expires_at)


def _check_grant(flow: dict[str, Any], grant: Grant) -> None:
    did = str(flow["did"])
    if grant.sub != did:
        raise Forbidden(f"the authorization server issued tokens for {grant.sub[:80]}, but this "
                        f"sign-in was for {did}; nothing was stored. Sign in at the PDS as the account you asked for",
                        code="wrong_account")
    if not grant.refresh_token:
        log("atproto_no_refresh_token", level="warning", did=did)
    # The DID must still be hosted where the sign-in found it, and that PDS must still trust this issuer.
    document = identity.fetch_document(did)
    if document.pds != flow["pds"]:
        raise UpstreamFailed(f"the DID document of {did} now names the PDS {document.pds}, not "
                             f"{flow['pds']} where this sign-in started; nothing was stored. Sign in again",
                             code="pds_changed")
    server = discover(document.pds)
    if server.issuer != flow["issuer"]:
        raise UpstreamFailed(f"the PDS {document.pds} now names the authorization server "
                             f"{server.issuer}, not {flow['issuer']}; nothing was stored. Sign in again",
                             code="issuer_changed")


def rbac_token(did: str, handle: str | None) -> tuple[str, int]:
    """The admin's token for git on this DID's RBAC repo (`did_plc` carries the DID, as the articles read it)."""
    from wid.core import tokens

    settings = config.settings()
    lifetime = min(settings.atproto_rbac_token_ttl, settings.max_token_ttl)
    claims: dict[str, Any] = {"aud": f"api://{API}?actx={did}", "sub": f"actx:{did}:admin", "did": did,
                              "did_plc": did}
    if handle:
        claims["handle"] = handle
    token, full = tokens.sign(claims, kind=tokens.RBAC, lifetime=lifetime)
    audit.record("issue", "allow", api=API, actx=did, sub=full["sub"], jti=full["jti"], kind=tokens.RBAC,
                 exp=full["exp"])
    return token, int(full["exp"])

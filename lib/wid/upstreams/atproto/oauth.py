"""Signing in with ATProto: the proxy as an OAuth confidential client of the DID's authorization server.

- Sign-in: identifier -> DID -> DID document -> PDS -> protected-resource metadata -> the one
  authorization server -> its metadata (issuer checked: discovery.py). PAR with PKCE (S256),
  `login_hint`, `private_key_jwt` (ES256, one minute: client.py) and a DPoP proof made with a new
  per-session key (dpop_http.py). `state` is bound to the browser by an HttpOnly cookie (both stored
  as hashes), accepted once, within 10 min.
- Callback: `state` + cookie, then `iss` must be the issuer the sign-in started with, then the code
  is exchanged (token_endpoint.py); the answer must be `token_type` DPoP, `sub` the DID that was
  asked for, scope with `atproto`; the DID's document must still name the same PDS and that PDS the
  same issuer. Only then is anything stored: access + refresh token + DPoP key, encrypted, per DID
  (lib/wid/store/credentials.py), and the admin gets a token for the DID's RBAC repo.
- Use: session.py hands out the access token, refreshed when it is about to expire (or the PDS
  refused it), one process of any replica at a time, under a lease and with no database lock held
  across the call (lib/wid/upstreams/credential_refresh.py); the rotated refresh token is committed
  before the new access token is used: presenting a spent refresh token revokes the whole session at
  the PDS. `invalid_grant` marks the session revoked (workloads get 502 telling the admin to sign in
  again); any other failure leaves it as it was. xrpc.py sends with it.
"""

from typing import Any, NamedTuple
from urllib.parse import urlencode

from wid import config
from wid.core import dpop
from wid.core.errors import Forbidden, InvalidRequest, UpstreamFailed, WidError
from wid.log import log
from wid.store import audit, browser_state, credentials
from wid.upstreams import oauth_client
from wid.upstreams.atproto import identity
from wid.upstreams.atproto.client import (
    JWKS_PATH,
    SIGNIN_PATH,
    SIGNIN_SECONDS,
    client_auth,
    client_id,
    client_key,
    endpoint,
    redirect_uri,
    require_public_endpoint,
)
from wid.upstreams.atproto.context import API
from wid.upstreams.atproto.discovery import discover
from wid.upstreams.atproto.dpop_http import Nonces, dpop_request
from wid.upstreams.atproto.token_endpoint import Grant, oauth_error, revoke_tokens, session_data, token_request
from wid.upstreams.oauth_client import TokenEndpointError

START_PATH = "/auth/atproto/authorize"
COOKIE_PATH = "/auth/atproto/"
BINDING = browser_state.Binding("atproto", "wid_atproto_oauth", COOKIE_PATH, ttl_seconds=SIGNIN_SECONDS)


# --------------------------------------------------------------------------------------------------
# Starting a sign-in: PAR, state bound to the browser
# --------------------------------------------------------------------------------------------------


class FlowStart(NamedTuple):
    authorize_url: str
    set_cookie: str
    did: str
    handle: str | None


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
    result = dpop_request("POST", server.par_endpoint, dpop_key, service="atproto_auth",
                          what=f"the authorization server {server.issuer} "
                          "(pushed authorization request)", nonces=nonces,
                          headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
                          body=lambda: urlencode({**form, **client_auth(key, server.issuer)}).encode())
    nonces.flush()
    if result.status not in (200, 201):
        error, description = oauth_error(result)
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


def consume_state(state: str | None, cookie_value: str | None) -> dict[str, Any]:
    """The flow `state` belongs to: once, before it expires, from the browser it was issued to."""
    return oauth_client.consume_state(BINDING, state, cookie_value, api=API, event="atproto_callback",
                                      start_again=f"nothing was stored. Start again at {endpoint()}{SIGNIN_PATH}")


# --------------------------------------------------------------------------------------------------
# The callback
# --------------------------------------------------------------------------------------------------


class Connected(NamedTuple):
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
    from wid.store import signing

    settings = config.settings()
    lifetime = min(settings.atproto_rbac_token_ttl, settings.max_token_ttl)
    claims: dict[str, Any] = {"aud": f"api://{API}?actx={did}", "sub": f"actx:{did}:admin", "did": did,
                              "did_plc": did}
    if handle:
        claims["handle"] = handle
    token, full = signing.sign(claims, kind=tokens.RBAC, lifetime=lifetime)
    audit.record("issue", "allow", api=API, actx=did, sub=full["sub"], jti=full["jti"], kind=tokens.RBAC,
                 exp=full["exp"])
    return token, int(full["exp"])

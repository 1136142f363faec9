"""The proxy as an ATProto OAuth confidential client: its public face and its keys (atproto.com/specs/oauth).

Client metadata at `{THIS_ENDPOINT}/oauth/atproto/client-metadata.json` (that URL is the
`client_id`), keys at `{THIS_ENDPOINT}/oauth/atproto/jwks.json`, redirect URI
`{THIS_ENDPOINT}/auth/atproto/callback`; THIS_ENDPOINT must be a public https URL. The keys (ES256)
are generated at the first sign-in (or by `wid atproto client-keys rotate`), stored sealed, and rotate
as our signing keys do (lib/wid/store/keyring.py): a next key is published before it signs, a retired
key stays published and keeps serving the sessions authorized with it, an emergency rotation drops
it. `client_auth()` is the `private_key_jwt` assertion every request to an authorization server carries.
"""

from typing import Any, NamedTuple
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec

from wid import config
from wid.core import dpop
from wid.core.errors import Unavailable, UpstreamFailed
from wid.store import credentials, keyring
from wid.upstreams.atproto.context import API

METADATA_PATH = "/oauth/atproto/client-metadata.json"
JWKS_PATH = "/oauth/atproto/jwks.json"
SIGNIN_PATH = "/auth/atproto/"
CALLBACK_PATH = "/auth/atproto/callback"
CLIENT_NAME = "Workload identity proxy"


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
# Client keys (ES256): their lifecycle is lib/wid/store/keyring.py, shared with our signing keys
# --------------------------------------------------------------------------------------------------

# The Cache-Control max-age of the client metadata and JWKS (lib/wid/web/handlers/atproto.py): how long an
# authorization server may keep a copy of our key set without a key published since.
JWKS_MAX_AGE = 300
# A sign-in started with a key completes with it (its PAR and its token request): the retiring key stays
# at least as long as a started sign-in may take (lib/wid/upstreams/atproto/oauth.py, BINDING).
SIGNIN_SECONDS = 600


class ClientKey(NamedTuple):
    kid: str
    private_key: ec.EllipticCurvePrivateKey


def _new_client_key() -> tuple[ClientKey, dict[str, Any], bytes]:
    key = dpop.generate_key()
    kid = dpop.jwk_thumbprint(key)
    published = {**dpop.public_jwk(key), "kid": kid, "use": "sig", "alg": "ES256"}
    return ClientKey(kid, key), published, dpop.key_to_pem(key).encode()


def _load_client_key(kid: str, pem: bytes) -> ClientKey:
    return ClientKey(kid, dpop.key_from_pem(pem))


def activation_delay() -> int:
    """Seconds between publishing a next client key and signing new sign-ins with it: every copy of the
    JWKS an authorization server fetched before has expired by then."""
    return JWKS_MAX_AGE + keyring.ACTIVATION_SLACK_SECONDS


# A retired client key stays published and usable while a session authorized with it lives (it is bound
# to the session: `client_kid` in the stored session, lib/wid/upstreams/atproto/token_endpoint.py), so
# only prune_client_keys() drops it, once no session names it.
CLIENT_KEYS = keyring.KeyKind[ClientKey](name="atproto_client", table="atproto_client_keys", generate=_new_client_key,
                                         load=_load_client_key, activation_delay=activation_delay,
                                         retired_until_pruned=True)


def client_key(kid: str | None = None) -> ClientKey:
    """The active key (created on first need), or the key `kid` a session was authorized with."""
    if kid is None:
        return keyring.active(CLIENT_KEYS)
    key = keyring.usable_key(CLIENT_KEYS, kid)
    if key is None:
        raise UpstreamFailed(f"the client key {kid} this session was authorized with was revoked or is gone; "
                             "sign in again", code="atproto_client_key_missing")
    return key


def jwks() -> dict[str, Any]:
    client_key()  # make sure one exists before the first authorization server asks
    return {"keys": keyring.published(CLIENT_KEYS)}


def rotate_client_key(*, emergency: bool = False) -> keyring.Rotation:
    """Scheduled: a next key is published now and serves new sign-ins from activation_delay() on; the
    active key then retires and keeps serving its sessions. Emergency: the active key is dropped at once."""
    if emergency:
        return keyring.rotate_emergency(CLIENT_KEYS)
    return keyring.rotate(CLIENT_KEYS, SIGNIN_SECONDS + keyring.ACTIVE_KEY_CACHE_SECONDS + 60)


def sessions_kids() -> frozenset[str]:
    """The client keys that living sessions were authorized with (and sign their refreshes)."""
    kids = set()
    for actx, status, _reason, _updated in credentials.contexts(API):
        cred = credentials.get(API, actx) if status == credentials.ACTIVE else None
        if cred is not None and cred.data.get("client_kid"):
            kids.add(str(cred.data["client_kid"]))
    return frozenset(kids)


def prune_client_keys() -> list[str]:
    """Drop revoked client keys, and retired ones that no living session needs."""
    return keyring.prune(CLIENT_KEYS, keep=sessions_kids())


def client_keys() -> list[dict[str, Any]]:
    return [{"kid": k.kid, "state": k.state, "created_at": k.created_at, "retired_at": k.retired_at,
             "activate_at": k.activate_at} for k in reversed(keyring.listing(CLIENT_KEYS))]


def client_auth(key: ClientKey, issuer: str) -> dict[str, str]:
    return {"client_id": client_id(), "client_assertion_type": dpop.CLIENT_ASSERTION_TYPE,
            "client_assertion": dpop.client_assertion(key.private_key, key.kid, client_id(), issuer)}

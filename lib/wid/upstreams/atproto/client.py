"""The proxy as an ATProto OAuth confidential client: its public face and its keys (atproto.com/specs/oauth).

Client metadata at `{THIS_ENDPOINT}/oauth/atproto/client-metadata.json` (that URL is the
`client_id`), keys at `{THIS_ENDPOINT}/oauth/atproto/jwks.json`, redirect URI
`{THIS_ENDPOINT}/auth/atproto/callback`; THIS_ENDPOINT must be a public https URL. The keys (ES256)
are generated at the first sign-in (or by `wid atproto client-keys rotate`), stored sealed; a
retired key stays published and keeps serving the sessions authorized with it. `client_auth()` is
the `private_key_jwt` assertion every request to an authorization server carries.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec

from wid import config, metrics
from wid.core import dpop
from wid.core.errors import Unavailable, UpstreamFailed
from wid.store import encryption, storage

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
    metrics.cache("atproto_client_key", hit=cached is not None and time.monotonic() - cached[0] < 30)
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


def client_auth(key: ClientKey, issuer: str) -> dict[str, str]:
    return {"client_id": client_id(), "client_assertion_type": dpop.CLIENT_ASSERTION_TYPE,
            "client_assertion": dpop.client_assertion(key.private_key, key.kid, client_id(), issuer)}

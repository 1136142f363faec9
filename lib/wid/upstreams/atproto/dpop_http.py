"""HTTP requests with DPoP proofs (RFC 9449), and the DPoP nonces servers hand out.

A `use_dpop_nonce` answer (400 JSON from an authorization server, 401 with
`WWW-Authenticate: DPoP error="use_dpop_nonce"` from a PDS) is retried once with the server's nonce;
the last nonce per origin is shared through the database. Requests go through the SSRF-safe client
of lib/wid/upstreams/atproto/identity.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import ec

from wid.core import dpop
from wid.log import log
from wid.net.safe_http import HttpResult
from wid.store import storage
from wid.upstreams.atproto import identity

TOKEN_RESPONSE_LIMIT = 64 * 1024


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


def wants_nonce(result: HttpResult) -> bool:
    if result.status == 401:
        return "use_dpop_nonce" in (result.header("WWW-Authenticate") or "")
    if result.status == 400:
        try:
            return json.loads(result.body).get("error") == "use_dpop_nonce"
        except (ValueError, AttributeError, UnicodeDecodeError):
            return False
    return False


def dpop_request(method: str, url: str, key: ec.EllipticCurvePrivateKey, *, service: str, what: str, nonces: Nonces,
                 body: Callable[[], bytes | None] | None = None, headers: dict[str, str] | None = None,
                 access_token: str | None = None, limit: int = TOKEN_RESPONSE_LIMIT) -> HttpResult:
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
        result = identity.request(method, url, service=service, what=what, headers=sent,
                                  body=body() if body else None, limit=limit)
        fresh = result.header("DPoP-Nonce")
        if fresh:
            nonces.seen(origin, fresh.strip())
        if attempt == 1 and wants_nonce(result) and fresh and fresh.strip() != nonce:
            nonce = fresh.strip()
            continue
        return result
    raise AssertionError("unreachable")

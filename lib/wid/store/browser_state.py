"""OAuth `state` bound to the browser that started a sign-in (the DigitalOcean and ATProto flows).

A flow start records an unguessable state and a random browser secret, both as SHA-256 hashes, and
puts the secret in an HttpOnly cookie scoped to the flow's path. The callback's state is accepted once
(even when a check fails, it cannot be tried again), before it expires, and only from the browser that
holds the cookie. What the flow must remember until the callback (PKCE verifier, DPoP key...) is
sealed with WID_SECRET_KEY in the same row.
"""

import hashlib
import hmac
import json
import os
import time
from http.cookies import CookieError, SimpleCookie
from typing import Any, NamedTuple

from wid import config
from wid.core import jose
from wid.store import encryption, storage

# Used and expired rows are kept this long, so a replay is told apart from a forgery, then deleted.
KEEP_SECONDS = 3600


class Binding(NamedTuple):
    """One kind of flow: where its cookie lives and how long a started flow may take."""

    flow: str
    cookie_name: str
    cookie_path: str
    ttl_seconds: int = 600


class StateError(Exception):
    """The callback's state is refused; the message says why in words a person can act on."""


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def cookie_header(binding: Binding, value: str, max_age: int) -> str:
    secure = "; Secure" if config.settings().this_endpoint.startswith("https://") else ""
    return (f"{binding.cookie_name}={value}; Path={binding.cookie_path}; Max-Age={max_age}; HttpOnly; "
            f"SameSite=Lax{secure}")


def clear_cookie_header(binding: Binding) -> str:
    return cookie_header(binding, "", 0)


def issue(binding: Binding, remember: dict[str, Any] | None = None) -> tuple[str, str]:
    """A new state for a new browser secret: (state for the authorization URL, Set-Cookie header)."""
    state = jose.b64url_encode(os.urandom(32))
    browser = jose.b64url_encode(os.urandom(32))
    sealed = encryption.seal(json.dumps(remember).encode()) if remember is not None else None
    now = int(time.time())
    with storage.database().transaction() as tx:
        tx.execute("DELETE FROM oauth_states WHERE expires_at < ?", (now - KEEP_SECONDS,))
        tx.execute("INSERT INTO oauth_states (state_hash, flow, browser_hash, sealed, created_at, expires_at) "
                   "VALUES (?, ?, ?, ?, ?, ?)",
                   (_digest(state), binding.flow, _digest(browser), sealed, now, now + binding.ttl_seconds))
    return state, cookie_header(binding, browser, binding.ttl_seconds)


def _browser_secret(binding: Binding, cookie_header_value: str | None) -> str | None:
    if not cookie_header_value:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(cookie_header_value)
    except CookieError:
        return None
    morsel = jar.get(binding.cookie_name)
    return morsel.value if morsel is not None and morsel.value else None


def consume(binding: Binding, state: str | None, cookie_header_value: str | None) -> dict[str, Any]:
    """What the flow remembered, if `state` passes every check; else StateError (and the state is spent)."""
    if not state:
        raise StateError("the callback has no state parameter, so it cannot be tied to a flow started here")
    browser = _browser_secret(binding, cookie_header_value)
    now = int(time.time())
    with storage.database().transaction() as tx:
        tx.lock(f"oauth_state:{_digest(state)}")  # two callbacks with one state: the second sees it used
        row = tx.one("SELECT browser_hash, sealed, expires_at, used_at FROM oauth_states "
                     "WHERE state_hash = ? AND flow = ?", (_digest(state), binding.flow))
        if row is None:
            raise StateError("the state parameter was not issued by this proxy (or expired long ago)")
        if row[3] is not None:
            raise StateError("this state was already used: a callback is accepted once")
        # Spent whatever happens next: a state that failed a check cannot be tried again.
        tx.execute("UPDATE oauth_states SET used_at = ? WHERE state_hash = ?", (now, _digest(state)))
    if browser is None:
        raise StateError("this browser has no cookie from the start of the flow (cookies blocked, another "
                         "browser, or a link someone else started)")
    if not hmac.compare_digest(_digest(browser), str(row[0])):
        raise StateError("the state was issued to a different browser than the one presenting it")
    if int(row[2]) < now:
        raise StateError(f"the state expired (flows must finish within {binding.ttl_seconds // 60} minutes)")
    remembered: dict[str, Any] = json.loads(encryption.unseal(bytes(row[1]))) if row[1] is not None else {}
    return remembered

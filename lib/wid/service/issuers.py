"""Tokens from external OIDC issuers (GitHub Actions, ...): which issuers, whose keys, how cached.

An external token is verified only when its issuer is BOTH on the operator's allowlist
(`WID_TRUSTED_ISSUERS`) AND named by a role of the context its `aud` names; otherwise it is refused
before anything is fetched, so keys are never discovered from an issuer that a token merely claims.

Keys come from the issuer's discovery document (`{iss}/.well-known/openid-configuration`, whose
`issuer` must equal `iss` exactly) and its `jwks_uri`, fetched by `wid.net.safe_http`: over HTTPS (plain
HTTP only for a loopback host with `WID_ALLOW_INSECURE_ISSUERS`), from public addresses only (a
loopback one only with `WID_ALLOW_INSECURE_ISSUERS`, never a private one), without redirects, with a
total deadline per document and a size cap. The key set is cached in the database (table
issuer_cache) so every CGI process and replica shares it, fresh for the JWKS response's
Cache-Control max-age clamped to [MIN_CACHE_SECONDS, MAX_CACHE_SECONDS]. A token with an unknown
`kid` triggers at most one refetch per issuer per MIN_REFETCH_SECONDS. A failed fetch is remembered
for FAILURE_BACKOFF_SECONDS, during which tokens of that issuer are answered 503 at once instead of
each waiting for the timeout; keys past their max-age keep verifying for STALE_IF_ERROR_SECONDS
while the issuer cannot be reached. Without usable keys the answer is 503 (never a guess); a key the
issuer does not publish is 401.

Standard library + `cryptography` only (this is on the exchange's request path); `http.client`,
`ssl` and sockets are imported (by wid.net.safe_http) only when a fetch actually happens.
"""

import json
import re
import time
from typing import Any, NamedTuple

from wid import config, metrics
from wid.core import jose, tokens
from wid.core.errors import Unavailable, WidError
from wid.core.policy.engine import CompiledRbac
from wid.net import safe_http
from wid.store import rbac as rbac_store
from wid.store import storage

MIN_REFETCH_SECONDS = 60
FAILURE_BACKOFF_SECONDS = 30
MIN_CACHE_SECONDS = 60
MAX_CACHE_SECONDS = 24 * 3600
DEFAULT_CACHE_SECONDS = 900
STALE_IF_ERROR_SECONDS = 3600
MAX_DISCOVERY_BYTES = 64 * 1024
MAX_JWKS_BYTES = 256 * 1024
MAX_KEYS = 64
USER_AGENT = "wid-workload-identity-proxy (+OIDC discovery)"
_PUBLIC_MEMBERS = ("kty", "kid", "alg", "use", "n", "e", "crv", "x", "y")
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d{1,10})\"?\s*(?:,|$)", re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|,)\s*(?:no-store|no-cache)\s*(?:,|$|=)", re.IGNORECASE)


class DiscoveryError(Exception):
    """Discovery or JWKS could not be fetched or is unusable; the message says which and why.

    Never shown as such: a caller sees a TokenError (a bad issuer URL) or an issuer_unavailable error."""


def _unavailable(message: str, retry_after: int | None = None) -> WidError:
    return Unavailable(message, code="issuer_unavailable", retry_after=max(1, retry_after) if retry_after else None)


# -- which issuers ---------------------------------------------------------------------------------


def check_url(url: str, what: str) -> None:
    """HTTPS, or HTTP to a loopback host when WID_ALLOW_INSECURE_ISSUERS is set; no credentials, no fragment."""
    try:
        safe_http.check_url(url, what, allow_insecure=config.settings().allow_insecure_issuers)
    except safe_http.FetchError as exc:
        if exc.code == "insecure_url_refused":
            raise DiscoveryError(f"{what} {url!r} must use https (plain http only on loopback with "
                             "WID_ALLOW_INSECURE_ISSUERS)") from None
        raise DiscoveryError(f"{what} {url!r} is not an absolute URL without credentials or fragment") from None


def trusted_for(issuer: str, api: str, actx: str) -> CompiledRbac:
    """The compiled RBAC of the context api/actx; raise TokenError unless `issuer` is allowlisted and
    named by a role of it."""
    if issuer not in config.settings().trusted_issuers:
        raise tokens.TokenError(f"issuer {issuer!r} is not trusted by this proxy (WID_TRUSTED_ISSUERS)")
    rbac = rbac_store.compiled(api, actx)
    if rbac is None or issuer not in rbac.issuers():
        raise tokens.TokenError(f"no role of context api://{api}?actx={actx} names issuer {issuer!r}")
    return rbac


def verify_external(unverified: jose.Jws) -> tuple[dict[str, Any], CompiledRbac]:
    """Verify a token whose `iss` is not this proxy; returns its claims and the compiled RBAC of its
    context (read once, to find the issuer there), or raises TokenError / 503."""
    claims = unverified.claims
    issuer = claims.get("iss")
    if not isinstance(issuer, str) or not issuer:
        raise tokens.TokenError("token has no iss")
    audience = tokens.parse_audience(claims.get("aud"))
    rbac = trusted_for(issuer, audience.api, audience.actx)
    # Cheap checks before any key lookup: an expired or subject-less token never causes a fetch.
    tokens.check_times(claims)
    max_ttl = config.settings().max_token_ttl
    if claims["exp"] > time.time() + max_ttl:  # exp may be any JSON number: no arithmetic on it
        raise tokens.TokenError(f"token lives longer than {max_ttl}s, more than this proxy accepts")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise tokens.TokenError("token has no sub")
    kid = unverified.kid
    if kid is None:
        raise tokens.TokenError("token header has no kid")
    try:
        check_url(issuer, "issuer")
    except DiscoveryError as exc:
        raise tokens.TokenError(str(exc)) from None
    jwk = key_for(issuer, kid)
    try:
        jose.verify(unverified, jwk)
    except jose.JoseError as exc:
        raise tokens.TokenError(str(exc)) from None
    return claims, rbac


# -- the shared key cache ----------------------------------------------------------------------------


class CachedKeys(NamedTuple):
    keys: dict[str, dict[str, Any]] | None  # kid -> public JWK; None before the first successful fetch
    fresh_until: int
    attempt_at: int
    error: str | None

    def usable(self, now: float) -> bool:
        return self.keys is not None and now < self.fresh_until + STALE_IF_ERROR_SECONDS


def _memo_key(issuer: str) -> str:
    return f"issuer-keys:{issuer}"


def _read(db: storage.Database, issuer: str) -> CachedKeys | None:
    """The shared cache's row. A process keeps the key set it parsed, reused only while the row still
    holds the same JWKS text: a refetch or `forget()` by any process or replica is seen at once."""
    with db.transaction(write=False) as tx:
        row = tx.one("SELECT jwks, fresh_until, attempt_at, error FROM issuer_cache WHERE issuer = ?", (issuer,))
    if row is None:
        return None
    keys = None
    if row[0] is not None:
        with db.cache_lock:
            memo: tuple[str, dict[str, dict[str, Any]]] | None = db.cache.get(_memo_key(issuer))
        metrics.cache("issuer_keys", hit=memo is not None and memo[0] == row[0])
        if memo is not None and memo[0] == row[0]:
            keys = memo[1]
        else:
            keys = {jwk["kid"]: jwk for jwk in json.loads(row[0])}
            with db.cache_lock:
                db.cache[_memo_key(issuer)] = (row[0], keys)
    return CachedKeys(keys, int(row[1] or 0), int(row[2]), row[3])


def _claim(db: storage.Database, issuer: str, kid: str, now: int) -> bool:
    """Atomically decide whether this process fetches now, and record the attempt if so."""
    with db.transaction() as tx:
        tx.lock(f"wid-issuer:{issuer}")
        row = tx.one("SELECT jwks IS NOT NULL, fresh_until, attempt_at, error, jwks FROM issuer_cache "
                     "WHERE issuer = ?", (issuer,))
        if row is None:
            tx.execute("INSERT INTO issuer_cache (issuer, attempt_at) VALUES (?, ?)", (issuer, now))
            return True
        have, fresh_until, attempt_at, error, jwks = bool(row[0]), int(row[1] or 0), int(row[2]), row[3], row[4]
        if have and now < fresh_until:
            if any(jwk.get("kid") == kid for jwk in json.loads(jwks)):
                return False  # another process fetched it meanwhile
            allowed = now - attempt_at >= MIN_REFETCH_SECONDS  # unknown kid: once a minute per issuer
        else:
            allowed = error is None or now - attempt_at >= FAILURE_BACKOFF_SECONDS  # missing or stale
        if allowed:
            tx.execute("UPDATE issuer_cache SET attempt_at = ? WHERE issuer = ?", (now, issuer))
        return allowed


def _store(db: storage.Database, issuer: str, jwks_uri: str, keys: list[dict[str, Any]], max_age: int) -> None:
    now = int(time.time())
    with db.transaction() as tx:
        tx.execute("UPDATE issuer_cache SET jwks_uri = ?, jwks = ?, fetched_at = ?, fresh_until = ?, attempt_at = ?, "
                   "error = NULL WHERE issuer = ?",
                   (jwks_uri, json.dumps(keys, sort_keys=True), now, now + max_age, now, issuer))


def _store_failure(db: storage.Database, issuer: str, error: str) -> None:
    with db.transaction() as tx:
        tx.execute("UPDATE issuer_cache SET attempt_at = ?, error = ? WHERE issuer = ?",
                   (int(time.time()), error[:500], issuer))


def key_for(issuer: str, kid: str) -> dict[str, Any]:
    """The issuer's public JWK with this kid, from the shared cache, fetching when due (see module doc)."""
    db = storage.database()
    now = time.time()
    entry = _read(db, issuer)
    if entry is not None and entry.keys is not None and now < entry.fresh_until and kid in entry.keys:
        return entry.keys[kid]
    fetch_error: str | None = None
    if _claim(db, issuer, kid, int(now)):
        try:
            jwks_uri, keys, max_age = fetch_keys(issuer)
        except DiscoveryError as exc:
            fetch_error = str(exc)
            _store_failure(db, issuer, fetch_error)
        else:
            _store(db, issuer, jwks_uri, keys, max_age)
    entry = _read(db, issuer)
    now = time.time()
    if entry is not None and entry.keys is not None and entry.usable(now) and kid in entry.keys:
        return entry.keys[kid]  # fresh, or stale while the issuer cannot be reached
    failed = fetch_error is not None or (entry is not None and entry.error is not None)
    if entry is not None and entry.keys is not None and now < entry.fresh_until and not failed:
        raise tokens.TokenError(f"token is signed by key {kid!r}, which issuer {issuer} does not publish")
    reason = fetch_error or (entry.error if entry is not None else None) or "another request is fetching them"
    retry = FAILURE_BACKOFF_SECONDS
    if entry is not None:
        retry = max(1, entry.attempt_at + FAILURE_BACKOFF_SECONDS - int(now))
    raise _unavailable(f"cannot verify the token: the keys of issuer {issuer} are unavailable ({reason}); "
                       f"retry in {retry}s", retry)


def forget(issuer: str | None = None) -> None:
    """Drop the cached keys of one issuer (or all): operators after an issuer's key compromise, and tests."""
    db = storage.database()
    with db.transaction() as tx:
        if issuer is None:
            tx.execute("DELETE FROM issuer_cache")
        else:
            tx.execute("DELETE FROM issuer_cache WHERE issuer = ?", (issuer,))
    with db.cache_lock:
        for key in [k for k in db.cache if k.startswith("issuer-keys:") and (issuer is None or k == _memo_key(issuer))]:
            del db.cache[key]


# -- fetching --------------------------------------------------------------------------------------------


def fetch_keys(issuer: str) -> tuple[str, list[dict[str, Any]], int]:
    """Discovery then JWKS: (jwks_uri, usable public keys, seconds they stay fresh). Raises DiscoveryError."""
    check_url(issuer, "issuer")
    discovery_url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    document, _ = fetch_json(discovery_url, MAX_DISCOVERY_BYTES)
    if document.get("issuer") != issuer:
        raise DiscoveryError(f"discovery document of {issuer} names issuer {str(document.get('issuer'))[:200]!r}")
    jwks_uri = document.get("jwks_uri")
    if not isinstance(jwks_uri, str) or not jwks_uri:
        raise DiscoveryError(f"discovery document of {issuer} has no jwks_uri")
    check_url(jwks_uri, "jwks_uri")
    jwks, cache_control = fetch_json(jwks_uri, MAX_JWKS_BYTES)
    return jwks_uri, usable_keys(jwks, jwks_uri), cache_seconds(cache_control)


def usable_keys(jwks: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """The public signing keys of a JWKS we can verify with; keys with a repeated kid are dropped."""
    raw = jwks.get("keys")
    if not isinstance(raw, list):
        raise DiscoveryError(f"{where} is not a JWK set (no keys list)")
    if len(raw) > MAX_KEYS:
        raise DiscoveryError(f"{where} lists {len(raw)} keys, more than {MAX_KEYS}")
    kept: dict[str, dict[str, Any]] = {}
    repeated: set[str] = set()
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("kid"), str) or not item["kid"]:
            continue
        if item.get("use") not in (None, "sig") or item.get("kty") not in ("RSA", "EC"):
            continue
        public = {name: item[name] for name in _PUBLIC_MEMBERS if name in item}
        try:
            jose.public_key(public)
        except jose.JoseError:
            continue
        if public["kid"] in kept:
            repeated.add(public["kid"])
        kept[public["kid"]] = public
    keys = [jwk for kid, jwk in kept.items() if kid not in repeated]
    if not keys:
        raise DiscoveryError(f"{where} has no usable signing key")
    return keys


def cache_seconds(cache_control: str | None) -> int:
    """How long fetched keys stay fresh: the response's max-age, within [MIN, MAX]; default without one."""
    if not cache_control:
        return DEFAULT_CACHE_SECONDS
    if _NO_CACHE.search(cache_control):
        return MIN_CACHE_SECONDS
    match = _MAX_AGE.search(cache_control)
    if match is None:
        return DEFAULT_CACHE_SECONDS
    return max(MIN_CACHE_SECONDS, min(MAX_CACHE_SECONDS, int(match.group(1))))


def fetch_json(url: str, limit: int) -> tuple[dict[str, Any], str | None]:
    """GET a JSON object through wid.net.safe_http (public addresses only, no redirects, at most `limit`
    bytes, one total deadline); status 200 only. Returns it with the response's Cache-Control."""
    timeout = config.settings().issuer_fetch_timeout  # connect + TLS + headers + body, for one document
    try:
        result = safe_http.request("GET", url, service="issuer_keys", what=url, timeout=timeout, limit=limit,
                                   allow_insecure=config.settings().allow_insecure_issuers,
                                   headers={"Accept": "application/json", "User-Agent": USER_AGENT})
    except safe_http.FetchError as exc:
        if isinstance(exc, safe_http.FetchTimeout):
            raise DiscoveryError(f"{url} did not answer within {timeout:g}s") from None
        if exc.code == "response_too_large":
            raise DiscoveryError(f"{url} is larger than {limit} bytes") from None
        cause = exc.__cause__
        if cause is not None:  # the connection failed: say how (refused, a certificate problem, ...)
            detail = str(cause).splitlines()[0][:200] if str(cause) else type(cause).__name__
            raise DiscoveryError(f"cannot fetch {url}: {detail}") from None
        raise DiscoveryError(exc.message) from None  # a refused address, an unknown host
    if result.status != 200:
        raise DiscoveryError(f"{url} answered HTTP {result.status}")
    try:
        document = json.loads(result.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise DiscoveryError(f"{url} is not JSON") from None
    if not isinstance(document, dict):
        raise DiscoveryError(f"{url} is not a JSON object")
    return document, result.header("Cache-Control")

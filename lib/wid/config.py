"""Every setting, read from the environment here and nowhere else, parsed, bounded and validated once.

`settings()` reads them all on first use and caches them for the process; a bad value stops whatever
asked (the CLI before any command runs, every CGI request with a 500) with a message naming the
variable, the value found (never a secret's) and what is allowed (README.md, "Configuration", lists
the bounds; `wid config check` shows values and sources). Modules receive values, never variable
names. Standard library only, nothing heavy at import time: this runs on every request path.
"""

import os
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any, NamedTuple, TypeVar

from wid.config_parsers import (
    GIB,
    KIB,
    MIB,
    atproto_scope,
    base_url,
    bearer_secret,
    caddy_size,
    caddy_size_bytes,
    client_credential,
    database_uri,
    decimal,
    directory,
    do_scopes,
    endpoint,
    fernet_key,
    flag,
    issuers,
    one_of,
    owner_claims,
    whole,
    without_credentials,
)

T = TypeVar("T")

DEFAULT_TRUSTED_ISSUERS: tuple[str, ...] = ("https://token.actions.githubusercontent.com",)
DAY = 24 * 3600
# The Droplet provisioning and workload tokens live 15 minutes (wid.service.provisioning), so no bound
# on token lifetimes may be lower.
FIXED_TOKEN_LIFETIME = 15 * 60
# fcgiwrap's socket lives at $WID_RUN_DIR/fcgiwrap.sock; a Unix socket path holds at most 107 bytes.
MAX_SOCKET_PATH = 107
CADDY_LOG_LEVELS = ("DEBUG", "INFO", "WARN", "ERROR")
# How Python requests are served (docs/operator.md, "Choose a serving mode"): a CGI process per
# request under fcgiwrap, or long-lived uWSGI workers (wid.web.server) behind the same Caddy.
MODES = ("cgi", "persistent")
MAX_WORKERS = 256
# Read by scripts/run.sh, install.sh or the Caddyfile only; known, so they are not reported as unknown.
OTHER_VARIABLES = frozenset({"WID_INSTALL_FLAGS"})


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the variable and the fix."""


class Settings:
    """Every setting, in the order of README.md's table; each attribute's variable is in _read below.

    Read-only once built. A plain class, not a NamedTuple: building a NamedTuple class of this many
    fields cost every CGI process 2 M instructions more (docs/architecture.md, "What a request imports").
    """

    port: int
    this_endpoint: str
    data_dir: str  # absolute paths, as str: request paths do without pathlib (docs/architecture.md)
    run_dir: str
    database_uri: str | None
    secret_key: str | None
    do_oauth_client_id: str | None
    do_oauth_client_secret: str | None
    do_oauth_scopes: tuple[str, ...] | None  # None: the upstream's least-privilege defaults
    do_api_url: str
    do_oauth_url: str
    upstream_timeout: float
    trusted_issuers: tuple[str, ...]
    # issuer -> claims naming the owner of its workloads (lib/wid/core/rbac/owner.py; GitHub's are built in)
    issuer_owner_claims: dict[str, tuple[str, ...]]
    allow_insecure_issuers: bool
    issuer_fetch_timeout: float
    max_token_ttl: int
    max_exchange_ttl: int
    max_body_bytes: int
    droplet_ssh_port: int
    droplet_ssh_timeout: float
    refresh_ttl: int
    git_max_push_bytes: int
    git_max_repo_bytes: int
    git_max_body_size: str
    mode: str
    workers: int | None  # WID_WORKERS, persistent mode; None: persistent_workers() chooses
    threads: int  # WID_THREADS: requests each persistent worker serves at once (1: one at a time)
    cgi_workers: int
    metrics_token: str | None  # WID_METRICS_TOKEN: what a scraper of /metrics sends; None: /metrics is off
    publish_interval: int  # seconds between a replica's re-publications of its JWKS file
    jwks_max_age: int  # Cache-Control max-age of the issuer metadata and JWKS responses
    caddy_log_level: str
    atproto_plc_url: str
    atproto_handle_resolver: str | None
    atproto_oauth_scope: str
    atproto_rbac_token_ttl: int
    atproto_timeout: float
    atproto_did_cache_seconds: int
    atproto_max_response_bytes: int

    def __init__(self, **values: Any) -> None:
        fields = Settings.__annotations__
        if values.keys() != fields.keys():  # every setting, each once: a forgotten one has no default here
            wrong = sorted(fields.keys() ^ values.keys())
            raise TypeError(f"Settings needs exactly its {len(fields)} fields; wrong: {wrong}")
        self.__dict__.update(values)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"settings are read-only: {name} cannot be set")

    def persistent_workers(self) -> int:
        """uWSGI worker processes: WID_WORKERS, else two per CPU this process may use."""
        return self.workers if self.workers is not None else min(MAX_WORKERS, 2 * available_cpus())

    @property
    def public_dir(self) -> str:
        """Files Caddy serves directly (issuer metadata, JWKS)."""
        return os.path.join(self.data_dir, "public")

    @property
    def metrics_dir(self) -> str:
        """Persistent mode's per-worker metric files (wid.metrics), emptied whenever the server starts."""
        return os.path.join(self.run_dir, "metrics")

    @property
    def fcgi_socket(self) -> str:
        return os.path.join(self.run_dir, "fcgiwrap.sock")


class Source(NamedTuple):
    """One setting as `wid config check` shows it: never a secret's value."""

    name: str
    shown: str
    source: str  # "default" or "environment"


# -- reading --------------------------------------------------------------------------------------


class _Reader:
    def __init__(self, env: Mapping[str, str], record: bool):
        self.env = env
        self.record = record  # keep what `wid config check` shows (not on request paths)
        self.sources: list[Source] = []
        self.problems: list[str] = []
        self.invalid: set[str] = set()

    def read(self, name: str, parse: Callable[[str], T], default: T, *, secret: bool = False,
             show: Callable[[T], str] | None = None, empty_is_value: bool = False) -> T:
        raw = self.env.get(name)
        if raw is None or (not raw.strip() and not empty_is_value):
            if self.record:
                self.sources.append(Source(name, _shown(default, secret), "default"))
            return default
        try:
            value = parse(raw.strip())
        except ValueError as exc:
            self.fail(name, f"{name} {exc}" + ("" if secret else f", got {raw[:200]!r}"),
                      "(hidden)" if secret else repr(raw[:200]))
            return default
        if self.record:
            self.sources.append(Source(name, show(value) if show else _shown(value, secret), "environment"))
        return value

    def valid(self, *names: str) -> bool:
        return not self.invalid.intersection(names)

    def fail(self, name: str, message: str, shown: str) -> None:
        self.invalid.add(name)
        self.problems.append(message)
        source = "environment" if name in self.env else "default"
        self.sources = [s for s in self.sources if s.name != name] + [Source(name, f"{shown} (invalid)", source)]


def _shown(value: Any, secret: bool) -> str:
    if value is None:
        return "(unset)"
    if secret:
        return "(set)"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return " ".join(value) if value else "(none)"
    if isinstance(value, dict):
        return " ".join(f"{key}={','.join(claims)}" for key, claims in value.items()) or "(none)"
    return str(value)


def default_data_dir() -> str:
    """Where `make run` keeps its data: the checkout's data/ (scripts/run.sh beside lib/), else the image's
    /var/lib/wid. Never the current directory: `wid` run from elsewhere acts on the same server."""
    checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
    run_script = os.path.join(checkout, "scripts", "run.sh")
    return os.path.join(checkout, "data") if os.path.isfile(run_script) else "/var/lib/wid"


def _read(env: Mapping[str, str], record: bool = False) -> tuple[Settings, list[Source], list[str]]:
    r = _Reader(env, record)
    port = r.read("PORT", whole(1, 65535, "port"), 8080)
    this_endpoint = r.read("THIS_ENDPOINT", endpoint, f"http://localhost:{port}")
    data_dir = r.read("WID_DATA_DIR", directory, default_data_dir())
    values = Settings(
        port=port,
        this_endpoint=this_endpoint,
        data_dir=data_dir,
        run_dir=r.read("WID_RUN_DIR", directory, os.path.join(data_dir, "run")),
        database_uri=r.read("DATABASE_URI", database_uri, None, secret=True, show=without_credentials),
        secret_key=r.read("WID_SECRET_KEY", fernet_key, None, secret=True),
        do_oauth_client_id=r.read("DIGITALOCEAN_OAUTH_CLIENT_ID", client_credential, None),
        do_oauth_client_secret=r.read("DIGITALOCEAN_OAUTH_CLIENT_SECRET", client_credential, None, secret=True),
        do_oauth_scopes=r.read("DIGITALOCEAN_OAUTH_SCOPES", do_scopes, None),
        do_api_url=r.read("DIGITALOCEAN_API_URL", base_url, "https://api.digitalocean.com"),
        do_oauth_url=r.read("DIGITALOCEAN_OAUTH_URL", base_url, "https://cloud.digitalocean.com"),
        upstream_timeout=float(r.read("WID_UPSTREAM_TIMEOUT", whole(1, 300, "seconds"), 30)),
        trusted_issuers=r.read("WID_TRUSTED_ISSUERS", issuers, DEFAULT_TRUSTED_ISSUERS, empty_is_value=True),
        issuer_owner_claims=r.read("WID_ISSUER_OWNER_CLAIMS", owner_claims, dict[str, tuple[str, ...]]()),
        allow_insecure_issuers=r.read("WID_ALLOW_INSECURE_ISSUERS", flag, False),
        issuer_fetch_timeout=r.read("WID_ISSUER_FETCH_TIMEOUT", decimal(0.1, 60, "seconds"), 5.0),
        max_token_ttl=r.read("WID_MAX_TOKEN_TTL", whole(FIXED_TOKEN_LIFETIME, 7 * DAY, "seconds"), DAY),
        max_exchange_ttl=r.read("WID_MAX_EXCHANGE_TTL", whole(60, 7 * DAY, "seconds"), 3600),
        max_body_bytes=r.read("WID_MAX_BODY_BYTES", whole(KIB, 16 * MIB, "bytes"), MIB),
        droplet_ssh_port=r.read("WID_DROPLET_SSH_PORT", whole(1, 65535, "port"), 22),
        droplet_ssh_timeout=float(r.read("WID_DROPLET_SSH_TIMEOUT", whole(1, 120, "seconds"), 10)),
        refresh_ttl=r.read("WID_REFRESH_TTL", whole(FIXED_TOKEN_LIFETIME, 366 * DAY, "seconds"), 7 * DAY),
        git_max_push_bytes=r.read("WID_GIT_MAX_PUSH_BYTES", whole(64 * KIB, GIB, "bytes"), 8 * MIB),
        git_max_repo_bytes=r.read("WID_GIT_MAX_REPO_BYTES", whole(64 * KIB, GIB, "bytes"), 64 * MIB),
        git_max_body_size=r.read("WID_GIT_MAX_BODY_SIZE", caddy_size, "64MB"),
        mode=r.read("WID_MODE", one_of(*MODES), "cgi"),
        workers=r.read("WID_WORKERS", whole(1, MAX_WORKERS, "processes"), None),
        threads=r.read("WID_THREADS", whole(1, 64, "threads"), 4),
        cgi_workers=r.read("WID_CGI_WORKERS", whole(1, MAX_WORKERS, "processes"), 8),
        metrics_token=r.read("WID_METRICS_TOKEN", bearer_secret, None, secret=True),
        publish_interval=r.read("WID_PUBLISH_INTERVAL", whole(5, 3600, "seconds"), 60),
        jwks_max_age=r.read("WID_JWKS_MAX_AGE", whole(1, 86400, "seconds"), 300),
        caddy_log_level=r.read("WID_CADDY_LOG_LEVEL", one_of(*CADDY_LOG_LEVELS), "WARN"),
        atproto_plc_url=r.read("ATPROTO_PLC_URL", base_url, "https://plc.directory"),
        atproto_handle_resolver=r.read("ATPROTO_HANDLE_RESOLVER", base_url, None),
        atproto_oauth_scope=r.read("ATPROTO_OAUTH_SCOPE", atproto_scope, "atproto transition:generic"),
        atproto_rbac_token_ttl=r.read("ATPROTO_RBAC_TOKEN_TTL", whole(60, 7 * DAY, "seconds"), 43200),
        atproto_timeout=float(r.read("ATPROTO_TIMEOUT", whole(1, 120, "seconds"), 15)),
        atproto_did_cache_seconds=r.read("ATPROTO_DID_CACHE_SECONDS", whole(0, DAY, "seconds"), 300),
        atproto_max_response_bytes=r.read("ATPROTO_MAX_RESPONSE_BYTES", whole(KIB, 100 * MIB, "bytes"), 10 * MIB),
    )
    # Settings that must agree with each other (each checked once both are valid on their own).
    if r.valid("DATABASE_URI", "WID_SECRET_KEY") and values.database_uri and not values.secret_key:
        # Replicas share the database, so they share the key: one generated on one instance's disk would not do.
        r.problems.append("WID_SECRET_KEY must be set when DATABASE_URI is set: every instance sharing the "
                          "database needs the same key")
    client = ("DIGITALOCEAN_OAUTH_CLIENT_ID", "DIGITALOCEAN_OAUTH_CLIENT_SECRET")
    if r.valid(*client) and bool(values.do_oauth_client_id) != bool(values.do_oauth_client_secret):
        missing = client[1] if values.do_oauth_client_id else client[0]
        r.problems.append(f"{missing} is unset while its pair is set: set both (the OAuth application's client "
                          "id and secret) or neither")
    if r.valid("WID_MODE", "WID_METRICS_TOKEN") and values.metrics_token and values.mode != "persistent":
        # A CGI process lives for one request: it has no counters to show (docs/operator.md, "Metrics").
        r.problems.append("WID_METRICS_TOKEN is set but WID_MODE is cgi: /metrics is served in persistent mode "
                          "only; set WID_MODE=persistent or unset WID_METRICS_TOKEN")
    push, body = values.git_max_push_bytes, caddy_size_bytes(values.git_max_body_size)
    if r.valid("WID_GIT_MAX_PUSH_BYTES", "WID_GIT_MAX_BODY_SIZE") and not push <= body <= 4 * GIB:
        r.fail("WID_GIT_MAX_BODY_SIZE", f"WID_GIT_MAX_BODY_SIZE must be from WID_GIT_MAX_PUSH_BYTES ({push} bytes) "
               f"to 4GiB, got {values.git_max_body_size!r} ({body} bytes)", repr(values.git_max_body_size))
    return values, r.sources, r.problems


def read(env: Mapping[str, str]) -> Settings:
    """The settings in `env`, or ConfigError naming every variable that is wrong (one line)."""
    values, _, problems = _read(env)
    if problems:
        raise ConfigError("; ".join(problems))
    return values


@lru_cache(maxsize=1)
def settings() -> Settings:
    """Read once per process; tests that change the environment call settings.cache_clear()."""
    return read(os.environ)


def sources(env: Mapping[str, str] | None = None) -> tuple[list[Source], list[str]]:
    """Every setting as shown to an operator, and what is wrong (empty when all is well)."""
    _, shown, problems = _read(os.environ if env is None else env, record=True)
    return shown, problems


def unknown_variables(env: Mapping[str, str] | None = None) -> list[str]:
    """A warning for each WID_* variable that is no setting (a typo is otherwise silently ignored)."""
    import difflib  # only for `wid setup` and `wid config check`

    names = [s.name for s in sources({})[0]] + sorted(OTHER_VARIABLES)
    found = sorted(n for n in (os.environ if env is None else env) if n.startswith("WID_") and n not in names)
    return [f"{name} is not a setting of wid and is ignored"
            + "".join(f"; did you mean {m}?" for m in difflib.get_close_matches(name, names, n=1)) for name in found]


def check_socket_path(s: Settings) -> None:
    """fcgiwrap refuses a socket path longer than a Unix socket holds: say which variable to shorten."""
    length = len(s.fcgi_socket.encode())
    if length > MAX_SOCKET_PATH:
        name = "WID_DATA_DIR" if s.run_dir == os.path.join(s.data_dir, "run") else "WID_RUN_DIR"
        raise ConfigError(f"{name} is too long for fcgiwrap's socket: {s.fcgi_socket} has {length} bytes, at most "
                          f"{MAX_SOCKET_PATH} fit; set WID_RUN_DIR to a directory with a shorter path")


def available_cpus() -> int:
    """CPUs this process may use: its CPU affinity, capped by a cgroup v2 quota (containers, App Platform)."""
    count = len(os.sched_getaffinity(0))
    try:
        with open("/sys/fs/cgroup/cpu.max") as cpu_max:
            quota, period = cpu_max.read().split()
        if quota != "max":
            count = min(count, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return count


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    import ipaddress  # only when an issuer URL is checked: not on every request

    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False

"""Settings from the environment (DESIGN.md, "The contract": these names are public)."""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

DEFAULT_TRUSTED_ISSUERS = ("https://token.actions.githubusercontent.com",)


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the variable and the fix."""


class Settings(NamedTuple):
    this_endpoint: str
    port: int
    data_dir: Path
    database_uri: str | None
    secret_key: str | None
    do_oauth_client_id: str | None
    do_oauth_client_secret: str | None
    do_api_url: str
    do_oauth_url: str
    trusted_issuers: tuple[str, ...]
    allow_insecure_issuers: bool
    max_body_bytes: int
    max_exchange_ttl: int
    upstream_timeout: float
    # issuer -> claims naming the owner of its workloads (lib/wid/core/rbac/owner.py; GitHub's are built in)
    issuer_owner_claims: dict[str, tuple[str, ...]]
    publish_interval: int  # seconds between a replica's re-publications of its JWKS file
    jwks_max_age: int  # Cache-Control max-age of the issuer metadata and JWKS responses

    @property
    def public_dir(self) -> Path:
        """Files Caddy serves directly (issuer metadata, JWKS)."""
        return self.data_dir / "public"


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None


def _positive(name: str, default: int) -> int:
    value = _int(name, default)
    if value <= 0:
        raise ConfigError(f"{name} must be a positive number of seconds, got {value}")
    return value


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


def _endpoint(raw: str | None, port: int) -> str:
    value = (raw or f"http://localhost:{port}").strip()
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ConfigError(f"THIS_ENDPOINT must be an absolute http(s) URL, got {value!r}")
    if value.endswith("/") or parts.query or parts.fragment:
        raise ConfigError(f"THIS_ENDPOINT must have no trailing slash, query or fragment, got {value!r}")
    return value


def _issuer_owner_claims(raw: str) -> dict[str, tuple[str, ...]]:
    """WID_ISSUER_OWNER_CLAIMS: space-separated ISSUER=claim[,claim...] entries."""
    declared: dict[str, tuple[str, ...]] = {}
    for entry in raw.split():
        issuer, sep, names = entry.rpartition("=")
        claims = tuple(name for name in names.split(",") if name)
        if not sep or not issuer.startswith(("https://", "http://")) or not claims:
            raise ConfigError(f"WID_ISSUER_OWNER_CLAIMS: {entry!r} is not ISSUER=claim[,claim...] (an issuer URL, "
                              "'=', then claim names separated by commas)")
        bad = [name for name in claims if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}", name)]
        if bad:
            raise ConfigError(f"WID_ISSUER_OWNER_CLAIMS: {entry!r} names claims that are not plain names: "
                              f"{', '.join(bad)}")
        if issuer in declared:
            raise ConfigError(f"WID_ISSUER_OWNER_CLAIMS: issuer {issuer} is declared twice")
        declared[issuer] = claims
    return declared


@lru_cache(maxsize=1)
def settings() -> Settings:
    """Read once per process; tests that change the environment call settings.cache_clear()."""
    port = _int("PORT", 8080)
    issuers = os.environ.get("WID_TRUSTED_ISSUERS")
    trusted = tuple(issuers.split()) if issuers is not None else DEFAULT_TRUSTED_ISSUERS
    return Settings(
        this_endpoint=_endpoint(os.environ.get("THIS_ENDPOINT"), port),
        port=port,
        data_dir=Path(os.environ.get("WID_DATA_DIR") or "./data").resolve(),
        database_uri=os.environ.get("DATABASE_URI") or None,
        secret_key=os.environ.get("WID_SECRET_KEY") or None,
        do_oauth_client_id=os.environ.get("DIGITALOCEAN_OAUTH_CLIENT_ID") or None,
        do_oauth_client_secret=os.environ.get("DIGITALOCEAN_OAUTH_CLIENT_SECRET") or None,
        do_api_url=(os.environ.get("DIGITALOCEAN_API_URL") or "https://api.digitalocean.com").rstrip("/"),
        do_oauth_url=(os.environ.get("DIGITALOCEAN_OAUTH_URL") or "https://cloud.digitalocean.com").rstrip("/"),
        trusted_issuers=trusted,
        allow_insecure_issuers=_flag("WID_ALLOW_INSECURE_ISSUERS"),
        max_body_bytes=_int("WID_MAX_BODY_BYTES", 1024 * 1024),
        max_exchange_ttl=_int("WID_MAX_EXCHANGE_TTL", 3600),
        upstream_timeout=float(_int("WID_UPSTREAM_TIMEOUT", 30)),
        issuer_owner_claims=_issuer_owner_claims(os.environ.get("WID_ISSUER_OWNER_CLAIMS", "")),
        publish_interval=_positive("WID_PUBLISH_INTERVAL", 60),
        jwks_max_age=_positive("WID_JWKS_MAX_AGE", 300),
    )

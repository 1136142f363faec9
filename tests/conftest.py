"""Shared fixtures: one PostgreSQL cluster and one proxy per session; fresh state per test where it matters."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from devkit.proxy import ProxyServer
from devkit.standins.digitalocean import DigitalOceanStandIn
from devkit.standins.github_oidc import GitHubOIDCStandIn
from tests.harness import PostgresServer
from wid import config
from wid.store import storage

if TYPE_CHECKING:
    from devkit.do_world import World

OAUTH_CLIENT_ID = "wid-test-client"
OAUTH_CLIENT_SECRET = "wid-test-client-secret"


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def app_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """In-process settings pointing at a fresh data dir; SQLite unless a test sets DATABASE_URI."""
    data = tmp_path / "data"
    monkeypatch.setenv("WID_DATA_DIR", str(data))
    monkeypatch.setenv("THIS_ENDPOINT", "https://wid.example.test")
    for name in ("DATABASE_URI", "WID_SECRET_KEY", "PORT"):
        monkeypatch.delenv(name, raising=False)
    config.settings.cache_clear()
    yield data
    storage.close_all()
    config.settings.cache_clear()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, app_env: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test once on SQLite and once on a fresh PostgreSQL database."""
    if request.param == "postgresql":
        pg: PostgresServer = request.getfixturevalue("postgres")
        monkeypatch.setenv("DATABASE_URI", pg.fresh_database())
        monkeypatch.setenv("WID_SECRET_KEY", base64.urlsafe_b64encode(os.urandom(32)).decode())
        config.settings.cache_clear()
    return str(request.param)


@pytest.fixture(scope="session")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyServer]:
    """The proxy as `make run` serves it (Caddy + fcgiwrap + CGI), with SQLite."""
    with ProxyServer(tmp_path_factory.mktemp("proxy") / "data") as server:
        yield server


@pytest.fixture(scope="session")
def persistent_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The DigitalOcean world (its own stand-in, the proxy as `make run` serves it) in persistent mode:
    Caddy in front of three uWSGI workers, SQLite. For what can differ between the modes
    (tests/test_persistent_mode.py); the rest of the suite runs in CGI mode."""
    from tests.worlds import serve_world  # pydo and azure only for the tests that use it

    yield from serve_world(tmp_path_factory.mktemp("persistent") / "data", {"WID_WORKERS": "3"}, mode="persistent")


@pytest.fixture(scope="session")
def do_api() -> Iterator[DigitalOceanStandIn]:
    """The stand-in DigitalOcean API and OAuth server, shared by the session."""
    with DigitalOceanStandIn() as server:
        yield server


@pytest.fixture(scope="session")
def github_oidc() -> Iterator[GitHubOIDCStandIn]:
    """The stand-in GitHub Actions OIDC issuer, shared by the session."""
    with GitHubOIDCStandIn() as server:
        yield server


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, do_api: DigitalOceanStandIn,
          github_oidc: GitHubOIDCStandIn) -> Iterator[ProxyServer]:
    """The proxy wired to the stand-ins: DigitalOcean API + OAuth, and the GitHub issuer on the allowlist.

    Tests that share it use their own teams (do_api.add_team) so they never see each other's state.
    """
    server = ProxyServer(tmp_path_factory.mktemp("stack") / "data", {
        "DIGITALOCEAN_API_URL": do_api.url,
        "DIGITALOCEAN_OAUTH_URL": do_api.url,
        "DIGITALOCEAN_OAUTH_CLIENT_ID": OAUTH_CLIENT_ID,
        "DIGITALOCEAN_OAUTH_CLIENT_SECRET": OAUTH_CLIENT_SECRET,
        **github_oidc.proxy_env(),
        "WID_ALLOW_INSECURE_ISSUERS": "1",
    })
    do_api.add_oauth_client(OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET, f"{server.url}/auth/digitalocean/v1/callback")
    with server:
        yield server


def subprocess_env(**overrides: str) -> dict[str, str]:
    """The current process environment plus overrides, for `wid` or helper processes."""
    return {**os.environ, **overrides}

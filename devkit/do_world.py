"""The DigitalOcean side of the world, for the tests and `wid demo`: the proxy under `make run`'s script
in front of the DigitalOcean API + OAuth stand-in, teams connected through the real OAuth web flow,
RBAC installed from the articles' example repo, and pydo pointed at the proxy."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pydo
import requests
from azure.core.pipeline import PipelineRequest
from azure.core.pipeline.policies import SansIOHTTPPolicy

from devkit.proxy import ProxyServer
from devkit.standins.digitalocean import DigitalOceanStandIn, OAuthClient, Team

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "rbac-schema" / "examples"
START = "/auth/digitalocean/v1/authorize"
CALLBACK = "/auth/digitalocean/v1/callback"
API = "DigitalOcean"
ROLE = "database-and-spaces-keys-access"  # the articles' data role (policies database-credential-read, spaces-keys)
DATABASE_UUID = "9cc10173-e9ea-4176-9dbc-a4cee4c4ff30"  # the database the example policy names


def example_files(extra: Mapping[str, str] | None = None) -> dict[str, bytes]:
    files = {p.relative_to(EXAMPLES).as_posix(): p.read_bytes() for p in EXAMPLES.rglob("*.hcl")}
    files.update({name: text.encode() for name, text in (extra or {}).items()})
    return files


@dataclass
class World:
    """A DigitalOcean stand-in (API + OAuth) and a proxy configured with an OAuth client for it."""

    stand_in: DigitalOceanStandIn
    proxy: ProxyServer
    client: OAuthClient
    teams: dict[str, Team] = field(default_factory=dict)

    @classmethod
    def start(cls, data_dir: Path, env: Mapping[str, str] | None = None, *, register: bool = True,
              mode: str | None = None) -> World:
        stand_in = DigitalOceanStandIn()
        stand_in.start()
        proxy = ProxyServer(data_dir, {
            "DIGITALOCEAN_API_URL": stand_in.url,
            "DIGITALOCEAN_OAUTH_URL": stand_in.url,
            "DIGITALOCEAN_OAUTH_CLIENT_ID": "wid-test-client",
            "DIGITALOCEAN_OAUTH_CLIENT_SECRET": "wid-test-secret-do-not-show",
            "WID_UPSTREAM_TIMEOUT": "2",
            **(env or {}),
        }, mode=mode)
        client = stand_in.add_oauth_client(proxy.env["DIGITALOCEAN_OAUTH_CLIENT_ID"],
                                           proxy.env["DIGITALOCEAN_OAUTH_CLIENT_SECRET"],
                                           redirect_uri=f"{proxy.url}{CALLBACK}")
        try:
            proxy.start()
        except Exception:
            stand_in.stop()
            raise
        return cls(stand_in, proxy, client)

    def stop(self) -> None:
        self.proxy.stop()
        self.stand_in.stop()

    @property
    def url(self) -> str:
        return self.proxy.url

    # -- the OAuth web flow, as a browser does it (cookies kept by a requests.Session) ------------------

    def begin(self, session: requests.Session) -> str:
        """Start the flow at the proxy; returns the state it sent to DigitalOcean."""
        response = session.post(f"{self.url}{START}", allow_redirects=False, timeout=10)
        assert response.status_code == 303, response.text
        location = response.headers["Location"]
        assert location.startswith(f"{self.stand_in.url}/v1/oauth/authorize?")
        return parse_qs(urlsplit(location).query)["state"][0]

    def consent(self, session: requests.Session, team_uuid: str, *, approve: bool = True,
                start: requests.Response | None = None) -> str:
        """Follow the proxy's redirect to the consent page and choose; returns the callback URL."""
        if start is None:
            start = session.post(f"{self.url}{START}", allow_redirects=False, timeout=10)
        page = session.get(start.headers["Location"], timeout=10)
        assert page.status_code == 200, page.text
        match = re.search(r'name="authorization_id" value="([^"]+)"', page.text)
        assert match, page.text
        decision = session.post(f"{self.stand_in.url}/v1/oauth/authorize", allow_redirects=False, timeout=10,
                                data={"authorization_id": match.group(1), "team_uuid": team_uuid,
                                      "decision": "approve" if approve else "deny"})
        assert decision.status_code in (302, 303), decision.text
        callback: str = decision.headers["Location"]
        assert callback.startswith(f"{self.url}{CALLBACK}?")
        return callback

    def authorize(self, team_uuid: str, session: requests.Session | None = None) -> requests.Response:
        """The whole flow for one team; returns the callback's response (not followed)."""
        session = session or requests.Session()
        callback = self.consent(session, team_uuid)
        return session.get(callback, allow_redirects=False, timeout=15)

    def connect_team(self, name: str = "My Team", *, rbac: bool = True) -> Team:
        team = self.stand_in.add_team(name)
        self.teams[team.uuid] = team
        response = self.authorize(team.uuid)
        assert response.status_code == 303, response.text
        assert response.headers["Location"] == f"{self.url}/?connected={team.uuid}"
        if rbac:
            self.install_rbac(team.uuid)
        return team

    # -- RBAC and tokens --------------------------------------------------------------------------------

    def install_rbac(self, team_uuid: str, files: Mapping[str, bytes] | None = None) -> None:
        from wid.core.rbac import compiler as rbac_compile
        from wid.store import rbac as rbac_store
        from wid.store import storage

        with self.proxy.configured():
            compiled = rbac_compile.compile_tree(files or example_files(), api=API, actx=team_uuid)
            with storage.database().transaction() as tx:
                rbac_store.install(tx, API, team_uuid, compiled, "0" * 40)

    def jwt(self, team_uuid: str, role: str = ROLE, *, kind: str = "exchanged", ttl: int = 300,
            api: str = API, now: int | None = None) -> str:
        """A token of ours, signed with the proxy's key (what `wid token` does, without a process)."""
        from wid.store import signing

        with self.proxy.configured():
            token, _ = signing.sign({"aud": f"api://{api}?actx={team_uuid}", "sub": f"actx:{team_uuid}:role:{role}"},
                                    kind=kind, lifetime=ttl, now=now)
        return str(token)

    def credential(self, team_uuid: str) -> Any:
        from wid.store import credentials

        with self.proxy.configured():
            return credentials.get(API, team_uuid)

    def pat(self, team_uuid: str, scopes: tuple[str, ...] = ("read", "write")) -> str:
        return self.stand_in.add_token(team_uuid, scopes)


class _PlainHttpBearer(SansIOHTTPPolicy):
    """pydo's own policy refuses bearer tokens over http://; the proxy under test has no TLS."""

    def __init__(self, token: str) -> None:
        self.token = token

    def on_request(self, request: PipelineRequest) -> None:
        request.http_request.headers["Authorization"] = f"Bearer {self.token}"


def pydo_client(endpoint: str, token: str) -> pydo.Client:
    """The official client, pointed at `endpoint` (the proxy, or the stand-in directly), no retries."""
    return pydo.Client(token=token, endpoint=endpoint, retry_total=0, authentication_policy=_PlainHttpBearer(token))

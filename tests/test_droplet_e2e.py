"""Droplet provisioning end to end, with no mocks inside the proxy.

The proxy runs as `make run` serves it (Caddy + fcgiwrap + CGI) against the DigitalOcean stand-in,
which reports each "Droplet" at a loopback address where a real OpenSSH sshd runs with its own host
keys (devkit/sshd.py). The real generated cloud-init step runs under sh with a test root directory
and the real ssh-keygen; pydo creates the Droplet through the proxy.
"""

from __future__ import annotations

import json
import re
import stat
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydo
import pytest
import requests

from devkit.proxy import ProxyServer
from devkit.sshd import FakeDroplet, Sshd, SshdPool, cloud_init_view, pool
from devkit.standins.digitalocean import DigitalOceanStandIn
from tests.gha.support import verify_by_discovery

DROPLET = {"region": "nyc3", "size": "s-1vcpu-1gb", "image": "ubuntu-24-04-x64"}
NS_PROVE = "droplet-provisioning@wid"
NS_RECOVER = "droplet-recovery@wid"
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


@dataclass
class TeamCreds:
    uuid: str
    pat: str
    oauth: str


@pytest.fixture(scope="module")
def sshds() -> SshdPool:
    return pool()


@pytest.fixture(scope="module")
def do() -> Iterator[DigitalOceanStandIn]:
    with DigitalOceanStandIn() as stand_in:
        yield stand_in
    assert stand_in.handler_errors == []


@pytest.fixture(scope="module")
def wid_proxy(tmp_path_factory: pytest.TempPathFactory, do: DigitalOceanStandIn,
              sshds: SshdPool) -> Iterator[ProxyServer]:
    with ProxyServer(tmp_path_factory.mktemp("wid-droplets") / "data", env={
            "DIGITALOCEAN_API_URL": do.url,
            "DIGITALOCEAN_OAUTH_URL": do.url,
            "WID_DROPLET_SSH_PORT": str(sshds.port),
            "WID_DROPLET_SSH_TIMEOUT": "2",
        }) as server:
        yield server


def connect_team(wid_proxy: ProxyServer, do: DigitalOceanStandIn, name: str) -> TeamCreds:
    """A team with a PAT, whose admin has authorized the proxy (its OAuth token stored encrypted)."""
    from wid.store import credentials

    team = do.add_team(name)
    pat = do.add_token(team.uuid)
    oauth = do.add_token(team.uuid, kind="oauth")
    with wid_proxy.configured():
        credentials.store("DigitalOcean", team.uuid, {"access_token": oauth})
    return TeamCreds(team.uuid, pat, oauth)


@pytest.fixture(scope="module")
def team(wid_proxy: ProxyServer, do: DigitalOceanStandIn) -> TeamCreds:
    return connect_team(wid_proxy, do, "Blue Team")


@pytest.fixture(scope="module")
def other_team(wid_proxy: ProxyServer, do: DigitalOceanStandIn) -> TeamCreds:
    return connect_team(wid_proxy, do, "Red Team")


# -- helpers -------------------------------------------------------------------------------------------------

def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def create(wid_proxy: ProxyServer, token: str, **body: Any) -> requests.Response:
    return requests.post(f"{wid_proxy.url}/v2/droplets", json={**DROPLET, **body}, headers=bearer(token), timeout=30)


def provisioning_token(user_data: str) -> str:
    tokens = set(_JWT.findall(user_data))
    assert len(tokens) == 1, tokens
    return tokens.pop()


def sign(key: Path, data: bytes, namespace: str) -> str:
    out = subprocess.run(["ssh-keygen", "-Y", "sign", "-f", str(key), "-n", namespace], input=data,
                         capture_output=True, check=True, timeout=30)
    return out.stdout.decode()


def prove(wid_proxy: ProxyServer, token: str, signature: str, droplet_id: int | None = None) -> requests.Response:
    body: dict[str, Any] = {"signature": signature}
    if droplet_id is not None:
        body["droplet_id"] = droplet_id
    return requests.post(f"{wid_proxy.url}/v1/oidc/prove", json=body, headers=bearer(token), timeout=30)


def refresh(wid_proxy: ProxyServer, refresh_token: str) -> requests.Response:
    return requests.post(f"{wid_proxy.url}/v1/oidc/refresh", json={"refresh_token": refresh_token}, timeout=30)


@dataclass
class Created:
    id: int
    token: str
    user_data: str


def new_droplet(wid_proxy: ProxyServer, do: DigitalOceanStandIn, team: TeamCreds, server: Sshd | None,
                tags: tuple[str, ...] = ("oidc-sub:role:web",), name: str = "web", **body: Any) -> Created:
    """A Droplet created through the proxy (body: more of the create request), at server's address."""
    response = create(wid_proxy, team.pat, name=name, tags=list(tags), **body)
    assert response.status_code == 202, response.text
    droplet_id = response.json()["droplet"]["id"]
    if server is not None:
        do.set_droplet_ipv4(droplet_id, server.address)
    user_data = do.droplets[droplet_id]["user_data"]
    return Created(droplet_id, provisioning_token(user_data), user_data)


def proved(wid_proxy: ProxyServer, do: DigitalOceanStandIn, team: TeamCreds, server: Sshd, **kw: Any) -> dict[str, Any]:
    """A Droplet that has proved its ed25519 host key; returns the prove answer plus its id."""
    droplet = new_droplet(wid_proxy, do, team, server, **kw)
    response = prove(wid_proxy, droplet.token, sign(server.host_key("ed25519"), droplet.token.encode(), NS_PROVE))
    assert response.status_code == 200, response.text
    return {**response.json(), "droplet_id": droplet.id}


def audit_rows(wid_proxy: ProxyServer, actx: str) -> list[dict[str, Any]]:
    out = wid_proxy.wid("audit", "--actx", actx, "--json", "--limit", "5000").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def error_id(response: requests.Response) -> str:
    body = response.json()
    assert body["message"] and body["request_id"]
    return str(body["id"])


# -- the whole story -------------------------------------------------------------------------------------------

def test_pydo_create_first_boot_timer_refresh_and_recovery(
        wid_proxy: ProxyServer, do: DigitalOceanStandIn, team: TeamCreds, sshds: SshdPool, tmp_path: Path) -> None:
    server = sshds.shared(0)
    client = pydo.Client(token=team.pat, endpoint=wid_proxy.url, retry_total=0)
    created = client.droplets.create(body={"name": "web-1", **DROPLET, "tags": ["oidc-sub:role:web", "web"]},
                                     enforce_https=False)
    droplet = created["droplet"]
    assert droplet["name"] == "web-1" and droplet["status"] == "new" and "user_data" not in droplet
    assert created["links"]["actions"][0]["rel"] == "create"
    upstream = do.requests_to("/v2/droplets", "POST")[-1]
    assert upstream.authorization == f"Bearer {team.pat}"  # a DigitalOcean token goes upstream as is
    sent = upstream.json()
    assert sent["tags"] == ["oidc-sub:role:web", "web"] and sent["name"] == "web-1"
    user_data = do.droplets[droplet["id"]]["user_data"]
    assert user_data.startswith("#cloud-config\n") and provisioning_token(user_data)
    do.set_droplet_ipv4(droplet["id"], server.address)

    vm = FakeDroplet(tmp_path / "droplet", server)
    started = time.monotonic()
    booted = vm.boot(user_data)
    first_boot = time.monotonic() - started
    assert booted.returncode == 0, booted.stderr
    files = vm.secrets()
    assert set(files) == {"token", "refresh_token", "expires_at", "droplet_id", "team_uuid", "base_url"}
    assert files["base_url"] == wid_proxy.url and files["team_uuid"] == team.uuid
    assert files["droplet_id"] == str(droplet["id"])
    assert stat.S_IMODE(vm.secrets_dir.stat().st_mode) == 0o700
    for name in files:
        assert stat.S_IMODE((vm.secrets_dir / name).stat().st_mode) == 0o600, name
    audience = f"api://DigitalOcean?actx={team.uuid}"
    claims = verify_by_discovery(wid_proxy.url, files["token"], audience)
    assert claims["sub"] == f"actx:{team.uuid}:role:web"
    assert claims["droplet_id"] == droplet["id"] and claims["wid_kind"] == "workload"
    assert claims["exp"] == int(files["expires_at"]) and claims["exp"] - claims["iat"] == 900
    assert vm.systemctl_calls() == ["daemon-reload", "enable --now wid-token-refresh.timer"]
    assert vm.timer_command() == ["/bin/sh", "/usr/local/sbin/wid-droplet", "refresh"]

    # The timer's script rotates both tokens.
    ran = vm.run_timer()
    assert ran.returncode == 0, ran.stderr
    rotated = vm.secrets()
    assert rotated["token"] != files["token"] and rotated["refresh_token"] != files["refresh_token"]
    assert verify_by_discovery(wid_proxy.url, rotated["token"], audience)["sub"] == claims["sub"]

    # Identity follows the tags.
    do.set_droplet_tags(droplet["id"], ["oidc-sub:role:web", "oidc-sub:env:prod", "web"])
    assert vm.run_timer().returncode == 0
    assert verify_by_discovery(wid_proxy.url, vm.secrets()["token"], audience)["sub"] == \
        f"actx:{team.uuid}:env:prod:role:web"

    # Reusing a used refresh token revokes the whole chain (the current token too) and is audited.
    current = vm.secrets()["refresh_token"]
    reused = refresh(wid_proxy, files["refresh_token"])
    assert reused.status_code == 401 and error_id(reused) == "invalid_grant"
    assert "already used" in reused.json()["message"]
    assert refresh(wid_proxy, current).status_code == 401

    # The next timer run finds the chain revoked and recovers with the host key.
    recovered = vm.run_timer()
    assert recovered.returncode == 0, recovered.stderr
    assert "recovering with the host key" in recovered.stderr
    after = vm.secrets()
    assert after["refresh_token"] != current
    assert verify_by_discovery(wid_proxy.url, after["token"], audience)["droplet_id"] == droplet["id"]
    assert vm.run_timer().returncode == 0

    rows = audit_rows(wid_proxy, team.uuid)
    events = [(r["event"], r["decision"]) for r in rows]
    for expected in [("droplet_create", "allow"), ("prove", "allow"), ("refresh", "allow"),
                     ("refresh_reuse", "deny"), ("recover", "allow")]:
        assert expected in events, expected
    dump = json.dumps(rows)
    for secret in [files["token"], files["refresh_token"], provisioning_token(user_data), after["refresh_token"],
                   team.pat, team.oauth]:
        assert secret not in dump  # audited by jti, never a token
    prove_row = next(r for r in rows if r["event"] == "prove" and r["decision"] == "allow")
    assert prove_row["detail"]["fingerprint"] == server.fingerprint("ed25519")
    assert prove_row["jti"] == claims["jti"]
    assert first_boot < 30


def test_multi_create_one_token_each_droplet_proves_once_for_itself(
        wid_proxy: ProxyServer, do: DigitalOceanStandIn, team: TeamCreds, sshds: SshdPool, tmp_path: Path) -> None:
    servers = [sshds.shared(i) for i in range(3)]
    response = create(wid_proxy, team.pat, names=["w-1", "w-2", "w-3"], tags=["oidc-sub:role:worker"])
    assert response.status_code == 202, response.text
    ids = [d["id"] for d in response.json()["droplets"]]
    assert len(ids) == 3
    user_datas = {do.droplets[i]["user_data"] for i in ids}
    assert len(user_datas) == 1  # one user_data, one provisioning token for the set
    user_data = user_datas.pop()
    token = provisioning_token(user_data)
    for droplet_id, server in zip(ids, servers, strict=True):
        do.set_droplet_ipv4(droplet_id, server.address)

    # Without naming itself, a Droplet of a set is refused (the proxy never guesses).
    unnamed = prove(wid_proxy, token, sign(servers[0].host_key("ed25519"), token.encode(), NS_PROVE))
    assert unnamed.status_code == 400 and "droplet_id" in unnamed.json()["message"]

    # w-1 claiming to be w-2: the proxy connects to w-2's own IPv4, whose host key did not sign.
    lying = prove(wid_proxy, token, sign(servers[0].host_key("ed25519"), token.encode(), NS_PROVE), droplet_id=ids[1])
    assert lying.status_code == 401 and "is not the key that signed" in lying.json()["message"]

    subs = []
    for droplet_id, server in zip(ids, servers, strict=True):
        vm = FakeDroplet(tmp_path / str(droplet_id), server, droplet_id=droplet_id)
        booted = vm.boot(user_data)
        assert booted.returncode == 0, booted.stderr  # w-2 was not used up by w-1's lie
        claims = verify_by_discovery(wid_proxy.url, vm.secrets()["token"], f"api://DigitalOcean?actx={team.uuid}")
        assert claims["droplet_id"] == droplet_id
        subs.append(claims["sub"])
        again = vm.boot(user_data, WID_RETRY_DELAYS="")
        assert again.returncode != 0 and "already been used" in again.stderr
    assert subs == [f"actx:{team.uuid}:role:worker"] * 3


def test_user_cloud_config_is_merged_and_still_provisions(
        wid_proxy: ProxyServer, do: DigitalOceanStandIn, team: TeamCreds, sshds: SshdPool, tmp_path: Path) -> None:
    server = sshds.shared(0)
    theirs = "#cloud-config\npackages: [nginx]\nruncmd:\n  - echo first-of-theirs\n  - [touch, /tmp/second]\n"
    droplet = new_droplet(wid_proxy, do, team, server, name="merged", user_data=theirs)
    vm = FakeDroplet(tmp_path / "droplet", server)
    booted = vm.boot(droplet.user_data)
    assert booted.returncode == 0, booted.stderr
    runcmd = vm.cloud_config["runcmd"]
    assert isinstance(runcmd, list)
    assert runcmd[0][:3] == ["sh", "/usr/local/sbin/wid-droplet", "provision"]
    assert runcmd[1:] == ["echo first-of-theirs", ["touch", "/tmp/second"]]
    assert vm.cloud_config["packages"] == ["nginx"]


def test_user_shell_script_is_combined_as_mime_and_still_provisions(
        wid_proxy: ProxyServer, do: DigitalOceanStandIn, team: TeamCreds, sshds: SshdPool, tmp_path: Path) -> None:
    server = sshds.shared(1)
    script = "#!/bin/sh\necho hello from the user > /tmp/user-script-ran\n"
    droplet = new_droplet(wid_proxy, do, team, server, name="scripted", user_data=script)
    view = cloud_init_view(droplet.user_data)
    assert view["parts"] == [["text/x-shellscript", "user-data"], ["text/cloud-config", "wid-provisioning.cfg"]]
    assert view["scripts"] == ["user-data"]  # cloud-init runs scripts and its runcmd script by name
    assert sorted(["runcmd", "user-data"])[0] == "runcmd"
    vm = FakeDroplet(tmp_path / "droplet", server)
    booted = vm.boot(droplet.user_data)
    assert booted.returncode == 0, booted.stderr
    assert vm.secrets()["droplet_id"] == str(droplet.id)


# -- JWT-authorized creates ---------------------------------------------------------------------------------------

POLICY = b'''
path "/v2/droplets" {
  capabilities = ["create"]
  allowed_parameters = {
    "name"   = "worker-*"
    "region" = "nyc3"
    "size"   = "s-1vcpu-1gb"
    "image"  = "ubuntu-24-04-x64"
    "tags"   = ["oidc-sub:role:worker", "workers"]
  }
}
'''
ROLE = b'''
role "deployer" {
  aud      = "api://DigitalOcean?actx={actx}"
  sub      = "actx:{actx}:role:deployer"
  policies = ["droplet-create"]
}
'''


def test_jwt_create_is_authorized_by_policy_and_uses_the_team_token(
        wid_proxy: ProxyServer, do: DigitalOceanStandIn, other_team: TeamCreds) -> None:
    from wid.core import tokens
    from wid.core.rbac import compiler as rbac_compile
    from wid.store import rbac as rbac_store
    from wid.store import signing, storage

    team = other_team
    with wid_proxy.configured():
        compiled = rbac_compile.compile_tree({"policies/droplet-create.hcl": POLICY, "roles/deployer.hcl": ROLE},
                                             api="DigitalOcean", actx=team.uuid)
        with storage.database().transaction() as tx:
            rbac_store.install(tx, "DigitalOcean", team.uuid, compiled, "0" * 40)
        workload, _ = signing.sign({"aud": f"api://DigitalOcean?actx={team.uuid}",
                                    "sub": f"actx:{team.uuid}:role:deployer"}, kind=tokens.WORKLOAD, lifetime=300)
        stranger, _ = signing.sign({"aud": f"api://DigitalOcean?actx={team.uuid}",
                                    "sub": f"actx:{team.uuid}:role:intern"}, kind=tokens.WORKLOAD, lifetime=300)

    def nonces() -> int:
        with wid_proxy.configured(), storage.database().transaction(write=False) as tx:
            row = tx.one("SELECT COUNT(*) FROM provisioning_nonces WHERE team_uuid = ?", (team.uuid,))
        assert row is not None
        return int(row[0])

    posts = len(do.requests_to("/v2/droplets", "POST"))
    allowed = create(wid_proxy, workload, name="worker-1", tags=["oidc-sub:role:worker"])
    assert allowed.status_code == 202, allowed.text
    upstream = do.requests_to("/v2/droplets", "POST")[-1]
    assert upstream.authorization == f"Bearer {team.oauth}"  # the team's OAuth token, not the JWT
    assert nonces() == 1

    denied = create(wid_proxy, workload, name="worker-2", tags=["oidc-sub:role:admin"])
    assert denied.status_code == 403 and "tags" in denied.json()["message"]
    no_role = create(wid_proxy, stranger, name="worker-3", tags=["oidc-sub:role:worker"])
    assert no_role.status_code == 403
    assert len(do.requests_to("/v2/droplets", "POST")) == posts + 1 and nonces() == 1  # nothing half-done
    assert [r["decision"] for r in audit_rows(wid_proxy, team.uuid) if r["event"] == "authorize"].count("deny") >= 2


# -- attacks on /v1/oidc/prove ---------------------------------------------------------------------------------

def test_signature_by_another_key_over_other_data_or_namespace_is_refused(
        wid_proxy: ProxyServer, do: DigitalOceanStandIn, team: TeamCreds, sshds: SshdPool, tmp_path: Path) -> None:
    server = sshds.shared(0)
    droplet = new_droplet(wid_proxy, do, team, server)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    attempts = {
        "another key": sign(tmp_path / "other", droplet.token.encode(), NS_PROVE),
        "other data": sign(server.host_key("ed25519"), droplet.token.encode() + b"\n", NS_PROVE),
        "another namespace": sign(server.host_key("ed25519"), droplet.token.encode(), "file"),
        "the recovery namespace": sign(server.host_key("ed25519"), droplet.token.encode(), NS_RECOVER),
    }
    for what, signature in attempts.items():
        response = prove(wid_proxy, droplet.token, signature)
        assert response.status_code == 401, (what, response.text)
    assert "is not the key that signed" in prove(wid_proxy, droplet.token, attempts["another key"]).json()["message"]
    assert "namespace" in prove(wid_proxy, droplet.token, attempts["another namespace"]).json()["message"]
    assert "does not verify" in prove(wid_proxy, droplet.token, attempts["other data"]).json()["message"]
    garbage = prove(wid_proxy, droplet.token, "-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----")
    assert garbage.status_code == 400
    # None of that used the nonce up: the real Droplet still proves.
    good = prove(wid_proxy, droplet.token, sign(server.host_key("ed25519"), droplet.token.encode(), NS_PROVE))
    assert good.status_code == 200, good.text
    denials = [r for r in audit_rows(wid_proxy, team.uuid) if r["event"] == "prove" and r["decision"] == "deny"]
    assert len(denials) >= 4


@pytest.mark.parametrize("key_type", ["ecdsa", "rsa"])
def test_the_host_key_type_that_signed_is_negotiated(
        wid_proxy: ProxyServer, do: DigitalOceanStandIn, team: TeamCreds, sshds: SshdPool, tmp_path: Path,
        key_type: str) -> None:
    server = sshds.shared(1)
    droplet = new_droplet(wid_proxy, do, team, server)
    vm = FakeDroplet(tmp_path / "droplet", server)
    booted = vm.boot(droplet.user_data, WID_HOST_KEY_TYPES=key_type)
    assert booted.returncode == 0, booted.stderr
    row = next(r for r in reversed(audit_rows(wid_proxy, team.uuid))
               if r["event"] == "prove" and r["decision"] == "allow" and r["detail"]["droplet_id"] == droplet.id)
    assert row["detail"]["fingerprint"] == server.fingerprint(key_type)


def test_nonce_is_used_once_even_concurrently(
        wid_proxy: ProxyServer, do: DigitalOceanStandIn, team: TeamCreds, sshds: SshdPool) -> None:
    server = sshds.shared(2)
    droplet = new_droplet(wid_proxy, do, team, server)
    signature = sign(server.host_key("ed25519"), droplet.token.encode(), NS_PROVE)
    with ThreadPoolExecutor(max_workers=6) as executor:
        answers = list(executor.map(lambda _: prove(wid_proxy, droplet.token, signature), range(6)))
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [200] + [401] * 5, [r.text for r in answers]
    again = prove(wid_proxy, droplet.token, signature)
    assert again.status_code == 401 and "already been used" in again.json()["message"]
    winners = [r for r in answers if r.status_code == 200]
    families = {r.json()["refresh_token"] for r in winners}
    assert len(families) == 1


def test_expired_or_foreign_provisioning_tokens_are_refused(
        wid_proxy: ProxyServer, do: DigitalOceanStandIn, team: TeamCreds, other_team: TeamCreds,
        sshds: SshdPool) -> None:
    from wid.core import tokens
    from wid.store import signing

    server = sshds.shared(0)
    ours = new_droplet(wid_proxy, do, team, server)
    theirs = new_droplet(wid_proxy, do, other_team, sshds.shared(1))
    nonce = ours.token.split(".")[1]
    claims = json.loads(__import__("base64").urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4)))
    with wid_proxy.configured():
        expired, _ = signing.sign({"aud": claims["aud"], "sub": claims["sub"]}, kind=tokens.PROVISIONING,
                                  lifetime=900, now=int(time.time()) - 3600)
        # Our team's nonce in a token for the other team: the nonce belongs to a different team (and jti).
        crossed, _ = signing.sign({"aud": f"api://DigitalOcean?actx={other_team.uuid}",
                                   "sub": claims["sub"].replace(team.uuid, other_team.uuid)},
                                  kind=tokens.PROVISIONING, lifetime=900)
        workload, _ = signing.sign({"aud": claims["aud"], "sub": f"actx:{team.uuid}:role:web"},
                                   kind=tokens.WORKLOAD, lifetime=300)
    key = server.host_key("ed25519")
    for token, expect in [(expired, "expired"), (crossed, "not known"), (workload, "cannot be used here")]:
        response = prove(wid_proxy, token, sign(key, token.encode(), NS_PROVE), droplet_id=ours.id)
        assert response.status_code == 401 and expect in response.json()["message"], response.text
    # The other team's genuine token naming our Droplet: not in its set.
    foreign = prove(wid_proxy, theirs.token, sign(key, theirs.token.encode(), NS_PROVE), droplet_id=ours.id)
    assert foreign.status_code == 401 and "not created with this provisioning token" in foreign.json()["message"]
    assert prove(wid_proxy, ours.token, sign(key, ours.token.encode(), NS_PROVE)).status_code == 200


def test_unreachable_droplets_get_clear_errors_and_keep_their_nonce(
        wid_proxy: ProxyServer, do: DigitalOceanStandIn, team: TeamCreds, sshds: SshdPool) -> None:
    server = sshds.shared(0)
    stranger = sshds.shared(1)
    droplet = new_droplet(wid_proxy, do, team, server)
    signature = sign(server.host_key("ed25519"), droplet.token.encode(), NS_PROVE)

    do.set_droplet_ipv4(droplet.id, None)
    response = prove(wid_proxy, droplet.token, signature)
    assert response.status_code == 403 and "no public IPv4" in response.json()["message"]

    do.set_droplet_status(droplet.id, "new")
    response = prove(wid_proxy, droplet.token, signature)
    assert response.status_code == 503 and error_id(response) == "droplet_not_ready"
    do.set_droplet_status(droplet.id, "active")

    do.set_droplet_ipv4(droplet.id, sshds.closed_address())
    response = prove(wid_proxy, droplet.token, signature)
    assert response.status_code == 502 and "Connection refused" in response.json()["message"]

    do.set_droplet_ipv4(droplet.id, sshds.silent_address())
    started = time.monotonic()
    response = prove(wid_proxy, droplet.token, signature)
    assert response.status_code == 504 and time.monotonic() - started < 10

    do.set_droplet_ipv4(droplet.id, stranger.address)  # an SSH server with a different host key
    response = prove(wid_proxy, droplet.token, signature)
    assert response.status_code == 401
    assert stranger.fingerprint("ed25519") in response.json()["message"]

    do.set_droplet_ipv4(droplet.id, server.address)
    assert prove(wid_proxy, droplet.token, signature).status_code == 200  # nothing above used the nonce up


def test_upstream_failure_on_create_leaves_no_usable_nonce(
        wid_proxy: ProxyServer, do: DigitalOceanStandIn, team: TeamCreds, sshds: SshdPool) -> None:
    from wid.store import storage

    server = sshds.shared(0)
    for status, drop in [(500, False), (503, False), (None, True)]:
        do.fail_next("/v2/droplets", status, method="POST", drop_connection=drop)
        response = create(wid_proxy, team.pat, name="doomed", tags=["oidc-sub:role:web"])
        assert response.status_code == 502 and error_id(response) == "bad_gateway"  # upstream 5xx -> 502
        if status:
            assert f"DigitalOcean answered HTTP {status}" in response.json()["message"]
        sent = do.requests_to("/v2/droplets", "POST")[-1].json()
        token = provisioning_token(sent["user_data"])
        refused = prove(wid_proxy, token, sign(server.host_key("ed25519"), token.encode(), NS_PROVE), droplet_id=1)
        assert refused.status_code == 401 and "failed upstream" in refused.json()["message"]
    with wid_proxy.configured(), storage.database().transaction(write=False) as tx:
        states = tx.execute("SELECT state, COUNT(*) FROM provisioning_nonces WHERE team_uuid = ? GROUP BY state",
                            (team.uuid,))
    counts = {str(row[0]): int(row[1]) for row in states}
    assert counts.get("pending", 0) == 0 and counts["failed"] >= 3


def test_create_refuses_bad_input_before_anything_happens(
        wid_proxy: ProxyServer, do: DigitalOceanStandIn, team: TeamCreds) -> None:
    unauthorized_team = do.add_team("Never Connected")
    pat = do.add_token(unauthorized_team.uuid)
    posts = len(do.requests_to("/v2/droplets", "POST"))
    cases: list[tuple[str, dict[str, Any], int]] = [
        (pat, {"name": "x"}, 403),                                       # team never authorized the proxy
        (team.pat, {"name": "x", "tags": ["oidc-sub:role"]}, 400),       # malformed identity tag
        (team.pat, {"name": "x", "tags": ["oidc-sub:actx:evil"]}, 400),  # may not set the context
        (team.pat, {"name": "x", "user_data": 7}, 400),
        (team.pat, {"name": "x", "user_data": "#cloud-config\nruncmd: [unclosed\n"}, 400),
        (team.pat, {"name": "x", "user_data": "#cloud-config\nruncmd: echo\n"}, 400),
        (team.pat, {"name": "x", "user_data": "#!/bin/sh\n" + "x" * 60000}, 400),
        (team.pat, {}, 400),
    ]
    for token, body, status in cases:
        response = create(wid_proxy, token, **body)
        assert response.status_code == status, (body, response.text)
    duplicate = requests.post(f"{wid_proxy.url}/v2/droplets", data=b'{"name": "a", "name": "b"}',
                              headers={**bearer(team.pat), "Content-Type": "application/json"}, timeout=10)
    assert duplicate.status_code == 400
    assert requests.post(f"{wid_proxy.url}/v2/droplets", json={"name": "x"}, timeout=10).status_code == 401
    assert len(do.requests_to("/v2/droplets", "POST")) == posts


# -- refresh and recovery ------------------------------------------------------------------------------------------

def test_refresh_for_a_destroyed_droplet_gets_nothing(
        wid_proxy: ProxyServer, do: DigitalOceanStandIn, team: TeamCreds, sshds: SshdPool) -> None:
    server = sshds.shared(0)
    first = proved(wid_proxy, do, team, server)
    requests.delete(f"{do.url}/v2/droplets/{first['droplet_id']}", headers=bearer(team.pat), timeout=5)
    response = refresh(wid_proxy, first["refresh_token"])
    assert response.status_code == 403 and "does not exist" in response.json()["message"]
    again = refresh(wid_proxy, first["refresh_token"])
    assert again.status_code == 401  # the chain was revoked with the Droplet
    challenge = requests.post(f"{wid_proxy.url}/v1/oidc/recover/challenge",
                              json={"team_uuid": team.uuid, "droplet_id": first["droplet_id"]}, timeout=10).json()
    signature = sign(server.host_key("ed25519"), challenge["challenge"].encode(), NS_RECOVER)
    recovered = requests.post(f"{wid_proxy.url}/v1/oidc/recover",
                              json={"challenge": challenge["challenge"], "signature": signature}, timeout=10)
    assert recovered.status_code == 403


def test_concurrent_refresh_with_one_token_revokes_the_chain(
        wid_proxy: ProxyServer, do: DigitalOceanStandIn, team: TeamCreds, sshds: SshdPool) -> None:
    first = proved(wid_proxy, do, team, sshds.shared(0))
    with ThreadPoolExecutor(max_workers=4) as executor:
        answers = list(executor.map(lambda _: refresh(wid_proxy, first["refresh_token"]), range(4)))
    ok = [a for a in answers if a.status_code == 200]
    assert len(ok) <= 1 and all(a.status_code in (200, 401) for a in answers)
    for answer in ok:  # the one that won holds a token of a revoked chain
        assert refresh(wid_proxy, answer.json()["refresh_token"]).status_code == 401
    reuse = [r for r in audit_rows(wid_proxy, team.uuid) if r["event"] == "refresh_reuse"]
    assert reuse


def test_tags_removed_then_restored(
        wid_proxy: ProxyServer, do: DigitalOceanStandIn, team: TeamCreds, sshds: SshdPool) -> None:
    first = proved(wid_proxy, do, team, sshds.shared(0))
    do.set_droplet_tags(first["droplet_id"], ["web"])
    response = refresh(wid_proxy, first["refresh_token"])
    assert response.status_code == 403 and "no oidc-sub" in response.json()["message"]
    do.set_droplet_tags(first["droplet_id"], ["oidc-sub:role:api"])
    response = refresh(wid_proxy, first["refresh_token"])  # not rotated by the refusal: still usable
    assert response.status_code == 200, response.text


def test_recovery_needs_the_host_key_first_proved(
        wid_proxy: ProxyServer, do: DigitalOceanStandIn, team: TeamCreds, sshds: SshdPool, tmp_path: Path) -> None:
    server, stranger = sshds.shared(0), sshds.shared(1)
    first = proved(wid_proxy, do, team, server)
    url = f"{wid_proxy.url}/v1/oidc/recover"

    def challenge(droplet_id: int = first["droplet_id"]) -> str:
        answer = requests.post(f"{url}/challenge", json={"team_uuid": team.uuid, "droplet_id": droplet_id},
                               timeout=10)
        assert answer.status_code == 200, answer.text
        return str(answer.json()["challenge"])

    def attempt(text: str, key: Path, namespace: str = NS_RECOVER) -> requests.Response:
        return requests.post(url, json={"challenge": text, "signature": sign(key, text.encode(), namespace)},
                             timeout=10)

    # An attacker off the Droplet: another key, or the host key's signature in another namespace.
    c = challenge()
    assert attempt(c, stranger.host_key("ed25519")).status_code == 401
    assert attempt(c, server.host_key("ed25519"), NS_PROVE).status_code == 401
    # A forged challenge, or one for another Droplet that never proved.
    assert attempt("not-a-challenge", server.host_key("ed25519")).status_code == 401
    never = new_droplet(wid_proxy, do, team, server)
    assert attempt(challenge(never.id), server.host_key("ed25519")).status_code == 403
    # The host key leaked, but the Droplet now presents another one (rebuilt): refused.
    do.set_droplet_ipv4(first["droplet_id"], stranger.address)
    assert attempt(c, server.host_key("ed25519")).status_code == 401
    do.set_droplet_ipv4(first["droplet_id"], server.address)

    good = attempt(c, server.host_key("ed25519"))
    assert good.status_code == 200, good.text
    assert set(good.json()) == {"token", "refresh_token", "expires_at"}
    assert attempt(c, server.host_key("ed25519")).status_code == 401  # a challenge is used once
    assert refresh(wid_proxy, first["refresh_token"]).status_code == 401  # the lost chain stays dead
    assert refresh(wid_proxy, good.json()["refresh_token"]).status_code == 200

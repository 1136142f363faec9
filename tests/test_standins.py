"""Tests of the stand-ins themselves: the DigitalOcean API/OAuth stand-in driven by the official
``pydo`` client and ``requests``, and the GitHub Actions OIDC stand-in verified with PyJWT."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pydo
import pytest
import requests
from azure.core.exceptions import HttpResponseError

from devkit.standins.digitalocean import (
    FULL_ACCESS,
    PROXY_OAUTH_SCOPES,
    READ_ONLY,
    DigitalOceanStandIn,
    Team,
)
from devkit.standins.github_oidc import GitHubOIDCStandIn, audience_query

REPO_ROOT = Path(__file__).resolve().parent.parent
CALLBACK = "http://127.0.0.1:8080/auth/digitalocean/v1/callback"


# ------------------------------------------------------------------------------------------------
# fixtures and helpers
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def do() -> Iterator[DigitalOceanStandIn]:
    with DigitalOceanStandIn() as stand_in:
        yield stand_in
    assert stand_in.handler_errors == []


@pytest.fixture
def do_tls() -> Iterator[DigitalOceanStandIn]:
    with DigitalOceanStandIn(tls=True) as stand_in:
        yield stand_in
    assert stand_in.handler_errors == []


@pytest.fixture
def gh() -> Iterator[GitHubOIDCStandIn]:
    with GitHubOIDCStandIn() as stand_in:
        yield stand_in
    assert stand_in.handler_errors == []


def pydo_client(stand_in: DigitalOceanStandIn, token: str) -> pydo.Client:
    # pydo (azure-core) refuses bearer tokens over plain HTTP, so it talks to the TLS stand-in and
    # trusts its throw-away CA; retry_total=0 so injected 5xx surface at once.
    assert stand_in.ca_file is not None
    return pydo.Client(token=token, endpoint=stand_in.url, connection_verify=stand_in.ca_file, retry_total=0)


def get(url: str, **kwargs: Any) -> requests.Response:
    kwargs.setdefault("timeout", 5)
    return requests.get(url, **kwargs)


def post(url: str, **kwargs: Any) -> requests.Response:
    kwargs.setdefault("timeout", 5)
    return requests.post(url, **kwargs)


def delete(url: str, **kwargs: Any) -> requests.Response:
    kwargs.setdefault("timeout", 5)
    return requests.delete(url, **kwargs)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


DROPLET = {"region": "nyc3", "size": "s-1vcpu-1gb", "image": "ubuntu-24-04-x64"}


class _FormParser(HTMLParser):
    """Finds the consent form the way a browser sees it: action, hidden inputs, selects, buttons."""

    def __init__(self) -> None:
        super().__init__()
        self.action = ""
        self.method = ""
        self.fields: dict[str, str] = {}
        self.options: dict[str, list[str]] = {}
        self.buttons: dict[str, tuple[str, str]] = {}  # id -> (name, value)
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.action, self.method = a.get("action", ""), a.get("method", "get").lower()
        elif tag == "input" and a.get("type") == "hidden":
            self.fields[a["name"]] = a.get("value", "")
        elif tag == "select":
            self._select = a["name"]
            self.options[a["name"]] = []
            self.selects_by_id = {**getattr(self, "selects_by_id", {}), a.get("id", ""): a["name"]}
        elif tag == "option" and self._select:
            self.options[self._select].append(a.get("value", ""))
        elif tag == "button":
            self.buttons[a.get("id", "")] = (a.get("name", ""), a.get("value", ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None


def browser_consent(
    stand_in: DigitalOceanStandIn, client_id: str, team: Team, *, scope: str, state: str, button: str = "approve"
) -> requests.Response:
    """GET the authorize page, pick the team in #team-select, click #approve / #deny."""
    page = get(
        f"{stand_in.url}/v1/oauth/authorize",
        params={
            "client_id": client_id,
            "redirect_uri": CALLBACK,
            "response_type": "code",
            "scope": scope,
            "state": state,
        },
        timeout=5,
    )
    assert page.status_code == 200, page.text
    assert page.headers["Content-Type"].startswith("text/html")
    form = _FormParser()
    form.feed(page.text)
    assert form.method == "post"
    assert {"approve", "deny"} <= set(form.buttons)
    select_name = form.selects_by_id["team-select"]
    assert team.uuid in form.options[select_name]
    name, value = form.buttons[button]
    data = {**form.fields, select_name: team.uuid, name: value}
    return post(stand_in.url + form.action, data=data, allow_redirects=False, timeout=5)


def callback_params(response: requests.Response) -> dict[str, str]:
    assert response.status_code == 302
    location = response.headers["Location"]
    assert location.startswith(CALLBACK + "?")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


# ------------------------------------------------------------------------------------------------
# DigitalOcean API through pydo
# ------------------------------------------------------------------------------------------------


def test_pydo_account_get(do_tls: DigitalOceanStandIn) -> None:
    team = do_tls.add_team("Blue Team")
    pat = do_tls.add_token(team.uuid)
    assert pat.startswith("dop_v1_") and len(pat) == len("dop_v1_") + 64
    account = pydo_client(do_tls, pat).account.get()["account"]
    assert account["team"] == {"uuid": team.uuid, "name": "Blue Team"}
    assert account["uuid"] == team.user_uuid
    assert account["email"] == team.user_email
    assert account["status"] == "active" and account["email_verified"] is True
    request = do_tls.requests_to("/v2/account")[-1]
    assert request.authorization == f"Bearer {pat}"


def test_pydo_droplet_create_get_list(do_tls: DigitalOceanStandIn) -> None:
    team = do_tls.add_team()
    client = pydo_client(do_tls, do_tls.add_token(team.uuid))
    do_tls.set_next_public_ipv4("127.0.0.5")
    created = client.droplets.create(
        body={
            "name": "web-1",
            **DROPLET,
            "tags": ["oidc-sub:role:deployer", "web"],
            "user_data": "#cloud-config\nruncmd:\n  - echo hi\n",
            "ssh_keys": [289794],
        }
    )
    droplet = created["droplet"]
    assert droplet["status"] == "new"
    assert droplet["networks"] == {"v4": [], "v6": []}  # no address yet, as on the real API
    assert droplet["tags"] == ["oidc-sub:role:deployer", "web"]
    assert droplet["size_slug"] == "s-1vcpu-1gb" and droplet["region"]["slug"] == "nyc3"
    assert "user_data" not in droplet and "team_uuid" not in droplet
    action = created["links"]["actions"][0]
    assert action["rel"] == "create" and action["href"] == f"{do_tls.url}/v2/actions/{action['id']}"
    record = do_tls.droplets[droplet["id"]]
    assert record["user_data"] == "#cloud-config\nruncmd:\n  - echo hi\n"
    assert record["team_uuid"] == team.uuid

    fetched = client.droplets.get(droplet["id"])["droplet"]
    assert fetched["status"] == "active"
    public = [n for n in fetched["networks"]["v4"] if n["type"] == "public"]
    assert [n["ip_address"] for n in public] == ["127.0.0.5"]

    client.droplets.create(body={"names": ["db-1", "db-2"], **DROPLET, "tags": ["db"]})
    tagged = client.droplets.list(tag_name="db")
    assert sorted(d["name"] for d in tagged["droplets"]) == ["db-1", "db-2"]
    assert tagged["meta"]["total"] == 2
    assert client.droplets.list()["meta"]["total"] == 3
    assert client.actions.get(action["id"])["action"]["status"] == "completed"


def test_pydo_database_list_by_tag_and_get(do_tls: DigitalOceanStandIn) -> None:
    team = do_tls.add_team()
    db_uuid = do_tls.add_database(team.uuid, "backend", ["my-tag"], password="s3cret", host="127.0.0.1", port=5432)
    do_tls.add_database(team.uuid, "other", ["other-tag"])
    client = pydo_client(do_tls, do_tls.add_token(team.uuid))
    listed = client.databases.list_clusters(tag_name="my-tag")["databases"]
    assert [d["id"] for d in listed] == [db_uuid]
    connection = client.databases.get_cluster(db_uuid)["database"]["connection"]
    assert connection == {
        "uri": "postgres://doadmin:s3cret@127.0.0.1:5432/defaultdb?sslmode=require",
        "database": "defaultdb",
        "host": "127.0.0.1",
        "port": 5432,
        "user": "doadmin",
        "password": "s3cret",
        "ssl": True,
    }
    # A custom-scoped token without database:view_credentials sees no password.
    limited = pydo_client(do_tls, do_tls.add_token(team.uuid, ["database:read", "tag:read"]))
    assert limited.databases.get_cluster(db_uuid)["database"]["connection"]["password"] == ""
    # Another team's database does not exist for this token (pydo returns the 404 body).
    other = do_tls.add_team("Other")
    missing = pydo_client(do_tls, do_tls.add_token(other.uuid)).databases.get_cluster(db_uuid)
    assert missing["id"] == "not_found"


def test_pydo_spaces_keys(do_tls: DigitalOceanStandIn) -> None:
    team = do_tls.add_team()
    client = pydo_client(do_tls, do_tls.add_token(team.uuid))
    key = client.spaces_key.create(
        body={"name": "bucket-111-read-token-droplet", "grants": [{"bucket": "111", "permission": "read"}]}
    )["key"]
    assert set(key) == {"name", "access_key", "secret_key", "grants", "created_at"}
    assert key["grants"] == [{"bucket": "111", "permission": "read"}]
    assert do_tls.spaces_keys[key["access_key"]]["team_uuid"] == team.uuid
    listed = client.spaces_key.list()
    assert [k["access_key"] for k in listed["keys"]] == [key["access_key"]]
    assert "secret_key" not in listed["keys"][0] and listed["meta"]["total"] == 1
    grants = [{"bucket": "", "permission": "fullaccess"}, {"bucket": "b", "permission": "read"}]
    mixed = client.spaces_key.create(body={"name": "x", "grants": grants})
    assert mixed["id"] == "bad_request"
    assert client.spaces_key.delete(access_key=key["access_key"]) is None
    assert key["access_key"] not in do_tls.spaces_keys
    again = client.spaces_key.delete(access_key=key["access_key"])
    assert again is not None and again["id"] == "not_found"


def test_pydo_sees_injected_server_error(do_tls: DigitalOceanStandIn) -> None:
    team = do_tls.add_team()
    client = pydo_client(do_tls, do_tls.add_token(team.uuid))
    do_tls.fail_next("/v2/droplets", 500, method="POST")
    with pytest.raises(HttpResponseError) as excinfo:
        client.droplets.create(body={"name": "web-1", **DROPLET})
    assert excinfo.value.status_code == 500
    assert do_tls.droplets == {}
    assert client.droplets.create(body={"name": "web-1", **DROPLET})["droplet"]["name"] == "web-1"


# ------------------------------------------------------------------------------------------------
# DigitalOcean API: errors, scopes, recording, faults (plain HTTP with requests)
# ------------------------------------------------------------------------------------------------


def test_error_shapes_and_team_isolation(do: DigitalOceanStandIn) -> None:
    team, other = do.add_team("A"), do.add_team("B")
    token, other_token = do.add_token(team.uuid), do.add_token(other.uuid)
    for headers in ({}, bearer("dop_v1_" + "0" * 64), {"Authorization": "Basic Zm9vOmJhcg=="}):
        response = get(f"{do.url}/v2/account", headers=headers, timeout=5)
        assert response.status_code == 401
        assert response.json()["id"] == "unauthorized"
        assert response.json()["message"] == "Unable to authenticate you"
    assert "ratelimit-remaining" in response.headers
    droplet_id = do.add_droplet(team.uuid, "mine")
    assert get(f"{do.url}/v2/droplets/{droplet_id}", headers=bearer(token), timeout=5).status_code == 200
    response = get(f"{do.url}/v2/droplets/{droplet_id}", headers=bearer(other_token), timeout=5)
    assert response.status_code == 404
    assert response.json()["id"] == "not_found"
    assert response.json()["message"] == "The resource you were accessing could not be found."
    assert get(f"{do.url}/v2/droplets/999", headers=bearer(token), timeout=5).status_code == 404
    assert get(f"{do.url}/v2/no/such/thing", headers=bearer(token), timeout=5).json()["id"] == "not_found"
    assert get(f"{do.url}/", timeout=5).status_code == 404
    bad = post(f"{do.url}/v2/droplets", headers=bearer(token), data="{not json", timeout=5)
    assert bad.status_code == 400 and bad.json()["id"] == "bad_request"
    invalid = post(f"{do.url}/v2/droplets", headers=bearer(token), json={"name": "x", **DROPLET, "size": "s-huge"})
    assert invalid.status_code == 422 and invalid.json()["id"] == "unprocessable_entity"
    too_big = {"name": "x", **DROPLET, "user_data": "a" * (64 * 1024 + 1)}
    assert post(f"{do.url}/v2/droplets", headers=bearer(token), json=too_big, timeout=5).status_code == 422
    deleted = delete(f"{do.url}/v2/droplets/{droplet_id}", headers=bearer(token), timeout=5)
    assert deleted.status_code == 204 and deleted.content == b""
    assert droplet_id in do.deleted_droplets and droplet_id not in do.droplets


def test_scopes_are_enforced(do: DigitalOceanStandIn) -> None:
    team = do.add_team()
    read_only = do.add_token(team.uuid, READ_ONLY)
    response = post(f"{do.url}/v2/droplets", headers=bearer(read_only), json={"name": "x", **DROPLET})
    assert response.status_code == 403
    assert response.json()["id"] == "forbidden"
    assert get(f"{do.url}/v2/droplets", headers=bearer(read_only), timeout=5).status_code == 200
    # Custom scopes: droplet:create alone cannot tag the new droplet (tags need tag:create).
    create_only = do.add_token(team.uuid, ["droplet:create"])
    tagged = {"name": "x", **DROPLET, "tags": ["oidc-sub:role:x"]}
    assert post(f"{do.url}/v2/droplets", headers=bearer(create_only), json=tagged).status_code == 403
    with_tags = do.add_token(team.uuid, ["droplet:create", "tag:create"])
    assert post(f"{do.url}/v2/droplets", headers=bearer(with_tags), json=tagged).status_code == 202
    assert get(f"{do.url}/v2/account", headers=bearer(with_tags), timeout=5).status_code == 403
    spaces = do.add_token(team.uuid, ["spaces_key:read"])
    body: dict[str, Any] = {"name": "k", "grants": [{"bucket": "b", "permission": "read"}]}
    assert post(f"{do.url}/v2/spaces/keys", headers=bearer(spaces), json=body).status_code == 403
    expired = do.add_token(team.uuid, FULL_ACCESS, expires_in=60)
    do.advance_clock(61)
    assert get(f"{do.url}/v2/account", headers=bearer(expired), timeout=5).status_code == 401


def test_requests_are_recorded(do: DigitalOceanStandIn) -> None:
    team = do.add_team()
    token = do.add_token(team.uuid)
    post(
        f"{do.url}/v2/droplets?x=1",
        headers={**bearer(token), "Cookie": "session=abc", "X-Custom": "yes"},
        json={"name": "web-1", **DROPLET, "user_data": "echo hi"},
        timeout=5,
    )
    recorded = do.requests_to("/v2/droplets", "POST")[-1]
    assert recorded.method == "POST" and recorded.path == "/v2/droplets"
    assert recorded.query == {"x": ["1"]}
    assert recorded.authorization == f"Bearer {token}"
    assert recorded.bearer_token == token
    assert recorded.headers.get("cookie") == "session=abc"
    assert recorded.headers["X-CUSTOM"] == "yes"
    assert recorded.json()["user_data"] == "echo hi"
    do.clear_requests()
    assert do.requests == []


def test_fault_injection_status_delay_and_drop(do: DigitalOceanStandIn) -> None:
    team = do.add_team()
    token = do.add_token(team.uuid)
    do.fail_next("/v2/droplets", 503, times=2)
    for _ in range(2):
        response = get(f"{do.url}/v2/droplets", headers=bearer(token), timeout=5)
        assert response.status_code == 503 and "id" in response.json()
    assert get(f"{do.url}/v2/droplets", headers=bearer(token), timeout=5).status_code == 200
    do.fail_next("/v2/droplets", None, delay_seconds=30)
    started = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        get(f"{do.url}/v2/droplets", headers=bearer(token), timeout=0.3)
    assert time.monotonic() - started < 5
    do.fail_next("/v2/account", drop_connection=True)
    with pytest.raises(requests.exceptions.ConnectionError):
        get(f"{do.url}/v2/account", headers=bearer(token), timeout=5)
    do.fail_next("/v2/account", 502, body="<html>bad gateway</html>", headers=[("Content-Type", "text/html")])
    response = get(f"{do.url}/v2/account", headers=bearer(token), timeout=5)
    assert response.status_code == 502 and response.text == "<html>bad gateway</html>"


def test_tagging_and_test_hooks(do: DigitalOceanStandIn) -> None:
    team = do.add_team()
    token = do.add_token(team.uuid)
    droplet_id = do.add_droplet(team.uuid, "web", tags=["a"], public_ipv4="127.0.0.9")
    response = post(
        f"{do.url}/v2/tags/oidc-sub%3Arole%3Ax/resources",
        headers=bearer(token),
        json={"resources": [{"resource_id": str(droplet_id), "resource_type": "droplet"}]},
        timeout=5,
    )
    assert response.status_code == 204
    assert do.droplets[droplet_id]["tags"] == ["a", "oidc-sub:role:x"]
    do.set_droplet_tags(droplet_id, ["b"])
    do.set_droplet_ipv4(droplet_id, "127.0.0.10")
    droplet = get(f"{do.url}/v2/droplets/{droplet_id}", headers=bearer(token), timeout=5).json()["droplet"]
    assert droplet["tags"] == ["b"]
    assert {n["ip_address"] for n in droplet["networks"]["v4"] if n["type"] == "public"} == {"127.0.0.10"}
    do.set_droplet_status(droplet_id, "new")
    assert do.droplet(droplet_id)["networks"]["v4"] == []
    do.droplet_ipv4_allocator = lambda record: f"127.0.0.{20 + len(record['name'])}"
    created = post(f"{do.url}/v2/droplets", headers=bearer(token), json={"name": "abc", **DROPLET}).json()
    assert do.droplets[created["droplet"]["id"]]["public_ipv4"] == "127.0.0.23"


def test_list_pagination_links(do: DigitalOceanStandIn) -> None:
    team = do.add_team()
    token = do.add_token(team.uuid)
    for n in range(3):
        do.add_droplet(team.uuid, f"web-{n}", tags=["t"])
    page = get(
        f"{do.url}/v2/droplets", params={"tag_name": "t", "per_page": "1", "page": "2"}, headers=bearer(token)
    ).json()
    assert [d["name"] for d in page["droplets"]] == ["web-1"]
    assert page["meta"] == {"total": 3}
    assert set(page["links"]["pages"]) == {"first", "prev", "next", "last"}
    follow = get(page["links"]["pages"]["next"], headers=bearer(token), timeout=5).json()
    assert [d["name"] for d in follow["droplets"]] == ["web-2"]
    assert set(follow["links"]["pages"]) == {"first", "prev"}


# ------------------------------------------------------------------------------------------------
# DigitalOcean OAuth web flow
# ------------------------------------------------------------------------------------------------


def test_oauth_code_flow_round_trip(do: DigitalOceanStandIn) -> None:
    team = do.add_team("Workloads")
    do.add_team("Someone else")
    client = do.add_oauth_client(redirect_uri=CALLBACK)
    scope = " ".join(PROXY_OAUTH_SCOPES)
    params = callback_params(browser_consent(do, client.client_id, team, scope=scope, state="xyz"))
    assert params["state"] == "xyz" and params["code"]
    code_grant = {
        "grant_type": "authorization_code",
        "code": params["code"],
        "client_id": client.client_id,
        "client_secret": client.client_secret,
        "redirect_uri": CALLBACK,
    }
    # As in DigitalOcean's example: the parameters in the query string of a POST.
    response = post(f"{do.url}/v1/oauth/token", params=code_grant, timeout=5)
    assert response.status_code == 200, response.text
    grant = response.json()
    assert grant["token_type"] == "bearer" and grant["expires_in"] == 2592000
    assert grant["access_token"].startswith("doo_v1_") and grant["refresh_token"].startswith("dor_v1_")
    assert grant["scope"].split() == list(PROXY_OAUTH_SCOPES)
    assert grant["info"] == {
        "name": team.user_name,
        "email": team.user_email,
        "uuid": team.user_uuid,
        "team_uuid": team.uuid,
        "team_name": "Workloads",
    }
    access = grant["access_token"]
    account = get(f"{do.url}/v2/account", headers=bearer(access), timeout=5).json()["account"]
    assert account["team"]["uuid"] == team.uuid
    # The grant's scopes hold: reading droplets works, creating them does not.
    assert get(f"{do.url}/v2/droplets", headers=bearer(access), timeout=5).status_code == 200
    create = post(f"{do.url}/v2/droplets", headers=bearer(access), json={"name": "x", **DROPLET})
    assert create.status_code == 403
    # The refresh token is not an API credential.
    assert get(f"{do.url}/v2/account", headers=bearer(grant["refresh_token"]), timeout=5).status_code == 401

    # Codes are single use; a replay also revokes what the code issued.
    replay = post(f"{do.url}/v1/oauth/token", data=code_grant, timeout=5)  # this time in a form body
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert get(f"{do.url}/v2/account", headers=bearer(access), timeout=5).status_code == 401


def test_oauth_code_checks(do: DigitalOceanStandIn) -> None:
    team = do.add_team()
    client = do.add_oauth_client(redirect_uri=CALLBACK)

    def exchange(code: str, **overrides: str) -> requests.Response:
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "client_id": client.client_id,
            "client_secret": client.client_secret,
            "redirect_uri": CALLBACK,
            **overrides,
        }
        return post(f"{do.url}/v1/oauth/token", data=data, timeout=5)

    code = parse_qs(urlsplit(do.authorize(client.client_id, CALLBACK, team.uuid, state="s")).query)["code"][0]
    wrong_secret = exchange(code, client_secret="nope")
    assert wrong_secret.status_code == 401 and wrong_secret.json()["error"] == "invalid_client"
    assert exchange(code, redirect_uri=CALLBACK + "/").json()["error"] == "invalid_grant"
    assert exchange("not-a-code").json()["error"] == "invalid_grant"
    assert exchange(code, grant_type="password").json()["error"] == "unsupported_grant_type"
    assert exchange(code).status_code == 200

    stale = parse_qs(urlsplit(do.authorize(client.client_id, CALLBACK, team.uuid)).query)["code"][0]
    do.advance_clock(do.code_ttl_seconds + 1)
    assert exchange(stale).json()["error"] == "invalid_grant"

    # Deny, unknown client and a foreign redirect_uri.
    denied = callback_params(browser_consent(do, client.client_id, team, scope="read", state="s2", button="deny"))
    assert denied["error"] == "access_denied" and denied["state"] == "s2" and "code" not in denied
    page = get(
        f"{do.url}/v1/oauth/authorize",
        params={"client_id": client.client_id, "redirect_uri": "https://evil.example/cb", "response_type": "code"},
        allow_redirects=False,
        timeout=5,
    )
    assert page.status_code == 400 and "Location" not in page.headers
    bad_scope = get(
        f"{do.url}/v1/oauth/authorize",
        params={"client_id": client.client_id, "redirect_uri": CALLBACK, "response_type": "code", "scope": "x y!"},
        allow_redirects=False,
        timeout=5,
    )
    assert callback_params(bad_scope)["error"] == "invalid_scope"


def test_oauth_refresh_rotates_and_revocation(do: DigitalOceanStandIn) -> None:
    team = do.add_team()
    client = do.add_oauth_client(redirect_uri=CALLBACK)
    code = parse_qs(urlsplit(do.authorize(client.client_id, CALLBACK, team.uuid, scope="read write")).query)["code"][0]
    first = post(
        f"{do.url}/v1/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "client_id": client.client_id,
            "client_secret": client.client_secret,
            "redirect_uri": CALLBACK,
        },
        timeout=5,
    ).json()
    second = post(
        f"{do.url}/v1/oauth/token",
        params={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
        timeout=5,
    ).json()
    assert second["access_token"] != first["access_token"]
    assert second["refresh_token"] != first["refresh_token"]
    assert second["info"]["team_uuid"] == team.uuid
    assert get(f"{do.url}/v2/account", headers=bearer(first["access_token"]), timeout=5).status_code == 401
    assert get(f"{do.url}/v2/account", headers=bearer(second["access_token"]), timeout=5).status_code == 200
    reused = post(
        f"{do.url}/v1/oauth/refresh",
        data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
        timeout=5,
    )
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
    # /v1/oauth/refresh is the documented alias.
    third = post(
        f"{do.url}/v1/oauth/refresh",
        data={"grant_type": "refresh_token", "refresh_token": second["refresh_token"]},
        timeout=5,
    ).json()
    # POST /v1/oauth/revoke with the token as bearer: {}.
    revoked = post(
        f"{do.url}/v1/oauth/revoke", headers=bearer(third["access_token"]), data={"token": third["access_token"]}
    )
    assert revoked.status_code == 200 and revoked.json() == {}
    assert get(f"{do.url}/v2/account", headers=bearer(third["access_token"]), timeout=5).status_code == 401

    # The team removes the app: access and refresh tokens both die.
    access = do.add_token(team.uuid, ["account:read"], kind="oauth", client_id=client.client_id)
    refresh = do.tokens[access].pair
    assert refresh is not None and refresh.startswith("dor_v1_")
    assert do.revoke_authorization(team.uuid) >= 2
    assert get(f"{do.url}/v2/account", headers=bearer(access), timeout=5).status_code == 401
    dead = post(f"{do.url}/v1/oauth/token", data={"grant_type": "refresh_token", "refresh_token": refresh}, timeout=5)
    assert dead.status_code == 400 and dead.json()["error"] == "invalid_grant"


# ------------------------------------------------------------------------------------------------
# Out-of-process use
# ------------------------------------------------------------------------------------------------


def test_digitalocean_cli_and_control_api(tmp_path: Path) -> None:
    state = {"teams": [{"name": "Seeded", "databases": [{"name": "backend", "tags": ["my-tag"]}]}]}
    state_file = tmp_path / "state.json"
    state_file.write_text(json.dumps(state))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devkit.standins.digitalocean",
            "--port",
            "0",
            "--state",
            str(state_file),
            "--team",
            "Flag Team",
            "--oauth-redirect-uri",
            CALLBACK,
            "--droplet-ipv4",
            "127.0.0.7",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        assert process.stdout is not None
        ready = json.loads(process.stdout.readline())
        url = ready["url"]
        assert [t["name"] for t in ready["teams"]] == ["Seeded", "Flag Team"]
        token = ready["teams"][0]["tokens"][0]
        assert ready["oauth_clients"][0]["redirect_uri"] == CALLBACK
        databases = get(f"{url}/v2/databases?tag_name=my-tag", headers=bearer(token), timeout=5).json()
        assert [d["id"] for d in databases["databases"]] == ready["teams"][0]["databases"]
        created = post(f"{url}/v2/droplets", headers=bearer(token), json={"name": "w", **DROPLET}).json()
        droplet_id = created["droplet"]["id"]
        changed = post(f"{url}/_standin/droplets/{droplet_id}", json={"public_ipv4": "127.0.0.8"}).json()
        assert [n["ip_address"] for n in changed["networks"]["v4"] if n["type"] == "public"] == ["127.0.0.8"]
        snapshot = get(f"{url}/_standin/state", timeout=5).json()
        assert snapshot["droplets"][0]["create_request"]["name"] == "w"
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0


# ------------------------------------------------------------------------------------------------
# GitHub Actions OIDC
# ------------------------------------------------------------------------------------------------


def verify(gh: GitHubOIDCStandIn, token: str, audience: str) -> dict[str, Any]:
    signing_key = jwt.PyJWKClient(gh.jwks_uri, cache_keys=False).get_signing_key_from_jwt(token)
    return jwt.decode(token, signing_key.key, algorithms=["RS256"], audience=audience, issuer=gh.issuer)


def test_github_discovery_and_token_verify(gh: GitHubOIDCStandIn) -> None:
    config = get(f"{gh.url}/.well-known/openid-configuration", timeout=5).json()
    assert config["issuer"] == gh.url == gh.issuer
    assert config["jwks_uri"] == f"{gh.url}/.well-known/jwks"
    assert config["id_token_signing_alg_values_supported"] == ["RS256"]
    jwks = get(config["jwks_uri"], timeout=5).json()
    assert [k["kid"] for k in jwks["keys"]] == [gh.kid]
    assert {"kty", "alg", "use", "kid", "n", "e", "x5c", "x5t"} <= set(jwks["keys"][0])

    audience = "api://DigitalOcean?actx=f81d4fae-7dec-11d0-a765-00a0c91e6bf6"
    token = gh.mint(audience, repository="acme/deploy", workflow_file="release.yml")
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "RS256" and header["kid"] == gh.kid and header["typ"] == "JWT"
    claims = verify(gh, token, audience)
    assert claims["sub"] == "repo:acme/deploy:ref:refs/heads/main"
    assert claims["repository_owner"] == "acme"
    assert claims["job_workflow_ref"] == "acme/deploy/.github/workflows/release.yml@refs/heads/main"
    expected = {
        "iss",
        "aud",
        "sub",
        "jti",
        "iat",
        "nbf",
        "exp",
        "job_workflow_ref",
        "job_workflow_sha",
        "repository",
        "repository_id",
        "repository_owner",
        "repository_owner_id",
        "ref",
        "ref_type",
        "ref_protected",
        "sha",
        "workflow",
        "workflow_ref",
        "workflow_sha",
        "event_name",
        "run_id",
        "run_number",
        "run_attempt",
        "actor",
        "actor_id",
        "runner_environment",
        "repository_visibility",
        "head_ref",
        "base_ref",
    }
    assert expected <= set(claims)
    for name in ("repository_id", "repository_owner_id", "run_id", "run_attempt", "actor_id", "ref_protected"):
        assert isinstance(claims[name], str), name
    assert isinstance(claims["iat"], int) and claims["nbf"] < claims["iat"] < claims["exp"]
    assert "environment" not in claims

    env_token = gh.mint(audience, environment="production", run_attempt="2", actor=None)
    env_claims = verify(gh, env_token, audience)
    assert env_claims["sub"] == "repo:octo-org/octo-repo:environment:production"
    assert env_claims["environment"] == "production" and env_claims["run_attempt"] == "2"
    assert "actor" not in env_claims


def test_github_actions_runtime_endpoint(gh: GitHubOIDCStandIn) -> None:
    env = gh.actions_env(repository="acme/app", ref="refs/tags/v1.0.0")
    audience = "api://DigitalOcean?actx=abc"
    # What @actions/core getIDToken(audience) sends.
    response = get(
        env["ACTIONS_ID_TOKEN_REQUEST_URL"] + audience_query(audience),
        headers={"Authorization": f"Bearer {env['ACTIONS_ID_TOKEN_REQUEST_TOKEN']}", "Accept": "application/json"},
        timeout=5,
    )
    assert response.status_code == 200
    claims = verify(gh, response.json()["value"], audience)
    assert claims["sub"] == "repo:acme/app:ref:refs/tags/v1.0.0" and claims["ref_type"] == "tag"
    default = get(env["ACTIONS_ID_TOKEN_REQUEST_URL"], headers=bearer(env["ACTIONS_ID_TOKEN_REQUEST_TOKEN"]), timeout=5)
    assert jwt.decode(default.json()["value"], options={"verify_signature": False})["aud"] == "https://github.com/acme"
    wrong = get(env["ACTIONS_ID_TOKEN_REQUEST_URL"], headers=bearer("nope"), timeout=5)
    assert wrong.status_code == 401


def test_github_key_rotation_and_attack_tokens(gh: GitHubOIDCStandIn) -> None:
    audience = "api://DigitalOcean?actx=t"
    old_token = gh.mint(audience)
    old_kid = gh.kid
    gh.rotate_key()
    assert gh.kid != old_kid
    assert [k["kid"] for k in gh.jwks()["keys"]] == [old_kid, gh.kid]
    assert verify(gh, old_token, audience)["aud"] == audience
    assert verify(gh, gh.mint(audience), audience)["aud"] == audience
    gh.remove_key(old_kid)
    with pytest.raises(jwt.PyJWKClientError):
        verify(gh, old_token, audience)

    # A key not in the JWKS, even under a published kid.
    forged = gh.mint(audience, key=gh.untrusted_key(kid=gh.kid))
    with pytest.raises(jwt.InvalidSignatureError):
        verify(gh, forged, audience)
    unknown_kid = gh.mint(audience, key=gh.untrusted_key())
    with pytest.raises(jwt.PyJWKClientError):
        verify(gh, unknown_kid, audience)

    unsigned = gh.mint(audience, alg="none")
    assert unsigned.endswith(".") and jwt.get_unverified_header(unsigned)["alg"] == "none"
    with pytest.raises(jwt.InvalidTokenError):
        jwt.decode(unsigned, gh.signing_key.public_pem(), algorithms=["RS256"], audience=audience)
    confused = gh.mint(audience, alg="HS256")
    assert jwt.get_unverified_header(confused)["alg"] == "HS256"
    with pytest.raises(jwt.InvalidTokenError):
        jwt.decode(confused, gh.signing_key.public_pem(), algorithms=["RS256"], audience=audience)
    odd = gh.mint(audience, headers={"jku": "https://evil.example/jwks", "x5t": None})
    assert jwt.get_unverified_header(odd)["jku"] == "https://evil.example/jwks"
    assert "x5t" not in jwt.get_unverified_header(odd)
    expired = gh.mint(audience, exp=int(time.time()) - 60)
    with pytest.raises(jwt.ExpiredSignatureError):
        verify(gh, expired, audience)
    spoofed = gh.mint(audience, iss="https://token.actions.githubusercontent.com")
    with pytest.raises(jwt.InvalidIssuerError):
        verify(gh, spoofed, audience)


def test_github_tls_and_path_prefix() -> None:
    with GitHubOIDCStandIn(tls=True, path_prefix="/_services/token") as gh:
        assert gh.issuer == f"{gh.url}/_services/token" and gh.url.startswith("https://")
        config = get(gh.discovery_url, verify=gh.ca_file, timeout=5).json()
        assert config["issuer"] == gh.issuer
        assert get(config["jwks_uri"], verify=gh.ca_file, timeout=5).json()["keys"][0]["kid"] == gh.kid
        with pytest.raises(requests.exceptions.SSLError):
            get(gh.discovery_url, timeout=5)  # not trusted without the stand-in's CA
        gh.fail_next("/_services/token/.well-known/jwks", 500)
        assert get(gh.jwks_uri, verify=gh.ca_file, timeout=5).status_code == 500
        assert [r.path for r in gh.requests][-1] == "/_services/token/.well-known/jwks"

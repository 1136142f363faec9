"""The proxy as the DigitalOcean API: wrapped routes and the generic policy proxy for JWTs of ours,
passthrough for DigitalOcean tokens, forwarding rules, bad input and upstream faults.

Everything runs through Caddy + fcgiwrap (`scripts/run.sh`) against the DigitalOcean stand-in; the
clients are pydo (the official client), curl and requests.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from azure.core.exceptions import HttpResponseError

from devkit.do_world import DATABASE_UUID, World, example_files, pydo_client
from devkit.standins.digitalocean import Team
from tests.worlds import serve_world
from wid.core.errors import InvalidRequest
from wid.upstreams.digitalocean import oauth as do_oauth
from wid.web.request import Request

DROPLET_ROLE_FILES = {
    "roles/droplet-operator.hcl": """
role "droplet-operator" {
  aud      = "api://DigitalOcean?actx={actx}"
  sub      = "actx:{actx}:role:droplet-operator"
  policies = ["droplet-operate"]
}
""",
    "policies/droplet-operate.hcl": """
path "/v2/droplets" {
  capabilities = ["read"]
}
path "/v2/droplets/+" {
  capabilities = ["read", "delete"]
}
path "/v2/tags/+/resources" {
  capabilities = ["create"]
  allowed_parameters = {
    "resources" = [
      {
        "resource_id"   = "*"
        "resource_type" = "droplet"
      }
    ]
  }
}
path "/v2/account" {
  capabilities = ["read"]
}
""",
}
SPACES_KEY_111 = {"name": "bucket-111-read-token-droplet", "grants": [{"bucket": "111", "permission": "read"}]}
SPACES_KEY_222 = {"name": "bucket-111-read-token-droplet", "grants": [{"bucket": "222", "permission": "read"}]}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    # One scope beyond the defaults, as an admin who grants workloads more would configure it.
    scopes = " ".join((*do_oauth.DEFAULT_SCOPES, "droplet:update"))
    yield from serve_world(tmp_path_factory.mktemp("do-proxy") / "data", {"DIGITALOCEAN_OAUTH_SCOPES": scopes})


@pytest.fixture(scope="module")
def team(world: World) -> Team:
    t = world.connect_team("Blue Team", rbac=False)
    assert "droplet:update" in world.credential(t.uuid).data["scope"].split()
    world.install_rbac(t.uuid, example_files(DROPLET_ROLE_FILES))
    world.stand_in.add_database(t.uuid, "backend", ["my-tag"], uuid=DATABASE_UUID, password="s3cret")
    world.stand_in.add_database(t.uuid, "other", ["other"])
    return t


@pytest.fixture
def token(world: World, team: Team) -> str:
    return world.jwt(team.uuid)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def team_token(world: World, team: Team) -> str:
    return str(world.credential(team.uuid).data["access_token"])


def curl(*args: str) -> tuple[int, str]:
    """curl as the articles run it; returns (HTTP status, body)."""
    done = subprocess.run(["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", *args], capture_output=True, text=True,
                          timeout=30, check=True)
    body, _, status = done.stdout.rpartition("\n")
    return int(status), body


# ------------------------------------------------------------------------------------------------
# Wrapped routes: the articles' "Token Usage from Droplet"
# ------------------------------------------------------------------------------------------------


def test_database_by_uuid_with_curl_as_in_the_articles(world: World, team: Team, token: str) -> None:
    status, body = curl("-H", f"Authorization: Bearer {token}", f"{world.url}/v2/databases/{DATABASE_UUID}")
    assert status == 200
    uri = json.loads(body)["database"]["connection"]["uri"]
    assert uri.startswith("postgres://doadmin:s3cret@") and uri.endswith("/defaultdb?sslmode=require")
    forwarded = world.stand_in.requests_to(f"/v2/databases/{DATABASE_UUID}")[-1]
    assert forwarded.authorization == f"Bearer {team_token(world, team)}"
    # The same call with a DigitalOcean token, through the proxy and straight to the API: same answer.
    pat = world.pat(team.uuid)
    for base in (world.url, world.stand_in.url):
        pat_status, pat_body = curl("-H", f"Authorization: Bearer {pat}", f"{base}/v2/databases/{DATABASE_UUID}")
        assert (pat_status, json.loads(pat_body)) == (200, json.loads(body))


def test_pydo_gets_the_same_answers_through_the_proxy_as_from_the_api(world: World, team: Team, token: str) -> None:
    direct = pydo_client(world.stand_in.url, world.pat(team.uuid))
    with_jwt = pydo_client(world.url, token)
    with_pat = pydo_client(world.url, world.pat(team.uuid))  # a DigitalOcean token: Caddy passes it through
    for client in (with_jwt, with_pat):
        assert client.databases.get_cluster(DATABASE_UUID) == direct.databases.get_cluster(DATABASE_UUID)
        assert client.databases.list_clusters(tag_name="my-tag") == direct.databases.list_clusters(tag_name="my-tag")
    listed = with_jwt.databases.list_clusters(tag_name="my-tag")["databases"]
    assert [d["id"] for d in listed] == [DATABASE_UUID]


def test_tag_name_allowed_once_but_not_repeated(world: World, team: Team, token: str) -> None:
    ok = requests.get(f"{world.url}/v2/databases?tag_name=my-tag", headers=bearer(token), timeout=10)
    assert ok.status_code == 200 and [d["name"] for d in ok.json()["databases"]] == ["backend"]
    before = len(world.stand_in.requests_to("/v2/databases"))
    for query in ("tag_name=my-tag&tag_name=other", "tag_name=other", "tag_name=my-tag&page=2", ""):
        denied = requests.get(f"{world.url}/v2/databases?{query}", headers=bearer(token), timeout=10)
        assert denied.status_code == 403, query
        assert denied.json()["id"] == "forbidden"
        assert "database-credential-read" in denied.json()["message"]
    repeated = requests.get(f"{world.url}/v2/databases?tag_name=my-tag&tag_name=other", headers=bearer(token),
                            timeout=10).json()["message"]
    assert "tag_name" in repeated and "other" in repeated
    assert len(world.stand_in.requests_to("/v2/databases")) == before  # nothing denied reached DigitalOcean


def test_spaces_key_for_bucket_111_but_not_222(world: World, team: Team, token: str) -> None:
    # The articles' commands: curl with a jq-built body.
    allowed = subprocess.run(  # noqa: S602 - the articles' shell pipeline, verbatim in spirit
        f"""jq -n -c --arg name bucket-111-read-token-droplet --arg bucket 111 --arg perm read \
            '{{name: $name, grants: [{{"bucket": $bucket, "permission": $perm}}]}}' \
          | curl -sS -X POST -H "Authorization: Bearer {token}" -H "Content-Type: application/json" -d @- \
            -w '\\n%{{http_code}}' "{world.url}/v2/spaces/keys" """,
        shell=True, capture_output=True, text=True, timeout=30, check=True).stdout
    body, _, status = allowed.rpartition("\n")
    assert status == "201"
    key = json.loads(body)["key"]
    assert key["grants"] == [{"bucket": "111", "permission": "read"}] and key["secret_key"]
    assert world.stand_in.spaces_keys[key["access_key"]]["team_uuid"] == team.uuid

    created_before = set(world.stand_in.spaces_keys)
    status_222, body_222 = curl("-X", "POST", "-H", f"Authorization: Bearer {token}", "-H",
                                "Content-Type: application/json", "-d", json.dumps(SPACES_KEY_222),
                                f"{world.url}/v2/spaces/keys")
    assert status_222 == 403
    error = json.loads(body_222)
    assert error["id"] == "forbidden"
    assert "spaces-keys" in error["message"] and "222" in error["message"] and "bucket" in error["message"]
    assert set(world.stand_in.spaces_keys) == created_before

    deleted = requests.delete(f"{world.url}/v2/spaces/keys/{key['access_key']}", headers=bearer(token), timeout=10)
    assert deleted.status_code == 204 and deleted.content == b""
    assert key["access_key"] not in world.stand_in.spaces_keys


def test_pydo_spaces_keys_with_a_jwt(world: World, team: Team, token: str) -> None:
    client = pydo_client(world.url, token)
    key = client.spaces_key.create(body=SPACES_KEY_111)["key"]
    assert set(key) == {"name", "access_key", "secret_key", "grants", "created_at"}
    with pytest.raises(HttpResponseError) as denied:
        client.spaces_key.create(body=SPACES_KEY_222)
    assert denied.value.status_code == 403 and "222" in str(denied.value)
    assert client.spaces_key.delete(access_key=key["access_key"]) is None
    # The API's own answer comes back unchanged: deleting it again is DigitalOcean's 404.
    again = client.spaces_key.delete(access_key=key["access_key"])
    assert again is not None and again["id"] == "not_found"
    # A DigitalOcean token through the proxy: DigitalOcean's answers, no policy in the way (not even for 222).
    with_pat = pydo_client(world.url, world.pat(team.uuid))
    other = with_pat.spaces_key.create(body=SPACES_KEY_222)["key"]
    assert other["grants"] == [{"bucket": "222", "permission": "read"}]
    assert with_pat.spaces_key.delete(access_key=other["access_key"]) is None
    gone = with_pat.spaces_key.delete(access_key=other["access_key"])
    assert gone is not None and {**gone, "request_id": None} == {**again, "request_id": None}


# ------------------------------------------------------------------------------------------------
# Every other API path: the generic policy proxy (and passthrough for DigitalOcean tokens)
# ------------------------------------------------------------------------------------------------


def test_generic_proxy_droplets_with_pydo(world: World, team: Team) -> None:
    droplet_id = world.stand_in.add_droplet(team.uuid, "web-1", tags=["web"], public_ipv4="127.0.0.9")
    operator = pydo_client(world.url, world.jwt(team.uuid, "droplet-operator"))
    direct = pydo_client(world.stand_in.url, world.pat(team.uuid))
    with_pat = pydo_client(world.url, world.pat(team.uuid))
    assert operator.droplets.get(droplet_id) == direct.droplets.get(droplet_id) == with_pat.droplets.get(droplet_id)
    assert operator.droplets.list(tag_name="web") == direct.droplets.list(tag_name="web")
    assert operator.account.get()["account"]["team"]["uuid"] == team.uuid
    # The data role has no droplet rules: denied, with the reason.
    with pytest.raises(HttpResponseError) as denied:
        pydo_client(world.url, world.jwt(team.uuid)).droplets.get(droplet_id)
    assert denied.value.status_code == 403 and "no rule" in str(denied.value)
    # Any method: policy grants DELETE, so it is forwarded; the team token lacks droplet:delete (not in the
    # default scopes), and DigitalOcean's own 403 comes back unchanged.
    with pytest.raises(HttpResponseError) as upstream_denied:
        operator.droplets.destroy(droplet_id)
    assert upstream_denied.value.status_code == 403
    assert "You are not authorized to perform this operation." in str(upstream_denied.value)
    assert world.stand_in.requests_to(f"/v2/droplets/{droplet_id}", "DELETE")
    assert droplet_id in world.stand_in.droplets


def test_generic_proxy_checks_and_forwards_json_bodies(world: World, team: Team) -> None:
    droplet_id = world.stand_in.add_droplet(team.uuid, "tagged")
    token = world.jwt(team.uuid, "droplet-operator")
    url = f"{world.url}/v2/tags/oidc-sub:role:x/resources"
    body = {"resources": [{"resource_id": str(droplet_id), "resource_type": "droplet"}]}
    ok = requests.post(url, json=body, headers=bearer(token), timeout=10)
    assert ok.status_code == 204, ok.text
    assert "oidc-sub:role:x" in world.stand_in.droplets[droplet_id]["tags"]
    forwarded = world.stand_in.requests_to("/v2/tags/")[-1]
    assert forwarded.json() == body and forwarded.headers["Content-Type"] == "application/json"
    wrong = {"resources": [{"resource_id": "db-uuid", "resource_type": "database"}]}
    denied = requests.post(url, json=wrong, headers=bearer(token), timeout=10)
    assert denied.status_code == 403 and "resource_type" in denied.json()["message"]


def test_digitalocean_token_passes_through_untouched_without_python(world: World, team: Team) -> None:
    pat = world.pat(team.uuid)
    marker = "passthrough-marker-7f3a"
    response = requests.get(f"{world.url}/v2/account?probe={marker}", timeout=10,
                            headers={"Authorization": f"Bearer {pat}", "X-Client-Header": marker})
    assert response.status_code == 200 and response.json()["account"]["team"]["uuid"] == team.uuid
    seen = world.stand_in.requests_to("/v2/account")[-1]
    assert seen.authorization == f"Bearer {pat}" and seen.headers["X-Client-Header"] == marker
    assert seen.raw_query == f"probe={marker}"
    # Caddy answered alone: no handler (each logs the path of every request it serves) saw these.
    unknown = requests.get(f"{world.url}/v2/{marker}", headers={"Authorization": f"Bearer {pat}"}, timeout=10)
    assert unknown.status_code == 404 and unknown.json()["id"] == "not_found"  # DigitalOcean's own 404
    with_jwt = requests.get(f"{world.url}/v2/jwt-{marker}", headers=bearer(world.jwt(team.uuid)), timeout=10)
    assert with_jwt.status_code == 403  # policy: no rule for that path
    log = world.proxy.log_text()
    assert f"/v2/jwt-{marker}" in log  # the check below can see Python at work...
    assert f'"/v2/{marker}"' not in log  # ...and Python never saw the DigitalOcean token's requests
    assert world.stand_in.requests_to(f"/v2/{marker}")[-1].authorization == f"Bearer {pat}"
    # A wrapped path with a DigitalOcean token is passed through as well (its answer is DigitalOcean's).
    db = requests.get(f"{world.url}/v2/databases/{DATABASE_UUID}", headers={"Authorization": f"Bearer {pat}"},
                      timeout=10)
    assert db.status_code == 200 and db.json()["database"]["id"] == DATABASE_UUID
    assert world.stand_in.requests_to(f"/v2/databases/{DATABASE_UUID}")[-1].authorization == f"Bearer {pat}"
    unauthenticated = requests.get(f"{world.url}/v2/account", timeout=10)
    assert unauthenticated.status_code == 401 and unauthenticated.json()["id"] == "unauthorized"


# ------------------------------------------------------------------------------------------------
# Forwarding rules
# ------------------------------------------------------------------------------------------------


def test_forwarded_request_carries_the_team_token_and_nothing_of_the_clients(world: World, team: Team) -> None:
    token = world.jwt(team.uuid, "droplet-operator")
    droplet_id = world.stand_in.add_droplet(team.uuid, "hdr")
    response = requests.get(f"{world.url}/v2/droplets/{droplet_id}?x=1&y=a%20b", timeout=10, headers={
        **bearer(token), "Cookie": "session=client-secret-cookie", "X-Forwarded-For": "10.9.9.9",
        "Proxy-Authorization": "Basic c2VjcmV0", "X-Custom": "client-only", "Accept": "application/json",
        "User-Agent": "wid-test-agent/1.0", "Connection": "keep-alive, X-Custom", "Keep-Alive": "timeout=5"})
    assert response.status_code == 200
    seen = world.stand_in.requests_to(f"/v2/droplets/{droplet_id}")[-1]
    assert seen.authorization == f"Bearer {team_token(world, team)}"
    assert token not in json.dumps(seen.headers.items)
    names = {name.lower() for name, _ in seen.headers.items}
    for header in ("cookie", "x-forwarded-for", "proxy-authorization", "x-custom", "keep-alive", "x-request-id"):
        assert header not in names, header
    assert seen.raw_query == "x=1&y=a%20b"
    assert seen.headers["User-Agent"].startswith("wid-test-agent/1.0")
    # Upstream headers that matter come back; hop-by-hop ones do not.
    assert response.headers["ratelimit-limit"] == "5000"
    assert "set-cookie" not in {name.lower() for name in response.headers}


def test_large_upstream_bodies_are_streamed_back_whole(world: World, team: Team) -> None:
    token = world.jwt(team.uuid, "droplet-operator")
    big = json.dumps({"droplets": [{"id": i, "name": "x" * 200} for i in range(60000)]}).encode()
    assert len(big) > 12 * 1024 * 1024  # more than the 10 MB the buffered reader would accept
    world.stand_in.fail_next("/v2/droplets", 200, method="GET", body=big,
                             headers=[("Content-Type", "application/json; charset=utf-8")])
    response = requests.get(f"{world.url}/v2/droplets?per_page=200", headers=bearer(token), timeout=60)
    assert response.status_code == 200
    assert response.content == big


def test_upstream_errors_come_back_unchanged_and_5xx_as_502(world: World, team: Team) -> None:
    token = world.jwt(team.uuid, "droplet-operator")
    world.stand_in.fail_next("/v2/droplets", 429, method="GET")
    limited = requests.get(f"{world.url}/v2/droplets", headers=bearer(token), timeout=10)
    assert limited.status_code == 429 and limited.json()["id"] == "too_many_requests"
    world.stand_in.fail_next("/v2/droplets", 500, method="GET")
    broken = requests.get(f"{world.url}/v2/droplets", headers=bearer(token), timeout=10)
    assert broken.status_code == 502 and broken.json()["id"] == "bad_gateway"  # DESIGN.md: upstream 5xx -> 502
    assert broken.json()["message"].startswith("DigitalOcean answered HTTP 500 to GET /v2/droplets")
    assert "Unexpected server-side error" in broken.json()["message"]
    logged = [json.loads(line) for line in world.proxy.log_text().splitlines() if '"error_response"' in line]
    assert any(e["request_id"] == broken.headers["X-Request-Id"] and e["status"] == 502 and e["level"] == "error"
               and e["message"] == broken.json()["message"] for e in logged), "a 5xx is in the operator's log"
    missing = requests.get(f"{world.url}/v2/droplets/1", headers=bearer(token), timeout=10)
    assert missing.status_code == 404 and missing.json()["id"] == "not_found"


def test_upstream_timeout_is_504_and_connection_failure_502(world: World, team: Team) -> None:
    token = world.jwt(team.uuid, "droplet-operator")
    world.stand_in.fail_next("/v2/droplets", None, method="GET", delay_seconds=4)  # WID_UPSTREAM_TIMEOUT=2
    slow = requests.get(f"{world.url}/v2/droplets", headers=bearer(token), timeout=20)
    assert slow.status_code == 504 and slow.json()["id"] == "gateway_timeout"
    assert "did not answer within 2s" in slow.json()["message"]
    # Twice: in persistent mode a GET sent on a kept connection that the server closed is sent once more,
    # on a new one (docs/operator.md); that one must fail too for the client to see it.
    world.stand_in.fail_next("/v2/droplets", None, method="GET", drop_connection=True, times=2)
    dropped = requests.get(f"{world.url}/v2/droplets", headers=bearer(token), timeout=20)
    assert dropped.status_code == 502 and dropped.json()["id"] == "bad_gateway"
    world.stand_in.clear_faults()  # a CGI process keeps no connection: it used one fault of the two
    assert requests.get(f"{world.url}/v2/droplets", headers=bearer(token), timeout=10).status_code == 200


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "content_type", "fragment"), [
    (b"name=bucket-111-read-token-x&bucket=111", "application/x-www-form-urlencoded", "not valid JSON"),
    (b"{not json", "application/json", "not valid JSON"),
    (b'["a", "list"]', "application/json", "must be a JSON object"),
    (b'{"name": "bucket-111-read-token-x", "name": "evil", "grants": []}', "application/json", "duplicate"),
    (b"\xff\xfe", "application/json", "not valid JSON"),
])
def test_body_that_policies_cannot_read_is_400(world: World, team: Team, token: str, body: bytes,
                                               content_type: str, fragment: str) -> None:
    before = len(world.stand_in.requests_to("/v2/spaces/keys"))
    response = requests.post(f"{world.url}/v2/spaces/keys", data=body, timeout=10,
                             headers={**bearer(token), "Content-Type": content_type})
    assert response.status_code == 400, response.text
    assert response.json()["id"] == "bad_request" and fragment in response.json()["message"]
    assert len(world.stand_in.requests_to("/v2/spaces/keys")) == before


def raw_get(world: World, target: str, token: str) -> tuple[int, dict[str, Any]]:
    """A request whose path no client library would normalise first."""
    conn = http.client.HTTPConnection("127.0.0.1", world.proxy.port, timeout=10)
    try:
        conn.request("GET", target, headers=bearer(token))
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


@pytest.mark.parametrize("target", [
    "/v2/databases/%2e%2e/spaces/keys",
    "/v2/databases/%2E%2E/spaces/keys",
    f"/v2/databases/{DATABASE_UUID}%2f..%2fx",
    f"/v2/databases/{DATABASE_UUID}%2F..%2Fx",
    "/v2/databases/x%5Cy",
    "/v2/databases/x%5cy",
    "/v2/databases//x",
    "/v2/spaces/keys/%252e",
    "/v2/spaces/keys/../../droplets",
    "/v2/databases/./x",
])
def test_paths_that_could_change_meaning_are_refused(world: World, token: str, target: str) -> None:
    before = len(world.stand_in.requests)
    status, body = raw_get(world, target, token)
    assert status == 400 and body["id"] == "bad_request", body
    assert "path" in body["message"]
    assert len(world.stand_in.requests) == before


@pytest.mark.parametrize("raw", ["/v2/x%00", "/v2/x%2e%2E", "/v2/%2Fx", "/v2/%5Cx", "/v2/%255c", "/v2/%25"])
def test_encoded_tricks_are_refused_in_either_case(raw: str) -> None:
    """What Caddy itself lets through is covered above; a NUL (%00) never reaches the proxy behind Caddy."""
    with pytest.raises(InvalidRequest, match="contains an encoded"):
        Request({"REQUEST_METHOD": "GET", "REQUEST_URI": raw}).checked_path()


def test_a_clean_path_with_escapes_is_decoded() -> None:
    request = Request({"REQUEST_METHOD": "GET", "REQUEST_URI": "/v2/tags/caf%C3%A9%41"})
    assert request.checked_path() == "/v2/tags/caf\u00e9A"


def test_jwt_for_a_team_that_never_authorized(world: World) -> None:
    stranger = world.stand_in.add_team("Never Authorized")
    world.install_rbac(stranger.uuid)  # policy allows; the proxy holds no token for the team
    before = len(world.stand_in.requests)
    response = requests.get(f"{world.url}/v2/databases/{DATABASE_UUID}", headers=bearer(world.jwt(stranger.uuid)),
                            timeout=10)
    assert response.status_code == 403
    error = response.json()
    assert error["id"] == "team_not_connected"
    assert stranger.uuid in error["message"] and "never authorized" in error["message"]
    assert f"{world.url}/" in error["message"]
    assert len(world.stand_in.requests) == before


def test_team_without_rbac_is_denied(world: World) -> None:
    team = world.connect_team("No Policies Yet", rbac=False)
    response = requests.get(f"{world.url}/v2/databases", headers=bearer(world.jwt(team.uuid)), timeout=10)
    assert response.status_code == 403 and "no RBAC configuration" in response.json()["message"]


def test_tokens_that_are_not_for_this_route(world: World, team: Team) -> None:
    url = f"{world.url}/v2/databases/{DATABASE_UUID}"
    expired = world.jwt(team.uuid, ttl=300, now=int(time.time()) - 400)
    assert requests.get(url, headers=bearer(expired), timeout=10).status_code == 401
    provisioning_kind = world.jwt(team.uuid, kind="rbac")  # a token of ours, but not for API routes
    assert requests.get(url, headers=bearer(provisioning_kind), timeout=10).status_code == 401
    atproto = world.jwt("did:plc:abc", "x", api="ATProto")
    wrong_api = requests.get(url, headers=bearer(atproto), timeout=10)
    assert wrong_api.status_code == 403 and "api://DigitalOcean" in wrong_api.json()["message"]
    forged = requests.get(url, headers=bearer("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."), timeout=10)
    assert forged.status_code == 401 and forged.json()["id"] == "unauthorized"


def test_methods_without_a_capability_are_405(world: World, token: str) -> None:
    response = requests.request("OPTIONS", f"{world.url}/v2/databases", headers=bearer(token), timeout=10)
    assert response.status_code == 405 and response.json()["id"] == "method_not_allowed"


def test_non_api_paths_with_a_jwt_are_404(world: World, token: str) -> None:
    response = requests.get(f"{world.url}/not-the-api", headers=bearer(token), timeout=10)
    assert response.status_code == 404 and response.json()["id"] == "not_found"

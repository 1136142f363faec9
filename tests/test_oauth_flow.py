"""DigitalOcean's OAuth web flow at the proxy, the landing page, and the team token's life afterwards:
state bound to the browser, errors at every step, refresh before expiry, revocation.

The browser is a requests.Session (cookies kept); tests/test_browser_oauth.py does it in Chromium.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests

from devkit.do_world import CALLBACK, START, World
from devkit.proxy import ProxyServer
from devkit.standins.digitalocean import Team
from tests.harness import PostgresServer
from tests.worlds import serve_world
from wid import config
from wid.upstreams.digitalocean import oauth as do_oauth

HTML = {"Accept": "text/html,application/xhtml+xml"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from serve_world(tmp_path_factory.mktemp("oauth") / "data")


def token_requests(world: World, grant_type: str) -> int:
    return sum(1 for r in world.stand_in.requests_to("/v1/oauth/token") if r.form().get("grant_type") == [grant_type])


def set_expiry(world: World, team_uuid: str, expires_in: int) -> None:
    """Pretend time passed: the stored access token now expires in `expires_in` seconds."""
    from wid.store import credentials

    with world.proxy.configured(), credentials.locked("DigitalOcean", team_uuid) as (tx, cred):
        assert cred is not None
        credentials.put(tx, "DigitalOcean", team_uuid, {**cred.data, "expires_at": int(time.time()) + expires_in})


def db_get(world: World, team_uuid: str) -> requests.Response:
    """The articles' workload call: the team's databases tagged my-tag, with a role token."""
    return requests.get(f"{world.url}/v2/databases?tag_name=my-tag", timeout=15,
                        headers={"Authorization": f"Bearer {world.jwt(team_uuid)}"})


def connected_team(world: World, name: str) -> Team:
    team = world.connect_team(name)
    world.stand_in.add_database(team.uuid, f"db-{team.uuid[:8]}", ["my-tag"])
    return team


# ------------------------------------------------------------------------------------------------
# Landing page
# ------------------------------------------------------------------------------------------------


def test_landing_page_without_an_oauth_client(proxy: ProxyServer) -> None:
    page = requests.get(f"{proxy.url}/", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "This service stands in for the DigitalOcean API." in page.text
    assert "OAuth client not configured" in page.text
    assert f"{proxy.url}/auth/digitalocean/v1/callback" in page.text  # what to register
    assert 'id="authorize-button" type="submit" disabled' in page.text
    started = requests.post(f"{proxy.url}{START}", timeout=10, allow_redirects=False)
    assert started.status_code == 503 and started.json()["id"] == "oauth_not_configured"
    assert "DIGITALOCEAN_OAUTH_CLIENT_ID" in started.json()["message"]
    callback = requests.get(f"{proxy.url}{CALLBACK}?code=x&state=y", timeout=10)
    assert callback.status_code == 503


def test_landing_page_with_an_oauth_client(world: World) -> None:
    page = requests.get(f"{world.url}/", timeout=10)
    assert page.status_code == 200
    text = page.text
    assert "<h1>Workload identity for DigitalOcean</h1>" in text
    assert "Connect a team" in text and "Connected teams" in text
    assert "OAuth client configured" in text and "wid-test-client" in text
    assert 'id="authorize-button" type="submit">' in text
    for scope in do_oauth.DEFAULT_SCOPES:
        assert f"<code>{scope}</code>" in text
    assert world.proxy.env["DIGITALOCEAN_OAUTH_CLIENT_SECRET"] not in text
    assert f'id="atproto-sign-in" href="{world.url}/auth/atproto/"' in text
    sign_in = requests.get(f"{world.url}/auth/atproto", timeout=10)
    assert sign_in.status_code == 200 and "handle" in sign_in.text.lower()  # the ATProto sign-in form
    csp = page.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and world.stand_in.url in csp
    assert page.headers["Referrer-Policy"] == "no-referrer" and page.headers["Cache-Control"] == "no-store"
    head = requests.head(f"{world.url}/", timeout=10)
    assert head.status_code == 200 and head.content == b""
    assert requests.put(f"{world.url}/", timeout=10).status_code == 405


# ------------------------------------------------------------------------------------------------
# The flow
# ------------------------------------------------------------------------------------------------


def test_authorize_redirect_and_cookie(world: World) -> None:
    session = requests.Session()
    response = session.get(f"{world.url}{START}", allow_redirects=False, timeout=10)
    assert response.status_code == 303
    url = urlsplit(response.headers["Location"])
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"{world.stand_in.url}/v1/oauth/authorize"
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert query["response_type"] == "code" and query["client_id"] == "wid-test-client"
    assert query["redirect_uri"] == f"{world.url}{CALLBACK}"
    assert query["scope"].split(" ") == list(do_oauth.DEFAULT_SCOPES)
    assert len(query["state"]) >= 43  # 256 random bits
    cookie = response.headers["Set-Cookie"]
    for attribute in ("HttpOnly", "SameSite=Lax", "Path=/auth/digitalocean/v1/", "Max-Age=600"):
        assert attribute in cookie
    assert "Secure" not in cookie  # THIS_ENDPOINT is http:// here; https deployments get Secure
    assert query["state"] not in cookie  # the cookie holds a separate secret, not the state
    other = requests.get(f"{world.url}{START}", allow_redirects=False, timeout=10).headers["Location"]
    assert parse_qs(urlsplit(other).query)["state"][0] != query["state"]


def test_successful_flow_stores_the_team_token_encrypted(world: World) -> None:
    team = world.stand_in.add_team("Green Team")
    session = requests.Session()
    response = world.authorize(team.uuid, session)
    assert response.status_code == 303
    assert response.headers["Location"] == f"{world.url}/?connected={team.uuid}"
    assert "Max-Age=0" in response.headers["Set-Cookie"]  # the flow's cookie is cleared
    exchange = world.stand_in.requests_to("/v1/oauth/token")[-1]
    form = exchange.form()
    assert form["grant_type"] == ["authorization_code"] and form["redirect_uri"] == [f"{world.url}{CALLBACK}"]
    assert "client_secret" not in exchange.raw_query and "code" not in exchange.raw_query  # secrets not in the URL
    account = world.stand_in.requests_to("/v2/account")[-1]
    cred = world.credential(team.uuid)
    assert cred.status == "active" and account.authorization == f"Bearer {cred.data['access_token']}"
    assert cred.data["team_name"] == "Green Team" and cred.data["refresh_token"].startswith("dor_v1_")
    assert cred.data["scope"].split() == sorted(do_oauth.DEFAULT_SCOPES)
    stored = b"".join(p.read_bytes() for p in world.proxy.data_dir.glob("wid.sqlite3*"))
    assert cred.data["access_token"].encode() not in stored and cred.data["refresh_token"].encode() not in stored

    landing = session.get(response.headers["Location"], timeout=10).text
    assert "Team Green Team is connected" in landing
    assert f'data-team="{team.uuid}" data-status="active"' in landing and ">Active<" in landing
    assert f"/_rbac/DigitalOcean/{team.uuid}/" in landing  # the next step
    assert cred.data["access_token"] not in landing and cred.data["refresh_token"] not in landing


def test_reauthorizing_replaces_the_token(world: World) -> None:
    team = world.connect_team("Teal Team")
    first = world.credential(team.uuid).data
    assert world.authorize(team.uuid).status_code == 303
    second = world.credential(team.uuid).data
    assert second["access_token"] != first["access_token"]
    assert second["connected_at"] == first["connected_at"]


# ------------------------------------------------------------------------------------------------
# State: forged, replayed, from another browser, expired
# ------------------------------------------------------------------------------------------------


def test_forged_state_is_refused(world: World) -> None:
    team = world.stand_in.add_team("Forgery Target")
    session = requests.Session()
    world.begin(session)  # a real flow is under way in this browser
    code = world.stand_in.authorize(world.client.client_id, f"{world.url}{CALLBACK}", team.uuid, state="forged")
    code_value = parse_qs(urlsplit(code).query)["code"][0]
    exchanges = token_requests(world, "authorization_code")
    for query in ({"code": code_value, "state": "forged"}, {"code": code_value}):
        response = session.get(f"{world.url}{CALLBACK}?{urlencode(query)}", allow_redirects=False, timeout=10)
        assert response.status_code == 400 and response.json()["id"] == "invalid_state"
        assert "start again" in response.json()["message"]
    browser = session.get(f"{world.url}{CALLBACK}?{urlencode({'code': code_value, 'state': 'x'})}", headers=HTML,
                          timeout=10)
    assert browser.status_code == 400 and browser.headers["Content-Type"].startswith("text/html")
    assert "not issued by this proxy" in browser.text and 'id="error-id">invalid_state' in browser.text
    assert token_requests(world, "authorization_code") == exchanges  # the code never left the proxy
    assert world.credential(team.uuid) is None


def test_replayed_callback_is_refused(world: World) -> None:
    team = world.stand_in.add_team("Replay Team")
    session = requests.Session()
    callback = world.consent(session, team.uuid)
    assert session.get(callback, allow_redirects=False, timeout=15).status_code == 303
    exchanges = token_requests(world, "authorization_code")
    again = session.get(callback, allow_redirects=False, timeout=15)
    assert again.status_code == 400 and "already used" in again.json()["message"]
    assert token_requests(world, "authorization_code") == exchanges


def test_state_from_another_browser_is_refused_and_burned(world: World) -> None:
    team = world.stand_in.add_team("Victim Team")
    victim, attacker = requests.Session(), requests.Session()
    callback = world.consent(victim, team.uuid)
    no_cookie = attacker.get(callback, allow_redirects=False, timeout=10)
    assert no_cookie.status_code == 400 and "no cookie" in no_cookie.json()["message"]
    assert victim.get(callback, allow_redirects=False, timeout=10).json()["id"] == "invalid_state"  # single use

    callback2 = world.consent(victim, team.uuid)
    world.begin(attacker)  # the attacker has a flow cookie of their own
    other_cookie = attacker.get(callback2, allow_redirects=False, timeout=10)
    assert other_cookie.status_code == 400 and "different browser" in other_cookie.json()["message"]
    assert world.credential(team.uuid) is None


def race_one_callback(world: World, team_uuid: str) -> list[int]:
    """The browser's callback sent twice at the same moment (a double click, a replay racing it)."""
    session = requests.Session()
    callback = world.consent(session, team_uuid)
    cookies = {name: value or "" for name, value in session.cookies.get_dict().items()}
    with ThreadPoolExecutor(max_workers=2) as pool:
        return sorted(pool.map(lambda _: requests.get(callback, cookies=cookies, allow_redirects=False,
                                                      timeout=15).status_code, range(2)))


def test_simultaneous_callbacks_with_one_state_succeed_once(world: World) -> None:
    team = world.stand_in.add_team("Double Click Team")
    exchanges = token_requests(world, "authorization_code")
    assert race_one_callback(world, team.uuid) == [303, 400]
    assert token_requests(world, "authorization_code") == exchanges + 1


def test_expired_state_is_refused(world: World) -> None:
    from wid.store import storage

    team = world.stand_in.add_team("Slow Team")
    session = requests.Session()
    callback = world.consent(session, team.uuid)
    with world.proxy.configured(), storage.database().transaction() as tx:
        tx.execute("UPDATE oauth_states SET expires_at = ? WHERE used_at IS NULL", (int(time.time()) - 1,))
    response = session.get(callback, allow_redirects=False, timeout=10)
    assert response.status_code == 400 and "expired" in response.json()["message"]


def test_duplicate_callback_parameters_are_refused(world: World) -> None:
    response = requests.get(f"{world.url}{CALLBACK}?state=a&state=b&code=c", timeout=10)
    assert response.status_code == 400 and "more than once" in response.json()["message"]


# ------------------------------------------------------------------------------------------------
# Errors from DigitalOcean
# ------------------------------------------------------------------------------------------------


def test_denied_consent_shows_the_error_and_stores_nothing(world: World) -> None:
    team = world.stand_in.add_team("Denied Team")
    session = requests.Session()
    callback = world.consent(session, team.uuid, approve=False)
    assert "error=access_denied" in callback
    response = session.get(callback, allow_redirects=False, headers=HTML, timeout=10)
    assert response.status_code == 403
    assert "Authorization was not granted" in response.text and "access_denied" in response.text
    assert world.credential(team.uuid) is None


def test_other_error_parameter(world: World) -> None:
    session = requests.Session()
    state = world.begin(session)
    query = urlencode({"error": "invalid_scope", "error_description": "<script>x</script>", "state": state})
    response = session.get(f"{world.url}{CALLBACK}?{query}", allow_redirects=False, headers=HTML, timeout=10)
    assert response.status_code == 400 and "invalid_scope" in response.text
    assert "<script>" not in response.text and "&lt;script&gt;" in response.text


def test_rejected_code(world: World) -> None:
    session = requests.Session()
    state = world.begin(session)
    response = session.get(f"{world.url}{CALLBACK}?{urlencode({'code': 'not-a-code', 'state': state})}",
                           allow_redirects=False, timeout=10)
    assert response.status_code == 400
    error = response.json()
    assert error["id"] == "invalid_grant" and "did not accept the authorization code" in error["message"]


def test_wrong_client_secret_is_a_clear_operator_error(world: World) -> None:
    team = world.stand_in.add_team("Misconfigured")
    session = requests.Session()
    callback = world.consent(session, team.uuid)
    client = world.stand_in.oauth_clients[world.client.client_id]
    real = client.client_secret
    client.client_secret = "rotated-at-digitalocean"
    try:
        response = session.get(callback, allow_redirects=False, timeout=10)
    finally:
        client.client_secret = real
    assert response.status_code == 502 and response.json()["id"] == "oauth_client_rejected"
    assert "DIGITALOCEAN_OAUTH_CLIENT_SECRET" in response.json()["message"]
    assert real not in response.text


def test_unresolvable_team_stores_nothing_and_gives_the_token_back(world: World) -> None:
    team = world.stand_in.add_team("Unresolvable")
    session = requests.Session()
    callback = world.consent(session, team.uuid)
    world.stand_in.fail_next("/v2/account", 403)
    revocations = len(world.stand_in.requests_to("/v1/oauth/revoke"))
    response = session.get(callback, allow_redirects=False, headers=HTML, timeout=10)
    assert response.status_code == 502
    assert "The team could not be resolved" in response.text and "account:read" in response.text
    assert world.credential(team.uuid) is None
    assert len(world.stand_in.requests_to("/v1/oauth/revoke")) == revocations + 1
    issued = [t for t in world.stand_in.tokens.values() if t.team_uuid == team.uuid and t.kind == "oauth"]
    assert issued and all(t.revoked for t in issued)


def test_token_endpoint_timeout_is_504(world: World) -> None:
    team = world.stand_in.add_team("Slow OAuth")
    session = requests.Session()
    callback = world.consent(session, team.uuid)
    world.stand_in.fail_next("/v1/oauth/token", None, delay_seconds=4)
    response = session.get(callback, allow_redirects=False, timeout=20)
    assert response.status_code == 504 and response.json()["id"] == "gateway_timeout"
    assert world.credential(team.uuid) is None


# ------------------------------------------------------------------------------------------------
# The team token afterwards: refresh, revocation
# ------------------------------------------------------------------------------------------------


def test_access_token_is_refreshed_before_it_expires(world: World) -> None:
    team = connected_team(world, "Refresh Team")
    before = world.credential(team.uuid).data
    assert db_get(world, team.uuid).status_code == 200
    assert world.credential(team.uuid).data["access_token"] == before["access_token"]  # not due yet

    set_expiry(world, team.uuid, 600)  # less than an hour left
    refreshes = token_requests(world, "refresh_token")
    assert db_get(world, team.uuid).status_code == 200
    assert token_requests(world, "refresh_token") == refreshes + 1
    refresh = world.stand_in.requests_to("/v1/oauth/token")[-1].form()
    assert refresh["refresh_token"] == [before["refresh_token"]]
    after = world.credential(team.uuid).data
    assert after["access_token"] != before["access_token"] and after["refresh_token"] != before["refresh_token"]
    assert after["expires_at"] > time.time() + 3600
    used = world.stand_in.requests_to("/v2/databases")[-1]
    assert used.authorization == f"Bearer {after['access_token']}"


def test_concurrent_requests_refresh_once(world: World) -> None:
    team = connected_team(world, "Busy Team")
    set_expiry(world, team.uuid, 60)
    refreshes = token_requests(world, "refresh_token")
    token = world.jwt(team.uuid)

    def call(_: int) -> int:
        return requests.get(f"{world.url}/v2/databases?tag_name=my-tag", timeout=30,
                            headers={"Authorization": f"Bearer {token}"}).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(call, range(8))) == [200] * 8
    # Refresh tokens are single use at DigitalOcean: a second refresh with the same one would have
    # revoked the team. Exactly one happened.
    assert token_requests(world, "refresh_token") == refreshes + 1
    assert world.credential(team.uuid).status == "active"


def test_refresh_failure_keeps_using_a_token_that_still_works(world: World) -> None:
    team = connected_team(world, "Flaky OAuth Team")
    set_expiry(world, team.uuid, 600)
    old = world.credential(team.uuid).data["access_token"]
    world.stand_in.fail_next("/v1/oauth/token", 503)
    assert db_get(world, team.uuid).status_code == 200
    assert world.credential(team.uuid).data["access_token"] == old
    assert db_get(world, team.uuid).status_code == 200  # tried again, and this time it refreshed
    assert world.credential(team.uuid).data["access_token"] != old

    set_expiry(world, team.uuid, -5)  # expired, and the token endpoint is down
    world.stand_in.fail_next("/v1/oauth/token", 503)
    failed = db_get(world, team.uuid)
    assert failed.status_code == 502 and "token endpoint" in failed.json()["message"]
    assert world.credential(team.uuid).status == "active"  # not revoked: it was DigitalOcean's outage


def test_access_token_rejected_early_is_refreshed_and_the_request_retried(world: World) -> None:
    team = connected_team(world, "Rotated Team")
    access = world.credential(team.uuid).data["access_token"]
    with world.stand_in.lock:
        world.stand_in.tokens[access].revoked = True  # DigitalOcean stops accepting it before its expiry
    response = db_get(world, team.uuid)
    assert response.status_code == 200 and response.json()["databases"][0]["name"] == f"db-{team.uuid[:8]}"
    assert world.credential(team.uuid).data["access_token"] != access


def test_revoked_authorization_is_a_clear_error_and_shown_on_the_landing_page(world: World) -> None:
    team = connected_team(world, "Revoking Team")
    assert db_get(world, team.uuid).status_code == 200
    assert world.stand_in.revoke_authorization(team.uuid) > 0  # the team removes the app at DigitalOcean

    response = db_get(world, team.uuid)
    assert response.status_code == 403
    error = response.json()
    assert error["id"] == "team_authorization_revoked"
    assert team.uuid in error["message"] and "invalid_grant" in error["message"]
    assert f"authorize this proxy at {world.url}/" in error["message"]
    cred = world.credential(team.uuid)
    assert cred.status == "revoked" and "access_token" not in cred.data and "refresh_token" not in cred.data

    upstream_calls = len(world.stand_in.requests)
    assert db_get(world, team.uuid).json()["id"] == "team_authorization_revoked"
    assert len(world.stand_in.requests) == upstream_calls  # known revoked: DigitalOcean is not asked again

    landing = requests.get(f"{world.url}/", timeout=10).text
    assert f'data-team="{team.uuid}" data-status="revoked"' in landing
    assert ">Revoked<" in landing and "invalid_grant" in landing

    assert world.authorize(team.uuid).status_code == 303  # an admin authorizes again
    assert world.credential(team.uuid).status == "active"
    assert db_get(world, team.uuid).status_code == 200


def test_flow_and_refresh_on_postgresql(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> None:
    pg_world = World.start(tmp_path_factory.mktemp("oauth-pg") / "data", {"DATABASE_URI": postgres.fresh_database()})
    try:
        team = connected_team(pg_world, "PostgreSQL Team")
        assert db_get(pg_world, team.uuid).status_code == 200
        assert race_one_callback(pg_world, pg_world.stand_in.add_team("PG Double Click").uuid) == [303, 400]
        set_expiry(pg_world, team.uuid, 60)
        refreshes = token_requests(pg_world, "refresh_token")
        token = pg_world.jwt(team.uuid)
        with ThreadPoolExecutor(max_workers=6) as pool:
            statuses = list(pool.map(lambda _: requests.get(
                f"{pg_world.url}/v2/databases?tag_name=my-tag", headers={"Authorization": f"Bearer {token}"},
                timeout=30).status_code, range(6)))
        assert statuses == [200] * 6
        assert token_requests(pg_world, "refresh_token") == refreshes + 1
        pg_world.stand_in.revoke_authorization(team.uuid)
        assert db_get(pg_world, team.uuid).json()["id"] == "team_authorization_revoked"
        assert pg_world.credential(team.uuid).status == "revoked"
    finally:
        pg_world.stop()


# ------------------------------------------------------------------------------------------------
# Scopes (in-process)
# ------------------------------------------------------------------------------------------------


def test_scopes_are_configurable(app_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert do_oauth.scopes() == do_oauth.DEFAULT_SCOPES
    assert "write" not in do_oauth.DEFAULT_SCOPES and "read" not in do_oauth.DEFAULT_SCOPES
    monkeypatch.setenv("DIGITALOCEAN_OAUTH_SCOPES", "read, database:read  droplet:read read")
    config.settings.cache_clear()
    assert do_oauth.scopes() == ("read", "database:read", "droplet:read")
    monkeypatch.setenv("DIGITALOCEAN_OAUTH_SCOPES", "database:read drop;table")
    config.settings.cache_clear()
    with pytest.raises(config.ConfigError, match="DIGITALOCEAN_OAUTH_SCOPES"):
        do_oauth.scopes()

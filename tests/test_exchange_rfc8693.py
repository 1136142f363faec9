"""POST /v1/oidc/token: the RFC 8693 token exchange form, mapped to the same policy as /v1/oidc/issue."""

from __future__ import annotations

import pytest
import requests

from devkit.proxy import ProxyServer
from devkit.seed import article_files, install_rbac, mint
from tests.gha.support import audience, audit_rows, new_team, unverified_claims, verify_by_discovery

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT = "urn:ietf:params:oauth:token-type:jwt"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"


@pytest.fixture
def team(proxy: ProxyServer) -> str:
    actx = new_team()
    install_rbac(proxy, actx, article_files())
    return actx


def form(proxy: ProxyServer, team: str, **overrides: str | None) -> dict[str, str]:
    fields: dict[str, str | None] = {
        "grant_type": GRANT,
        "subject_token": mint(proxy, audience(team), f"actx:{team}:role:ex-database-and-spaces-keys-access"),
        "subject_token_type": JWT,
        "audience": audience(team),
        "scope": f"actx:{team}:role:database-and-spaces-keys-access",
    }
    fields.update(overrides)
    return {key: value for key, value in fields.items() if value is not None}


def post(proxy: ProxyServer, data: dict[str, str] | str | bytes, **kwargs: object) -> requests.Response:
    return requests.post(f"{proxy.url}/v1/oidc/token", data=data, timeout=30, **kwargs)  # type: ignore[arg-type]


def test_token_exchange_answers_per_rfc8693(proxy: ProxyServer, team: str) -> None:
    fields = form(proxy, team)
    response = post(proxy, fields)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"access_token", "issued_token_type", "token_type", "expires_in"}
    assert body["issued_token_type"] == ACCESS and body["token_type"] == "Bearer"
    assert 295 <= body["expires_in"] <= 300
    assert response.headers["Cache-Control"] == "no-store" and response.headers["Pragma"] == "no-cache"
    claims = verify_by_discovery(proxy.url, body["access_token"], audience(team))
    assert claims["sub"] == f"actx:{team}:role:database-and-spaces-keys-access"
    assert claims["act"]["sub"] == unverified_claims(fields["subject_token"])["sub"]
    rows = audit_rows(proxy, team)
    assert rows[-1]["decision"] == "allow" and rows[-1]["detail"]["endpoint"] == "/v1/oidc/token"


def test_requested_jwt_type_and_id_token_subject_type(proxy: ProxyServer, team: str) -> None:
    response = post(proxy, form(proxy, team, requested_token_type=JWT,
                                subject_token_type="urn:ietf:params:oauth:token-type:id_token"))
    assert response.status_code == 200, response.text
    assert response.json()["issued_token_type"] == JWT


def test_policy_applies_with_the_default_ttl(proxy: ProxyServer, team: str) -> None:
    assert post(proxy, form(proxy, team, ttl="300")).status_code == 200
    refused = post(proxy, form(proxy, team, ttl="600"))
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_request" and "ttl" in refused.json()["error_description"]


@pytest.mark.parametrize("overrides,error", [
    ({"grant_type": "client_credentials"}, "unsupported_grant_type"),
    ({"grant_type": None}, "invalid_request"),
    ({"subject_token": None}, "invalid_request"),
    ({"subject_token": "not-a-jwt"}, "invalid_request"),
    ({"subject_token_type": None}, "invalid_request"),
    ({"subject_token_type": "urn:ietf:params:oauth:token-type:refresh_token"}, "invalid_request"),
    ({"requested_token_type": "urn:ietf:params:oauth:token-type:refresh_token"}, "invalid_request"),
    ({"requested_token_type": "urn:ietf:params:oauth:token-type:id_token"}, "invalid_request"),
    ({"actor_token": "x", "actor_token_type": JWT}, "invalid_request"),
    ({"audience": None}, "invalid_request"),
    ({"audience": "api://DigitalOcean?actx=a&actx=b"}, "invalid_target"),
    ({"audience": "https://example.com"}, "invalid_target"),
    ({"resource": "https://example.com/api"}, "invalid_target"),
    ({"scope": None}, "invalid_scope"),
    ({"scope": "actx:x:role:a actx:x:role:b"}, "invalid_scope"),
    ({"ttl": "-1"}, "invalid_request"),
    ({"ttl": "1e3"}, "invalid_request"),
    ({"scope": "actx:{team}:role:admin"}, "invalid_request"),
])
def test_errors_follow_rfc6749(proxy: ProxyServer, team: str, overrides: dict[str, str | None], error: str) -> None:
    fixed = {k: v.format(team=team) if isinstance(v, str) else v for k, v in overrides.items()}
    response = post(proxy, form(proxy, team, **fixed))
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == error, body
    assert body["error_description"] and body["message"] and body["request_id"]
    assert "access_token" not in body


def test_bad_subject_tokens_are_invalid_request(proxy: ProxyServer, team: str) -> None:
    provisioning = mint(proxy, audience(team), f"actx:{team}:role:provisioning:nonce:abc", kind="provisioning")
    for token in (provisioning, mint(proxy, audience(team), f"actx:{team}:role:nobody")):
        response = post(proxy, form(proxy, team, subject_token=token))
        assert response.status_code == 400 and response.json()["error"] == "invalid_request", response.text


def test_repeated_parameters_and_wrong_content_type(proxy: ProxyServer, team: str) -> None:
    fields = form(proxy, team)
    repeated = "&".join(f"{k}={requests.utils.quote(v, safe='')}" for k, v in fields.items()) + "&scope=x"
    response = post(proxy, repeated, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"
    as_json = requests.post(f"{proxy.url}/v1/oidc/token", json=fields, timeout=30)
    assert as_json.status_code == 415 and as_json.json()["error"] == "invalid_request"


def test_unknown_parameters_are_ignored_and_never_become_claims(proxy: ProxyServer, team: str) -> None:
    response = post(proxy, form(proxy, team, droplet_id="1", client_id="someone", environment="prod"))
    assert response.status_code == 200, response.text
    claims = unverified_claims(response.json()["access_token"])
    assert "droplet_id" not in claims and "environment" not in claims and "client_id" not in claims


def test_denials_are_audited(proxy: ProxyServer, team: str) -> None:
    post(proxy, form(proxy, team, scope=f"actx:{team}:role:admin"))
    rows = [r for r in audit_rows(proxy, team) if r["decision"] == "deny"]
    assert rows and rows[-1]["detail"]["endpoint"] == "/v1/oidc/token"
    assert rows[-1]["detail"]["requested_sub"] == f"actx:{team}:role:admin"


def test_other_actx_in_audience(proxy: ProxyServer, team: str) -> None:
    response = post(proxy, form(proxy, team, audience=audience(new_team())))
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"

"""POST /v1/oidc/issue through real Caddy + fcgiwrap: the articles' exchange, what the issued token
carries, and every way of asking for more than the policy allows or presenting a bad token."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from devkit.proxy import ProxyServer
from devkit.seed import article_files, install_rbac, mint
from tests.gha.support import (
    audience,
    audit_rows,
    exchange,
    forge,
    new_team,
    our_claims,
    unverified_claims,
    verify_by_discovery,
)
from wid.web.errors import status_of

WORKLOAD_ROLE = "role:ex-database-and-spaces-keys-access"
TARGET_ROLE = "role:database-and-spaces-keys-access"

# The articles' command, verbatim from "Token Usage from Droplet" (the three variables it reads
# from /root/secrets come from the environment instead).
ARTICLE_EXCHANGE = r"""
SUBJECT="actx:${TEAM_UUID}:role:database-and-spaces-keys-access"

TOKEN=$(curl -sf \
  -H "Authorization: Bearer ${ID_TOKEN}" \
  -d@<(jq -n -c \
    --arg aud "api://DigitalOcean?actx=${TEAM_UUID}" \
    --arg sub "${SUBJECT}" \
    --arg ttl 300 \
    '{aud: $aud, sub: $sub, ttl: ($ttl | fromjson)}') \
  "${URL}/v1/oidc/issue" \
  | jq -r .token)
printf '%s' "$TOKEN"
"""


@pytest.fixture
def team(proxy: ProxyServer) -> str:
    """A fresh team with the articles' droplet exchange configured."""
    actx = new_team()
    install_rbac(proxy, actx, article_files())
    return actx


def workload(proxy: ProxyServer, team: str, ttl: int = 900, **kwargs: object) -> str:
    return mint(proxy, audience(team), f"actx:{team}:{WORKLOAD_ROLE}", ttl=ttl, **kwargs)  # type: ignore[arg-type]


def article_body(team: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"aud": audience(team), "sub": f"actx:{team}:{TARGET_ROLE}", "ttl": 300}
    body.update(overrides)
    return body


def run_article(proxy: ProxyServer, team: str, id_token: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "URL": proxy.url, "TEAM_UUID": team, "ID_TOKEN": id_token}
    return subprocess.run(["bash", "-c", ARTICLE_EXCHANGE], env=env, capture_output=True, text=True, timeout=60)


# -- the articles' flow -----------------------------------------------------------------------------------------


def test_article_exchange_command_returns_a_verifiable_role_token(proxy: ProxyServer, team: str) -> None:
    id_token = workload(proxy, team)
    done = run_article(proxy, team, id_token)
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert token.count(".") == 2
    claims = verify_by_discovery(proxy.url, token, audience(team))  # a third party, through our discovery
    presented = unverified_claims(id_token)
    assert claims["iss"] == proxy.url
    assert claims["aud"] == audience(team)
    assert claims["sub"] == f"actx:{team}:{TARGET_ROLE}"
    assert claims["act"] == {"iss": proxy.url, "sub": presented["sub"]}
    assert claims["wid_kind"] == "exchanged"
    assert claims["jti"] != presented["jti"]
    assert 295 <= claims["exp"] - claims["iat"] <= 300
    assert claims["nbf"] <= time.time() + 1


def test_article_exchange_fails_for_a_subject_the_policy_does_not_allow(proxy: ProxyServer, team: str) -> None:
    other_role = mint(proxy, audience(team), f"actx:{team}:role:someone-else")
    done = run_article(proxy, team, other_role)
    assert done.stdout.strip() == ""  # curl -sf failed, so jq printed nothing


def test_response_shape_and_headers(proxy: ProxyServer, team: str) -> None:
    response = exchange(proxy, workload(proxy, team), article_body(team))
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"token", "expires_at"}
    assert body["expires_at"] == unverified_claims(body["token"])["exp"]
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Content-Type"].startswith("application/json")


def test_issued_token_works_as_a_presented_token_but_never_outlives_it(proxy: ProxyServer) -> None:
    actx = new_team()
    files = {
        "policies/chain.hcl": b'path "/v1/oidc/issue" {\n  capabilities = ["create"]\n'
                              b'  allowed_parameters = {\n    "aud" = "api://DigitalOcean?actx={actx}"\n'
                              b'    "sub" = "actx:{actx}:role:*"\n    "ttl" = []\n  }\n}\n',
        "roles/a.hcl": b'role "a" {\n  aud = "api://DigitalOcean?actx={actx}"\n  sub = "actx:{actx}:role:a"\n'
                       b'  policies = ["chain"]\n}\n',
        "roles/b.hcl": b'role "b" {\n  aud = "api://DigitalOcean?actx={actx}"\n  sub = "actx:{actx}:role:b"\n'
                       b'  policies = ["chain"]\n}\n',
    }
    install_rbac(proxy, actx, files)
    first = mint(proxy, audience(actx), f"actx:{actx}:role:a", ttl=120)
    first_exp = unverified_claims(first)["exp"]
    second = exchange(proxy, first, {"aud": audience(actx), "sub": f"actx:{actx}:role:b", "ttl": 3600})
    assert second.status_code == 200, second.text
    second_claims = unverified_claims(second.json()["token"])
    assert second_claims["exp"] <= first_exp  # asked for an hour, capped at the presented token's exp
    # Re-exchanging the exchanged token cannot extend it either, and the chain of actors is kept.
    third = exchange(proxy, second.json()["token"], {"aud": audience(actx), "sub": f"actx:{actx}:role:a",
                                                     "ttl": 3600})
    assert third.status_code == 200, third.text
    third_claims = unverified_claims(third.json()["token"])
    assert third_claims["exp"] <= first_exp
    assert third_claims["act"] == {"iss": proxy.url, "sub": f"actx:{actx}:role:b",
                                   "act": {"iss": proxy.url, "sub": f"actx:{actx}:role:a"}}


def test_ttl_is_bounded_by_the_configured_maximum(proxy: ProxyServer) -> None:
    actx = new_team()
    files = {
        "policies/any-ttl.hcl": b'path "/v1/oidc/issue" {\n  capabilities = ["create"]\n}\n',
        "roles/a.hcl": b'role "a" {\n  aud = "api://DigitalOcean?actx={actx}"\n  sub = "actx:{actx}:role:a"\n'
                       b'  policies = ["any-ttl"]\n}\n',
    }
    install_rbac(proxy, actx, files)
    token = mint(proxy, audience(actx), f"actx:{actx}:role:a", ttl=7200)
    too_long = exchange(proxy, token, {"aud": audience(actx), "sub": f"actx:{actx}:role:x", "ttl": 3601})
    assert too_long.status_code == 400 and "3600" in too_long.json()["message"]
    default = exchange(proxy, token, {"aud": audience(actx), "sub": f"actx:{actx}:role:x"})
    assert default.status_code == 200, default.text
    claims = unverified_claims(default.json()["token"])
    assert claims["exp"] - claims["iat"] == 300  # the default ttl
    longest = exchange(proxy, token, {"aud": audience(actx), "sub": f"actx:{actx}:role:x", "ttl": 3600})
    assert longest.status_code == 200


def test_cross_context_exchange_to_atproto_is_allowed_by_the_source_policy(proxy: ProxyServer) -> None:
    actx = new_team()
    did = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
    files = {
        "policies/ex-atproto.hcl": (
            b'path "/v1/oidc/issue" {\n  capabilities = ["create"]\n  allowed_parameters = {\n'
            b'    "aud" = "api://ATProto?actx=' + did.encode() + b'"\n'
            b'    "sub" = "actx:{actx}:role:atproto-write"\n    "ttl" = 300\n  }\n}\n'),
        "droplet-roles/w.hcl": (b'role "w" {\n  aud = "api://DigitalOcean?actx={actx}"\n'
                                b'  sub = "actx:{actx}:role:w"\n  policies = ["ex-atproto"]\n}\n'),
    }
    install_rbac(proxy, actx, files)
    token = mint(proxy, audience(actx), f"actx:{actx}:role:w")
    body = {"aud": f"api://ATProto?actx={did}", "sub": f"actx:{actx}:role:atproto-write", "ttl": 300}
    response = exchange(proxy, token, body)
    assert response.status_code == 200, response.text
    claims = verify_by_discovery(proxy.url, response.json()["token"], f"api://ATProto?actx={did}")
    assert claims["sub"] == f"actx:{actx}:role:atproto-write"  # the target can tell which team obtained it
    # The sub must still name the SOURCE context: a DID-prefixed sub is refused.
    wrong = exchange(proxy, token, {**body, "sub": f"actx:{did}:role:atproto-write"})
    assert wrong.status_code == 403


# A policy that names an extra claim (environment) and one that allows anything; the role "named" has only
# the first. Each test adds the role it needs.
EXTRA_CLAIM_POLICIES = {
    "policies/with-env.hcl": (
        b'path "/v1/oidc/issue" {\n  capabilities = ["create"]\n  allowed_parameters = {\n'
        b'    "aud" = "api://DigitalOcean?actx={actx}"\n    "sub" = "actx:{actx}:role:deploy"\n'
        b'    "ttl" = 300\n    "environment" = ["staging", "production"]\n  }\n}\n'),
    "policies/anything.hcl": b'path "/v1/oidc/issue" {\n  capabilities = ["create"]\n}\n',
    "roles/named.hcl": (b'role "named" {\n  aud = "api://DigitalOcean?actx={actx}"\n'
                        b'  sub = "actx:{actx}:role:named"\n  policies = ["with-env"]\n}\n'),
}


def test_extra_claims_only_when_the_policy_names_them(proxy: ProxyServer) -> None:
    actx = new_team()
    install_rbac(proxy, actx, {**EXTRA_CLAIM_POLICIES, "roles/open.hcl": (
        b'role "open" {\n  aud = "api://DigitalOcean?actx={actx}"\n'
        b'  sub = "actx:{actx}:role:open"\n  policies = ["anything"]\n}\n')})
    named = mint(proxy, audience(actx), f"actx:{actx}:role:named")
    body = {"aud": audience(actx), "sub": f"actx:{actx}:role:deploy", "ttl": 300}
    ok = exchange(proxy, named, {**body, "environment": "production"})
    assert ok.status_code == 200, ok.text
    assert unverified_claims(ok.json()["token"])["environment"] == "production"
    for extra in ({"environment": "dev"}, {"environment": "production", "team": "x"}, {"repository": "a/b"}):
        refused = exchange(proxy, named, {**body, **extra})
        assert refused.status_code == 403, (extra, refused.text)
    # A rule that allows any parameters allows the exchange, but not extra claims: they must be named.
    open_token = mint(proxy, audience(actx), f"actx:{actx}:role:open")
    assert exchange(proxy, open_token, body).status_code == 200
    refused = exchange(proxy, open_token, {**body, "environment": "production"})
    assert refused.status_code == 403
    assert "allowed_parameters" in refused.json()["message"]


@pytest.mark.parametrize("claim", ["iss", "iat", "nbf", "exp", "jti", "act", "wid_kind", "droplet_id", "may_act",
                                   "cnf", "wid_anything"])
def test_reserved_claims_cannot_be_requested(proxy: ProxyServer, team: str, claim: str) -> None:
    response = exchange(proxy, workload(proxy, team), article_body(team, **{claim: "x"}))
    assert response.status_code == 400, response.text
    assert claim in response.json()["message"]


# -- asking for more than the policy allows: 403 with the reason ------------------------------------------------


@pytest.mark.parametrize("change,expected", [
    ({"ttl": 301}, "ttl"),
    ({"ttl": 60}, "ttl"),
    ({"sub": "actx:{team}:role:admin"}, "sub"),
    ({"aud": "api://DigitalOcean?actx=00000000-0000-4000-8000-000000000000"}, "aud"),
    ({"aud": "api://ATProto?actx=did:plc:ewvi7nxzyoun6zhxrhs64oiz"}, "aud"),
])
def test_requests_beyond_the_policy_are_403_with_the_reason(proxy: ProxyServer, team: str,
                                                            change: dict[str, object], expected: str) -> None:
    body = article_body(team, **{k: v.format(team=team) if isinstance(v, str) else v for k, v in change.items()})
    response = exchange(proxy, workload(proxy, team), body)
    assert response.status_code == 403, response.text
    message = response.json()["message"]
    assert expected in message and "ex-database-and-spaces-keys-access" in message


def test_sub_must_name_the_presented_tokens_context(proxy: ProxyServer, team: str) -> None:
    other = new_team()
    response = exchange(proxy, workload(proxy, team), article_body(team, sub=f"actx:{other}:{TARGET_ROLE}"))
    assert response.status_code == 403
    assert f"actx:{team}:" in response.json()["message"]


def test_context_without_rbac_is_403(proxy: ProxyServer) -> None:
    actx = new_team()
    token = mint(proxy, audience(actx), f"actx:{actx}:{WORKLOAD_ROLE}")
    response = exchange(proxy, token, article_body(actx))
    assert response.status_code == 403 and "no RBAC" in response.json()["message"]


@pytest.mark.parametrize("body,status", [
    ({"sub": "actx:{team}:role:database-and-spaces-keys-access", "ttl": 300}, 400),
    ({"aud": "api://DigitalOcean?actx={team}", "ttl": 300}, 400),
    ({"aud": "api://DigitalOcean?actx={team}&actx=x", "sub": "actx:{team}:role:r", "ttl": 300}, 400),
    ({"aud": "api://DigitalOcean?actx={team}&scope=x", "sub": "actx:{team}:role:r", "ttl": 300}, 400),
    ({"aud": "api://NoSuchApi?actx={team}", "sub": "actx:{team}:role:r", "ttl": 300}, 400),
    ({"aud": "api://DigitalOcean?actx=not-a-team-uuid", "sub": "actx:{team}:role:r", "ttl": 300}, 400),
    ({"aud": "api://DigitalOcean?actx={team}", "sub": "role:r", "ttl": 300}, 400),
    ({"aud": "api://DigitalOcean?actx={team}", "sub": "actx:{team}:", "ttl": 300}, 400),
    ({"aud": "api://DigitalOcean?actx={team}", "sub": "actx:{team}:role:r", "ttl": "300"}, 400),
    ({"aud": "api://DigitalOcean?actx={team}", "sub": "actx:{team}:role:r", "ttl": 300.5}, 400),
    ({"aud": "api://DigitalOcean?actx={team}", "sub": "actx:{team}:role:r", "ttl": True}, 400),
    ({"aud": "api://DigitalOcean?actx={team}", "sub": "actx:{team}:role:r", "ttl": 0}, 400),
    ({"aud": "api://DigitalOcean?actx={team}", "sub": "actx:{team}:role:r", "ttl": -5}, 400),
    ({"aud": ["api://DigitalOcean?actx={team}"], "sub": "actx:{team}:role:r", "ttl": 300}, 400),
])
def test_malformed_requests_are_400(proxy: ProxyServer, team: str, body: dict[str, object], status: int) -> None:
    def fill(value: object) -> object:
        if isinstance(value, str):
            return value.format(team=team)
        if isinstance(value, list):
            return [fill(v) for v in value]
        return value

    response = exchange(proxy, workload(proxy, team), {k: fill(v) for k, v in body.items()})
    assert response.status_code == status, response.text
    assert response.json()["id"] and response.json()["message"]


@pytest.mark.parametrize("data,content_type,status", [
    (b'{"aud": "x", ', "application/json", 400),
    (b"[1, 2]", "application/json", 400),
    (b'"just a string"', "application/json", 400),
    (b"", "application/json", 400),
    (b'{"aud": "a", "aud": "b"}', "application/json", 400),
    (b'{"ttl": NaN}', "application/json", 400),
    (b'{"aud": "api://x"}', "text/plain", 415),
    (b'{"aud": "api://x"}', "multipart/form-data; boundary=x", 415),
    (b"aud=api://x&sub=y", "application/x-www-form-urlencoded", 400),
])
def test_bad_bodies_are_400_or_415(proxy: ProxyServer, team: str, data: bytes, content_type: str,
                                   status: int) -> None:
    response = exchange(proxy, workload(proxy, team), data, headers={"Content-Type": content_type})
    assert response.status_code == status, response.text
    assert response.json()["id"] and response.json()["request_id"]


@pytest.mark.parametrize("name", ["?", "a b", "", "1abc", "x" * 65, "\u00e9t\u00e9", "a/b"])
def test_odd_claim_names_are_400(proxy: ProxyServer, team: str, name: str) -> None:
    response = exchange(proxy, workload(proxy, team), article_body(team, **{name: "v"}))
    assert response.status_code == 400, response.text


def test_case_variant_duplicate_keys_are_400(proxy: ProxyServer, team: str) -> None:
    data = json.dumps(article_body(team)).replace('"ttl": 300', '"ttl": 300, "TTL": 1')
    response = exchange(proxy, workload(proxy, team), data, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text


def test_oversized_body_is_413(proxy: ProxyServer, team: str) -> None:
    response = exchange(proxy, workload(proxy, team), article_body(team, padding="x" * 20000))
    assert response.status_code == 413


def test_query_string_is_refused(proxy: ProxyServer, team: str) -> None:
    response = requests.post(f"{proxy.url}/v1/oidc/issue?ttl=3600", json=article_body(team), timeout=30,
                             headers={"Authorization": f"Bearer {workload(proxy, team)}"})
    assert response.status_code == 400


def test_other_methods_are_405(proxy: ProxyServer) -> None:
    for method in ("GET", "PUT", "DELETE"):
        response = requests.request(method, f"{proxy.url}/v1/oidc/issue", timeout=30)
        assert response.status_code == 405, (method, response.text)
        assert response.headers["Allow"] == "POST"


# -- bad presented tokens: 401 ----------------------------------------------------------------------------------


def _attacks(proxy: ProxyServer, team: str) -> dict[str, str | None]:
    aud, sub = audience(team), f"actx:{team}:{WORKLOAD_ROLE}"
    good = our_claims(proxy, aud, sub)
    other = new_team()
    install_rbac(proxy, other, article_files())  # its roles name actx:{other}:..., never this team's subs
    now = int(time.time())
    return {
        "no token": None,
        "not a jwt": "dop_v1_" + "a" * 64,
        "alg none": forge(proxy, good, alg="none"),
        "HS256 keyed with our public key": forge(proxy, good, alg="HS256"),
        "unknown kid": forge(proxy, good, header={"kid": "no-such-key"}),
        "no kid": forge(proxy, good, header={"kid": None}),
        "jku elsewhere": forge(proxy, good, header={"jku": "https://attacker.example/jwks"}),
        "x5u elsewhere": forge(proxy, good, header={"x5u": "https://attacker.example/cert.pem"}),
        "embedded jwk": forge(proxy, good, header={"jwk": {"kty": "RSA", "n": "AQAB", "e": "AQAB"}}),
        "x5c chain": forge(proxy, good, header={"x5c": ["MIIB"]}),
        "crit header": forge(proxy, good, header={"crit": ["exp"]}),
        "tampered payload": _tamper(forge(proxy, good), {"sub": f"actx:{team}:role:admin"}),
        "expired": forge(proxy, {**good, "iat": now - 1000, "nbf": now - 1000, "exp": now - 100}),
        "not yet valid": forge(proxy, {**good, "nbf": now + 600}),
        "issued in the future": forge(proxy, {**good, "iat": now + 600, "nbf": now + 600}),
        "no exp": forge(proxy, our_claims(proxy, aud, sub, exp=None)),
        "wrong iss": forge(proxy, {**good, "iss": "https://evil.example"}),
        "iss with trailing slash": forge(proxy, {**good, "iss": proxy.url + "/"}),
        "wrong aud": forge(proxy, {**good, "aud": "https://github.com/octo-org"}),
        "aud with two actx": forge(proxy, {**good, "aud": f"{aud}&actx=00000000-0000-4000-8000-000000000000"}),
        "aud with extra parameters": forge(proxy, {**good, "aud": f"{aud}&x=1"}),
        "aud as a list": forge(proxy, {**good, "aud": [aud]}),
        "provisioning token": mint(proxy, aud, f"actx:{team}:role:provisioning:nonce:{uuid.uuid4().hex}",
                                   kind="provisioning"),
        "rbac token": mint(proxy, aud, sub, kind="rbac"),
        "unknown kind": forge(proxy, {**good, "wid_kind": "refresh"}),
        "no role matches": mint(proxy, aud, f"actx:{team}:role:nobody"),
        "aud of another context": forge(proxy, {**good, "aud": audience(other)}),
        "external issuer no role names": forge(proxy, {**good, "iss": "https://token.actions.githubusercontent.com",
                                                       "sub": "repo:o/r:ref:refs/heads/main"}),
    }


def _tamper(token: str, changes: dict[str, object]) -> str:
    from tests.gha.support import b64

    header, _, signature = token.split(".")
    claims = {**unverified_claims(token), **changes}
    return f"{header}.{b64(json.dumps(claims).encode())}.{signature}"


def test_every_bad_token_is_401(proxy: ProxyServer, team: str) -> None:
    failures = []
    for name, token in _attacks(proxy, team).items():
        response = exchange(proxy, token, article_body(team))
        body = response.json()
        if response.status_code != 401 or "token" in body or not body.get("message"):
            failures.append(f"{name}: {response.status_code} {response.text[:200]}")
    assert not failures, "\n".join(failures)
    # The external issuer's token was refused before any discovery: GitHub is not reachable from here,
    # so a fetch would have been a 503 rather than this 401.


def test_bearer_scheme_variants(proxy: ProxyServer, team: str) -> None:
    token = workload(proxy, team)
    for header in (f"Basic {token}", token, f"Bearer  {token} extra"):
        response = requests.post(f"{proxy.url}/v1/oidc/issue", json=article_body(team),
                                 headers={"Authorization": header}, timeout=30)
        assert response.status_code == 401, header[:20]
    lower = requests.post(f"{proxy.url}/v1/oidc/issue", json=article_body(team),
                          headers={"Authorization": f"bearer {token}"}, timeout=30)
    assert lower.status_code == 200


# -- audit ---------------------------------------------------------------------------------------------------------


def test_every_exchange_and_denial_is_audited_without_the_token(proxy: ProxyServer, team: str) -> None:
    id_token = workload(proxy, team)
    presented = unverified_claims(id_token)
    ok = exchange(proxy, id_token, article_body(team))
    denied = exchange(proxy, id_token, article_body(team, ttl=60))
    bad = exchange(proxy, forge(proxy, {**presented, "exp": int(time.time()) - 100}), article_body(team))
    assert (ok.status_code, denied.status_code, bad.status_code) == (200, 403, 401)
    rows = audit_rows(proxy, team)
    issued = unverified_claims(ok.json()["token"])
    allow = [r for r in rows if r["decision"] == "allow"]
    assert len(allow) == 1
    assert allow[0]["jti"] == presented["jti"] and allow[0]["sub"] == presented["sub"]
    assert allow[0]["iss"] == proxy.url and allow[0]["actx"] == team
    assert allow[0]["detail"]["issued_jti"] == issued["jti"]
    assert allow[0]["detail"]["issued_sub"] == issued["sub"]
    denials = [r for r in rows if r["decision"] == "deny"]
    assert len(denials) == 2
    policy_denial = next(r for r in denials if r["detail"]["status"] == 403)
    assert "ttl" in policy_denial["detail"]["reason"] and policy_denial["detail"]["verified"] is True
    token_denial = next(r for r in denials if r["detail"]["status"] == 401)
    assert "expired" in token_denial["detail"]["reason"] and token_denial["detail"]["verified"] is False
    text = json.dumps(rows)
    for token in (id_token, ok.json()["token"]):
        assert token not in text and token.split(".")[2] not in text


# -- load ------------------------------------------------------------------------------------------------------------


def test_concurrent_exchanges(proxy: ProxyServer, team: str) -> None:
    id_token = workload(proxy, team)
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: exchange(proxy, id_token, article_body(team)), range(16)))
    assert [r.status_code for r in responses] == [200] * 16
    jtis = {unverified_claims(r.json()["token"])["jti"] for r in responses}
    assert len(jtis) == 16


# -- the library on both databases -------------------------------------------------------------------------------


def test_exchange_library_on_both_backends(backend: str) -> None:
    from wid.core import tokens
    from wid.core.errors import WidError
    from wid.core.rbac import compiler as rbac_compile
    from wid.service import exchange as wid_exchange
    from wid.store import audit_queries, signing, storage
    from wid.store import rbac as rbac_store

    actx = new_team()
    with storage.database().transaction() as tx:
        compiled = rbac_compile.compile_tree(article_files(), api="DigitalOcean", actx=actx)
        rbac_store.install(tx, "DigitalOcean", actx, compiled, "0" * 40)
    presented, presented_claims = signing.sign({"aud": audience(actx), "sub": f"actx:{actx}:{WORKLOAD_ROLE}"},
                                               kind=tokens.WORKLOAD, lifetime=200)
    issued = wid_exchange.issue_json(presented, lambda: article_body(actx), status_of)
    assert issued.claims["exp"] <= presented_claims["exp"]
    assert signing.verify(issued.token, kinds={tokens.EXCHANGED})["act"]["sub"] == presented_claims["sub"]
    with pytest.raises(WidError) as refused:
        wid_exchange.issue_json(presented, lambda: article_body(actx, ttl=301), status_of)
    assert status_of(refused.value) == 403
    rows = audit_queries.entries(actx=actx, event="exchange")
    assert [r.decision for r in rows] == ["allow", "deny"]
    assert rows[0].detail["issued_jti"] == issued.claims["jti"]


EXTRA_CLAIM_FILES = {**EXTRA_CLAIM_POLICIES, "roles/both.hcl": (
    b'role "both" {\n  aud = "api://DigitalOcean?actx={actx}"\n'
    b'  sub = "actx:{actx}:role:both"\n  policies = ["with-env", "anything"]\n}\n')}


def test_an_exchange_reads_the_rbac_once_and_parses_the_token_once(backend: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The deciding rule says whether it restricts parameters (no second policy question), the compiled
    RBAC is read once per exchange and the presented token parsed once; the decisions are the same."""
    from wid.core import jose, tokens
    from wid.core.errors import WidError
    from wid.core.rbac import compiler as rbac_compile
    from wid.service import exchange as wid_exchange
    from wid.store import rbac as rbac_store
    from wid.store import signing, storage

    actx = new_team()
    with storage.database().transaction() as tx:
        compiled = rbac_compile.compile_tree(EXTRA_CLAIM_FILES, api="DigitalOcean", actx=actx)
        rbac_store.install(tx, "DigitalOcean", actx, compiled, "0" * 40)
    named, _ = signing.sign({"aud": audience(actx), "sub": f"actx:{actx}:role:named"}, kind=tokens.WORKLOAD,
                            lifetime=200)
    both, _ = signing.sign({"aud": audience(actx), "sub": f"actx:{actx}:role:both"}, kind=tokens.WORKLOAD,
                           lifetime=200)
    reads: list[tuple[str, str]] = []
    parsed: list[str] = []
    real_compiled, real_decode = rbac_store.compiled, jose.decode

    def counted_compiled(api: str, actx: str) -> Any:
        reads.append((api, actx))
        return real_compiled(api, actx)

    def counted_decode(token: str) -> Any:
        parsed.append(token)
        return real_decode(token)

    monkeypatch.setattr(rbac_store, "compiled", counted_compiled)
    monkeypatch.setattr(jose, "decode", counted_decode)
    body = {"aud": audience(actx), "sub": f"actx:{actx}:role:deploy", "ttl": 300, "environment": "production"}

    issued = wid_exchange.issue_json(named, lambda: body, status_of)
    assert issued.claims["environment"] == "production"
    assert reads == [("DigitalOcean", actx)]
    assert parsed == [named]

    # A rule allowing any parameters applies too: the extra claim is refused, naming that rule (as before).
    reads.clear()
    parsed.clear()
    with pytest.raises(WidError) as refused:
        wid_exchange.issue_json(both, lambda: body, status_of)
    assert status_of(refused.value) == 403
    assert refused.value.message == (
        "extra claims (environment) must be named in allowed_parameters of the rule that allows the exchange; "
        "policy 'anything' allows any parameters for create on /v1/oidc/issue (rule \"/v1/oidc/issue\", "
        "role 'both')")
    assert reads == [("DigitalOcean", actx)]
    assert parsed == [both]
    # Without the extra claim the same token is allowed.
    plain = {key: value for key, value in body.items() if key != "environment"}
    assert "environment" not in wid_exchange.issue_json(both, lambda: plain, status_of).claims

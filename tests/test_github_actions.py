"""GitHub Actions end to end: the real @actions/core getIDToken() fetches a token from the stand-in
runner endpoint, the articles' do-wid.yml step exchanges it at the proxy with curl + jq; the issuer
is the stand-in over HTTPS (its CA in the proxy's trust store, no insecure flag)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from devkit.proxy import ProxyServer
from devkit.seed import ARTICLE_POLICY, install_rbac, mint
from devkit.standins.github_oidc import GitHubOIDCStandIn
from tests.gha.support import (
    audience,
    audit_rows,
    exchange,
    get_id_token,
    new_team,
    read_output,
    unverified_claims,
    verify_by_discovery,
)

REPO = "org/repo"
WORKFLOW_REF = "org/repo/.github/workflows/do-wid.yml@refs/heads/main"
OWNER_ID = "71096353"
REPO_ID = "563047837"

# The articles' "Get data-readwrite token" step of .github/workflows/do-wid.yml, verbatim.
ARTICLE_STEP = r"""
set -eo pipefail
TOKEN=$(curl -sf \
  -H "Authorization: Bearer ${GH_OIDC_TOKEN}" \
  -d@<(jq -n -c \
    --arg aud "api://DigitalOcean?actx=${DO_TEAM_UUID}" \
    --arg sub "${SUBJECT}" \
    --arg ttl 300 \
    '{aud: $aud, sub: $sub, ttl: ($ttl | fromjson)}') \
  "${DO_BASE_URL}/v1/oidc/issue" \
  | jq -r .token)
echo "::add-mask::${TOKEN}"
echo "oidc=${TOKEN}" >> "${GITHUB_OUTPUT}"
"""


def article_role(issuer: str) -> bytes:
    """gha-roles/ex-gha-readwrite.hcl from the articles (iss = the stand-in), verbatim otherwise."""
    return f"""role "ex-gha-readwrite" {{
  iss              = "{issuer}"
  aud              = "api://DigitalOcean?actx={{actx}}"
  sub              = "repo:org/repo:ref:refs/heads/main"
  policies         = ["ex-gha-readwrite"]
  job_workflow_ref = "org/repo/.github/workflows/do-wid.yml@refs/heads/main"
}}
""".encode()


def recommended_role(issuer: str) -> bytes:
    """What docs/github-actions.md recommends: bind the numeric ids and the workflow, not only sub."""
    return f"""role "gha-deploy" {{
  iss                 = "{issuer}"
  aud                 = "api://DigitalOcean?actx={{actx}}"
  sub                 = "repo:org/repo:environment:production"
  repository_owner_id = "{OWNER_ID}"
  repository_id       = "{REPO_ID}"
  job_workflow_ref    = "org/repo/.github/workflows/deploy.yml@refs/heads/main"
  policies            = ["ex-gha-readwrite"]
}}
""".encode()


@pytest.fixture(scope="module")
def gh() -> Iterator[GitHubOIDCStandIn]:
    with GitHubOIDCStandIn(tls=True) as server:
        yield server


@pytest.fixture(scope="module")
def elsewhere() -> Iterator[GitHubOIDCStandIn]:
    """Another issuer on the operator's allowlist that no role names."""
    with GitHubOIDCStandIn(tls=True) as server:
        yield server


@pytest.fixture(scope="module")
def gha_proxy(tmp_path_factory: pytest.TempPathFactory, gh: GitHubOIDCStandIn,
              elsewhere: GitHubOIDCStandIn) -> Iterator[ProxyServer]:
    root = tmp_path_factory.mktemp("gha")
    bundle = root / "ca-bundle.pem"
    bundle.write_bytes(Path(str(gh.ca_file)).read_bytes() + Path(str(elsewhere.ca_file)).read_bytes())
    with ProxyServer(root / "data", {
            "WID_TRUSTED_ISSUERS": f"{gh.issuer} {elsewhere.issuer}",
            # The stand-ins are GitHub-shaped issuers on loopback: GitHub's owner rules apply to them.
            "WID_ISSUER_OWNER_CLAIMS": f"{gh.issuer}=github {elsewhere.issuer}=github",
            # HTTPS to the issuer, verified against SSL_CERT_FILE; the flag only lets it live on loopback
            # (issuers must otherwise resolve to public addresses).
            "WID_ALLOW_INSECURE_ISSUERS": "1",
            "SSL_CERT_FILE": str(bundle),
            "WID_ISSUER_FETCH_TIMEOUT": "2",
        }) as server:
        yield server


@pytest.fixture
def team(gha_proxy: ProxyServer, gh: GitHubOIDCStandIn, elsewhere: GitHubOIDCStandIn) -> str:
    actx = new_team()
    files = {
        "policies/ex-gha-readwrite.hcl": ARTICLE_POLICY,
        "gha-roles/ex-gha-readwrite.hcl": article_role(gh.issuer),
        "gha-roles/gha-deploy.hcl": recommended_role(gh.issuer),
        "roles/w.hcl": (b'role "w" {\n  aud = "api://DigitalOcean?actx={actx}"\n  sub = "actx:{actx}:role:w"\n'
                        b'  policies = ["ex-gha-readwrite"]\n}\n'),
    }
    install_rbac(gha_proxy, actx, files, trusted_issuers=[gh.issuer, elsewhere.issuer])
    return actx


def body(team: str, **overrides: object) -> dict[str, object]:
    return {"aud": audience(team), "sub": f"actx:{team}:role:database-and-spaces-keys-access", "ttl": 300,
            **overrides}


def workflow_token(gh: GitHubOIDCStandIn, team: str, **claims: Any) -> str:
    merged: dict[str, Any] = {"repository": REPO, "workflow_file": "do-wid.yml", **claims}
    return gh.mint(audience(team), **merged)


def run_article_step(proxy: ProxyServer, team: str, gh_token: str, workdir: Path) -> dict[str, str]:
    output = workdir / "step_output"
    output.write_text("")
    env = {"PATH": "/usr/bin:/bin", "DO_BASE_URL": proxy.url, "DO_TEAM_UUID": team,
           "SUBJECT": f"actx:{team}:role:database-and-spaces-keys-access", "GH_OIDC_TOKEN": gh_token,
           "GITHUB_OUTPUT": str(output)}
    script = workdir / "step.sh"
    script.write_text(ARTICLE_STEP)
    # How the runner starts a `run:` step: bash --noprofile --norc -eo pipefail {0}
    done = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return read_output(output)


def test_workflow_with_the_real_actions_core(gha_proxy: ProxyServer, gh: GitHubOIDCStandIn, team: str,
                                             tmp_path: Path) -> None:
    job = gh.runner_job(repository=REPO, workflow_file="do-wid.yml")
    oidc, stdout = get_id_token(job.env, f"api://DigitalOcean?actx={team}", ca_file=gh.ca_file, workdir=tmp_path)
    assert f"::add-mask::{oidc}" in stdout  # getIDToken masks the token, as on a real runner
    fetched = gh.requests_to("/_apis/distributedtask/")[-1]
    assert fetched.query_value("audience") == audience(team)
    assert unverified_claims(oidc)["job_workflow_ref"] == WORKFLOW_REF

    outputs = run_article_step(gha_proxy, team, oidc, tmp_path)
    token = outputs["oidc"]
    claims = verify_by_discovery(gha_proxy.url, token, audience(team))  # a third party, via our discovery
    assert claims["iss"] == gha_proxy.url
    assert claims["sub"] == f"actx:{team}:role:database-and-spaces-keys-access"
    assert claims["act"] == {"iss": gh.issuer, "sub": "repo:org/repo:ref:refs/heads/main"}
    assert claims["exp"] <= unverified_claims(oidc)["exp"]  # GitHub's token lives 5 minutes here
    allow = [r for r in audit_rows(gha_proxy, team) if r["decision"] == "allow"]
    assert allow[-1]["iss"] == gh.issuer and allow[-1]["jti"] == unverified_claims(oidc)["jti"]
    assert allow[-1]["detail"]["roles"] == ["ex-gha-readwrite"]


def test_recommended_role_binds_ids_and_workflow(gha_proxy: ProxyServer, gh: GitHubOIDCStandIn, team: str) -> None:
    def deploy_token(**claims: Any) -> str:
        merged: dict[str, Any] = {"environment": "production", "repository_owner_id": OWNER_ID,
                                     "repository_id": REPO_ID, **claims}
        return gh.mint(audience(team), repository=REPO, workflow_file="deploy.yml", **merged)

    assert exchange(gha_proxy, deploy_token(), body(team)).status_code == 200
    # Same names, different owner/repository ids: a deleted and re-created org or repo.
    for claims in ({"repository_owner_id": "99999999"}, {"repository_id": "1"}, {"environment": "staging"},
                   {"job_workflow_ref": "org/repo/.github/workflows/deploy.yml@refs/heads/feature"}):
        response = exchange(gha_proxy, deploy_token(**claims), body(team))
        assert response.status_code == 401, (claims, response.text)


def test_other_workflow_is_401(gha_proxy: ProxyServer, gh: GitHubOIDCStandIn, team: str) -> None:
    for token in (workflow_token(gh, team, job_workflow_ref="org/repo/.github/workflows/other.yml@refs/heads/main"),
                  gh.mint(audience(team), repository=REPO, workflow_file="other.yml"),
                  workflow_token(gh, team, ref="refs/heads/feature"),
                  workflow_token(gh, team, event_name="pull_request"),
                  workflow_token(gh, team, repository="evil/repo", job_workflow_ref=WORKFLOW_REF)):
        response = exchange(gha_proxy, token, body(team))
        assert response.status_code == 401, response.text
        assert "no role" in response.json()["message"]
    denial = [r for r in audit_rows(gha_proxy, team) if r["decision"] == "deny"][-1]
    assert denial["iss"] == gh.issuer and denial["detail"]["status"] == 401


def test_policy_still_applies(gha_proxy: ProxyServer, gh: GitHubOIDCStandIn, team: str) -> None:
    response = exchange(gha_proxy, workflow_token(gh, team), body(team, ttl=3600))
    assert response.status_code == 403 and "ttl" in response.json()["message"]


def test_issuer_no_role_names_is_401_without_discovery(gha_proxy: ProxyServer, elsewhere: GitHubOIDCStandIn,
                                                       team: str) -> None:
    elsewhere.clear_requests()
    token = elsewhere.mint(audience(team), repository=REPO, workflow_file="do-wid.yml")
    response = exchange(gha_proxy, token, body(team))
    assert response.status_code == 401 and "names issuer" in response.json()["message"]
    assert elsewhere.requests == []


def test_forged_github_tokens_are_401(gha_proxy: ProxyServer, gh: GitHubOIDCStandIn,
                                      elsewhere: GitHubOIDCStandIn, team: str) -> None:
    exchange(gha_proxy, workflow_token(gh, team), body(team))  # keys cached
    elsewhere.clear_requests()
    attacks = {
        "other key, published kid": workflow_token(gh, team, key=gh.untrusted_key(kid=gh.kid)),
        "alg none": workflow_token(gh, team, alg="none"),
        "HS256 keyed with the public key": workflow_token(gh, team, alg="HS256"),
        "jku": workflow_token(gh, team, key=elsewhere.signing_key, headers={"jku": elsewhere.jwks_uri}),
        "x5u": workflow_token(gh, team, key=elsewhere.signing_key, headers={"x5u": f"{elsewhere.url}/x.pem"}),
        "expired": workflow_token(gh, team, exp=int(time.time()) - 120),
        "not yet valid": workflow_token(gh, team, nbf=int(time.time()) + 600),
        "GitHub's default audience": gh.mint(None, repository=REPO, workflow_file="do-wid.yml"),
        "aud of another team": workflow_token(gh, team, aud=audience(new_team())),
        "unknown kid": workflow_token(gh, team, key=gh.untrusted_key()),
    }
    for name, token in attacks.items():
        response = exchange(gha_proxy, token, body(team))
        assert response.status_code == 401, (name, response.text)
    assert elsewhere.requests == []


def test_rfc8693_form_with_a_github_token(gha_proxy: ProxyServer, gh: GitHubOIDCStandIn, team: str) -> None:
    response = requests.post(f"{gha_proxy.url}/v1/oidc/token", timeout=30, data={
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": workflow_token(gh, team),
        "subject_token_type": "urn:ietf:params:oauth:token-type:id_token",
        "audience": audience(team),
        "scope": f"actx:{team}:role:database-and-spaces-keys-access",
    })
    assert response.status_code == 200, response.text
    assert unverified_claims(response.json()["access_token"])["act"]["iss"] == gh.issuer


def test_keys_are_fetched_once_for_all_cgi_processes(gha_proxy: ProxyServer, gh: GitHubOIDCStandIn,
                                                     team: str) -> None:
    from wid.service import issuers

    with gha_proxy.configured():
        issuers.forget(gh.issuer)
    gh.clear_requests()
    for _ in range(5):
        assert exchange(gha_proxy, workflow_token(gh, team), body(team)).status_code == 200
    assert len(gh.requests_to("/.well-known/openid-configuration")) == 1
    assert len(gh.requests_to("/.well-known/jwks")) == 1


def test_unreachable_issuer_fails_closed_fast_and_slows_nobody_else(gha_proxy: ProxyServer, gh: GitHubOIDCStandIn,
                                                                    team: str) -> None:
    from wid.service import issuers

    with gha_proxy.configured():
        issuers.forget(gh.issuer)
    gh.fail_next("/.well-known/openid-configuration", None, delay_seconds=30, times=0)  # hangs for 30 s
    try:
        started = time.monotonic()
        first = exchange(gha_proxy, workflow_token(gh, team), body(team))
        assert first.status_code == 503 and "within 2s" in first.json()["message"]
        assert time.monotonic() - started < 15  # cut at the 2 s deadline, not the issuer's 30 s
        assert int(first.headers["Retry-After"]) >= 1
        attempts = len(gh.requests_to("/.well-known/openid-configuration"))
        started = time.monotonic()
        second = exchange(gha_proxy, workflow_token(gh, team), body(team))
        assert second.status_code == 503 and "retry in" in second.json()["message"]
        assert len(gh.requests_to("/.well-known/openid-configuration")) == attempts  # the failure was remembered
        assert time.monotonic() - started < 10
        # Our own tokens never wait for an external issuer.
        own = mint(gha_proxy, audience(team), f"actx:{team}:role:w")
        started = time.monotonic()
        assert exchange(gha_proxy, own, body(team)).status_code == 200
        assert time.monotonic() - started < 10
    finally:
        gh.clear_faults()
        with gha_proxy.configured():
            issuers.forget(gh.issuer)
    assert exchange(gha_proxy, workflow_token(gh, team), body(team)).status_code == 200


def test_a_configuration_stored_before_the_owner_rule_keeps_serving(gha_proxy: ProxyServer,
                                                                    gh: GitHubOIDCStandIn) -> None:
    """A role bound to an environment only, as a server before the owner rule stored it, still decides.

    The opt-in compiles to exactly what the earlier compiler stored for the same role without it."""
    actx = new_team()
    env_only = f"""role "prod" {{
  iss = "{gh.issuer}"
  aud = "api://DigitalOcean?actx={{actx}}"
  sub = "environment:prod"
  accept_tokens_of_any_owner = true
  policies = ["ex-gha-readwrite"]
}}
""".encode()
    compiled = install_rbac(gha_proxy, actx, {"policies/ex-gha-readwrite.hcl": ARTICLE_POLICY,
                                              "gha-roles/prod.hcl": env_only}, trusted_issuers=[gh.issuer])
    assert compiled["roles"]["prod"]["claims"] == {} and compiled["roles"]["prod"]["sub"] == "environment:prod"
    token = gh.mint(audience(actx), sub="environment:prod", repository="anyone/anything")
    response = exchange(gha_proxy, token, body(actx))
    assert response.status_code == 200, response.text

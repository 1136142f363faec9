"""docs/github-actions.md is ready to copy: its HCL compiles, and its workflow's token and exchange steps
run as written (a small runner: env and step-output expressions, `run:` with the runner's bash flags,
the github-script step with the real @actions/core) against the proxy and the stand-in GitHub issuer.
Only the URLs differ: DO_BASE_URL is the test proxy, the role's iss the stand-in issuer."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from devkit.proxy import ROOT, ProxyServer
from devkit.seed import install_rbac
from devkit.standins.github_oidc import GITHUB_ISSUER, GitHubOIDCStandIn
from tests.gha.support import audience, new_team, read_output, run_github_script, unverified_claims

DOC = ROOT / "docs" / "github-actions.md"
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.DOTALL)
EXPRESSION = re.compile(r"\$\{\{\s*([\w.-]+)\s*\}\}")


def blocks(language: str) -> list[str]:
    return [body for lang, body in BLOCK.findall(DOC.read_text()) if lang == language]


def workflow() -> dict[str, Any]:
    (document,) = [yaml.safe_load(b) for b in blocks("yaml") if "id-token: write" in b]
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def gh() -> Iterator[GitHubOIDCStandIn]:
    with GitHubOIDCStandIn() as server:
        yield server


@pytest.fixture(scope="module")
def docs_proxy(tmp_path_factory: pytest.TempPathFactory, gh: GitHubOIDCStandIn) -> Iterator[ProxyServer]:
    with ProxyServer(tmp_path_factory.mktemp("gha-docs") / "data", gh.proxy_env()) as server:
        yield server


@pytest.fixture
def team(docs_proxy: ProxyServer, gh: GitHubOIDCStandIn) -> str:
    """The doc's policy and roles, with the stand-in issuer instead of GitHub's."""
    policy, *roles = blocks("hcl")
    assert policy.startswith('path "/v1/oidc/issue"')
    files = {"policies/ex-gha-readwrite.hcl": policy.encode()}
    for role in roles:
        name = re.search(r'role "([^"]+)"', role)
        assert name is not None and GITHUB_ISSUER in role
        files[f"gha-roles/{name.group(1)}.hcl"] = role.replace(GITHUB_ISSUER, gh.issuer).encode()
    actx = new_team()
    install_rbac(docs_proxy, actx, files, trusted_issuers=[gh.issuer, GITHUB_ISSUER])
    return actx


def test_doc_hcl_compiles_for_github(tmp_path: Path) -> None:
    from wid.core.rbac import compiler as rbac_compile

    policy, *roles = blocks("hcl")
    files = {"policies/ex-gha-readwrite.hcl": policy.encode()}
    files.update({f"gha-roles/r{i}.hcl": role.encode() for i, role in enumerate(roles)})
    compiled = rbac_compile.compile_tree(files, api="DigitalOcean", actx=new_team(), trusted_issuers=[GITHUB_ISSUER])
    assert {role["iss"] for role in compiled["roles"].values()} == {GITHUB_ISSUER}
    assert compiled["roles"]["gha-deploy"]["claims"]["repository_owner_id"] == "71096353"


class Runner:
    """Just enough of the Actions runner for these steps."""

    def __init__(self, job: dict[str, Any], runtime_env: dict[str, str], workdir: Path) -> None:
        self.env: dict[str, str] = {k: str(v) for k, v in job.get("env", {}).items()}
        self.runtime_env = runtime_env
        self.workdir = workdir
        self.outputs: dict[str, dict[str, str]] = {}

    def expand(self, text: str) -> str:
        def value(match: re.Match[str]) -> str:
            parts = match.group(1).split(".")
            if parts[0] == "env":
                return self.env[parts[1]]
            if parts[0] == "steps" and parts[2] == "outputs":
                return self.outputs[parts[1]][parts[3]]
            raise AssertionError(f"unsupported expression {match.group(0)}")

        return EXPRESSION.sub(value, text)

    def run(self, step: dict[str, Any]) -> None:
        if "uses" in step:
            assert step["uses"].startswith("actions/github-script@")
            outputs = run_github_script(self.expand(step["with"]["script"]), self.runtime_env, workdir=self.workdir)
        else:
            output = self.workdir / f"output-{step['id']}"
            output.write_text("")
            script = self.workdir / f"step-{step['id']}.sh"
            script.write_text(self.expand(step["run"]))
            env = {"PATH": "/usr/bin:/bin", **self.env, **self.runtime_env,
                   **{k: self.expand(str(v)) for k, v in step.get("env", {}).items()},
                   "GITHUB_OUTPUT": str(output)}
            done = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)], env=env,
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, f"step {step['id']} failed: {done.stderr}"
            outputs = read_output(output)
        self.outputs[step["id"]] = outputs


def test_doc_workflow_token_and_exchange_steps_run_as_written(docs_proxy: ProxyServer, gh: GitHubOIDCStandIn,
                                                              team: str, tmp_path: Path) -> None:
    document = workflow()
    (job,) = document["jobs"].values()
    assert job["permissions"]["id-token"] == "write"
    job["env"]["DO_BASE_URL"] = docs_proxy.url
    job["env"]["DO_TEAM_UUID"] = team
    runtime = gh.actions_env(repository="org/repo", workflow_file="do-wid.yml")
    runner = Runner(job, runtime, tmp_path)
    steps = {step["id"]: step for step in job["steps"]}
    runner.run(steps["token"])
    assert unverified_claims(runner.outputs["token"]["oidc"])["aud"] == audience(team)
    runner.run(steps["data-readwrite"])
    token = runner.outputs["data-readwrite"]["oidc"]
    claims = unverified_claims(token)
    assert claims["iss"] == docs_proxy.url
    assert claims["sub"] == f"actx:{team}:role:database-and-spaces-keys-access"
    assert claims["act"]["iss"] == gh.issuer
    # The next step uses it as a Bearer token against /v2/databases/... (see the API proxy's tests).
    assert "Bearer ${DO_OIDC_TOKEN}" in steps["db"]["run"]


def test_doc_runner_endpoint_snippet(docs_proxy: ProxyServer, gh: GitHubOIDCStandIn, team: str) -> None:
    (snippet,) = [b for b in blocks("bash") if "ACTIONS_ID_TOKEN_REQUEST_URL" in b]
    env = {"PATH": "/usr/bin:/bin", "DO_TEAM_UUID": team, **gh.actions_env(repository="org/repo")}
    done = subprocess.run(["bash", "-eo", "pipefail", "-c", snippet + '\nprintf "%s" "$GH_OIDC_TOKEN" >&2'],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert unverified_claims(done.stderr.strip())["aud"] == audience(team)
    assert "::add-mask::" in done.stdout


def test_doc_rfc8693_snippet(docs_proxy: ProxyServer, gh: GitHubOIDCStandIn, team: str) -> None:
    (snippet,) = [b for b in blocks("bash") if "/v1/oidc/token" in b]
    gh_token = gh.mint(audience(team), repository="org/repo", workflow_file="do-wid.yml")
    env = {"PATH": "/usr/bin:/bin", "DO_BASE_URL": docs_proxy.url, "DO_TEAM_UUID": team, "GH_OIDC_TOKEN": gh_token}
    done = subprocess.run(["bash", "-eo", "pipefail", "-c", snippet], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert unverified_claims(done.stdout.strip())["sub"] == f"actx:{team}:role:database-and-spaces-keys-access"


def test_doc_error_advice_is_true(docs_proxy: ProxyServer, gh: GitHubOIDCStandIn, team: str) -> None:
    other = gh.mint(audience(team), repository="org/repo", workflow_file="other.yml")
    response = requests.post(f"{docs_proxy.url}/v1/oidc/issue", headers={"Authorization": f"Bearer {other}"},
                             json={"aud": audience(team), "sub": f"actx:{team}:role:x", "ttl": 300}, timeout=30)
    assert response.status_code == 401
    assert set(response.json()) == {"id", "message", "request_id"} and other not in response.text

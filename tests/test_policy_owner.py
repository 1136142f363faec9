"""Roles on an external issuer must say whose tokens they accept (lib/wid/core/rbac/owner.py).

GitHub lets any repository or organisation customise its `sub` template, so an exact `sub` such as
"environment:prod" is produced by every owner that picks that template: a role must also fix the owner.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from wid.core.rbac.compiler import CompileError, compile_tree

GITHUB = "https://token.actions.githubusercontent.com"
GITLAB = "https://gitlab.example.com"
ACTX = "6a7e1f42-3c2d-4e7b-9f10-2b3c4d5e6f70"
POLICY = b'path "/v2/droplets" {\n  capabilities = ["read"]\n}\n'


def role(body: str, iss: str = GITHUB) -> dict[str, bytes]:
    text = (f'role "gha" {{\n  iss = "{iss}"\n  aud = "api://DigitalOcean?actx={{actx}}"\n'
            f'  policies = ["p"]\n{body}}}\n')
    return {"policies/p.hcl": POLICY, "gha-roles/gha.hcl": text.encode()}


def compile_role(body: str, iss: str = GITHUB,
                 owner_claims: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
    return compile_tree(role(body, iss), api="DigitalOcean", actx=ACTX, issuer="https://wid.example.test",
                        trusted_issuers=[GITHUB, GITLAB, iss], owner_claims=owner_claims)


def refusal(body: str, iss: str = GITHUB, owner_claims: Mapping[str, Sequence[str]] | None = None) -> str:
    with pytest.raises(CompileError) as caught:
        compile_role(body, iss, owner_claims)
    [error] = caught.value.errors
    assert error.startswith("gha-roles/gha.hcl:"), error
    return error


@pytest.mark.parametrize("sub", ["environment:prod", "job_workflow_ref:org/repo/.github/workflows/x.yml@main",
                                 "repo:", "repo:/repo:ref:refs/heads/main", "repo:org", "*", "repo:*"])
def test_a_sub_that_names_no_owner_is_refused(sub: str) -> None:
    error = refusal(f'  sub = "{sub}"\n')
    assert error.startswith("gha-roles/gha.hcl:1: role 'gha' trusts issuer https://token.actions.githubusercontent.com")
    assert "does not fix whose tokens it accepts" in error
    assert "repository_owner_id" in error and "accept_tokens_of_any_owner = true" in error


def test_workflow_and_environment_claims_do_not_fix_the_owner() -> None:
    # A reusable workflow can be called by any repository: job_workflow_ref names the workflow's owner, not the caller.
    error = refusal('  sub = "environment:prod"\n'
                    '  job_workflow_ref = "org/repo/.github/workflows/d.yml@refs/heads/main"\n  environment = "prod"\n')
    assert "sub 'environment:prod' alone" in error


@pytest.mark.parametrize("claim", ["repository_owner_id", "repository_id"])
def test_an_immutable_owner_id_fixes_the_owner_without_warning(claim: str) -> None:
    compiled = compile_role(f'  sub = "environment:prod"\n  {claim} = "123456"\n')
    assert compiled["roles"]["gha"]["claims"] == {claim: "123456"}
    assert compiled["warnings"] == []


@pytest.mark.parametrize(("claim", "id_claim"), [("repository_owner", "repository_owner_id"),
                                                 ("repository", "repository_id")])
def test_a_name_fixes_the_owner_with_a_warning_to_bind_the_id(claim: str, id_claim: str) -> None:
    compiled = compile_role(f'  sub = "environment:prod"\n  {claim} = "org"\n')
    [warning] = compiled["warnings"]
    assert f"binds {claim} by name" in warning and f"bind {id_claim}" in warning


def test_default_github_sub_fixes_the_owner_and_warns_to_bind_an_id() -> None:
    compiled = compile_role('  sub = "repo:org/repo:ref:refs/heads/main"\n')
    [warning] = compiled["warnings"]
    assert "fixes the owner 'org' only by name" in warning
    quiet = compile_role('  sub = "repo:org/repo:ref:refs/heads/main"\n  repository_owner_id = "42"\n')
    assert quiet["warnings"] == []


def test_the_explicit_opt_in_accepts_any_owner_and_says_so() -> None:
    compiled = compile_role('  sub = "environment:prod"\n  accept_tokens_of_any_owner = true\n')
    assert "gha" in compiled["roles"] and "accept_tokens_of_any_owner" not in compiled["roles"]["gha"]["claims"]
    [warning] = compiled["warnings"]
    assert "from any owner" in warning
    error = refusal('  sub = "environment:prod"\n  accept_tokens_of_any_owner = "yes"\n')
    assert "accept_tokens_of_any_owner must be true or false" in error
    # false is the default: the rule applies.
    assert "does not fix" in refusal('  sub = "environment:prod"\n  accept_tokens_of_any_owner = false\n')


def test_another_issuer_needs_its_owner_claims_declared() -> None:
    error = refusal('  sub = "project_path:group/app"\n', iss=GITLAB)
    assert "WID_ISSUER_OWNER_CLAIMS" in error and f"{GITLAB}=namespace_id" in error
    # GitHub's shapes mean nothing for another issuer.
    assert "WID_ISSUER_OWNER_CLAIMS" in refusal('  sub = "repo:org/repo:ref:refs/heads/main"\n', iss=GITLAB)
    declared = {GITLAB: ("namespace_id", "project_id")}
    assert "does not fix" in refusal('  sub = "project_path:group/app"\n', iss=GITLAB, owner_claims=declared)
    compiled = compile_role('  sub = "project_path:group/app"\n  namespace_id = "77"\n', GITLAB, declared)
    assert compiled["roles"]["gha"]["claims"] == {"namespace_id": "77"}


def test_an_issuer_declared_github_follows_githubs_rules() -> None:
    ghes = "https://ghes.example.com/_services/token"
    compile_tree(role('  sub = "repo:org/repo:ref:refs/heads/main"\n  repository_id = "9"\n', ghes), api="DigitalOcean",
                 actx=ACTX, owner_claims={ghes: ("github",)})
    assert "does not fix" in refusal('  sub = "environment:prod"\n', iss=ghes, owner_claims={ghes: ("github",)})


def test_roles_of_this_issuer_are_not_concerned() -> None:
    files = {"policies/p.hcl": POLICY, "roles/r.hcl": b'role "r" {\n  aud = "api://DigitalOcean?actx={actx}"\n'
             b'  sub = "actx:{actx}:role:r"\n  policies = ["p"]\n}\n'}
    assert "r" in compile_tree(files, api="DigitalOcean", actx=ACTX)["roles"]


def test_wid_policy_compile_refuses_and_reads_declared_claims(tmp_path: Path) -> None:
    for name, text in role('  sub = "project_path:group/app"\n  namespace_id = "77"\n', GITLAB).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(text)
    wid = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "wid"
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("WID_", "DATABASE_URI", "THIS_ENDPOINT"))}
    env = {**inherited, "WID_TRUSTED_ISSUERS": GITLAB, "WID_DATA_DIR": str(tmp_path / "data"),
           "THIS_ENDPOINT": "https://wid.example.test"}
    args = [str(wid), "policy", "compile", str(tmp_path), "--actx", ACTX]
    refused = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "WID_ISSUER_OWNER_CLAIMS" in refused.stderr
    ok = subprocess.run(args, env={**env, "WID_ISSUER_OWNER_CLAIMS": f"{GITLAB}=namespace_id"}, capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["roles"]["gha"]["claims"] == {"namespace_id": "77"}
    bad = subprocess.run(args, env={**env, "WID_ISSUER_OWNER_CLAIMS": "gitlab=namespace_id"}, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "WID_ISSUER_OWNER_CLAIMS must be space-separated ISSUER=claim" in bad.stderr
    assert "'gitlab=namespace_id' is not one" in bad.stderr

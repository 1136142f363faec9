"""Policy tests kept in the RBAC repo (tests/*.hcl, lib/wid/core/rbac/cases.py): run by the same engine
at `wid policy compile|test` and at every push; a failing or unusable test refuses the configuration."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from devkit.proxy import ROOT
from wid.core.rbac import cases
from wid.core.rbac.compiler import CompileError, compile_tree

TEAM = "f81d4fae-7dec-11d0-a765-00a0c91e6bf6"
DB = "/v2/databases/9cc10173-e9ea-4176-9dbc-a4cee4c4ff30"
EXAMPLES = ROOT / "rbac-schema" / "examples"
REPO = {p.relative_to(EXAMPLES).as_posix(): p.read_bytes() for p in EXAMPLES.rglob("*.hcl")
        if not p.relative_to(EXAMPLES).as_posix().startswith("atproto/")}
DATA_ROLE = 'token = { sub = "actx:{actx}:role:database-and-spaces-keys-access" }'
PASSING = f'''test "the data role reads the database" {{
  {DATA_ROLE}
  method = "GET"
  path   = "{DB}"
  expect = "allow"
  policy = "database-credential-read"
}}

test "bucket 222 is refused" {{
  {DATA_ROLE}
  method = "POST"
  path   = "/v2/spaces/keys"
  body   = {{ name = "bucket-111-read-token-x", grants = [{{ bucket = "222", permission = "read" }}] }}
  expect = "deny"
  reason = "222"
}}

test "another database is refused" {{
  {DATA_ROLE}
  method = "GET"
  path   = "/v2/databases/00000000-0000-0000-0000-000000000000"
  expect = "deny"
}}
'''


def run(extra: dict[str, str]) -> tuple[dict[str, Any], int]:
    files = {**REPO, **{name: text.encode() for name, text in extra.items()}}
    return cases.compile_and_test(files, api="DigitalOcean", actx=TEAM, issuer="https://wid.example.test")


def failures(extra: dict[str, str]) -> list[str]:
    with pytest.raises(CompileError) as caught:
        run(extra)
    return caught.value.errors


def test_passing_tests_compile_the_same_configuration() -> None:
    compiled, tested = run({"tests/data.hcl": PASSING})
    assert tested == 3
    assert compiled == compile_tree(REPO, api="DigitalOcean", actx=TEAM, issuer="https://wid.example.test")


def test_each_failing_case_is_named_with_the_engines_reason() -> None:
    wrong = PASSING.replace('expect = "deny"\n  reason = "222"', 'expect = "allow"').replace(
        'policy = "database-credential-read"', 'policy = "spaces-keys"')
    errors = failures({"tests/data.hcl": wrong})
    assert errors[0] == "2 of 3 policy test(s) failed:"
    assert errors[1].startswith("tests/data.hcl:1: test 'the data role reads the database': expected the deciding "
                                "policy 'spaces-keys', got 'database-credential-read'")
    assert errors[2].startswith("tests/data.hcl:9: test 'bucket 222 is refused': expected allow, got deny: ")
    assert "grants" in errors[2] and "222" in errors[2]


@pytest.mark.parametrize(("text", "message"), [
    ('test "x" {\n  method = "GET"\n  path = "/v2"\n  expect = "allow"\n}\n', "token = { sub"),
    (f'test "x" {{\n  {DATA_ROLE}\n  method = "FETCH"\n  path = "/v2"\n  expect = "allow"\n}}\n', "method must be"),
    (f'test "x" {{\n  {DATA_ROLE}\n  method = "GET"\n  path = "v2"\n  expect = "allow"\n}}\n', "absolute request path"),
    (f'test "x" {{\n  {DATA_ROLE}\n  method = "GET"\n  path = "/v2"\n  expect = "maybe"\n}}\n', 'expect must be'),
    (f'test "x" {{\n  {DATA_ROLE}\n  method = "GET"\n  path = "/v2"\n  expect = "deny"\n  colour = "red"\n}}\n',
     "unknown attribute colour"),
    (f'test "x" {{\n  {DATA_ROLE}\n  method = "GET"\n  path = "/v2"\n  expect = "deny"\n  format = 2\n}}\n',
     "format 2 is not understood here (format 1)"),
    ('path "/v2" {\n  capabilities = ["read"]\n}\n', 'only test "name" { ... } blocks belong in tests/'),
    ('test "x" {\n  method = \n}\n', "tests/bad.hcl:"),
])
def test_unusable_tests_refuse_the_configuration_naming_file_and_line(text: str, message: str) -> None:
    errors = failures({"tests/bad.hcl": text})
    assert any(message in e for e in errors), errors
    assert all(e.startswith("tests/bad.hcl") for e in errors)


def test_limits_keep_a_push_fast() -> None:
    many = "".join(f'test "t{n}" {{\n  {DATA_ROLE}\n  method = "GET"\n  path = "{DB}"\n  expect = "allow"\n}}\n'
                   for n in range(cases.MAX_CASES + 1))
    assert any(f"more than {cases.MAX_CASES}" in e for e in failures({"tests/many.hcl": many}))
    assert any(f"more than {cases.MAX_BYTES}" in e for e in failures({"tests/big.hcl": "#" * (cases.MAX_BYTES + 1)}))


def test_a_malformed_request_body_is_reported_as_the_400_the_proxy_would_answer() -> None:
    text = f'test "x" {{\n  {DATA_ROLE}\n  method = "POST"\n  path = "/v2/spaces/keys"\n  query = "a=%ff"\n' \
           '  expect = "deny"\n}\n'
    assert any("would answer 400" in e for e in failures({"tests/q.hcl": text}))


def test_only_tests_folder_files_are_tests_and_others_stay_ignored() -> None:
    compiled, tested = run({"tests/sub/x.hcl": "not hcl {", "other/tests/y.hcl": "nor this"})
    assert tested == 0
    assert {w.split(":")[0] for w in compiled["warnings"]} >= {"tests/sub/x.hcl", "other/tests/y.hcl"}


def wid(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WID_", "DATABASE_URI", "THIS_ENDPOINT"))}
    return subprocess.run([str(ROOT / ".venv" / "bin" / "wid"), *args], env=env, text=True, capture_output=True,
                          timeout=60)


def test_wid_policy_test_reports_each_case_offline(tmp_path: Path) -> None:
    for name, data in {**REPO, "tests/data.hcl": PASSING.encode()}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    done = wid("policy", "test", str(tmp_path), "--actx", TEAM)
    assert done.returncode == 0, done.stderr
    assert "ok   tests/data.hcl:1: the data role reads the database" in done.stdout
    assert done.stdout.strip().endswith("3 passed, 0 failed")
    (tmp_path / "tests/data.hcl").write_text(PASSING.replace('expect = "deny"\n}', 'expect = "allow"\n}'))
    failed = wid("policy", "test", str(tmp_path), "--actx", TEAM)
    assert failed.returncode == 1 and "FAIL tests/data.hcl:18: test 'another database is refused': expected allow" \
        in failed.stdout and failed.stdout.strip().endswith("2 passed, 1 failed")
    # compile refuses what push refuses.
    compiled = wid("policy", "compile", str(tmp_path), "--actx", TEAM)
    assert compiled.returncode == 2 and "1 of 3 policy test(s) failed" in compiled.stderr
    (tmp_path / "tests/data.hcl").write_text('test "x" {\n')
    broken = wid("policy", "test", str(tmp_path), "--actx", TEAM)
    assert broken.returncode == 2 and "error: tests/data.hcl:2: HCL syntax error" in broken.stderr


def test_wid_policy_check_refuses_an_unknown_method_as_a_usage_error(tmp_path: Path) -> None:
    claims = tmp_path / "claims.json"
    claims.write_text('{"sub": "x"}')
    done = wid("policy", "check", str(EXAMPLES), "--claims", str(claims), "--method", "FOO", "--path", "/v2")
    assert done.returncode == 2 and "--method" in done.stderr and "Traceback" not in done.stderr

"""`wid policy compile` and `wid policy check`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from wid import config
from wid.cli import policy as cli_policy

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "rbac-schema" / "examples"
CLAIMS = Path(__file__).resolve().parent / "fixtures" / "rbac" / "claims"
SCHEMA = json.loads((ROOT / "rbac-schema" / "rbac.schema.json").read_text())
TEAM = "f81d4fae-7dec-11d0-a765-00a0c91e6bf6"


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("THIS_ENDPOINT", "https://wid.example.test")
    monkeypatch.delenv("WID_TRUSTED_ISSUERS", raising=False)
    config.settings.cache_clear()
    yield
    config.settings.cache_clear()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli_policy.main(["policy", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def check(capsys: pytest.CaptureFixture[str], claims: str, *argv: str) -> tuple[int, str, str]:
    return run(capsys, "check", str(EXAMPLES), "--claims", str(CLAIMS / f"{claims}.json"), *argv)


def check_spaces_key(capsys: pytest.CaptureFixture[str], body: str, method: str = "POST") -> tuple[int, str, str]:
    """The articles' Droplet role creating a Spaces key with body."""
    return check(capsys, "exchanged-database-and-spaces-keys-access", "--method", method, "--path", "/v2/spaces/keys",
                 "--body", body)


def test_compile_to_stdout_and_to_a_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(capsys, "compile", str(EXAMPLES), "--actx", TEAM)
    assert code == 0
    compiled = json.loads(out)
    jsonschema.validate(compiled, SCHEMA)
    assert compiled["actx"] == TEAM and compiled["api"] == "DigitalOcean"
    assert "warning: atproto/roles/atproto-write.hcl: ignored" in err
    target = tmp_path / "rbac.json"
    assert (
        run(capsys, "compile", str(EXAMPLES / "atproto"), "--api", "ATProto", "--actx", "did:plc:x", "-o", str(target))[
            0
        ]
        == 0
    )
    assert json.loads(target.read_text())["roles"]["atproto-write"]["aud"] == "api://ATProto?actx=did:plc:x"


def test_compile_errors_exit_2_with_file_and_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "p.hcl").write_text('path "/x" {\n  capabilities = ["raed"]\n}\n')
    (tmp_path / "roles").mkdir()
    (tmp_path / "roles" / "r.hcl").write_text('role "r" {\n  aud = "a"\n  policies = ["p"]\n}\n')
    code, out, err = run(capsys, "compile", str(tmp_path))
    assert code == 2 and out == ""
    assert "error: policies/p.hcl:2: unknown capability 'raed' (did you mean 'read'?)" in err
    assert "error: roles/r.hcl:1: role needs sub" in err


def test_compile_checks_trusted_issuers(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert run(capsys, "compile", str(EXAMPLES))[0] == 0  # GitHub is trusted by default
    monkeypatch.setenv("WID_TRUSTED_ISSUERS", "https://other.example")
    config.settings.cache_clear()
    code, _, err = run(capsys, "compile", str(EXAMPLES))
    assert code == 2 and "gha-roles/ex-gha-readwrite.hcl:2: issuer" in err
    trusted = "https://token.actions.githubusercontent.com"
    assert run(capsys, "compile", str(EXAMPLES), "--trusted-issuer", trusted)[0] == 0


def test_check_allows_bucket_111(capsys: pytest.CaptureFixture[str]) -> None:
    body = '{"name": "bucket-111-read-token-droplet", "grants": [{"bucket": "111", "permission": "read"}]}'
    code, out, _ = check_spaces_key(capsys, body)
    assert code == 0
    assert out.startswith("allow: policy 'spaces-keys' allows create on /v2/spaces/keys")
    assert "roles: database-and-spaces-keys-access" in out


def test_check_denies_bucket_222_naming_the_parameter(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    body = tmp_path / "body.json"
    body.write_text('{"name": "bucket-111-read-token-droplet", "grants": [{"bucket": "222", "permission": "read"}]}')
    code, out, _ = check_spaces_key(capsys, f"@{body}", method="post")
    assert code == 1
    assert (
        "deny: policy 'spaces-keys' denies create on /v2/spaces/keys: grants[0].bucket '222' is not one of ['111']"
        in out
    )


def test_check_query_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    token = "exchanged-database-and-spaces-keys-access"
    assert check(capsys, token, "--method", "GET", "--path", "/v2/databases", "--query", "tag_name=my-tag")[0] == 0
    code, out, _ = check(
        capsys,
        token,
        "--method",
        "GET",
        "--path",
        "/v2/databases",
        "--query",
        "tag_name=my-tag",
        "--query",
        "tag_name=x",
    )
    assert code == 1 and "?.tag_name ['my-tag', 'x'] (a list)" in out
    assert check(capsys, token, "--method", "GET", "--path", "/v2/databases", "--query", "tag_name=a&b")[0] == 1


def test_check_github_and_droplet_exchanges(capsys: pytest.CaptureFixture[str]) -> None:
    body = json.dumps(
        {
            "aud": f"api://DigitalOcean?actx={TEAM}",
            "sub": f"actx:{TEAM}:role:database-and-spaces-keys-access",
            "ttl": 300,
        }
    )
    for claims in ("github-actions", "droplet-workload"):
        code, out, _ = check(capsys, claims, "--method", "POST", "--path", "/v1/oidc/issue", "--body", body)
        assert code == 0, out
    code, out, _ = check(
        capsys,
        "droplet-workload",
        "--method",
        "POST",
        "--path",
        "/v1/oidc/issue",
        "--body",
        body,
        "--issuer",
        "https://other.example",
    )
    assert (
        code == 1 and "no role matches the token" in out and "roles: (none) (this issuer: https://other.example)" in out
    )


def test_check_takes_the_context_from_the_audience(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(
        capsys,
        "check",
        str(EXAMPLES / "atproto"),
        "--claims",
        str(CLAIMS / "atproto-write.json"),
        "--method",
        "POST",
        "--path",
        "/xrpc/com.atproto.repo.createRecord",
        "--body",
        '{"repo": "did:plc:x"}',
    )
    assert code == 0 and "roles: atproto-write" in out
    assert (
        check(
            capsys,
            "exchanged-database-and-spaces-keys-access",
            "--method",
            "GET",
            "--path",
            "/v2/databases/9cc10173-e9ea-4176-9dbc-a4cee4c4ff30",
            "--actx",
            "other",
        )[0]
        == 1
    )


def test_check_malformed_request_is_a_denial(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = check_spaces_key(capsys, '{"a": 1, "A": 2}')
    assert code == 1 and out.startswith("deny: the proxy rejects this request as malformed (400): duplicate JSON key")


@pytest.mark.parametrize(
    "argv",
    [
        ["--method", "GET", "--path", "/v2/databases", "--query", "tag_name"],
        ["--method", "GET", "--path", "/v2/databases", "--body", "@/nonexistent/body.json"],
    ],
)
def test_check_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, err = check(capsys, "exchanged-database-and-spaces-keys-access", *argv)
    assert code == 2 and out == "" and err.startswith("error: ")


def test_check_with_bad_claims_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "list.json").write_text("[]")
    for claims in (tmp_path / "missing.json", tmp_path / "list.json"):
        code, _, err = run(
            capsys, "check", str(EXAMPLES), "--claims", str(claims), "--method", "GET", "--path", "/v2/x"
        )
        assert code == 2 and "--claims" in err


def test_wid_console_command(tmp_path: Path) -> None:
    body = '{"name": "bucket-111-read-token-x", "grants": [{"bucket": "222", "permission": "read"}]}'
    wid = Path(sys.executable).parent / "wid"
    result = subprocess.run(
        [
            str(wid),
            "policy",
            "check",
            str(EXAMPLES),
            "--claims",
            str(CLAIMS / "exchanged-database-and-spaces-keys-access.json"),
            "--method",
            "POST",
            "--path",
            "/v2/spaces/keys",
            "--body",
            body,
            "--issuer",
            "https://wid.example.test",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "grants[0].bucket '222' is not one of ['111']" in result.stdout
    usage = subprocess.run([str(wid), "policy"], capture_output=True, text=True, check=False)
    assert usage.returncode == 2

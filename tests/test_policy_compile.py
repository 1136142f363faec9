"""The compiler: file:line errors for everything it refuses, warnings, {actx}, limits, and the schema."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from wid.core import tokens
from wid.core.errors import InvalidRequest
from wid.core.policy.engine import CompiledRbac
from wid.core.rbac.compiler import MAX_FILE_BYTES, MAX_TOTAL_BYTES, CompileError, compile_directory, compile_tree

SCHEMA = json.loads((Path(__file__).resolve().parent.parent / "rbac-schema" / "rbac.schema.json").read_text())
GITHUB = "https://token.actions.githubusercontent.com"
ROLE = 'role "r" {\n  aud = "api://DigitalOcean?actx={actx}"\n  sub = "actx:{actx}:role:r"\n  policies = ["p"]\n}\n'
POLICY = 'path "/v2/x" {\n  capabilities = ["read"]\n}\n'


def build(files: dict[str, str | bytes], **options: Any) -> dict[str, Any]:
    encoded = {name: text.encode() if isinstance(text, str) else text for name, text in files.items()}
    result = compile_tree(encoded, api=options.pop("api", "DigitalOcean"), actx=options.pop("actx", "team"), **options)
    jsonschema.validate(result, SCHEMA)
    return result


def errors(files: dict[str, str | bytes], **options: Any) -> list[str]:
    with pytest.raises(CompileError) as caught:
        build(files, **options)
    assert str(caught.value) == "\n".join(caught.value.errors)
    return caught.value.errors


def policy_errors(policy: str) -> list[str]:
    return errors({"policies/p.hcl": policy, "roles/r.hcl": ROLE})


def role_errors(role: str, **options: Any) -> list[str]:
    return errors({"policies/p.hcl": POLICY, "roles/r.hcl": role}, **options)


def test_minimal_repo_compiles() -> None:
    result = build({"policies/p.hcl": POLICY, "roles/r.hcl": ROLE})
    assert result["roles"]["r"] == {
        "iss": None,
        "aud": "api://DigitalOcean?actx=team",
        "sub": "actx:team:role:r",
        "claims": {},
        "policies": ["p"],
        "source": "roles/r.hcl:1",
    }
    assert result["policies"]["p"] == {
        "source": "policies/p.hcl",
        "rules": [{"path": "/v2/x", "capabilities": ["read"], "source": "policies/p.hcl:1"}],
    }
    assert (result["version"], result["api"], result["actx"], result["issuer"]) == (1, "DigitalOcean", "team", None)
    assert result["warnings"] == []


def test_actx_is_replaced_everywhere() -> None:
    policy = (
        'path "/xrpc/{actx}/+" {\n  capabilities = ["create"]\n'
        '  allowed_parameters = {\n    "repo-{actx}" = ["{actx}", "x-{actx}-*"]\n'
        '    "?" = { "{actx}" = "{actx}" }\n  }\n}\n'
    )
    role = (
        'role "r" {\n  aud = "api://DigitalOcean?actx={actx}"\n  sub = "actx:{actx}:role:r"\n'
        '  policies = ["p"]\n  team = "{actx}"\n}\n'
    )
    result = build({"policies/p.hcl": policy, "roles/r.hcl": role}, actx="did:plc:abc")
    text = json.dumps(result)
    assert "{actx}" not in text
    rule = result["policies"]["p"]["rules"][0]
    assert rule["path"] == "/xrpc/did:plc:abc/+"
    assert rule["allowed_parameters"] == {
        "repo-did:plc:abc": ["did:plc:abc", "x-did:plc:abc-*"],
        "?": {"did:plc:abc": "did:plc:abc"},
    }
    assert result["roles"]["r"]["claims"] == {"team": "did:plc:abc"}


@pytest.mark.parametrize("actx", ["", "a*", "a/b", "a b", "{actx}", "a\n", "x" * 300])
def test_context_must_not_inject_patterns(actx: str) -> None:
    assert "actx" in errors({"policies/p.hcl": POLICY, "roles/r.hcl": ROLE}, actx=actx)[0]


def test_api_name_is_checked() -> None:
    assert "api" in errors({"policies/p.hcl": POLICY}, api="Digital Ocean")[0]


@pytest.mark.parametrize("actx", ["a" * 129, "did:web:" + "a" * 200 + ".example", "x" * 255])
def test_compile_refuses_a_context_no_token_can_name(actx: str) -> None:
    """The compiler once accepted 255 characters where a token's aud carries 128: a repo nobody could use."""
    found = errors({"policies/p.hcl": POLICY, "roles/r.hcl": ROLE}, actx=actx)
    assert found == [f"actx {actx[:40]!r}... is {len(actx)} characters; a token's audience carries at most 128"]
    with pytest.raises(tokens.TokenError):
        tokens.parse_audience(f"api://DigitalOcean?actx={actx}")


def test_compile_refuses_an_api_name_no_token_can_name() -> None:
    api = "A" * 33  # the compiler once took 64
    assert errors({"policies/p.hcl": POLICY}, api=api) == [
        f"api {api[:40]!r}... is 33 characters; a token's audience carries at most 32"]
    with pytest.raises(tokens.TokenError):
        tokens.parse_audience(f"api://{api}?actx=team")


LONGEST_DID_WEB = "did:web:" + "a" * 59 + "." + "b" * 60


def test_the_longest_did_web_the_atproto_upstream_takes_is_a_context_tokens_carry() -> None:
    from wid.upstreams.atproto.context import validate_context

    assert len(LONGEST_DID_WEB) == 128
    validate_context(LONGEST_DID_WEB)
    with pytest.raises(InvalidRequest):
        validate_context(LONGEST_DID_WEB.replace("did:web:", "did:web:c"))


@pytest.mark.parametrize(("api", "actx"), [
    ("DigitalOcean", "0f8c2a3e-9b1d-4c6e-8a7f-1234567890ab"),
    ("ATProto", "did:plc:ewvi7nxzyoun6zhxrhs64oiz"),
    ("ATProto", LONGEST_DID_WEB),
    ("A" * 32, "a" * 128),
])
def test_every_context_the_compiler_accepts_a_token_can_name(api: str, actx: str) -> None:
    assert len(actx) <= 128
    role = ROLE.replace("api://DigitalOcean", f"api://{api}")
    result = build({"policies/p.hcl": POLICY, "roles/r.hcl": role}, api=api, actx=actx)
    audience = tokens.parse_audience(result["roles"]["r"]["aud"])
    assert (audience.api, audience.actx) == (api, actx)
    assert tokens.sub_context(result["roles"]["r"]["sub"]) == actx


def test_issuer_fills_roles_without_iss_and_trust_is_enforced() -> None:
    gha = ROLE.replace('role "r" {', f'role "g" {{\n  iss = "{GITHUB}"').replace("actx:{actx}:role:r", "repo:o/r")
    files: dict[str, str | bytes] = {"policies/p.hcl": POLICY, "roles/r.hcl": ROLE, "gha-roles/g.hcl": gha}
    result = build(files, issuer="https://wid.example", trusted_issuers=[GITHUB])
    assert result["roles"]["r"]["iss"] == "https://wid.example"
    assert result["roles"]["g"]["iss"] == GITHUB
    assert result["issuer"] == "https://wid.example"
    assert CompiledRbac.from_dict(result).issuers() == {"https://wid.example", GITHUB}
    assert build(files)["roles"]["r"]["iss"] is None  # no trust list given: not checked
    (error,) = errors(files, trusted_issuers=[])
    assert error == f"gha-roles/g.hcl:2: issuer '{GITHUB}' is not trusted by this proxy (trusted: none)"
    own = ROLE.replace('role "r" {', 'role "r" {\n  iss = "https://wid.example"')
    assert build({"policies/p.hcl": POLICY, "roles/r.hcl": own}, issuer="https://wid.example", trusted_issuers=[])


def test_malformed_hcl_reports_the_line() -> None:
    assert policy_errors('path "/v2/x" {\n  capabilities = ["read"\n}\n') == [
        "policies/p.hcl:3: HCL syntax error at column 1: unexpected '}'"
    ]
    assert policy_errors('path "/v2/x" {\n  capabilities = ["read"]\n') == [
        "policies/p.hcl:3: HCL syntax error at column 1: unexpected end of file"
    ]
    assert policy_errors('path "/v2/x" {\n  capabilities = ["read"] ]\n}\n')[0].startswith(
        "policies/p.hcl:2: HCL syntax"
    )
    assert policy_errors("\x00")[0].startswith("policies/p.hcl:1: HCL syntax error")


def test_non_utf8_reports_the_line() -> None:
    assert policy_errors(b'path "/v2/x" {\n  capabilities = ["read"]\n  # caf\xe9\n}\n') == [  # type: ignore[arg-type]
        "policies/p.hcl:3: file is not valid UTF-8"
    ]


def test_byte_order_mark_and_crlf_are_accepted() -> None:
    crlf = "\ufeff" + POLICY.replace("\n", "\r\n")
    assert build({"policies/p.hcl": crlf, "roles/r.hcl": ROLE})["policies"]["p"]["rules"][0]["path"] == "/v2/x"


def test_oversized_files_are_refused() -> None:
    big = POLICY + "#" * MAX_FILE_BYTES
    assert policy_errors(big) == [f"policies/p.hcl: file is larger than {MAX_FILE_BYTES} bytes"]


def test_total_size_is_bounded() -> None:
    chunk = "#" * (MAX_FILE_BYTES - 100) + "\n"
    files: dict[str, str | bytes] = {f"policies/p{i}.hcl": POLICY + chunk for i in range(5)}
    assert errors(files) == [
        f"role and policy files total {5 * (len(POLICY) + len(chunk))} bytes, more than {MAX_TOTAL_BYTES}"
    ]


@pytest.mark.parametrize("depth", [40, 20_000])
def test_excessive_nesting_is_refused(depth: int) -> None:
    policy = (
        'path "/v2/x" {\n  capabilities = ["read"]\n  allowed_parameters = { a = '
        + "[" * depth
        + "]" * depth
        + " }\n}\n"
    )
    assert policy_errors(policy) == ["policies/p.hcl:3: values are nested deeper than 32 levels"]


def test_deeply_nested_blocks_are_refused() -> None:
    nested = "x {\n" * 40 + "}\n" * 40
    (error,) = policy_errors(f'path "/v2/x" {{\n  capabilities = ["read"]\n{nested}}}\n')
    assert "nested deeper than 32 levels" in error


def test_unknown_capability() -> None:
    assert policy_errors('path "/v2/x" {\n  capabilities = ["raed"]\n}\n') == [
        "policies/p.hcl:2: unknown capability 'raed' (did you mean 'read'?); "
        "known: create, read, update, patch, delete, deny"
    ]
    (listing,) = policy_errors('path "/v2/x" {\n  capabilities = ["list"]\n}\n')
    assert "no LIST method" in listing
    assert "capabilities must be a non-empty list" in policy_errors('path "/v2/x" {\n  capabilities = []\n}\n')[0]
    assert "capabilities must be" in policy_errors('path "/v2/x" {\n  capabilities = "read"\n}\n')[0]
    assert "needs capabilities" in policy_errors('path "/v2/x" {\n}\n')[0]


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("v2/x", "must start with /"),
        ("/", "must start with /"),
        ("", "must start with /"),
        ("/v2//x", "empty"),
        ("/v2/x/", "empty"),
        ("/v2/./x", "'.'"),
        ("/v2/../x", "'..'"),
        ("/v2/x*", "'*' is allowed only as the whole last segment"),
        ("/v2/*/x", "'*' is allowed only as the whole last segment"),
        ("/v2/**", "'*' is allowed only as the whole last segment"),
        ("/v2/x+", "'+' must be a whole segment"),
        ("/v2/x?a=1", "may not contain"),
        ("/v2/x%2F", "may not contain"),
        ("/v2/x#", "may not contain"),
        ("/v2/a b", "may not contain"),
        ("/v2/a\\tb", "may not contain"),
    ],
)
def test_malformed_path_patterns(pattern: str, message: str) -> None:
    (error,) = policy_errors(f'\npath "{pattern}" {{\n  capabilities = ["read"]\n}}\n')
    assert error.startswith("policies/p.hcl:2: ") and message in error


def test_duplicates_are_refused() -> None:
    assert policy_errors(POLICY + "\n" + POLICY) == ["policies/p.hcl:5: path '/v2/x' is already defined on line 1"]
    assert policy_errors('path "/v2/x" {\n  capabilities = ["read"]\n  capabilities = ["deny"]\n}\n') == [
        "policies/p.hcl:3: capabilities is already set on line 2"
    ]
    duplicate_key = (
        'path "/v2/x" {\n  capabilities = ["read"]\n  allowed_parameters = {\n    a = "1"\n    "a" = "*"\n  }\n}\n'
    )
    assert policy_errors(duplicate_key) == ["policies/p.hcl:5: key 'a' is already set on line 4"]
    files: dict[str, str | bytes] = {"policies/p.hcl": POLICY, "roles/r.hcl": ROLE, "droplet-roles/r.hcl": ROLE}
    assert errors(files) == ["roles/r.hcl:1: role 'r' is already defined at droplet-roles/r.hcl:1"]
    assert role_errors(ROLE + ROLE.replace('"r"', '"R"')) == [
        "roles/r.hcl:6: role 'R' is already defined at roles/r.hcl:1"
    ]
    policies: dict[str, str | bytes] = {"policies/p.hcl": POLICY, "policies/P.hcl": POLICY, "roles/r.hcl": ROLE}
    assert errors(policies) == ["policies/p.hcl: policy 'p' differs only by case from 'P'"]


def test_role_requires_aud_sub_and_policies() -> None:
    assert role_errors('role "r" {\n  policies = ["p"]\n}\n') == [
        'roles/r.hcl:1: role needs aud = "api://..." (the token audience)',
        'roles/r.hcl:1: role needs sub = "..." (the token subject)',
    ]
    assert role_errors('role "r" {\n  aud = "a"\n  sub = "s"\n}\n') == [
        'roles/r.hcl:1: role needs policies = ["policy-name", ...]'
    ]
    assert role_errors('role "r" {\n  aud = ""\n  sub = "s"\n  policies = ["p"]\n}\n') == [
        "roles/r.hcl:2: aud must be a non-empty string"
    ]
    assert role_errors('role "r" {\n  aud = "a"\n  sub = 1\n  policies = ["p"]\n}\n') == [
        "roles/r.hcl:3: sub must be a non-empty string"
    ]
    assert role_errors('role "r" {\n  aud = "a"\n  sub = "s"\n  policies = []\n}\n') == [
        "roles/r.hcl:4: policies must be a non-empty list of policy names"
    ]
    assert role_errors('role "r" {\n  aud = "a"\n  sub = "s"\n  policies = "p"\n}\n') == [
        "roles/r.hcl:4: policies must be a non-empty list of policy names"
    ]
    assert "iss must be an issuer URL" in role_errors(ROLE.replace("policies", 'iss = "github"\n  policies'))[0]


def test_unknown_policy_named_by_a_role() -> None:
    role = 'role "r" {\n  aud = "a"\n  sub = "s"\n  policies = [\n    "p",\n    "q",\n  ]\n}\n'
    assert role_errors(role) == [
        "roles/r.hcl:6: role 'r' names unknown policy 'q' (policies are the *.hcl files in policies/: p)"
    ]
    typo = role_errors(role.replace('"q"', '"pp"'))[0]
    assert "(did you mean 'p'?)" in typo


def test_extra_role_attributes_must_be_strings() -> None:
    role = ROLE.replace("policies", "run_attempt = 1\n  policies")
    assert role_errors(role) == [
        "roles/r.hcl:4: run_attempt must be a string: it is compared with the token claim run_attempt, "
        'and GitHub sends claims as strings (write run_attempt = "...")'
    ]
    assert "must be a string" in role_errors(ROLE.replace("policies", 'repository = ["a"]\n  policies'))[0]


@pytest.mark.parametrize(
    ("value", "line", "message"),
    [
        ("{\n    x = {\n      y = null\n    }\n  }", 5, "allowed_parameters.x.y: null cannot be matched; use []"),
        ('{\n    z = ["a", {b = "1"}]\n  }', 4, "allowed_parameters.z[1]: a list holds either scalars or objects"),
        ('{\n    z = [["a"]]\n  }', 4, "allowed_parameters.z[0]: a list holds either scalars or objects"),
        (
            '{\n    "?" = { n = 1 }\n  }',
            4,
            'allowed_parameters.?.n: query parameters are strings: write "1" instead of 1',
        ),
        ('{\n    "?" = { n = { m = "x" } }\n  }', 4, "query parameters are flat strings"),
        ('{\n    "?" = "x"\n  }', 4, '"?" holds the query parameters'),
        ('{\n    "*" = ["x"]\n  }', 4, '"*" must be []'),
        ('{\n    "" = "x"\n  }', 4, "parameter names must be non-empty strings"),
        ("[]", 3, "allowed_parameters: must be an object of parameter names"),
        ('"x"', 3, "allowed_parameters: must be an object of parameter names"),
        ("{\n    x = 1e400\n  }", 4, "numbers must be finite"),
    ],
)
def test_wrong_value_types_in_allowed_parameters(value: str, line: int, message: str) -> None:
    (error,) = policy_errors(f'path "/v2/x" {{\n  capabilities = ["read"]\n  allowed_parameters = {value}\n}}\n')
    assert error.startswith(f"policies/p.hcl:{line}: ") and message in error, error


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('{ a = [{ b = "1" }] }', "denied_parameters cannot match objects"),
        ("{ a = null }", "null cannot be matched"),
        ("{ a = [], A = [] }", "differs only by case"),
        ('{ "?" = "x" }', '"?" holds the query parameters'),
        ('{ "?" = { a = { b = [] } } }', "query parameters are flat strings"),
        ('{ "?" = { a = 1 } }', "query parameters are strings"),
    ],
)
def test_wrong_value_types_in_denied_parameters(value: str, message: str) -> None:
    (error,) = policy_errors(f'path "/v2/x" {{\n  capabilities = ["read"]\n  denied_parameters = {value}\n}}\n')
    assert error.startswith("policies/p.hcl:3: denied_parameters") and message in error, error


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"${var.x}"', "template interpolation is not supported"),
        ('"%{ if true }x%{ endif }"', "template interpolation is not supported"),
        ("foo", 'foo is not a value; quote strings, as in "foo"'),
        ('upper("a")', "only literal values are supported"),
        ("1 + 2", "only literal values are supported"),
        ('true ? "a" : "b"', "only literal values are supported"),
        ('("a")', "parentheses and expressions are not supported"),
        ("<<EOT\nhi\nEOT", "heredoc strings are not supported"),
        ('"a\\*"', "invalid escape \\* in a string (a '*' cannot be escaped: it is always a glob)"),
        ('"\\uD800"', "invalid escape \\u"),
        ("-true", "only literal values are supported"),
    ],
)
def test_only_literal_values(value: str, message: str) -> None:
    policy = f'path "/v2/x" {{\n  capabilities = ["read"]\n  allowed_parameters = {{\n    a = {value}\n  }}\n}}\n'
    (error,) = policy_errors(policy)
    assert error.startswith("policies/p.hcl:4: ") and message in error, error


def test_string_escapes_and_literal_template_markers() -> None:
    policy = (
        'path "/v2/x" {\n  capabilities = ["read"]\n'
        '  allowed_parameters = { a = "q\\"\\\\\\n\\u00e9\\U0001F600 $${x} %%{y}" \n b = -1.5 \n c = -2 }\n}\n'
    )
    params = build({"policies/p.hcl": policy, "roles/r.hcl": ROLE})["policies"]["p"]["rules"][0]["allowed_parameters"]
    assert params == {"a": 'q"\\\n\u00e9\U0001f600 ${x} %{y}', "b": -1.5, "c": -2}


def test_block_structure_errors() -> None:
    nested = 'path "/v2/x" {\n  capabilities = ["read"]\n  allowed_parameters {\n    a = "1"\n  }\n}\n'
    assert policy_errors(nested) == [
        "policies/p.hcl:3: blocks are not allowed inside a path block; did you mean allowed_parameters = { ... }?"
    ]
    assert policy_errors('path {\n  capabilities = ["read"]\n}\n') == [
        'policies/p.hcl:1: path needs exactly one quoted label, as in path "x" {'
    ]
    assert policy_errors('path "/a" "/b" {\n  capabilities = ["read"]\n}\n')[0].startswith(
        "policies/p.hcl:1: path needs"
    )
    assert policy_errors(ROLE) == ['policies/p.hcl:1: only path "..." blocks belong in policies/, not role']
    assert role_errors(POLICY) == ['roles/r.hcl:1: only role "..." blocks belong in a roles folder, not path']
    assert policy_errors('capabilities = ["read"]\n') == [
        "policies/p.hcl:1: top-level attribute capabilities is not allowed; use blocks"
    ]
    unknown = policy_errors('path "/v2/x" {\n  capabilities = ["read"]\n  required_parameters = ["a"]\n}\n')
    assert unknown == [
        "policies/p.hcl:3: unknown attribute 'required_parameters' in a path block "
        "(every key listed in allowed_parameters is already required)"
    ]
    typo = policy_errors('path "/v2/x" {\n  capabilities = ["read"]\n  allowed_parameter = {}\n}\n')[0]
    assert "(did you mean 'allowed_parameters'?)" in typo
    deny = policy_errors('path "/v2/x" {\n  capabilities = ["deny"]\n  allowed_parameters = { a = [] }\n}\n')
    assert deny == ["policies/p.hcl:3: allowed_parameters has no effect on a deny rule; remove it"]
    assert "role name 'a b'" in role_errors(ROLE.replace('"r"', '"a b"'))[0]


def test_policy_file_name_is_the_policy_name() -> None:
    files: dict[str, str | bytes] = {"policies/bad name.hcl": POLICY, "roles/r.hcl": ROLE}
    found = errors(files)
    assert (
        found[0] == "policies/bad name.hcl: policy name 'bad name' must match [A-Za-z0-9][A-Za-z0-9_.-]{0,127}\\Z "
        "(it is the file name)"
    )


def test_errors_from_several_files_are_all_reported() -> None:
    files: dict[str, str | bytes] = {
        "policies/a.hcl": 'path "/x" {\n  capabilities = ["raed"]\n}\n',
        "policies/p.hcl": 'path "x" {\n  capabilities = ["read"]\n}\n',
        "roles/r.hcl": ROLE.replace('"p"', '"p", "missing"'),
    }
    found = errors(files)
    assert [error.split(":")[0] for error in found] == ["policies/a.hcl", "policies/p.hcl", "roles/r.hcl"]


def test_warnings() -> None:
    files: dict[str, str | bytes] = {
        "policies/p.hcl": POLICY,
        "policies/unused.hcl": POLICY,
        "policies/empty.hcl": "# nothing yet\n",
        "policies/nested/x.hcl": POLICY,
        "policies/readme.md": "hi",
        "roles/r.hcl": ROLE.replace("api://DigitalOcean?actx={actx}", "api://ATProto?actx={actx}"),
        "roles.hcl": ROLE,
        "README.md": "# rbac",
        "other/roles/x.hcl": ROLE,
    }
    warnings = build(files)["warnings"]
    assert warnings == [
        "README.md: ignored (not a *.hcl file directly in policies/ or in a *roles folder)",
        "other/roles/x.hcl: ignored (not a *.hcl file directly in policies/ or in a *roles folder)",
        "policies/nested/x.hcl: ignored (not a *.hcl file directly in policies/ or in a *roles folder)",
        "policies/readme.md: ignored (not a *.hcl file directly in policies/ or in a *roles folder)",
        "roles.hcl: ignored (not a *.hcl file directly in policies/ or in a *roles folder)",
        "policies/empty.hcl: policy 'empty' has no path rules and grants nothing",
        "roles/r.hcl:1: role 'r' has aud 'api://ATProto?actx=team', but tokens for this context carry "
        "'api://DigitalOcean?actx=team'",
        "policies/empty.hcl: policy 'empty' is not used by any role",
        "policies/unused.hcl: policy 'unused' is not used by any role",
    ]


def test_compile_directory_skips_hidden_directories_and_symlinks(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "roles").mkdir()
    (tmp_path / ".git").mkdir()
    (tmp_path / "policies" / "p.hcl").write_text(POLICY)
    (tmp_path / "roles" / "r.hcl").write_text(ROLE)
    (tmp_path / ".git" / "config").write_text("[core]\n")
    os.symlink("/etc/hostname", tmp_path / "roles" / "link.hcl")
    result = compile_directory(tmp_path, api="DigitalOcean", actx="team")
    assert result["warnings"] == ["roles/link.hcl: ignored (not a regular file)"]
    assert list(result["roles"]) == ["r"]
    with pytest.raises(CompileError, match="not a directory"):
        compile_directory(tmp_path / "missing", api="DigitalOcean", actx="team")


def test_compiled_output_round_trips_and_malformed_compiled_input_is_refused() -> None:
    result = build({"policies/p.hcl": POLICY, "roles/r.hcl": ROLE})
    assert CompiledRbac.from_dict(json.loads(json.dumps(result))).matching_roles(
        {"iss": "https://i", "aud": "api://DigitalOcean?actx=team", "sub": "actx:team:role:r"}, "https://i"
    ) == ["r"]
    for mutate in (
        lambda d: d.update(version=2),
        lambda d: d.pop("roles"),
        lambda d: d["roles"]["r"].update(policies=["nope"]),
        lambda d: d["roles"]["r"].update(policies="p"),
        lambda d: d["roles"]["r"].update(aud=1),
        lambda d: d["policies"]["p"]["rules"][0].update(capabilities=["raed"]),
        lambda d: d["policies"]["p"]["rules"][0].update(path="/a*"),
        lambda d: d["policies"]["p"]["rules"].append(d["policies"]["p"]["rules"][0]),
        lambda d: d["policies"]["p"]["rules"][0].update(allowed_parameters={"a": None}),
    ):
        data = json.loads(json.dumps(result))
        mutate(data)
        with pytest.raises(ValueError):
            CompiledRbac.from_dict(data)


def test_schema_accepts_every_constraint_form() -> None:
    policy = (
        'path "/v2/+/x/*" {\n  capabilities = ["create", "update", "patch"]\n'
        "  allowed_parameters = {\n"
        '    a = "g*"\n    b = 1\n    c = 1.5\n    d = true\n    e = []\n    f = ["x", 2, false]\n'
        '    g = [{ h = "1", i = { j = [] } }]\n    k = { l = "m", "*" = [] }\n'
        '    "?" = { q = ["1", "2"], r = "*", "*" = [] }\n  }\n'
        '  denied_parameters = { z = [], y = "no*", x = [1, 2], "?" = { w = [] }, v = { u = [] } }\n}\n'
        'path "/v2/deny" {\n  capabilities = ["deny"]\n}\n'
    )
    build({"policies/p.hcl": policy, "roles/r.hcl": ROLE})

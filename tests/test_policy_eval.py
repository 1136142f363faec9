"""Evaluation semantics: role matching, paths and Vault precedence, deny, parameters, and bypass attempts."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from wid.core.policy.allowed_params import build_allowed
from wid.core.policy.denied_params import build_denied
from wid.core.policy.engine import CompiledRbac, Decision, ParameterError, parse_path_pattern, request_parameters
from wid.core.policy.params import Glob
from wid.core.rbac.compiler import compile_tree

ACTX = "team-1"
AUD = f"api://DigitalOcean?actx={ACTX}"
THIS = "https://wid.example.test"
TOKEN = {"iss": THIS, "aud": AUD, "sub": "actx:team-1:role:r"}


def rbac_of(*policies: str, extra_role: str = "", role_policies: list[str] | None = None) -> CompiledRbac:
    """One role r holding policies p0, p1, ... written as HCL."""
    files = {f"policies/p{i}.hcl": text.encode() for i, text in enumerate(policies)}
    names = role_policies if role_policies is not None else [f"p{i}" for i in range(len(policies))]
    role = (
        f'role "r" {{\n aud = "{AUD}"\n sub = "actx:{{actx}}:role:r"\n policies = {json.dumps(names)}\n{extra_role}}}\n'
    )
    files["roles/r.hcl"] = role.encode()
    return CompiledRbac.from_dict(compile_tree(files, api="DigitalOcean", actx=ACTX))


def rule(path: str, capabilities: str = '"read"', body: str = "") -> str:
    return f'path "{path}" {{\n  capabilities = [{capabilities}]\n{body}}}\n'


def decide(
    rbac: CompiledRbac,
    method: str,
    path: str,
    params: dict[str, Any] | None = None,
    claims: dict[str, Any] | None = None,
) -> Decision:
    return rbac.authorize(claims or TOKEN, THIS, method, path, params or {})


# --- role matching -------------------------------------------------------------------------------


def test_role_matches_only_when_every_condition_holds() -> None:
    rbac = rbac_of(rule("/a"), extra_role=' run_attempt = "1"\n')
    good = {**TOKEN, "run_attempt": "1"}
    assert rbac.matching_roles(good, THIS) == ["r"]
    for changed in (
        {"run_attempt": 1},
        {"run_attempt": "2"},
        {"run_attempt": None},
        {"aud": AUD + "x"},
        {"aud": [AUD]},
        {"sub": "actx:team-1:role:r2"},
        {"sub": "actx:team-1:role:"},
        {"iss": "https://evil.example"},
        {"iss": ""},
        {"iss": None},
    ):
        claims = {k: v for k, v in {**good, **changed}.items() if v is not None}
        assert rbac.matching_roles(claims, THIS) == [], changed
    assert rbac.matching_roles(good, "") == []


def test_roles_sharing_aud_and_sub_are_told_apart_by_other_claims() -> None:
    files = {
        "policies/p.hcl": rule("/a").encode(),
        "gha-roles/main.hcl": b'role "main" {\n iss = "https://gh.example"\n aud = "A"\n sub = "S"\n'
        b' policies = ["p"]\n job_workflow_ref = "w@refs/heads/main"\n org_id = "7"\n}\n',
        "gha-roles/dev.hcl": b'role "dev" {\n iss = "https://gh.example"\n aud = "A"\n sub = "S"\n'
        b' policies = ["p"]\n job_workflow_ref = "w@refs/heads/dev"\n org_id = "7"\n}\n',
    }
    compiled = compile_tree(files, api="DigitalOcean", actx=ACTX, owner_claims={"https://gh.example": ("org_id",)})
    rbac = CompiledRbac.from_dict(compiled)
    claims = {"iss": "https://gh.example", "aud": "A", "sub": "S", "job_workflow_ref": "w@refs/heads/dev",
              "org_id": "7"}
    assert rbac.matching_roles(claims, THIS) == ["dev"]
    assert rbac.matching_roles({**claims, "job_workflow_ref": "w@refs/heads/*"}, THIS) == []
    assert rbac.issuers() == {"https://gh.example"}


def test_no_matching_role_denies_everything() -> None:
    rbac = rbac_of(rule("/*", '"read", "create", "update", "patch", "delete"'))
    decision = decide(rbac, "GET", "/a", claims={**TOKEN, "sub": "actx:team-1:role:x"})
    assert not decision.allowed and decision.roles == () and decision.policy is None
    assert "no role matches the token" in decision.reason and "'actx:team-1:role:x'" in decision.reason


# --- methods -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "capability"),
    [
        ("GET", "read"),
        ("HEAD", "read"),
        ("POST", "create"),
        ("PUT", "update"),
        ("PATCH", "patch"),
        ("DELETE", "delete"),
    ],
)
def test_method_maps_to_one_capability(method: str, capability: str) -> None:
    every = ("read", "create", "update", "patch", "delete")
    assert decide(rbac_of(rule("/a", f'"{capability}"')), method, "/a").allowed
    others = ", ".join(f'"{c}"' for c in every if c != capability)
    assert not decide(rbac_of(rule("/a", others)), method, "/a").allowed


@pytest.mark.parametrize("method", ["OPTIONS", "TRACE", "CONNECT", "LIST", "get", "Get", "", "GET "])
def test_other_methods_are_denied(method: str) -> None:
    rbac = rbac_of(rule("/*", '"read", "create", "update", "patch", "delete"'))
    decision = decide(rbac, method, "/a")
    assert not decision.allowed and "maps to no capability" in decision.reason


# --- paths ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("/a/b", "/a/b", True),
        ("/a/b", "/a/b/c", False),
        ("/a/b", "/a", False),
        ("/a/b", "/A/b", False),
        ("/a/+", "/a/b", True),
        ("/a/+", "/a/b/c", False),
        ("/a/+", "/a", False),
        ("/a/+/c", "/a/b/c", True),
        ("/a/+/c", "/a/c", False),
        ("/a/+/c", "/a/b/x/c", False),
        ("/a/+/c", "/a/b%2Fx/c", False),
        ("/+", "/anything", True),
        ("/a/*", "/a/b", True),
        ("/a/*", "/a/b/c/d", True),
        ("/a/*", "/a", False),
        ("/a/*", "/ab", False),
        ("/a/*", "/ab/c", False),
        ("/*", "/x", True),
        ("/a/+/*", "/a/b/c", True),
        ("/a/+/*", "/a/b", False),
        ("/v2/x", "/v2/x/", False),
        ("/v2/*", "/v2/x/", False),
        ("/v2/*", "/v2//x", False),
        ("/v2/*", "/v2/./x", False),
        ("/v2/*", "/v2/../x", False),
        ("/v2/*", "/v2/x/..", False),
        ("/v2/*", "v2/x", False),
        ("/v2/*", "", False),
        ("/v2/*", "/v2/x?y=1", False),
        ("/v2/*", "/v2/x#f", False),
        ("/v2/*", "/v2/%78", False),
    ],
)
def test_path_patterns(pattern: str, path: str, matches: bool) -> None:
    decision = decide(rbac_of(rule(pattern)), "GET", path)
    assert decision.allowed is matches, decision.reason


def test_non_canonical_path_is_explained() -> None:
    decision = decide(rbac_of(rule("/*")), "GET", "/v2//droplets")
    assert not decision.allowed and "not canonical" in decision.reason


def test_vault_precedence_order() -> None:
    def key(pattern: str) -> Any:
        return parse_path_pattern(pattern).priority

    # 1. the later the first wildcard, the higher; no wildcard is highest
    assert key("/v2/spaces/*") > key("/v2/+/keys")
    assert key("/v2/spaces/keys") > key("/v2/spaces/+")
    # 2. not ending in * beats ending in *
    assert key("/v2/spaces/+") > key("/v2/spaces/*")
    # 3. fewer + segments
    assert key("/a/+/c") > key("/a/+/+")
    # 4. longer
    assert key("/a/+/c/*") > key("/a/+/*")
    # 5. lexicographically larger
    assert key("/+/x/+") > key("/+/+/y")


def test_most_specific_rule_of_a_policy_applies_alone() -> None:
    rbac = rbac_of(
        rule("/v2/spaces/keys/*", '"delete"') + rule("/v2/spaces/keys/+", '"read"') + rule("/v2/*", '"deny"')
    )
    denied = decide(rbac, "DELETE", "/v2/spaces/keys/k")
    assert not denied.allowed and denied.rule == "/v2/spaces/keys/+" and "grants only read" in denied.reason
    assert decide(rbac, "GET", "/v2/spaces/keys/k").allowed
    assert decide(rbac, "DELETE", "/v2/spaces/keys/k/x").allowed
    explicit = decide(rbac, "GET", "/v2/spaces")
    assert not explicit.allowed and explicit.rule == "/v2/*" and "deny capability" in explicit.reason


def test_a_policy_can_carve_exceptions_both_ways() -> None:
    carve_out_deny = rbac_of(rule("/v2/*") + rule("/v2/account", '"deny"'))
    assert decide(carve_out_deny, "GET", "/v2/droplets").allowed
    assert not decide(carve_out_deny, "GET", "/v2/account").allowed
    assert decide(carve_out_deny, "GET", "/v2/account/keys").allowed  # exact patterns do not cover sub-paths
    carve_out_allow = rbac_of(rule("/v2/*", '"deny"') + rule("/v2/droplets"))
    assert decide(carve_out_allow, "GET", "/v2/droplets").allowed
    assert not decide(carve_out_allow, "GET", "/v2/account").allowed


@pytest.mark.parametrize(
    ("rules", "path", "winner"),
    [
        ((rule("/v2/+/keys", '"deny"'), rule("/v2/spaces/*")), "/v2/spaces/keys", "/v2/spaces/*"),
        ((rule("/a/+/+", '"deny"'), rule("/a/+/c")), "/a/b/c", "/a/+/c"),
        ((rule("/a/+/*", '"deny"'), rule("/a/+/c/*")), "/a/b/c/d", "/a/+/c/*"),
        ((rule("/+/+/y", '"deny"'), rule("/+/x/+")), "/q/x/y", "/+/x/+"),
        ((rule("/a/*", '"deny"'), rule("/a/+")), "/a/b", "/a/+"),
    ],
)
def test_precedence_decides_which_rule_applies(rules: tuple[str, str], path: str, winner: str) -> None:
    for ordering in (rules, rules[::-1]):
        decision = decide(rbac_of("".join(ordering)), "GET", path)
        assert decision.allowed and decision.rule == winner


def test_explicit_deny_in_any_policy_wins() -> None:
    rbac = rbac_of(rule("/v2/*", '"read", "create"'), rule("/v2/account", '"deny"'))
    decision = decide(rbac, "GET", "/v2/account")
    assert not decision.allowed and decision.policy == "p1" and decision.rule == "/v2/account"
    assert decide(rbac, "GET", "/v2/droplets").allowed


def test_deny_that_is_not_the_most_specific_rule_of_its_policy_does_not_apply() -> None:
    rbac = rbac_of(rule("/v2/*"), rule("/v2/*", '"deny"') + rule("/v2/droplets", '"create"'))
    decision = decide(rbac, "GET", "/v2/droplets")
    assert decision.allowed and decision.policy == "p0"


def test_one_allowing_policy_is_enough() -> None:
    rbac = rbac_of(rule("/v2/x", '"create"'), rule("/v2/x", '"read"'))
    decision = decide(rbac, "GET", "/v2/x")
    assert decision.allowed and decision.policy == "p1"


def test_denial_explains_a_parameter_failure_before_a_missing_capability() -> None:
    params_rule = rule("/v2/x", '"create"', ' allowed_parameters = { "a" = "1" }\n')
    rbac = rbac_of(rule("/v2/x", '"read"'), params_rule)
    decision = decide(rbac, "POST", "/v2/x", {"a": "2"})
    assert not decision.allowed and decision.policy == "p1" and "a '2' is not one of ['1']" in decision.reason


def test_no_applicable_rule() -> None:
    decision = decide(rbac_of(rule("/v2/x")), "GET", "/v2/y")
    assert not decision.allowed and decision.rule is None and "no rule" in decision.reason


def test_policy_shared_by_two_roles_and_unmatched_roles_policies() -> None:
    files = {
        "policies/shared.hcl": rule("/a").encode(),
        "policies/other.hcl": rule("/b").encode(),
        "roles/one.hcl": f'role "one" {{\n aud = "{AUD}"\n sub = "s"\n policies = ["shared"]\n}}\n'.encode(),
        "roles/two.hcl": f'role "two" {{\n aud = "{AUD}"\n sub = "s"\n policies = ["shared"]\n}}\n'.encode(),
        "roles/three.hcl": f'role "three" {{\n aud = "{AUD}"\n sub = "t"\n policies = ["other"]\n}}\n'.encode(),
    }
    rbac = CompiledRbac.from_dict(compile_tree(files, api="DigitalOcean", actx=ACTX))
    claims = {"iss": THIS, "aud": AUD, "sub": "s"}
    decision = rbac.authorize(claims, THIS, "GET", "/a", {})
    assert decision.allowed and decision.roles == ("one", "two")
    assert not rbac.authorize(claims, THIS, "GET", "/b", {}).allowed


# --- parameters --------------------------------------------------------------------------------


def params_rbac(allowed: str, capabilities: str = '"create"') -> CompiledRbac:
    return rbac_of(rule("/x", capabilities, f" allowed_parameters = {allowed}\n"))


def check(allowed: str, params: dict[str, Any]) -> Decision:
    return decide(params_rbac(allowed), "POST", "/x", params)


@pytest.mark.parametrize(
    ("pattern", "value", "allowed"),
    [
        ("300", 300, True),
        ("300", "300", False),
        ("300", 300.0, False),
        ("300", True, False),
        ("1", True, False),
        ("true", True, True),
        ("true", 1, False),
        ("true", "true", False),
        ("false", 0, False),
        ("false", None, False),
        ("false", "", False),
        ("1.5", 1.5, True),
        ("2.0", 2, True),
        ("-1", -1, True),
        ("-1", 1, False),
        ('"111"', 111, False),
        ('"111"', "111", True),
        ('"111"', ["111"], False),
        ('"111"', {"a": "111"}, False),
        ('"111"', None, False),
        ('"a?c"', "abc", False),
        ('"a?c"', "a?c", True),
        ('"[ab]"', "a", False),
        ('"[ab]"', "[ab]", True),
        ('"a.c"', "abc", False),
        ('"^a$"', "a", False),
        ('"a\\\\d"', "a1", False),
        ('"a\\\\d"', "a\\d", True),
        ('"bucket-*"', "xbucket-1", False),
        ('"bucket-*"', "bucket-", True),
        ('"bucket-*"', "bucket-1\nx", True),
        ('"*-read"', "x-read-y", False),
        ('"*-read"', "-read", True),
        ('"a*b*c"', "abc", True),
        ('"a*b*c"', "aXbYc", True),
        ('"a*b*c"', "acb", False),
        ('"a*a"', "a", False),
        ('"a*a"', "aa", True),
        ('"*"', "", True),
        ('"*"', 5, False),
        ('"*"', ["x"], False),
        ('"**"', "anything", True),
        ('""', "", True),
        ('""', "x", False),
        ('["a", "b*"]', "bz", True),
        ('["a", "b*"]', "c", False),
        ('["a", "b"]', ["a", "b", "a"], True),
        ('["a", "b"]', ["a", "c"], False),
        ('["a", "b"]', [], False),
        ('["a", "b"]', [["a"]], False),
        ('["a", 1]', 1, True),
        ('["a", 1]', "1", False),
        ("[]", None, True),
        ("[]", {"deep": [1, {"x": None}]}, True),
        ("[]", "", True),
    ],
)
def test_scalar_patterns_are_type_strict_anchored_globs(pattern: str, value: Any, allowed: bool) -> None:
    decision = check(f'{{ "k" = {pattern} }}', {"k": value})
    assert decision.allowed is allowed, decision.reason
    if not allowed:
        assert decision.reason.startswith("policy 'p0' denies create on /x: k")


def test_listed_keys_are_required_and_unlisted_ones_denied() -> None:
    allowed = '{ "a" = [] \n "b" = [] }'
    assert check(allowed, {"a": 1, "b": 2}).allowed
    assert "required parameter b is missing" in check(allowed, {"a": 1}).reason
    assert "parameter c is not allowed" in check(allowed, {"a": 1, "b": 2, "c": 3}).reason
    assert "parameter A is not allowed" in check(allowed, {"A": 1, "b": 2}).reason
    assert not check(allowed, {"a": 1, "b": 2, "?": {"x": "1"}}).allowed


def test_star_key_allows_other_keys_but_listed_ones_still_apply() -> None:
    allowed = '{ "a" = "1" \n "*" = [] }'
    assert check(allowed, {"a": "1", "anything": {"x": 1}, "?": {"q": "1"}}).allowed
    assert not check(allowed, {"a": "2", "b": 1}).allowed
    assert not check(allowed, {"b": 1}).allowed


def test_empty_allowed_parameters_allow_no_parameters_and_absent_allows_any() -> None:
    assert check("{}", {}).allowed
    assert "parameter x is not allowed" in check("{}", {"x": 1}).reason
    assert "parameter ? is not allowed" in check("{}", {"?": {"x": "1"}}).reason
    assert decide(rbac_of(rule("/x", '"create"')), "POST", "/x", {"x": [1, {"y": 2}], "?": {"z": "1"}}).allowed


def test_list_of_objects() -> None:
    allowed = (
        '{ "grants" = [ { "bucket" = "1", "permission" = "read" },'
        ' { "bucket" = "2", "permission" = ["read", "write"] } ] }'
    )
    ok = {"grants": [{"bucket": "1", "permission": "read"}, {"bucket": "2", "permission": "write"}]}
    assert check(allowed, ok).allowed
    bad = check(allowed, {"grants": [{"bucket": "1", "permission": "write"}]})
    assert not bad.allowed
    assert "grants[0] matches none of the 2 allowed objects" in bad.reason
    assert "grants[0].permission 'write' is not one of ['read']" in bad.reason
    assert "grants[0].bucket '1' is not one of ['2']" in bad.reason
    assert not check(allowed, {"grants": []}).allowed
    assert not check(allowed, {"grants": [ok["grants"][0], None]}).allowed
    assert not check(allowed, {"grants": ok["grants"][0]}).allowed


def test_nested_objects_are_matched_recursively() -> None:
    allowed = '{ "spec" = { "size" = "s-1vcpu-*" \n "tags" = ["a", "b"] \n "meta" = { "*" = [] } } }'
    good = {"spec": {"size": "s-1vcpu-1gb", "tags": ["a"], "meta": {"x": 1}}}
    assert check(allowed, good).allowed
    assert "spec.size 'm-2vcpu' does not match" in check(allowed, {"spec": {**good["spec"], "size": "m-2vcpu"}}).reason
    assert "parameter spec.extra is not allowed" in check(allowed, {"spec": {**good["spec"], "extra": 1}}).reason
    assert "spec 'x' (a string) is not an object" in check(allowed, {"spec": "x"}).reason
    assert "spec.meta [] (a list) is not an object" in check(allowed, {"spec": {**good["spec"], "meta": []}}).reason


def test_query_parameters() -> None:
    allowed = '{ "?" = { "tag" = ["a", "b"] \n "page" = "*" } }'
    rbac = params_rbac(allowed, '"read"')

    def get(query: str) -> Decision:
        return decide(rbac, "GET", "/x", request_parameters(query, None))

    assert get("tag=a&page=2").allowed
    assert get("tag=a&tag=b&page=").allowed
    assert not get("tag=a&tag=c&page=1").allowed
    assert not get("tag=a").allowed
    assert not get("tag=a&page=1&x=1").allowed
    assert not get("tag=a&page=1&page=2").allowed  # a repeated key is a list; "*" is a single-value pattern
    assert decide(params_rbac('{ "?" = [] }', '"read"'), "GET", "/x", request_parameters("a=1&b=2", None)).allowed


def test_linear_glob_matching_on_hostile_input() -> None:
    pattern = "a*" * 200 + "b"
    glob = Glob(pattern)
    assert not glob.matches("a" * 200_000)
    assert glob.matches("a" * 200_000 + "b")
    decision = check(f'{{ "k" = "{pattern}" }}', {"k": "a" * 100_000})
    assert not decision.allowed and "..." in decision.reason and len(decision.reason) < 1000


def test_values_are_never_patterns() -> None:
    assert not check('{ "k" = "abc" }', {"k": "*"}).allowed
    assert not check('{ "k" = "abc" }', {"k": "a*"}).allowed
    assert not check('{ "k" = ["abc"] }', {"k": ["*"]}).allowed


# --- denied_parameters -------------------------------------------------------------------------


def denied_rbac(denied: str, allowed: str = "") -> CompiledRbac:
    body = f" denied_parameters = {denied}\n" + (f" allowed_parameters = {allowed}\n" if allowed else "")
    return rbac_of(rule("/x", '"create", "read"', body))


def test_denied_parameters() -> None:
    rbac = denied_rbac('{ "user_data" = [] \n "size" = ["s-8vcpu-*", "g-*"] \n "?" = { "force" = [] } }')
    assert decide(rbac, "POST", "/x", {"size": "s-1vcpu-1gb", "name": "x"}).allowed
    for params, reason in (
        ({"user_data": "#!/bin/sh"}, "parameter user_data is denied"),
        ({"User_Data": "x"}, "parameter User_Data is denied"),
        ({"user_data": None}, "parameter user_data is denied"),
        ({"size": "s-8vcpu-16gb"}, "size 's-8vcpu-16gb' matches denied_parameters ['s-8vcpu-*', 'g-*']"),
        ({"size": ["s-1vcpu-1gb", "g-2vcpu"]}, "size[1] 'g-2vcpu' matches"),
        ({"size": 8}, "size 8 is a number, not a value of the type denied_parameters lists"),
        ({"size": {"slug": "g-1"}}, "is an object"),
        ({"?": {"force": "true"}}, "parameter ?.force is denied"),
    ):
        decision = decide(rbac, "POST", "/x", params)
        assert not decision.allowed and reason in decision.reason, (params, decision.reason)


def test_denied_star_denies_any_parameter() -> None:
    rbac = denied_rbac('{ "*" = [] }')
    assert decide(rbac, "GET", "/x").allowed
    assert not decide(rbac, "GET", "/x", {"?": {"a": "1"}}).allowed


def test_denied_parameters_veto_other_policies_for_the_capability_they_grant() -> None:
    rbac = rbac_of(
        rule("/x", '"create"'),
        rule("/x", '"create"', ' denied_parameters = { "admin" = [] }\n'),
        rule("/x", '"read"', ' denied_parameters = { "*" = [] }\n'),
    )
    assert decide(rbac, "POST", "/x", {"name": "n"}).allowed
    decision = decide(rbac, "POST", "/x", {"admin": True})
    assert not decision.allowed and decision.policy == "p1"
    assert decide(rbac, "GET", "/x").allowed  # p2's denied "*" applies to read only; no parameters given


def test_denied_and_allowed_parameters_together() -> None:
    rbac = denied_rbac('{ "name" = "root*" }', '{ "name" = "*" }')
    assert decide(rbac, "POST", "/x", {"name": "web"}).allowed
    assert not decide(rbac, "POST", "/x", {"name": "root-1"}).allowed


# --- request parameters ------------------------------------------------------------------------


def test_request_parameters_merge_body_and_query() -> None:
    params = request_parameters("a=1&b=&a=2&c=x+y&d=%41%2F", b'{"k": [1, {"n": null}], "f": 1.5}')
    assert params == {"k": [1, {"n": None}], "f": 1.5, "?": {"a": ["1", "2"], "b": "", "c": "x y", "d": "A/"}}
    assert request_parameters("", None) == {}
    assert request_parameters("", b"") == {}
    assert request_parameters("&&", None) == {}


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": 1, "a": 2}',
        b'{"a": {"b": 1, "b": 1}}',
        b'{"grants": [{"bucket": "111", "bucket": "222"}]}',
        b'{"name": "ok", "NAME": "evil"}',
        b'{"kind": 1, "\\u212aind": 2}',  # Kelvin sign: Go's case folding treats it as k
        b'{"?": {"tag_name": "my-tag"}}',
        b"[]",
        b'"x"',
        b"null",
        b"   ",
        b"{",
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"a": -Infinity}',
        b'{"a": 1e400}',
        b'{"a": ' + b"9" * 5000 + b"}",
        b"\xff\xfe{}",
        b'{"a": "\xff"}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a": 1} {"b": 2}',
    ],
)
def test_malformed_or_ambiguous_bodies_are_rejected(body: bytes) -> None:
    with pytest.raises(ParameterError):
        request_parameters("", body)


def test_malformed_query_is_rejected() -> None:
    with pytest.raises(ParameterError):
        request_parameters("a=%ff", None)


def test_evaluator_imports_only_the_standard_library() -> None:
    code = (
        "import sys, sysconfig\n"
        "before = set(sys.modules)\n"
        "import wid.core.policy.engine\n"
        "site = sysconfig.get_paths()['purelib']\n"
        "bad = sorted(n for n in set(sys.modules) - before if n.split('.')[0] != 'wid'"
        " and (getattr(sys.modules[n], '__file__', None) or '').startswith(site))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_fast_path_agrees_with_the_explanation() -> None:
    """ok() decides, check() explains: they must agree on every input."""
    specs = [
        {"k": "a*b"},
        {"k": ["x", 1, True, 1.5]},
        {"k": []},
        {"k": {"n": "1", "*": []}},
        {"k": [{"a": "1"}, {"b": ["2", "3"]}]},
        {"k": "x", "*": []},
        {"?": {"q": ["1", "2"]}},
        {"?": []},
        {},
    ]
    denied_specs = [{"k": []}, {"k": ["x*", 2]}, {"k": {"n": []}}, {"*": []}, {"?": {"q": "1"}}]
    values: list[Any] = [
        "ab",
        "aXb",
        "x",
        1,
        True,
        1.5,
        2,
        None,
        [],
        ["x"],
        ["x", "y"],
        [1, True],
        {},
        {"n": "1"},
        {"n": "1", "m": 2},
        {"n": 1},
        [{"a": "1"}],
        [{"b": "3"}, {"a": "1"}],
        [{"a": "2"}],
        [{}],
    ]
    corpus: list[dict[str, Any]] = [{}, {"other": 1}, {"?": {"q": "1"}}, {"?": {"q": ["1", "2"]}}, {"?": {"q": "3"}}]
    corpus += [{"k": value} for value in values] + [{"K": value} for value in values[:4]]
    for spec in specs:
        matcher = build_allowed(spec)
        for params in corpus:
            assert matcher.ok(params) is (matcher.check(params, "") is None), (spec, params)
    for spec in denied_specs:
        matcher = build_denied(spec)
        for params in corpus:
            assert matcher.ok(params) is (matcher.check(params, "") is None), (spec, params)


# --- does the allowing rule restrict parameters (the exchange's extra claims depend on it) ----------


@pytest.mark.parametrize(("allowed", "restricts"), [
    ("", False),  # no allowed_parameters: any parameter
    ('  allowed_parameters = {\n    "a" = "x"\n    "*" = []\n  }\n', False),  # "*": any other parameter
    ('  allowed_parameters = {\n    "a" = "x"\n  }\n', True),
])
def test_decision_says_whether_the_allowing_rule_restricts_parameters(allowed: str, restricts: bool) -> None:
    decision = decide(rbac_of(rule("/v2/x", '"create"', allowed)), "POST", "/v2/x", {"a": "x"})
    assert decision.allowed
    assert decision.restricts_parameters is restricts
    if not restricts:
        assert decision.unrestricted_by == ("policy 'p0' allows any parameters for create on /v2/x "
                                            "(rule \"/v2/x\", role 'r')")


def test_a_second_rule_allowing_any_parameter_makes_the_decision_unrestricted() -> None:
    named = rule("/v2/x", '"create"', '  allowed_parameters = {\n    "a" = "x"\n  }\n')
    decision = decide(rbac_of(named, rule("/v2/x", '"create"')), "POST", "/v2/x", {"a": "x"})
    assert decision.allowed and decision.policy == "p0"
    assert not decision.restricts_parameters
    assert decision.unrestricted_by is not None and "policy 'p1'" in decision.unrestricted_by
    # A refusal restricts nothing: it allows nothing.
    assert not decide(rbac_of(named), "POST", "/v2/x", {"a": "y"}).restricts_parameters

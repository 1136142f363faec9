"""Fuzz policy evaluation (wid.core.policy.engine and .params) against the reference in policy_reference.py:
the fast evaluator decides exactly as the plain reading of docs/policies.md does, and where our reading
of a request could differ from the upstream's (the query string), it never allows what the upstream's
reading would deny. Only ParameterError (a 400) escapes from reading a request."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzz import policy_reference as ref
from tests.fuzz.budget import scaled
from tests.fuzz.rbac_strategies import (
    AUD,
    TEAM,
    THIS_ISSUER,
    allowed_specs,
    bodies,
    configs,
    denied_specs,
    methods,
    param_values,
    patterns,
    queries,
    request_paths,
    token_claims,
)
from wid.core.policy.allowed_params import build_allowed
from wid.core.policy.denied_params import build_denied
from wid.core.policy.engine import CompiledRbac, ParameterError, parse_path_pattern, request_parameters
from wid.core.policy.params import Glob


@scaled(4)
@given(st.text("a*b", max_size=6), st.text("ab", max_size=8))
@example("", "a")  # found: Glob("") matched everything and Glob("ab") matched "abab" (unused so: no '*')
@example("ab", "abab")
def test_glob_matches_as_backtracking_does(pattern: str, text: str) -> None:
    if "*" not in pattern:  # a plain string is compared as one (_Scalars.strings), never as a glob
        with pytest.raises(ValueError, match="has no"):
            Glob(pattern)
        return
    assert Glob(pattern).matches(text) == ref.glob_match(pattern, text)


@scaled(4)
@given(patterns, request_paths)
def test_path_patterns_match_as_segments_do(pattern: str, path: str) -> None:
    rbac = CompiledRbac.from_dict({
        "version": 1, "api": "A", "actx": "x", "roles": {"r": {"aud": "a", "sub": "s", "policies": ["p"]}},
        "policies": {"p": {"rules": [{"path": pattern, "capabilities": ["read"]}]}}})
    decision = rbac.authorize({"iss": THIS_ISSUER, "aud": "a", "sub": "s"}, THIS_ISSUER, "GET", path, {})
    assert decision.allowed == ref.path_matches(pattern, path)
    parse_path_pattern(pattern)


@scaled(3)
@given(allowed_specs(), param_values)
def test_allowed_parameters_accept_exactly_what_the_table_says(spec: dict[str, Any], value: Any) -> None:
    matcher = build_allowed(spec)
    for params in (value, {"a": value}, {"a": value, "b": [value]}):
        assert matcher.ok(params) == ref.allowed_object(spec, params)
        assert (matcher.check(params, "") is None) == matcher.ok(params)


@scaled(3)
@given(denied_specs(), param_values)
def test_denied_parameters_deny_exactly_what_the_list_says(spec: dict[str, Any], value: Any) -> None:
    matcher = build_denied(spec)
    for params in (value, {"a": value}, {"A": value, "b": [value]}):
        assert matcher.ok(params) == (not ref.denied_object(spec, params))
        assert (matcher.check(params, "") is None) == matcher.ok(params)


@scaled(4)
@given(queries, bodies)
@example(";", b"")  # found: parse_qsl read ";" as a key; Go drops the pair
@example("a=ab;b", b"")
@example("tag_name=mine%zz", b"")
def test_request_parameters_raise_only_parameter_error(query: str, body: bytes) -> None:
    try:
        params = request_parameters(query, body)
    except ParameterError as exc:
        assert str(exc)
        return
    assert isinstance(params, dict)
    if query:
        assert params.get("?", {}) == ref.go_query(query), "the policy would check another query than Go reads"


_ROLE: dict[str, Any] = {"iss": None, "aud": AUD, "sub": "s1", "claims": {}, "policies": ["p"], "source": "r:1"}
_TAGGED = {"path": "/v2", "capabilities": ["read"], "allowed_parameters": {"?": {"a": "a*"}}, "source": "p:1"}
TAGGED_ONLY = {"version": 1, "api": "DigitalOcean", "actx": TEAM, "issuer": None, "roles": {"r": _ROLE},
               "policies": {"p": {"source": "policies/p.hcl", "rules": [_TAGGED]}}, "warnings": []}


@scaled(4)
@given(configs(), token_claims, methods, request_paths, queries, bodies)
# found: allowed as a = "ab;b", while Go drops the pair and lists everything, unfiltered
@example(TAGGED_ONLY, {"iss": THIS_ISSUER, "aud": AUD, "sub": "s1"}, "GET", "/v2", "a=ab;b", b"")
@example(TAGGED_ONLY, {"iss": THIS_ISSUER, "aud": AUD, "sub": "s1"}, "GET", "/v2", "a=a%zz", b"")
def test_a_rule_never_allows_what_its_plain_reading_denies(
        config: dict[str, Any], claims: dict[str, Any], method: str, path: str, query: str, body: bytes) -> None:
    rbac = CompiledRbac.from_dict(config)
    try:
        params = request_parameters(query, body)
    except ParameterError:
        return  # refused with 400 before any policy runs
    upstream = dict(params)
    upstream.pop("?", None)
    if ref.go_query(query):
        upstream["?"] = ref.go_query(query)
    decision = rbac.authorize(claims, THIS_ISSUER, method, path, params)
    verdict = ref.decide(config, claims, THIS_ISSUER, method, path, upstream)
    if decision.allowed:
        assert verdict.allowed, f"allowed, but the plain reading denies: {decision.reason}"
        assert decision.rule in verdict.allowing
    elif upstream == params:
        assert not verdict.allowed, f"denied, but the plain reading allows: {decision.reason}"

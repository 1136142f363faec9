"""Generators of policies (compiled form), tokens and requests over small alphabets, so that patterns,
globs and keys collide often: most interesting cases are near-misses."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

THIS_ISSUER = "https://wid.example.test"
OTHER_ISSUER = "https://token.actions.githubusercontent.com"
TEAM = "f81d4fae-7dec-11d0-a765-00a0c91e6bf6"
AUD = f"api://DigitalOcean?actx={TEAM}"

SEGMENTS = ["a", "b", "v2"]
KEYS = ["a", "b", "A", "ab", "\u212a", "k"]
GLOBS = ["a", "a*", "*a", "*", "a*b", "", "**", "ab", "b-*", "*b*", "a*a"]
WORDS = ["a", "ab", "b", "", "b-x", "A", "aab", "aba", "ba", "a*b"]

scalar_patterns = st.one_of(st.sampled_from(GLOBS), st.sampled_from([0, 1, 300, -1]),
                            st.sampled_from([1.5, 300.0, 0.0]), st.booleans())
_STRINGS = st.one_of(st.sampled_from(GLOBS), st.lists(st.sampled_from(GLOBS), min_size=1, max_size=3))


def unique_folded(spec: dict[str, Any]) -> dict[str, Any]:
    """spec without the keys that repeat an earlier one but for case (denied_parameters refuses those)."""
    seen: set[str] = set()
    kept = {}
    for key, value in spec.items():
        if key.casefold() not in seen:
            seen.add(key.casefold())
            kept[key] = value
    return kept


def _objects(values: st.SearchStrategy[Any], top: st.SearchStrategy[Any] | None, folded: bool) -> Any:
    entries = st.dictionaries(st.sampled_from(KEYS), values, max_size=3)
    if folded:
        entries = entries.map(unique_folded)

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        spec = draw(entries)
        if draw(st.booleans()) and draw(st.booleans()):
            spec["*"] = []
        if top is not None and draw(st.booleans()):
            spec["?"] = draw(top)
        return spec

    return build()


def allowed_specs(depth: int = 2, top: bool = True) -> Any:
    leaf: st.SearchStrategy[Any] = st.one_of(
        scalar_patterns, st.lists(scalar_patterns, min_size=1, max_size=3), st.just([]))
    values = leaf if depth == 0 else st.one_of(
        leaf, allowed_specs(depth - 1, False), st.lists(allowed_specs(depth - 1, False), min_size=1, max_size=2))
    query: st.SearchStrategy[Any] = st.one_of(
        st.just([]), st.dictionaries(st.sampled_from(KEYS), st.one_of(_STRINGS, st.just([])), max_size=2))
    return _objects(values, query if top else None, folded=False)


def denied_specs(depth: int = 2, top: bool = True) -> Any:
    leaf: st.SearchStrategy[Any] = st.one_of(
        st.just([]), scalar_patterns, st.lists(scalar_patterns, min_size=1, max_size=3))
    values = leaf if depth == 0 else st.one_of(leaf, denied_specs(depth - 1, False))
    query_values = st.dictionaries(st.sampled_from(KEYS), st.one_of(st.just([]), _STRINGS), max_size=2).map(
        unique_folded)
    return _objects(values, st.one_of(st.just([]), query_values) if top else None, folded=True)


patterns = st.builds(
    lambda segments, star: "/" + "/".join(segments + (["*"] if star else [])),
    st.lists(st.sampled_from([*SEGMENTS, "+"]), min_size=1, max_size=3), st.booleans())
capabilities = st.lists(st.sampled_from(["create", "read", "update", "patch", "delete", "deny"]),
                        min_size=1, max_size=3, unique=True)


@st.composite
def rules(draw: st.DrawFn, path: str) -> dict[str, Any]:
    rule: dict[str, Any] = {"path": path, "capabilities": sorted(draw(capabilities)), "source": "policies/p.hcl:1"}
    if "deny" not in rule["capabilities"]:
        if draw(st.booleans()):
            rule["allowed_parameters"] = draw(allowed_specs())
        if draw(st.booleans()) and draw(st.booleans()):
            rule["denied_parameters"] = draw(denied_specs())
    return rule


@st.composite
def policies(draw: st.DrawFn) -> dict[str, Any]:
    paths = draw(st.lists(patterns, min_size=1, max_size=4, unique=True))
    return {"source": "policies/p.hcl", "rules": [draw(rules(path)) for path in paths]}


_ROLE_TOKEN = {"iss": st.sampled_from([None, None, OTHER_ISSUER]), "aud": st.sampled_from([AUD, AUD, "api://X?actx=y"]),
               "sub": st.sampled_from(["s1", "s1", "s2"])}


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(st.sampled_from(["p", "q", "r"]), min_size=1, max_size=3, unique=True))
    roles = {}
    for index in range(draw(st.integers(1, 3))):
        role: dict[str, Any] = {field: draw(values) for field, values in _ROLE_TOKEN.items()}
        role["claims"] = draw(st.sampled_from([{}, {"x": "1"}]))
        role["policies"] = draw(st.lists(st.sampled_from(names), min_size=1, unique=True))
        role["source"] = "roles/r.hcl:1"
        roles[f"role{index}"] = role
    return {"version": 1, "api": "DigitalOcean", "actx": TEAM, "issuer": None, "roles": roles,
            "policies": {name: draw(policies()) for name in names}, "warnings": []}


token_claims = st.fixed_dictionaries(
    {"iss": st.sampled_from([THIS_ISSUER, THIS_ISSUER, OTHER_ISSUER, ""]), "aud": st.sampled_from([AUD, AUD, [AUD]]),
     "sub": st.sampled_from(["s1", "s1", "s2"])},
    optional={"x": st.sampled_from(["1", 1, "2"])})

methods = st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "get"])
request_paths = st.one_of(
    st.lists(st.sampled_from([*SEGMENTS, "c"]), min_size=1, max_size=4).map(lambda s: "/" + "/".join(s)),
    st.lists(st.sampled_from([*SEGMENTS, "", ".", "..", "a%2fb", "+", "*"]), min_size=1, max_size=4).map(
        lambda s: "/" + "/".join(s)),
    st.sampled_from(["", "a", "/a/", "/a?b"]))

param_values = st.recursive(
    st.one_of(st.sampled_from(WORDS), st.sampled_from([0, 1, 300, -1, 2]), st.sampled_from([1.5, 300.0, 0.0, 2.0]),
              st.booleans(), st.none()),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from(KEYS), inner, max_size=3).map(unique_folded)),
    max_leaves=8)
bodies = st.one_of(
    st.just(b""),
    st.dictionaries(st.sampled_from(KEYS), param_values, max_size=3).map(lambda d: json.dumps(d).encode()),
    st.sampled_from([b"[]", b'{"a": 1, "A": 2}', b'{"?": 1}', b"{", b'"a"']))
_QUERY_PIECES = st.one_of(
    st.tuples(st.sampled_from([*KEYS, "", "a+b", "%61", "a%zz", "%"]),
              st.sampled_from(["", "=", "=a", "=ab", "=b-x", "=a%2A", "=a;b=c", "=%", "=a%zz", "=%E2%84%AA", "=%ff"]))
    .map("".join),
    st.sampled_from(["", ";", "a;b", "a=ab;b"]))
queries = st.lists(_QUERY_PIECES, max_size=3).map("&".join)

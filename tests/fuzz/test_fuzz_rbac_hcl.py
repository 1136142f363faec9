"""Fuzz the RBAC HCL reader and compiler (wid.core.rbac.hcl and .compiler): only HclError / CompileError
escape, whatever compiles is valid against rbac-schema/rbac.schema.json and loads in the evaluator, and
a policy written as HCL compiles to exactly the data it spells (strings, escapes, numbers, nesting)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzz.budget import scaled
from tests.fuzz.rbac_strategies import TEAM, capabilities, patterns
from tests.fuzz.strategies import mutated
from wid.core.rbac.compiler import CompileError, compile_tree
from wid.core.rbac.hcl import HclError, read

SCHEMA = json.loads((Path(__file__).parents[2] / "rbac-schema" / "rbac.schema.json").read_text())
EXAMPLES = Path(__file__).parents[2] / "rbac-schema" / "examples"
ROLE = b'role "r" {\n  aud = "api://DigitalOcean?actx={actx}"\n  sub = "actx:{actx}:role:r"\n  policies = ["p"]\n}\n'

# -- HCL as a soup of its own tokens (what an attacker's push could hold) ---------------------------------

_TOKENS = ['path "/v2/x" {', 'role "r" {', "}", "{", "[", "]", "(", ")", ",", "=", ":", "?", "\n", " ", "#c\n",
           "// c\n", "/* c */", "/*", "capabilities", "allowed_parameters", "denied_parameters", '"read"', '"*"',
           '"a\\nb"', '"\\u00e9"', '"\\U0001F600"', '"\\*"', '"\\x41"', '"${x}"', '"$${x}"', '"%{if x}"', '"%%{"',
           '"\\ud800"', '"\\U00110000"', "1", "-1", "1.5", "1e400", "-", "1" * 40, "true", "null", "x", "x.y",
           "x[0]", "f(1)", "a ? b : c", "[for x in y : x]", "<<EOF\nx\nEOF\n", "<<-EOF\n  x\n  EOF\n", "...",
           "!", "&&", "\ufeff", "\r\n", '"', "\\", "\x00", "${", "é"]
hcl_soups = st.lists(st.sampled_from(_TOKENS), max_size=30).map("".join)
_EXAMPLE_TEXTS = [path.read_text() for path in sorted(EXAMPLES.rglob("*.hcl"))]
hcl_texts = st.one_of(hcl_soups, mutated(st.sampled_from(_EXAMPLE_TEXTS)), st.text(max_size=40))


@scaled(2)
@given(hcl_texts)
def test_read_raises_only_hcl_error(text: str) -> None:
    try:
        read(text, lambda s: s)
    except HclError as exc:
        assert exc.message and exc.line >= 0


@scaled(1)
@given(st.one_of(hcl_texts.map(lambda text: text.encode("utf-8", "surrogateescape")), st.binary(max_size=40)),
       st.sampled_from([ROLE, b""]))
def test_compile_raises_only_compile_error_and_emits_valid_configurations(policy: bytes, role: bytes) -> None:
    try:
        compiled = compile_tree({"policies/p.hcl": policy, "roles/r.hcl": role}, api="DigitalOcean", actx=TEAM)
    except CompileError as exc:
        assert exc.errors and all(error.startswith(("policies/p.hcl", "roles/r.hcl")) for error in exc.errors)
        return
    jsonschema.validate(json.loads(json.dumps(compiled, allow_nan=False)), SCHEMA)


# -- policies rendered as HCL compile back to the same data ----------------------------------------------

_SPECIAL = st.sampled_from(["${", "%{", "$${", "%%{", "$", "%", "\\", '"', "*", "\n", "\r", "\t", "\x00", "\x7f",
                            "\u2028", "\ufeff", "\U0001F600", "{actx}", "é", "\\u0041"])
rich_strings = st.lists(st.one_of(st.characters(codec="utf-8"), _SPECIAL), max_size=6).map("".join)
rich_keys = rich_strings.filter(lambda key: key not in ("", "*", "?"))
rich_scalars = st.one_of(rich_strings, st.integers(-(10**20), 10**20), st.booleans(),
                         st.floats(allow_nan=False, allow_infinity=False))
rich_values = st.recursive(
    st.one_of(rich_scalars, st.lists(rich_scalars, min_size=1, max_size=3)),
    lambda inner: st.dictionaries(rich_keys, inner, min_size=1, max_size=3), max_leaves=8)


def hcl_string(text: str, rng: random.Random) -> str:
    out = []
    for char in text:
        named = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char)
        if named is not None:
            out.append(named)
        elif not char.isprintable() or (char not in "${}%" and rng.random() < 0.1):
            out.append(f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08x}")
        else:
            out.append(char)
    return '"' + "".join(out).replace("${", "$${").replace("%{", "%%{") + '"'


def hcl_value(value: Any, rng: random.Random) -> str:
    gap = rng.choice([" ", "\n", " # note\n", " /* c */ "])
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return hcl_string(value, rng)
    if isinstance(value, list):
        return "[" + gap + ("," + gap).join(hcl_value(item, rng) for item in value) + gap + "]"
    entries = []
    for key, item in value.items():
        bare = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", key) and key not in ("true", "false", "null")
        name = key if bare and rng.random() < 0.5 else hcl_string(key, rng)
        entries.append(f"{name} = {hcl_value(item, rng)}")
    return "{" + gap + ("," + gap).join(entries) + gap + "}"


def substituted(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("{actx}", TEAM)
    if isinstance(value, list):
        return [substituted(item) for item in value]
    if isinstance(value, dict):
        return {substituted(key): substituted(item) for key, item in value.items()}
    return value


def strings_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [text for item in value for text in strings_in(item)]
    if isinstance(value, dict):
        return [text for key, item in value.items() for text in [key, *strings_in(item)]]
    return []


def unclosed(text: str) -> bool:
    """A ${ or %{ with no } after it in the same string: hcl2 reads its escape past the closing quote."""
    return any("}" not in text[i:] for i in range(len(text)) if text.startswith(("${", "%{"), i))


RULES = st.lists(st.tuples(patterns, capabilities.filter(lambda c: "deny" not in c),
                           st.dictionaries(rich_keys, rich_values, max_size=3)),
                 min_size=1, max_size=3, unique_by=lambda rule: rule[0])


@scaled(2)
@given(RULES, st.integers(0, 2**32))
@example([("/a", ["create"], {"w": "$${\\\x00{actx}}"})], 0)  # found: escapes after $${ were kept raw
@example([("/a", ["create"], {"a": "${", "user_data": [], "b": "}"})], 0)  # found: read as one key, see below
def test_a_policy_compiles_to_the_data_its_hcl_spells(
        rules: list[tuple[str, list[str], dict[str, Any]]], seed: int) -> None:
    rng = random.Random(seed)  # how the HCL is spelled: escapes, comments, line breaks, bare or quoted keys
    text = "".join(f'path {hcl_string(path, rng)} {{\n  capabilities = {hcl_value(caps, rng)}\n'
                   f"  allowed_parameters = {hcl_value(params, rng)}\n}}\n" for path, caps, params in rules)
    try:
        compiled = compile_tree({"policies/p.hcl": text.encode(), "roles/r.hcl": ROLE}, api="DigitalOcean", actx=TEAM)
    except CompileError as exc:
        # The one thing python-hcl2 cannot read back: refused (as a syntax error, or by the reader when the
        # escape swallowed a closing quote), never read as something else.
        assert any(unclosed(s) for s in strings_in(rules)), (text, exc.errors)
        return
    assert not any(unclosed(s) for s in strings_in(rules)), text
    got = [(rule["path"], rule["capabilities"], rule["allowed_parameters"])
           for rule in compiled["policies"]["p"]["rules"]]
    assert got == [(path, sorted(set(caps)), substituted(params)) for path, caps, params in rules], text


def test_an_escaped_interpolation_never_swallows_the_denials_after_it() -> None:
    policy = (b'path "/v2/droplets" {\n  capabilities = ["create"]\n'
              b'  denied_parameters = { "a" = "$${", "user_data" = [], "b" = "}" }\n}\n')
    # python-hcl2 reads "$${" up to the next "}": this once compiled to the one key "a" and denied nothing.
    with pytest.raises(CompileError, match='must also hold the "}"'):
        compile_tree({"policies/p.hcl": policy, "roles/r.hcl": ROLE}, api="DigitalOcean", actx=TEAM)

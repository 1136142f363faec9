"""Fuzz the strict JSON parser (wid.core.strictjson): only StrictJsonError escapes, and whatever it accepts is
the one value every conforming decoder reads (no case-folded duplicate keys, finite numbers, text that is
valid Unicode), so a policy and DigitalOcean's Go decoder never see two different requests."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzz.budget import scaled
from tests.fuzz.strategies import json_texts, json_values, mutated
from wid.core.strictjson import StrictJsonError, loads


def _walk(value: Any) -> list[Any]:
    """Every value inside value (itself included), keys of objects included."""
    out, stack = [], [value]
    while stack:
        item = stack.pop()
        out.append(item)
        if isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return out


def _assert_unambiguous(value: Any) -> None:
    for item in _walk(value):
        if isinstance(item, str):
            item.encode("utf-8")  # a lone surrogate is no character: Go reads it as U+FFFD
        elif isinstance(item, float):
            assert math.isfinite(item)
        elif isinstance(item, dict):
            assert len({key.casefold() for key in item}) == len(item), item


@scaled(4)
@given(st.one_of(json_texts, mutated(json_texts), st.text(), st.binary()))
@example('{"k": 1, "\\u212a": 2}')
@example(b'{"a": "\xff"}')
@example("[" * 3000)
@example("9" * 5000)
@example('"\\ud800"')  # found: a lone surrogate was accepted (Go reads U+FFFD; it cannot be stored)
@example('{"a\\udc00": ["\\ud83d"]}')
@example('"\ud800"')
def test_only_strict_json_error_escapes_and_what_is_accepted_is_unambiguous(data: str | bytes) -> None:
    try:
        value = loads(data)
    except StrictJsonError as exc:
        assert str(exc)
        return
    assert value == json.loads(data)
    _assert_unambiguous(value)


@scaled(2)
@given(json_values, st.booleans(), st.sampled_from([None, 0, 2]))
def test_every_plain_value_round_trips(value: Any, ascii_only: bool, indent: int | None) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only, indent=indent)
    assert loads(text) == value
    assert loads(text.encode("utf-8")) == value


_VARIANTS = [str.upper, str.lower, str.swapcase, str.title, str.casefold,
             lambda key: key.replace("k", "\u212a").replace("s", "\u017f")]


@scaled(2)
@given(st.dictionaries(st.text(min_size=1, max_size=6), json_values, min_size=1, max_size=4),
       st.data(), st.integers(0, 3))
def test_a_key_repeated_in_another_case_is_refused_at_any_depth(
        obj: dict[str, Any], data: st.DataObject, depth: int) -> None:
    key = data.draw(st.sampled_from(sorted(obj)))
    variant = data.draw(st.sampled_from(_VARIANTS))(key)
    if variant == key or variant.casefold() != key.casefold():
        variant = key  # no distinct variant: an exact repeat is refused just the same
    pairs = [*(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in obj.items()), f"{json.dumps(variant)}: null"]
    text = "{" + ", ".join(pairs) + "}"
    for _ in range(depth):
        text = data.draw(st.sampled_from(["[{}]", '{{"outer": {}}}', '[1, {}, "x"]'])).format(text)
    with pytest.raises(StrictJsonError, match="duplicate JSON key"):
        loads(text)

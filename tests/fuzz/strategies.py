"""Input generators shared by the fuzz targets: JSON as text (valid, nearly valid, hostile) and as values."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

# Escapes, valid and not: every \uXXXX (lone surrogates included), a pair, truncated ones, unknown ones.
_ESCAPES = st.one_of(
    st.sampled_from(['\\"', "\\\\", "\\/", "\\b", "\\f", "\\n", "\\r", "\\t", "\\x", "\\u12", "\\", "\\U0001F600"]),
    st.integers(0, 0xFFFF).map(lambda code: f"\\u{code:04x}"),
    st.sampled_from(["\\ud800", "\\udfff", "\\ud83d\\ude00", "\\ude00\\ud83d", "\\u0000", "\\u212a", "\\u017f"]),
)
_PLAIN = st.characters(codec="utf-8", exclude_characters='"\\')
json_string_texts = st.lists(st.one_of(_PLAIN, _ESCAPES), max_size=6).map(lambda parts: '"' + "".join(parts) + '"')

# Keys that fold onto each other (k, K, Kelvin sign; s, S, long s; ss, sharp s) besides arbitrary ones.
_FOLDING_KEYS = ["a", "A", "k", "K", "\u212a", "s", "S", "\u017f", "ss", "SS", "\u00df", "\u1e9e", "name", "NAME"]
json_key_texts = st.one_of(st.sampled_from(_FOLDING_KEYS).map(json.dumps), json_string_texts)

_NUMBER_TEXTS = st.one_of(
    st.integers().map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["1e400", "-1e400", "1e-400", "NaN", "Infinity", "-Infinity", "01", "-", "1.", ".5", "1e",
                     "0x10", "1_000", "-0", "1E2", "9" * 4301, "1" + "0" * 400 + ".0"]),
)
_SPACE = st.sampled_from(["", "", " ", "\n", "\t", "\r\n", "\u00a0", "\x0c", "\ufeff"])


def _array(items: list[str]) -> str:
    return "[" + ",".join(items) + "]"


def _object(pairs: list[tuple[str, str, str]]) -> str:
    return "{" + ",".join(f"{space}{key}:{value}" for key, space, value in pairs) + "}"


json_texts = st.recursive(
    st.one_of(json_string_texts, _NUMBER_TEXTS, st.sampled_from(["true", "false", "null", "True", "nul", "[", "}"])),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(_array),
        st.lists(st.tuples(json_key_texts, _SPACE, inner), max_size=4).map(_object),
    ),
    max_leaves=12,
)


@st.composite
def mutated(draw: st.DrawFn, texts: st.SearchStrategy[str]) -> str:
    """A text with a few characters inserted, deleted or replaced: nearly valid input."""
    text = draw(texts)
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(text)))
        edit = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(st.sampled_from(['"', "\\", "{", "}", "[", "]", ",", ":", "0", "e", "-", " ", "\x00", "\udc80"]))
        if edit == "insert":
            text = text[:at] + piece + text[at:]
        elif edit == "delete":
            text = text[:at] + text[at + 1:]
        else:
            text = text[:at] + piece + text[at + 1:]
    return text


def _casefold_unique(pairs: dict[str, Any]) -> bool:
    return len({key.casefold() for key in pairs}) == len(pairs)


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text())
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=8), inner, max_size=4).filter(_casefold_unique),
    ),
    max_leaves=16,
)

"""Parameter constraints of a policy rule (allowed_parameters, denied_parameters): the shared pieces.

Built once from the compiled form, checked on every proxied request. Standard library only, and
every check is linear in the size of the request: globs are matched without backtracking and
nothing is built from user text. The two kinds of constraint are built in allowed_params.py and
denied_params.py from the matchers and checks here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

_SIMPLE_KEY = r"[A-Za-z0-9_?-]+\Z"  # compiled at first use (re caches it)
_SHOW_CHARS = 60
_SHOW_ITEMS = 6


class ConstraintError(ValueError):
    """A malformed constraint. keys locate it inside the constraint (object keys and list indexes)."""

    def __init__(self, keys: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.keys = keys
        self.message = message


def show(value: Any) -> str:
    """A short JSON-like rendering of a value for explanations (user text is truncated)."""
    if isinstance(value, str):
        return repr(value) if len(value) <= _SHOW_CHARS else repr(value[:_SHOW_CHARS]) + "..."
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list):
        items = [show(item) for item in value[:_SHOW_ITEMS]]
        return "[" + ", ".join(items) + (", ...]" if len(value) > _SHOW_ITEMS else "]")
    if isinstance(value, dict):
        return "{...}"
    return repr(value)


def type_name(value: Any) -> str:
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "null"


def child(where: str, key: str) -> str:
    """The display name of key inside where: name, grants[0].bucket, ?.tag_name."""
    if re.match(_SIMPLE_KEY, key):
        return f"{where}.{key}" if where else key
    return f"{where}[{show(key)}]"


class Matcher(Protocol):
    """ok() is the fast test; check() explains, and returns None exactly when ok() is True."""

    def ok(self, value: Any) -> bool: ...

    def check(self, value: Any, where: str) -> str | None: ...


class _Any:
    def ok(self, value: Any) -> bool:
        return True

    def check(self, value: Any, where: str) -> str | None:
        return None


ANY = _Any()


class Glob:
    """An anchored glob where only `*` is special (any run of characters, possibly empty).

    Greedy leftmost search of each literal part is exact for such globs, so matching never
    backtracks: one pass over the value per literal part.
    """

    __slots__ = ("middle", "min_len", "prefix", "suffix")

    def __init__(self, pattern: str) -> None:
        if "*" not in pattern:  # prefix and suffix would both be the whole pattern: "ab" matched "abab"
            raise ValueError(f"glob {pattern!r} has no '*': compare it as a plain string")
        parts = pattern.split("*")
        self.prefix, self.suffix = parts[0], parts[-1]
        self.middle = [part for part in parts[1:-1] if part]
        self.min_len = len(self.prefix) + len(self.suffix) + sum(len(part) for part in self.middle)

    def matches(self, text: str) -> bool:
        if len(text) < self.min_len or not text.startswith(self.prefix) or not text.endswith(self.suffix):
            return False
        pos, end = len(self.prefix), len(text) - len(self.suffix)
        for part in self.middle:
            found = text.find(part, pos, end)
            if found < 0:
                return False
            pos = found + len(part)
        return True


class Scalars:
    """A set of allowed scalars. many: written as a list, so a request array is checked element-wise."""

    def __init__(self, patterns: Sequence[Any], many: bool) -> None:
        self.strings = frozenset(p for p in patterns if isinstance(p, str) and "*" not in p)
        self.globs = [Glob(p) for p in patterns if isinstance(p, str) and "*" in p]
        self.bools = frozenset(p for p in patterns if isinstance(p, bool))
        self.ints = frozenset(p for p in patterns if type(p) is int)
        self.floats = frozenset(p for p in patterns if type(p) is float)
        self.types = {type_name(p) for p in patterns}
        self.many = many
        self.shown = show(list(patterns))

    def allows(self, value: Any) -> bool:
        # bool before int: True == 1 in Python, never here.
        if isinstance(value, str):
            if value in self.strings:
                return True
            for glob in self.globs:
                if glob.matches(value):
                    return True
            return False
        if isinstance(value, bool):
            return value in self.bools
        if type(value) is int:
            return value in self.ints or value in self.floats
        if type(value) is float:
            return value in self.floats
        return False

    def ok(self, value: Any) -> bool:
        if self.many and isinstance(value, list):
            if not value:
                return False
            for element in value:
                if not self.allows(element):
                    return False
            return True
        return self.allows(value)

    def check(self, value: Any, where: str) -> str | None:
        if self.many and isinstance(value, list):
            if not value:
                # Some APIs read an empty filter as "everything".
                return f"{where} is an empty list; each element must be one of {self.shown}"
            for index, element in enumerate(value):
                if not self.allows(element):
                    return self._failure(element, f"{where}[{index}]")
            return None
        return None if self.allows(value) else self._failure(value, where)

    def _failure(self, value: Any, where: str) -> str:
        kind = type_name(value)
        note = "" if kind in self.types else f" ({kind})"
        verb = "does not match any of" if self.globs else "is not one of"
        return f"{where} {show(value)}{note} {verb} {self.shown}"


def check_scalar(value: Any, keys: tuple[str | int, ...], query: bool) -> None:
    if value is None:
        raise ConstraintError(keys, "null cannot be matched; use [] to allow any value")
    if isinstance(value, list | dict):
        raise ConstraintError(keys, "a list holds either scalars or objects, not lists or a mix")
    if not isinstance(value, str | bool | int | float):
        raise ConstraintError(keys, f"unsupported value {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConstraintError(keys, "numbers must be finite")
    if query and not isinstance(value, str):
        raise ConstraintError(keys, f'query parameters are strings: write "{value}" instead of {show(value)}')


def parameter_key(key: Any, keys: tuple[str | int, ...]) -> str:
    if not isinstance(key, str) or not key:
        raise ConstraintError(keys, "parameter names must be non-empty strings")
    return key


def check_star(value: Any, keys: tuple[str | int, ...]) -> None:
    if value != []:
        raise ConstraintError(keys, '"*" must be [] (it stands for any other key with any value)')



def object_entries(spec: Any, keys: tuple[str | int, ...]) -> Iterator[tuple[str, Any, tuple[str | int, ...]]]:
    """The entries of an object of parameter names, in order, each name checked as it is reached.

    Yields (name, value, location); "*" comes out like any name once its value is checked.
    """
    if not isinstance(spec, Mapping):
        raise ConstraintError(keys, "must be an object of parameter names")
    for raw_key, value in spec.items():
        here = (*keys, raw_key)
        key = parameter_key(raw_key, here)
        if key == "*":
            check_star(value, here)
        yield key, value, here

"""Parameter constraints of a policy rule (allowed_parameters, denied_parameters).

Built once from the compiled form, checked on every proxied request. Standard library only, and
every check is linear in the size of the request: globs are matched without backtracking and
nothing is built from user text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

_SIMPLE_KEY = re.compile(r"[A-Za-z0-9_?-]+\Z")
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
    if _SIMPLE_KEY.match(key):
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


_ANY = _Any()


class Glob:
    """An anchored glob where only `*` is special (any run of characters, possibly empty).

    Greedy leftmost search of each literal part is exact for such globs, so matching never
    backtracks: one pass over the value per literal part.
    """

    __slots__ = ("middle", "min_len", "prefix", "suffix")

    def __init__(self, pattern: str) -> None:
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


class _Scalars:
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


class _Object:
    """Every listed key present and allowed; no other key unless others (a "*" key)."""

    def __init__(self, keys: dict[str, Matcher], others: bool) -> None:
        self.keys = keys
        self.others = others

    def ok(self, value: Any) -> bool:
        # Plain loops: this runs for every candidate rule of every request.
        if not isinstance(value, dict):
            return False
        if not self.others:
            for key in value:
                if key not in self.keys:
                    return False
        for key, matcher in self.keys.items():
            if key not in value or not matcher.ok(value[key]):
                return False
        return True

    def check(self, value: Any, where: str) -> str | None:
        if not isinstance(value, dict):
            return f"{where} {show(value)} ({type_name(value)}) is not an object"
        if not self.others:
            for key in value:
                if key not in self.keys:
                    return f"parameter {child(where, key)} is not allowed"
        for key, matcher in self.keys.items():
            if key not in value:
                what = " (the query string)" if key == "?" and not where else ""
                return f"required parameter {child(where, key)}{what} is missing"
            failure = matcher.check(value[key], child(where, key))
            if failure is not None:
                return failure
        return None


class _Objects:
    """A non-empty array whose every element matches one of the objects."""

    def __init__(self, objects: list[_Object]) -> None:
        self.objects = objects

    def ok(self, value: Any) -> bool:
        if not isinstance(value, list) or not value:
            return False
        for element in value:
            for obj in self.objects:
                if obj.ok(element):
                    break
            else:
                return False
        return True

    def check(self, value: Any, where: str) -> str | None:
        if not isinstance(value, list) or not value:
            return f"{where} {show(value)} must be a non-empty list of objects"
        for index, element in enumerate(value):
            here = f"{where}[{index}]"
            failures = []
            for obj in self.objects:
                failure = obj.check(element, here)
                if failure is None:
                    break
                failures.append(failure)
            else:
                if len(failures) == 1:
                    return failures[0]
                return f"{here} matches none of the {len(failures)} allowed objects: " + "; ".join(failures)
        return None


def _scalar(value: Any, keys: tuple[str | int, ...], query: bool) -> None:
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


def _key(key: Any, keys: tuple[str | int, ...]) -> str:
    if not isinstance(key, str) or not key:
        raise ConstraintError(keys, "parameter names must be non-empty strings")
    return key


def _star(value: Any, keys: tuple[str | int, ...]) -> None:
    if value != []:
        raise ConstraintError(keys, '"*" must be [] (it stands for any other key with any value)')


def _allowed_object(spec: Any, keys: tuple[str | int, ...], query: bool) -> _Object:
    if not isinstance(spec, Mapping):
        raise ConstraintError(keys, "must be an object of parameter names")
    matchers: dict[str, Matcher] = {}
    others = False
    for raw_key, value in spec.items():
        here = (*keys, raw_key)
        key = _key(raw_key, here)
        if key == "*":
            _star(value, here)
            others = True
        elif key == "?" and not keys:
            matchers[key] = _query(value, here)
        else:
            matchers[key] = _allowed_value(value, here, query)
    return _Object(matchers, others)


def _query(value: Any, keys: tuple[str | int, ...]) -> Matcher:
    if value == []:
        return _ANY
    if not isinstance(value, Mapping):
        raise ConstraintError(keys, '"?" holds the query parameters: write "?" = { name = "value" } or []')
    return _allowed_object(value, keys, query=True)


def _allowed_value(value: Any, keys: tuple[str | int, ...], query: bool) -> Matcher:
    if isinstance(value, Mapping):
        if query:
            raise ConstraintError(keys, "query parameters are flat strings; an object cannot match")
        return _allowed_object(value, keys, query)
    if isinstance(value, list):
        if not value:
            return _ANY
        if all(isinstance(item, Mapping) for item in value):
            if query:
                raise ConstraintError(keys, "query parameters are flat strings; an object cannot match")
            return _Objects([_allowed_object(item, (*keys, i), query) for i, item in enumerate(value)])
        for index, item in enumerate(value):
            _scalar(item, (*keys, index), query)
        return _Scalars(value, many=True)
    _scalar(value, keys, query)
    return _Scalars([value], many=False)


def build_allowed(spec: Any) -> Matcher:
    """The matcher of an allowed_parameters object, applied to the request's parameters."""
    return _allowed_object(spec, (), query=False)


class _DenyKey:
    def ok(self, value: Any) -> bool:
        return False

    def check(self, value: Any, where: str) -> str | None:
        return f"parameter {where} is denied"


class _DenyValues:
    """Deny matching values; a value of another type than the listed ones is denied too (fail closed)."""

    def __init__(self, patterns: Sequence[Any]) -> None:
        self.scalars = _Scalars(patterns, many=True)

    def ok(self, value: Any) -> bool:
        elements = value if isinstance(value, list) else [value]
        types = self.scalars.types
        return all(type_name(element) in types and not self.scalars.allows(element) for element in elements)

    def check(self, value: Any, where: str) -> str | None:
        elements = value if isinstance(value, list) else [value]
        for index, element in enumerate(elements):
            here = f"{where}[{index}]" if isinstance(value, list) else where
            kind = type_name(element)
            if kind not in self.scalars.types:
                return f"{here} {show(element)} is {kind}, not a value of the type denied_parameters lists"
            if self.scalars.allows(element):
                return f"{here} {show(element)} matches denied_parameters {self.scalars.shown}"
        return None


class _DeniedObject:
    """Keys compare case-insensitively: some upstream JSON decoders (Go's) do."""

    def __init__(self, keys: dict[str, Matcher], every: bool) -> None:
        self.keys = keys
        self.every = every

    def ok(self, value: Any) -> bool:
        if not isinstance(value, dict):
            return False
        if self.every:
            return not value
        for key, item in value.items():
            matcher = self.keys.get(key.casefold())
            if matcher is not None and not matcher.ok(item):
                return False
        return True

    def check(self, value: Any, where: str) -> str | None:
        if not isinstance(value, dict):
            return f"{where} {show(value)} is not an object, and denied_parameters restricts its keys"
        for key, item in value.items():
            name = child(where, key)
            if self.every:
                return f"parameter {name} is denied"
            matcher = self.keys.get(key.casefold())
            if matcher is not None:
                failure = matcher.check(item, name)
                if failure is not None:
                    return failure
        return None


def _denied_object(spec: Any, keys: tuple[str | int, ...], query: bool) -> _DeniedObject:
    if not isinstance(spec, Mapping):
        raise ConstraintError(keys, "must be an object of parameter names")
    matchers: dict[str, Matcher] = {}
    every = False
    for raw_key, value in spec.items():
        here = (*keys, raw_key)
        key = _key(raw_key, here)
        if key == "*":
            _star(value, here)
            every = True
            continue
        if key.casefold() in matchers:
            raise ConstraintError(here, f"{key!r} repeats another key that differs only by case")
        if key == "?" and not keys and value != [] and not isinstance(value, Mapping):
            raise ConstraintError(here, '"?" holds the query parameters: write "?" = { name = [] } or []')
        matchers[key.casefold()] = _denied_value(value, here, query or (key == "?" and not keys))
    return _DeniedObject(matchers, every)


def _denied_value(value: Any, keys: tuple[str | int, ...], query: bool) -> Matcher:
    if value == []:
        return _DenyKey()
    if isinstance(value, Mapping):
        if query and len(keys) > 1:
            raise ConstraintError(keys, "query parameters are flat strings; an object cannot match")
        return _denied_object(value, keys, query)
    items = value if isinstance(value, list) else [value]
    for index, item in enumerate(items):
        where = (*keys, index) if isinstance(value, list) else keys
        if isinstance(item, Mapping):
            raise ConstraintError(where, "denied_parameters cannot match objects; use allowed_parameters")
        _scalar(item, where, query)
    return _DenyValues(items)


def build_denied(spec: Any) -> Matcher:
    """The matcher of a denied_parameters object: check() returns why the request is denied."""
    return _denied_object(spec, (), query=False)

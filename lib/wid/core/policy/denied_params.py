"""denied_parameters: a listed key, or a listed value of it, refuses the request (fail closed on other types).

The matchers and checks they are built from are in params.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from wid.core.policy.params import (
    ConstraintError,
    Matcher,
    Scalars,
    check_scalar,
    child,
    object_entries,
    show,
    type_name,
)


class _DenyKey:
    def ok(self, value: Any) -> bool:
        return False

    def check(self, value: Any, where: str) -> str | None:
        return f"parameter {where} is denied"


class _DenyValues:
    """Deny matching values; a value of another type than the listed ones is denied too (fail closed)."""

    def __init__(self, patterns: Sequence[Any]) -> None:
        self.scalars = Scalars(patterns, many=True)

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
    matchers: dict[str, Matcher] = {}
    every = False
    for key, value, here in object_entries(spec, keys):
        if key == "*":
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
        check_scalar(item, where, query)
    return _DenyValues(items)


def build_denied(spec: Any) -> Matcher:
    """The matcher of a denied_parameters object: check() returns why the request is denied."""
    return _denied_object(spec, (), query=False)

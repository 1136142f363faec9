"""allowed_parameters: every listed key present with an allowed value, no other key unless "*" is listed.

The matchers and checks they are built from are in params.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wid.core.policy.params import (
    ANY,
    ConstraintError,
    Matcher,
    Scalars,
    check_scalar,
    child,
    object_entries,
    show,
    type_name,
)


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


def _allowed_object(spec: Any, keys: tuple[str | int, ...], query: bool) -> _Object:
    matchers: dict[str, Matcher] = {}
    others = False
    for key, value, here in object_entries(spec, keys):
        if key == "*":
            others = True
        elif key == "?" and not keys:
            matchers[key] = _query(value, here)
        else:
            matchers[key] = _allowed_value(value, here, query)
    return _Object(matchers, others)


def _query(value: Any, keys: tuple[str | int, ...]) -> Matcher:
    if value == []:
        return ANY
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
            return ANY
        if all(isinstance(item, Mapping) for item in value):
            if query:
                raise ConstraintError(keys, "query parameters are flat strings; an object cannot match")
            return _Objects([_allowed_object(item, (*keys, i), query) for i, item in enumerate(value)])
        for index, item in enumerate(value):
            check_scalar(item, (*keys, index), query)
        return Scalars(value, many=True)
    check_scalar(value, keys, query)
    return Scalars([value], many=False)


def build_allowed(spec: Any) -> Matcher:
    """The matcher of an allowed_parameters object, applied to the request's parameters."""
    return _allowed_object(spec, (), query=False)

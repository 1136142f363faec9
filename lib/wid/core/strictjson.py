"""The one JSON parser for untrusted input: bodies, token headers and claims.

Duplicate keys are refused at any depth, case variants included: Go's encoding/json (DigitalOcean's
API) matches keys case-insensitively, so {"name": "ok", "NAME": "evil"} could be checked as one value
and acted on as the other. NaN/Infinity and out-of-range numbers are refused too, and so are lone UTF-16
surrogates (`"\ud800"`, I-JSON, RFC 7493): Go reads one as U+FFFD, Python keeps it as a str that cannot
be encoded again, so a policy would check one string while DigitalOcean reads another, and storing it
(a key id looked up in the database, an audit row) would fail. parse_json() and
parse_json_object() make a refused body the caller's InvalidRequest (400).
"""

from __future__ import annotations

import json
import math
from typing import Any

from wid.core.errors import InvalidRequest


class StrictJsonError(ValueError):
    """The text is not acceptable JSON; the message says why (without echoing much of the input)."""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    folded: set[str] = set()
    for key, value in pairs:
        if key.casefold() in folded:
            raise StrictJsonError(f"duplicate JSON key {key[:60]!r}")
        folded.add(key.casefold())
        result[key] = value
    return result


def _may_hold_surrogates(text: str, decoded: bool) -> bool:
    """Where a lone surrogate can come from: an escape (`\\u` then four hex digits) or, in text that was not
    decoded from UTF-8 here (the decoder refuses surrogates), the character itself. A valid pair decodes to
    one character, so the walk below only ever finds lone ones."""
    return "\\u" in text or (not decoded and not text.isascii())


def _refuse_surrogates(value: Any) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")  # refuses a surrogate, and says where it is
            except UnicodeEncodeError as exc:
                raise StrictJsonError(f"JSON text holds a lone UTF-16 surrogate (\\u{ord(item[exc.start]):04x}), "
                                      "which is not a character") from None
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _constant(name: str) -> Any:
    raise StrictJsonError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise StrictJsonError(f"the number {text[:40]} is out of range")
    return value


def loads(data: bytes | str) -> Any:
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        value = json.loads(text, object_pairs_hook=_object, parse_constant=_constant, parse_float=_finite)
        if _may_hold_surrogates(text, decoded=isinstance(data, bytes)):
            _refuse_surrogates(value)
        return value
    except StrictJsonError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise StrictJsonError(f"not valid JSON: {exc}") from None


def parse_json(data: bytes | str) -> Any:
    """Untrusted JSON: duplicate keys (case variants too) and non-finite numbers are a 400."""
    try:
        return loads(data)
    except StrictJsonError as exc:
        raise InvalidRequest(f"body is rejected: {exc}") from None


def parse_json_object(data: bytes) -> dict[str, Any]:
    """An untrusted JSON body that must be an object (see parse_json)."""
    if not data.strip():
        raise InvalidRequest("expected a JSON object body, got an empty body")
    value = parse_json(data)
    if not isinstance(value, dict):
        raise InvalidRequest(f"expected a JSON object body, got {type(value).__name__}")
    return value

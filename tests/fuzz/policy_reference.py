"""A slow, obviously correct reading of docs/policies.md, to hold wid.policy's fast evaluator against.

Nothing here is shared with the library: paths are matched by recursion over segments, globs by
backtracking, precedence by the five rules of "Which rule applies" compared pairwise, and the query
string is read the way DigitalOcean's Go server reads it (net/url.ParseQuery), since that reading,
not ours, decides what the upstream acts on.
"""

from __future__ import annotations

from typing import Any, NamedTuple

CAPABILITY = {"GET": "read", "HEAD": "read", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def glob_match(pattern: str, text: str) -> bool:
    """`*` matches any run of characters (possibly empty); everything else matches itself."""
    if not pattern:
        return not text
    if pattern[0] == "*":
        return any(glob_match(pattern[1:], text[i:]) for i in range(len(text) + 1))
    return bool(text) and text[0] == pattern[0] and glob_match(pattern[1:], text[1:])


def canonical_segments(path: str) -> list[str] | None:
    if not path.startswith("/") or any(char in "?#%" for char in path):
        return None
    segments = path[1:].split("/")
    return None if any(segment in ("", ".", "..") for segment in segments) else segments


def path_matches(pattern: str, path: str) -> bool:
    """Literal segments match themselves, `+` one segment, a final `*` one or more segments."""
    def match(rest: list[str], segments: list[str]) -> bool:
        if not rest:
            return not segments
        if rest == ["*"]:
            return len(segments) >= 1
        return bool(segments) and rest[0] in ("+", segments[0]) and match(rest[1:], segments[1:])

    segments = canonical_segments(path)
    return segments is not None and match(pattern[1:].split("/"), segments)


def applies_rather_than(p1: str, p2: str) -> bool:
    """Of two patterns matching a path, whether P1 applies rather than P2 (the five rules, in order)."""
    def first_wildcard(pattern: str) -> float:
        segments = pattern[1:].split("/")
        return next((i for i, s in enumerate(segments) if s in ("+", "*")), float("inf"))

    def pluses(pattern: str) -> int:
        return pattern[1:].split("/").count("+")

    if first_wildcard(p1) != first_wildcard(p2):
        return first_wildcard(p1) > first_wildcard(p2)
    if p1.endswith("/*") != p2.endswith("/*"):
        return not p1.endswith("/*")
    if pluses(p1) != pluses(p2):
        return pluses(p1) < pluses(p2)
    if len(p1) != len(p2):
        return len(p1) > len(p2)
    return p1 > p2


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object" if isinstance(value, dict) else "null"


def scalar_matches(pattern: Any, value: Any) -> bool:
    if isinstance(pattern, bool):
        return isinstance(value, bool) and value == pattern
    if isinstance(pattern, int):
        return type(value) is int and value == pattern
    if isinstance(pattern, float):  # a fractional pattern matches any number of equal value
        return _kind(value) == "number" and value == pattern
    return isinstance(value, str) and glob_match(pattern, value)


def allowed_object(spec: dict[str, Any], value: Any) -> bool:
    """Listed keys required, no other key unless "*", each value as the table says."""
    if not isinstance(value, dict):
        return False
    if "*" not in spec and any(key not in spec for key in value):
        return False
    return all(key in value and allowed_value(spec[key], value[key]) for key in spec if key != "*")


def allowed_value(spec: Any, value: Any) -> bool:
    if isinstance(spec, dict):
        return allowed_object(spec, value)
    if spec == []:
        return True
    if isinstance(spec, list) and all(isinstance(item, dict) for item in spec):
        return isinstance(value, list) and len(value) > 0 and all(
            any(allowed_object(item, element) for item in spec) for element in value)
    if isinstance(spec, list):
        if isinstance(value, list):
            return len(value) > 0 and all(any(scalar_matches(s, element) for s in spec) for element in value)
        return any(scalar_matches(s, value) for s in spec)
    return scalar_matches(spec, value)


def denied_object(spec: dict[str, Any], value: Any) -> bool:
    """True when the request hits the denylist: a non-object, any key under "*", a denied key or value."""
    if not isinstance(value, dict):
        return True
    if "*" in spec and value:
        return True
    return any(denied_value(spec[listed], item) for key, item in value.items()
               for listed in spec if listed != "*" and listed.casefold() == key.casefold())


def denied_value(spec: Any, value: Any) -> bool:
    if spec == []:
        return True
    if isinstance(spec, dict):
        return denied_object(spec, value)
    patterns = spec if isinstance(spec, list) else [spec]
    kinds = {_kind(p) for p in patterns}
    elements = value if isinstance(value, list) else [value]
    return any(_kind(e) not in kinds or any(scalar_matches(p, e) for p in patterns) for e in elements)


def go_query(query: str) -> dict[str, Any]:
    """What Go's url.ParseQuery yields (pairs it cannot parse are dropped), as policies see queries."""
    def unescape(text: str) -> str:
        out, i = bytearray(), 0
        raw = text.encode("utf-8", "surrogateescape")
        while i < len(raw):
            if raw[i:i + 1] == b"%":
                digits = raw[i + 1:i + 3]
                if len(digits) != 2 or not all(chr(d) in "0123456789abcdefABCDEF" for d in digits):
                    raise ValueError(text)
                out.append(int(digits, 16))
                i += 3
            else:
                out.append(ord(" ") if raw[i:i + 1] == b"+" else raw[i])
                i += 1
        return out.decode("utf-8", "surrogateescape")

    pairs: dict[str, list[str]] = {}
    for piece in query.split("&"):
        if ";" in piece or not piece:
            continue
        key, _, value = piece.partition("=")
        try:
            pairs.setdefault(unescape(key), []).append(unescape(value))
        except ValueError:
            continue
    return {key: values[0] if len(values) == 1 else values for key, values in pairs.items()}


class Verdict(NamedTuple):
    allowed: bool
    allowing: list[str]  # patterns of the applicable rules that allow


def decide(config: dict[str, Any], claims: dict[str, Any], this_issuer: str, method: str, path: str,
           params: dict[str, Any]) -> Verdict:
    capability = CAPABILITY.get(method)
    iss = claims.get("iss")
    roles = [
        role for _, role in sorted(config["roles"].items())
        if isinstance(iss, str) and iss and iss == (role["iss"] or this_issuer)
        and isinstance(claims.get("aud"), str) and claims["aud"] == role["aud"]
        and isinstance(claims.get("sub"), str) and claims["sub"] == role["sub"]
        and all(isinstance(claims.get(k), str) and claims[k] == v for k, v in role["claims"].items())
    ]
    if capability is None or not roles:
        return Verdict(False, [])
    applicable: list[dict[str, Any]] = []
    for role in roles:
        for name in role["policies"]:
            matching = [rule for rule in config["policies"][name]["rules"] if path_matches(rule["path"], path)]
            best = [rule for rule in matching
                    if all(other is rule or applies_rather_than(rule["path"], other["path"]) for other in matching)]
            assert len(best) == (1 if matching else 0), "precedence must pick exactly one rule"
            applicable.extend(best)
    if any("deny" in rule["capabilities"] for rule in applicable):
        return Verdict(False, [])
    if any(capability in rule["capabilities"] and "denied_parameters" in rule
           and denied_object(rule["denied_parameters"], params) for rule in applicable):
        return Verdict(False, [])
    allowing = [rule["path"] for rule in applicable if capability in rule["capabilities"]
                and ("allowed_parameters" not in rule or allowed_object(rule["allowed_parameters"], params))]
    return Verdict(bool(allowing), allowing)

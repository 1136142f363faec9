"""Request-time RBAC evaluation on the compiled form (rbac.json, see rbac-schema/).

Standard library only: this module is imported on every proxied request. A decision is a dict
lookup for the roles, one walk down a segment trie for the path rules (each trie node is visited at
most once), and parameter checks linear in the size of the request.
"""

import re
from collections.abc import Mapping
from typing import Any

from wid.core import strictjson
from wid.core.policy.allowed_params import build_allowed
from wid.core.policy.denied_params import build_denied
from wid.core.policy.params import Matcher, show

FORMAT_VERSION = 1
QUERY_KEY = "?"
CAPABILITY_BY_METHOD = {
    "GET": "read",
    "HEAD": "read",
    "POST": "create",
    "PUT": "update",
    "PATCH": "patch",
    "DELETE": "delete",
}
CAPABILITIES = ("create", "read", "update", "patch", "delete", "deny")
_BAD_PATH_CHARS = frozenset("?#%")
# What DigitalOcean's Go server (net/url.ParseQuery) drops while parse_qsl keeps it: a pair holding ";",
# a "%" not followed by two hex digits. A policy must never check a parameter the upstream does not see.
_DROPPED_BY_GO = r";|%(?![0-9A-Fa-f]{2})"  # compiled at first use (re caches it)


class ParameterError(Exception):
    """Malformed request parameters; the caller answers 400 with this message."""


def request_parameters(query_string: str, body: bytes | None) -> dict[str, Any]:
    """The parameters policies check: the JSON body's keys, plus the query under "?".

    Pass exactly the body and query that will be forwarded. A repeated query key becomes the list
    of its values (so a single-value pattern denies it); "?" is present only for a non-empty query.
    """
    params: dict[str, Any] = {}
    if body:
        try:
            parsed = strictjson.loads(body)
        except strictjson.StrictJsonError as exc:
            raise ParameterError(f"{exc} in the request body") from None
        if not isinstance(parsed, dict):
            raise ParameterError("the request body must be a JSON object")
        if QUERY_KEY in parsed:
            raise ParameterError('the body key "?" is reserved for the query string')
        params.update(parsed)
    if query_string:
        dropped = re.search(_DROPPED_BY_GO, query_string)
        if dropped:
            what, fix = ("a ';'", "write %3B") if dropped.group() == ";" else (
                "a '%' not followed by two hex digits", "write %25 for a '%'")
            raise ParameterError(f"the query string has {what}: Go servers such as DigitalOcean's drop the pair "
                                 f"holding it, while a policy would check it; {fix}")
        from urllib.parse import parse_qsl  # a request with a query string only (docs/architecture.md)

        try:
            pairs = parse_qsl(query_string, keep_blank_values=True, errors="strict")
        except (UnicodeDecodeError, ValueError) as exc:
            raise ParameterError(f"the query string is malformed: {exc}") from None
        query: dict[str, Any] = {}
        for key, value in pairs:
            if key not in query:
                query[key] = value
            elif isinstance(query[key], list):
                query[key].append(value)
            else:
                query[key] = [query[key], value]
        if query:
            params[QUERY_KEY] = query
    return params


# The records here are plain slotted classes, not NamedTuples: they are read by attribute only, and a
# NamedTuple class costs every request that imports this module about 0.7 M instructions to build.
class Decision:
    __slots__ = ("allowed", "policy", "reason", "roles", "rule", "unrestricted_by")

    def __init__(self, allowed: bool, reason: str, roles: tuple[str, ...], policy: str | None, rule: str | None,
                 unrestricted_by: str | None = None) -> None:
        self.allowed = allowed
        self.reason = reason  # one sentence; a denial names the role, policy, rule and parameter where it can
        self.roles = roles
        self.policy = policy  # the deciding policy
        self.rule = rule  # the deciding path pattern
        # When allowed: the first rule that would allow this request with any other parameter too (no
        # allowed_parameters, or a "*" key), as a sentence; None when every rule allowing it restricts them.
        self.unrestricted_by = unrestricted_by

    @property
    def restricts_parameters(self) -> bool:
        """Allowed, and only with parameters the allowing rules name: a parameter they do not name is refused."""
        return self.allowed and self.unrestricted_by is None


class PathPattern:
    __slots__ = ("segments", "star", "text")

    def __init__(self, text: str, segments: tuple[str, ...], star: bool) -> None:
        self.text = text
        self.segments = segments  # literal segments and "+", without a final "*"
        self.star = star

    @property
    def priority(self) -> tuple[int, bool, int, int, str]:
        """Vault's precedence as a sort key: of two patterns matching a path, the larger key wins.

        1. the later the first wildcard (+ or *), the higher (no wildcard: highest);
        2. not ending in *, higher; 3. fewer + segments, higher; 4. longer, higher;
        5. lexicographically larger, higher.
        """
        wildcards = [i for i, segment in enumerate(self.segments) if segment == "+"]
        if wildcards:
            first = wildcards[0]
        else:
            first = len(self.segments) if self.star else 1 << 30
        return (first, not self.star, -len(wildcards), len(self.text), self.text)


def parse_path_pattern(text: str) -> PathPattern:
    """Parse a rule's path; ValueError says what is wrong with it."""
    if not text.startswith("/") or text == "/":
        raise ValueError(f"path {text!r} must start with / and name at least one segment")
    if any(char in _BAD_PATH_CHARS or char.isspace() or not char.isprintable() for char in text):
        raise ValueError(f"path {text!r} may not contain '?', '#', '%', spaces or control characters")
    segments = text[1:].split("/")
    star = segments[-1] == "*"
    if star:
        segments.pop()
    for segment in segments:
        if segment in ("", ".", ".."):
            raise ValueError(f"path {text!r} has an empty, '.' or '..' segment")
        if "*" in segment:
            raise ValueError(f"path {text!r}: '*' is allowed only as the whole last segment, as in /v2/x/*")
        if "+" in segment and segment != "+":
            raise ValueError(f"path {text!r}: '+' must be a whole segment, as in /v2/x/+/y")
    return PathPattern(text, tuple(segments), star)


def _request_segments(path: str) -> list[str] | None:
    """The segments of a canonical request path, or None (such a path matches no rule)."""
    if not path.startswith("/") or any(char in _BAD_PATH_CHARS for char in path):
        return None
    segments = path[1:].split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        return None
    return segments


class _Rule:
    __slots__ = ("allowed", "capabilities", "denied", "open", "pattern", "policy", "policy_name", "priority")

    def __init__(self, policy: int, policy_name: str, pattern: str, priority: tuple[int, bool, int, int, str],
                 capabilities: frozenset[str], allowed: Matcher | None, denied: Matcher | None, open: bool) -> None:
        self.policy = policy
        self.policy_name = policy_name
        self.pattern = pattern
        self.priority = priority
        self.capabilities = capabilities
        self.allowed = allowed
        self.denied = denied
        self.open = open  # allows parameters it does not name: no allowed_parameters, or a "*" key in them


class _Role:
    __slots__ = ("aud", "claims", "iss", "name", "policies", "sub")

    def __init__(self, name: str, iss: str | None, aud: str, sub: str, claims: tuple[tuple[str, str], ...],
                 policies: tuple[int, ...]) -> None:
        self.name = name
        self.iss = iss
        self.aud = aud
        self.sub = sub
        self.claims = claims
        self.policies = policies


class _Node:
    __slots__ = ("exact", "literal", "plus", "star")

    def __init__(self) -> None:
        self.literal: dict[str, _Node] = {}
        self.plus: _Node | None = None
        self.exact: list[_Rule] = []  # rules whose pattern ends here
        self.star: list[_Rule] = []  # rules whose pattern continues with "/*" here

    def insert(self, pattern: PathPattern, rule: _Rule) -> None:
        node = self
        for segment in pattern.segments:
            if segment == "+":
                node.plus = node.plus or _Node()
                node = node.plus
            else:
                node = node.literal.setdefault(segment, _Node())
        (node.star if pattern.star else node.exact).append(rule)


def _load_rule(policy: int, name: str, data: Mapping[str, Any], seen: set[str]) -> tuple[PathPattern, _Rule]:
    pattern = parse_path_pattern(data["path"])
    if pattern.text in seen:
        raise ValueError(f"policy {name!r} has path {pattern.text!r} twice")
    seen.add(pattern.text)
    capabilities = frozenset(data["capabilities"])
    if not capabilities or not capabilities <= set(CAPABILITIES):
        raise ValueError(f"policy {name!r} path {pattern.text!r}: bad capabilities {sorted(capabilities)}")
    allowed = data.get("allowed_parameters")
    denied = data.get("denied_parameters")
    rule = _Rule(
        policy,
        name,
        pattern.text,
        pattern.priority,
        capabilities,
        None if allowed is None else build_allowed(allowed),
        None if denied is None else build_denied(denied),
        allowed is None or "*" in allowed,
    )
    return pattern, rule


def _load_role(name: str, data: Mapping[str, Any], index: Mapping[str, int]) -> _Role:
    iss = data.get("iss")
    aud, sub, claims = data["aud"], data["sub"], data.get("claims", {})
    if not all(isinstance(v, str) for v in (aud, sub, *claims.values())) or not isinstance(iss, str | None):
        raise ValueError(f"role {name!r}: iss, aud, sub and claims must be strings")
    if not isinstance(data["policies"], list):
        raise ValueError(f"role {name!r}: policies must be a list")
    missing = [policy for policy in data["policies"] if policy not in index]
    if missing:
        raise ValueError(f"role {name!r} names unknown policies {missing}")
    policies = tuple(index[policy] for policy in data["policies"])
    return _Role(name, iss, aud, sub, tuple(sorted(claims.items())), policies)


class CompiledRbac:
    """A context's compiled roles and policies, indexed once for fast decisions."""

    def __init__(self, api: str, actx: str, roles: list[_Role], root: _Node) -> None:
        self.api = api
        self.actx = actx
        self._roles = roles
        self._root = root
        self._by_aud_sub: dict[tuple[str, str], list[_Role]] = {}
        for role in sorted(roles, key=lambda r: r.name):
            self._by_aud_sub.setdefault((role.aud, role.sub), []).append(role)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CompiledRbac":
        """Load the compiled dict; ValueError when it is malformed."""
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"unsupported compiled RBAC version {data.get('version')!r}")
        try:
            names = sorted(data["policies"])
            index = {name: i for i, name in enumerate(names)}
            root = _Node()
            for name in names:
                seen: set[str] = set()
                for rule_data in data["policies"][name]["rules"]:
                    pattern, rule = _load_rule(index[name], name, rule_data, seen)
                    root.insert(pattern, rule)
            roles = [_load_role(name, role, index) for name, role in data["roles"].items()]
            return cls(data["api"], data["actx"], roles, root)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed compiled RBAC: {type(exc).__name__}: {exc}") from None

    def issuers(self) -> set[str | None]:
        """External issuers named by roles; None stands for this issuer."""
        return {role.iss for role in self._roles}

    def _match(self, claims: Mapping[str, Any], this_issuer: str) -> list[_Role]:
        aud, sub, iss = claims.get("aud"), claims.get("sub"), claims.get("iss")
        if not isinstance(aud, str) or not isinstance(sub, str) or not isinstance(iss, str) or not iss:
            return []
        return [
            role
            for role in self._by_aud_sub.get((aud, sub), ())
            if iss == (this_issuer if role.iss is None else role.iss)
            and all(claims.get(key) == value for key, value in role.claims)
        ]

    def matching_roles(self, claims: Mapping[str, Any], this_issuer: str) -> list[str]:
        """Names of the roles whose iss, aud, sub and other attributes all equal the token's claims."""
        return [role.name for role in self._match(claims, this_issuer)]

    def _applicable(self, segments: list[str], wanted: set[int]) -> dict[int, _Rule]:
        """For each wanted policy, its most specific rule matching the path."""
        best: dict[int, _Rule] = {}
        last = len(segments)
        stack = [(self._root, 0)]
        while stack:
            node, depth = stack.pop()
            if depth == last:
                candidates = node.exact
            else:
                candidates = node.star  # "/*" needs at least one more segment
                following = node.literal.get(segments[depth])
                if following is not None:
                    stack.append((following, depth + 1))
                if node.plus is not None:
                    stack.append((node.plus, depth + 1))
            for rule in candidates:
                if rule.policy in wanted:
                    current = best.get(rule.policy)
                    if current is None or rule.priority > current.priority:
                        best[rule.policy] = rule
        return best

    def authorize(
        self, claims: Mapping[str, Any], this_issuer: str, method: str, path: str, params: Mapping[str, Any]
    ) -> Decision:
        capability = CAPABILITY_BY_METHOD.get(method)
        if capability is None:
            return Decision(False, f"method {show(method)} maps to no capability", (), None, None)
        roles = self._match(claims, this_issuer)
        names = tuple(role.name for role in roles)
        if not roles:
            token = ", ".join(f"{claim} {show(claims.get(claim))}" for claim in ("iss", "aud", "sub"))
            return Decision(False, f"no role matches the token ({token})", names, None, None)
        segments = _request_segments(path)
        if segments is None:
            reason = f"path {show(path)} is not canonical (empty, . or .. segment, or ?, # or %), no rule matches"
            return Decision(False, reason, names, None, None)
        best = self._applicable(segments, {policy for role in roles for policy in role.policies})
        ordered: list[tuple[_Role, _Rule]] = []
        for role in roles:
            for policy in role.policies:
                rule = best.pop(policy, None)
                if rule is not None:
                    ordered.append((role, rule))
        if not ordered:
            return Decision(False, f"no rule of the policies of roles {list(names)} matches {path}", names, None, None)
        return self._decide(ordered, names, capability, path, params)

    @staticmethod
    def _decide(
        ordered: list[tuple[_Role, _Rule]],
        names: tuple[str, ...],
        capability: str,
        path: str,
        params: Mapping[str, Any],
    ) -> Decision:
        def sentence(verb: str, role: _Role, rule: _Rule, detail: str) -> str:
            where = f"(rule \"{rule.pattern}\", role '{role.name}')"
            return f"policy '{rule.policy_name}' {verb} {capability} on {path}{detail} {where}"

        def verdict(allowed: bool, role: _Role, rule: _Rule, detail: str) -> Decision:
            reason = sentence("allows" if allowed else "denies", role, rule, detail)
            if not allowed:
                return Decision(False, reason, names, rule.policy_name, rule.pattern)
            # No deny applied to these parameters; none applies to one more (denials name their keys).
            for other_role, other in ordered:
                if other.open and capability in other.capabilities and (other.allowed is None or
                                                                        other.allowed.ok(params)):
                    unrestricted = sentence("allows any parameters for", other_role, other, "")
                    return Decision(True, reason, names, rule.policy_name, rule.pattern, unrestricted)
            return Decision(True, reason, names, rule.policy_name, rule.pattern)

        # An explicit deny anywhere wins, before any allow is considered.
        for role, rule in ordered:
            if "deny" in rule.capabilities:
                return verdict(False, role, rule, ": the rule has the deny capability")
            if capability in rule.capabilities and rule.denied is not None and not rule.denied.ok(params):
                return verdict(False, role, rule, f": {rule.denied.check(params, '')}")
        for role, rule in ordered:
            if capability in rule.capabilities and (rule.allowed is None or rule.allowed.ok(params)):
                return verdict(True, role, rule, "")
        # Explain one refusal, preferring a parameter failure to a missing capability.
        role, rule = next(((r, u) for r, u in ordered if capability in u.capabilities), ordered[0])
        if capability in rule.capabilities and rule.allowed is not None:
            return verdict(False, role, rule, f": {rule.allowed.check(params, '')}")
        return verdict(False, role, rule, f": the rule grants only {', '.join(sorted(rule.capabilities))}")

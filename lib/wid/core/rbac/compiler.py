"""Compile a context's RBAC repo (HCL roles and policies) into rbac.json (admin side, at git push).

Roles live in *.hcl files directly inside top-level folders whose name ends in "roles" (roles/,
droplet-roles/, gha-roles/), policies in *.hcl files directly inside policies/ (policy name = file
stem). Every other file is ignored and named in the result's "warnings". The result is valid
against rbac-schema/rbac.schema.json and loads with wid.core.policy.CompiledRbac.from_dict.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from wid.core import names
from wid.core.policy import allowed_params, denied_params, params
from wid.core.policy.engine import CAPABILITIES, FORMAT_VERSION, CompiledRbac, parse_path_pattern
from wid.core.rbac import owner
from wid.core.rbac.hcl import Attribute, Block, HclError, HclList, HclObject, read

MAX_FILE_BYTES = 1 << 20
MAX_TOTAL_BYTES = 4 << 20  # parsing costs about 10 s per MiB; bound the work one push can cause
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")
_ROLE_FIELDS = ("iss", "aud", "sub", "policies", owner.OPT_IN)
_RULE_FIELDS = ("capabilities", "allowed_parameters", "denied_parameters")
_CAPABILITY_HINTS = {
    "list": "there is no LIST method here; GET needs read",
    "sudo": "there are no root-protected paths here",
    "subscribe": "there are no event subscriptions here",
}
_FIELD_HINTS = {
    "required_parameters": "every key listed in allowed_parameters is already required",
    "policy": 'the old Vault "policy" field; write capabilities = [...]',
    "min_wrapping_ttl": "response wrapping is a Vault feature",
    "max_wrapping_ttl": "response wrapping is a Vault feature",
}


class CompileError(Exception):
    """The repo does not compile; errors are "path/to/file.hcl:LINE: message" (line where known)."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def _where(name: str, line: int) -> str:
    return f"{name}:{line}" if line else name


def _hint(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _constraint_line(attribute: Attribute, keys: tuple[str | int, ...]) -> int:
    """The line of the innermost value that keys lead to inside attribute's value."""
    line, value = attribute.line, attribute.value
    for key in keys:
        if isinstance(value, HclObject) and isinstance(key, str) and key in value:
            line, value = value.lines[key], value[key]
        elif isinstance(value, HclList) and isinstance(key, int) and key < len(value):
            line, value = value.lines[key], value[key]
        else:
            break
    return line


class _Compiler:
    def __init__(self, api: str, actx: str, issuer: str | None, trusted: Sequence[str] | None,
                 owner_claims: Mapping[str, Sequence[str]]) -> None:
        self.api, self.actx, self.issuer, self.trusted = api, actx, issuer, trusted
        self.owner_claims = owner_claims
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.roles: dict[str, dict[str, Any]] = {}
        self.policies: dict[str, dict[str, Any]] = {}
        self.role_policies: list[tuple[str, str, int, str]] = []  # role, file, line, policy
        self.role_sources: dict[str, str] = {}  # casefolded role name -> where it is defined

    def error(self, name: str, line: int, message: str) -> None:
        self.errors.append(f"{_where(name, line)}: {message}")

    def blocks(self, name: str, data: bytes) -> list[Block]:
        if len(data) > MAX_FILE_BYTES:
            self.error(name, 0, f"file is larger than {MAX_FILE_BYTES} bytes")
            return []
        try:
            text = data.decode("utf-8").removeprefix("\ufeff")
        except UnicodeDecodeError as exc:
            self.error(name, data[: exc.start].count(b"\n") + 1, "file is not valid UTF-8")
            return []
        try:
            return read(text, lambda s: s.replace("{actx}", self.actx))
        except HclError as exc:
            self.error(name, exc.line, exc.message)
            return []

    def body_only(self, name: str, block: Block, what: str) -> bool:
        """Report nested blocks and a label count other than one; True when the block is usable."""
        for inner in block.blocks:
            hint = f"; did you mean {inner.kind} = {{ ... }}?" if inner.kind in _RULE_FIELDS else ""
            self.error(name, inner.line, f"blocks are not allowed inside {what}{hint}")
        if len(block.labels) != 1:
            self.error(name, block.line, f'{block.kind} needs exactly one quoted label, as in {block.kind} "x" {{')
            return False
        return True

    def policy(self, name: str, data: bytes) -> None:
        policy_name = name.rsplit("/", 1)[1].removesuffix(".hcl")
        if not _NAME.match(policy_name):
            self.error(name, 0, f"policy name {policy_name!r} must match {_NAME.pattern} (it is the file name)")
            return
        rules: list[dict[str, Any]] = []
        seen: dict[str, int] = {}
        for block in self.blocks(name, data):
            if block.kind != "path":
                self.error(name, block.line, f'only path "..." blocks belong in policies/, not {block.kind}')
                continue
            if not self.body_only(name, block, "a path block"):
                continue
            pattern = block.labels[0]
            if pattern in seen:
                self.error(name, block.line, f"path {pattern!r} is already defined on line {seen[pattern]}")
                continue
            seen[pattern] = block.line
            rule = self.rule(name, block, pattern)
            if rule is not None:
                rules.append(rule)
        if not rules and not self.errors:
            self.warnings.append(f"{name}: policy {policy_name!r} has no path rules and grants nothing")
        self.policies[policy_name] = {"source": name, "rules": rules}

    def rule(self, name: str, block: Block, pattern: str) -> dict[str, Any] | None:
        ok = True
        try:
            parse_path_pattern(pattern)
        except ValueError as exc:
            self.error(name, block.line, str(exc))
            ok = False
        for field, attribute in block.attributes.items():
            if field not in _RULE_FIELDS:
                hint = f" ({_FIELD_HINTS[field]})" if field in _FIELD_HINTS else _hint(field, _RULE_FIELDS)
                self.error(name, attribute.line, f"unknown attribute {field!r} in a path block{hint}")
                ok = False
        capabilities = self.capabilities(name, block)
        rule: dict[str, Any] = {"path": pattern, "capabilities": capabilities, "source": _where(name, block.line)}
        for field, build in (("allowed_parameters", allowed_params.build_allowed),
                             ("denied_parameters", denied_params.build_denied)):
            constraint = block.attributes.get(field)
            if constraint is None:
                continue
            if "deny" in capabilities:
                self.error(name, constraint.line, f"{field} has no effect on a deny rule; remove it")
                ok = False
            try:
                build(constraint.value)
            except params.ConstraintError as exc:
                keys = "".join(f"[{key}]" if isinstance(key, int) else f".{key}" for key in exc.keys)
                self.error(name, _constraint_line(constraint, exc.keys), f"{field}{keys}: {exc.message}")
                ok = False
            rule[field] = _plain(constraint.value)
        return rule if ok and capabilities else None

    def capabilities(self, name: str, block: Block) -> list[str]:
        attribute = block.attributes.get("capabilities")
        if attribute is None:
            self.error(name, block.line, 'path block needs capabilities = ["read", ...]')
            return []
        value = attribute.value
        if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
            self.error(name, attribute.line, "capabilities must be a non-empty list of strings")
            return []
        bad = [item for item in value if item not in CAPABILITIES]
        for item in bad:
            hint = f" ({_CAPABILITY_HINTS[item]})" if item in _CAPABILITY_HINTS else _hint(item, CAPABILITIES)
            self.error(name, attribute.line, f"unknown capability {item!r}{hint}; known: {', '.join(CAPABILITIES)}")
        return [] if bad else sorted(set(value))

    def role_file(self, name: str, data: bytes) -> None:
        blocks = self.blocks(name, data)
        for block in blocks:
            if block.kind != "role":
                self.error(name, block.line, f'only role "..." blocks belong in a roles folder, not {block.kind}')
            elif self.body_only(name, block, "a role block"):
                self.role(name, block)

    def string(self, name: str, attribute: Attribute | None, what: str, line: int) -> str | None:
        if attribute is None:
            self.error(name, line, f"role needs {what}")
            return None
        if not isinstance(attribute.value, str) or not attribute.value:
            self.error(name, attribute.line, f"{attribute.name} must be a non-empty string")
            return None
        return attribute.value

    def role(self, name: str, block: Block) -> None:
        role_name, attributes = block.labels[0], block.attributes
        errors = len(self.errors)
        if not _NAME.match(role_name):
            self.error(name, block.line, f"role name {role_name!r} must match {_NAME.pattern}")
        defined = self.role_sources.setdefault(role_name.casefold(), _where(name, block.line))
        if defined != _where(name, block.line):
            self.error(name, block.line, f"role {role_name!r} is already defined at {defined}")
        aud = self.string(name, attributes.get("aud"), 'aud = "api://..." (the token audience)', block.line)
        sub = self.string(name, attributes.get("sub"), 'sub = "..." (the token subject)', block.line)
        iss = self.iss(name, attributes.get("iss"))
        claims: dict[str, str] = {}
        for field, attribute in attributes.items():
            if field in _ROLE_FIELDS:
                continue
            if isinstance(attribute.value, str):
                claims[field] = attribute.value
            else:
                self.error(
                    name,
                    attribute.line,
                    f"{field} must be a string: it is compared with the token claim {field}, and GitHub "
                    f'sends claims as strings (write {field} = "...")',
                )
        policies = self.policy_names(name, role_name, attributes.get("policies"), block.line)
        any_owner = self.opt_in(name, attributes.get(owner.OPT_IN))
        if len(self.errors) > errors:
            return
        if iss is not None and iss != self.issuer and sub is not None:
            verdict = owner.check(role_name, iss, sub, claims, any_owner, self.owner_claims)
            if verdict.error:
                self.error(name, block.line, verdict.error)
                return
            self.warnings.extend(f"{_where(name, block.line)}: {warning}" for warning in verdict.warnings)
        expected = f"api://{self.api}?actx={self.actx}"
        if aud != expected:
            self.warnings.append(
                f"{_where(name, block.line)}: role {role_name!r} has aud {aud!r}, but tokens for this context "
                f"carry {expected!r}"
            )
        self.roles[role_name] = {
            "iss": iss if iss is not None else self.issuer,
            "aud": aud,
            "sub": sub,
            "claims": claims,
            "policies": policies,
            "source": _where(name, block.line),
        }

    def iss(self, name: str, attribute: Attribute | None) -> str | None:
        """The role's issuer; None for this issuer (or after an error)."""
        if attribute is None:
            return None
        value = attribute.value
        if not isinstance(value, str) or not value.startswith(("https://", "http://")):
            self.error(
                name, attribute.line, "iss must be an issuer URL, as in https://token.actions.githubusercontent.com"
            )
            return None
        if self.trusted is not None and value != self.issuer and value not in self.trusted:
            trusted = ", ".join(self.trusted) or "none"
            self.error(name, attribute.line, f"issuer {value!r} is not trusted by this proxy (trusted: {trusted})")
        return value

    def opt_in(self, name: str, attribute: Attribute | None) -> bool:
        if attribute is None:
            return False
        if not isinstance(attribute.value, bool):
            self.error(name, attribute.line, f"{owner.OPT_IN} must be true or false")
            return False
        return attribute.value

    def policy_names(self, name: str, role: str, attribute: Attribute | None, line: int) -> list[str] | None:
        if attribute is None:
            self.error(name, line, 'role needs policies = ["policy-name", ...]')
            return None
        value = attribute.value
        if not isinstance(value, HclList) or not value or not all(isinstance(item, str) for item in value):
            self.error(name, attribute.line, "policies must be a non-empty list of policy names")
            return None
        for item, item_line in zip(value, value.lines, strict=True):
            self.role_policies.append((role, name, item_line, item))
        return list(dict.fromkeys(value))

    def check_references(self) -> None:
        for role, name, line, policy in self.role_policies:
            if policy not in self.policies:
                known = sorted(self.policies)
                self.error(
                    name,
                    line,
                    f"role {role!r} names unknown policy {policy!r}{_hint(policy, known)} "
                    f"(policies are the *.hcl files in policies/: {', '.join(known) or 'none'})",
                )
        used = {policy for _, _, _, policy in self.role_policies}
        for policy in sorted(set(self.policies) - used):
            self.warnings.append(f"{self.policies[policy]['source']}: policy {policy!r} is not used by any role")
        folded: dict[str, str] = {}
        for policy in sorted(self.policies):
            if policy.casefold() in folded:
                self.error(
                    self.policies[policy]["source"],
                    0,
                    f"policy {policy!r} differs only by case from {folded[policy.casefold()]!r}",
                )
            folded[policy.casefold()] = policy


def compile_tree(
    files: Mapping[str, bytes],
    *,
    api: str,
    actx: str,
    issuer: str | None = None,
    trusted_issuers: Sequence[str] | None = None,
    owner_claims: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Compile repo files (repo-relative path -> content) into the rbac.json dict.

    {actx} is replaced with actx in every string. issuer fills in the iss of roles without one
    (None keeps null: "this issuer", resolved at evaluation). With trusted_issuers, a role naming
    an issuer that is neither issuer nor listed is an error. A role on another issuer must fix whose
    tokens it accepts (lib/wid/core/rbac/owner.py; owner_claims: the operator's declared owner claims
    per issuer, GitHub's are built in). Raises CompileError.
    """
    problem = names.api_problem(api) or names.actx_problem(actx)
    if problem:
        raise CompileError([problem])
    compiler = _Compiler(api, actx, issuer, trusted_issuers, owner_claims or {})
    policy_files: list[str] = []
    role_files: list[str] = []
    for name in sorted(files):
        top, _, rest = name.partition("/")
        if rest.endswith(".hcl") and "/" not in rest and top == "policies":
            policy_files.append(name)
        elif rest.endswith(".hcl") and "/" not in rest and top.endswith("roles"):
            role_files.append(name)
        elif not (rest.endswith(".hcl") and "/" not in rest and top == "tests"):  # policy tests: cases.py
            compiler.warnings.append(f"{name}: ignored (not a *.hcl file directly in policies/ or in a *roles folder)")
    total = sum(len(files[name]) for name in policy_files + role_files)
    if total > MAX_TOTAL_BYTES:
        raise CompileError([f"role and policy files total {total} bytes, more than {MAX_TOTAL_BYTES}"])
    for name in policy_files:
        compiler.policy(name, files[name])
    for name in role_files:
        compiler.role_file(name, files[name])
    compiler.check_references()
    if compiler.errors:
        raise CompileError(compiler.errors)
    result = {
        "version": FORMAT_VERSION,
        "api": api,
        "actx": actx,
        "issuer": issuer,
        "roles": dict(sorted(compiler.roles.items())),
        "policies": dict(sorted(compiler.policies.items())),
        "warnings": compiler.warnings,
    }
    CompiledRbac.from_dict(result)  # the evaluator must accept whatever the compiler emits
    return result


def read_directory(path: Path) -> tuple[dict[str, bytes], list[str]]:
    """A checkout's files (repo-relative path -> content) and warnings for what was skipped: hidden
    directories (.git, .venv), symlinks and other non-regular files."""
    root = Path(path)
    if not root.is_dir():
        raise CompileError([f"{path}: not a directory"])
    files: dict[str, bytes] = {}
    skipped: list[str] = []
    for directory, subdirectories, filenames in os.walk(root):
        subdirectories[:] = [d for d in subdirectories if not d.startswith(".")]
        for filename in filenames:
            full = Path(directory, filename)
            relative = full.relative_to(root).as_posix()
            if full.is_symlink() or not full.is_file():
                skipped.append(f"{relative}: ignored (not a regular file)")
                continue
            with full.open("rb") as handle:
                files[relative] = handle.read(MAX_FILE_BYTES + 1)
    return files, sorted(skipped)


def compile_directory(path: Path, **options: Any) -> dict[str, Any]:
    """compile_tree over a checkout (read_directory); what was skipped comes first among the warnings."""
    files, skipped = read_directory(path)
    result = compile_tree(files, **options)
    result["warnings"] = skipped + result["warnings"]
    return result

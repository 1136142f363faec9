"""Policy tests kept beside the policies: tests/*.hcl in an RBAC repo, run at every push (format 1).

    test "the droplet role reads the database" {
      token  = { sub = "actx:{actx}:role:database-and-spaces-keys-access" }  # iss, aud: defaults below
      method = "GET"
      path   = "/v2/databases/9cc10173-e9ea-4176-9dbc-a4cee4c4ff30"
      expect = "allow"                        # or "deny"
      policy = "database-credential-read"     # optional: the deciding policy
    }

`token` holds the claims of the presented token; `iss` defaults to this proxy and `aud` to
api://{API}?actx={actx}. `query` (a raw query string) and `body` (an object: the JSON body) give the
request's parameters; `reason` (deny) is text the denial's reason must contain; `format` (optional)
must be 1. The same engine that serves decides (lib/wid/core/policy/engine.py). A repo holds at most
MAX_CASES tests in at most MAX_BYTES of test files, so a push stays fast. docs/policies.md, "Tests".
"""

from collections.abc import Mapping
from typing import Any, NamedTuple

from wid.core.policy.engine import CompiledRbac, ParameterError, request_parameters
from wid.core.rbac.compiler import CompileError, compile_tree
from wid.core.rbac.hcl import Block, HclError, HclObject, read

FORMAT = 1
MAX_CASES = 500
MAX_BYTES = 256 * 1024
FOLDER = "tests"
OFFLINE_ISSUER = "https://this-proxy.invalid"
_FIELDS = ("token", "method", "path", "query", "body", "expect", "policy", "reason", "format")
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


class Case(NamedTuple):
    where: str  # file:line
    name: str
    claims: dict[str, Any]
    method: str
    path: str
    query: str
    body: bytes | None
    expect: str
    policy: str | None
    reason: str | None


def compile_and_test(files: Mapping[str, bytes], *, api: str, actx: str, issuer: str | None = None,
                     **options: Any) -> tuple[dict[str, Any], int]:
    """compile_tree, then the repo's tests against the result: (rbac.json dict, tests run).

    Raises CompileError for a configuration that does not compile, unusable tests, or a failing test
    (each failure with what was expected and the engine's reason). `issuer` None: offline, where a
    placeholder stands for this proxy in roles and tests alike.
    """
    compiled = compile_tree(files, api=api, actx=actx, issuer=issuer, **options)
    this = issuer or OFFLINE_ISSUER
    tests, errors = read_cases(files, api=api, actx=actx, this_issuer=this)
    if errors:
        raise CompileError(errors)
    failures = run(CompiledRbac.from_dict(compiled), tests, this)
    if failures:
        raise CompileError([f"{len(failures)} of {len(tests)} policy test(s) failed:", *failures])
    return compiled, len(tests)


def is_test_file(name: str) -> bool:
    folder, _, rest = name.partition("/")
    return folder == FOLDER and rest.endswith(".hcl") and "/" not in rest


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _json(value: Any) -> bytes:
    import json  # only when a test has a body

    return json.dumps(_plain(value), separators=(",", ":")).encode()


def read_cases(files: Mapping[str, bytes], *, api: str, actx: str, this_issuer: str) -> tuple[list[Case], list[str]]:
    """The test cases of tests/*.hcl, and the errors that make them unusable ("file:line: message")."""
    names = sorted(name for name in files if is_test_file(name))
    errors: list[str] = []
    total = sum(len(files[name]) for name in names)
    if total > MAX_BYTES:
        return [], [f"{FOLDER}/: test files total {total} bytes, more than {MAX_BYTES}"]
    cases: list[Case] = []
    for name in names:
        try:
            text = files[name].decode("utf-8-sig")
            blocks = read(text, lambda s: s.replace("{actx}", actx))
        except UnicodeDecodeError:
            errors.append(f"{name}: not UTF-8")
            continue
        except HclError as exc:
            errors.append(f"{name}:{exc.line}: {exc.message}" if exc.line else f"{name}: {exc.message}")
            continue
        for block in blocks:
            case = _case(name, block, api, actx, this_issuer, errors)
            if case is not None:
                cases.append(case)
    if len(cases) > MAX_CASES:
        errors.append(f"{FOLDER}/: {len(cases)} tests, more than {MAX_CASES}; keep the ones that matter")
    return cases, errors


def _case(name: str, block: Block, api: str, actx: str, this_issuer: str, errors: list[str]) -> Case | None:
    where = f"{name}:{block.line}"
    before = len(errors)
    if block.kind != "test" or len(block.labels) != 1:
        errors.append(f'{where}: only test "name" {{ ... }} blocks belong in {FOLDER}/, not {block.kind}')
        return None
    label = block.labels[0]
    values = {key: attribute.value for key, attribute in block.attributes.items()}
    for key in values:
        if key not in _FIELDS:
            errors.append(f"{where}: test {label!r}: unknown attribute {key} (known: {', '.join(_FIELDS)})")
    if block.blocks:
        errors.append(f"{where}: test {label!r}: nested blocks are not allowed; write token = {{ ... }}")
    if values.get("format", FORMAT) != FORMAT:
        errors.append(f"{where}: test {label!r}: format {values['format']!r} is not understood here (format {FORMAT})")
    token = values.get("token")
    if not isinstance(token, HclObject):
        errors.append(f"{where}: test {label!r}: token = {{ sub = \"...\", ... }} (the token's claims) is required")
        token = HclObject()
    method = values.get("method")
    if method not in _METHODS:
        errors.append(f"{where}: test {label!r}: method must be one of {', '.join(_METHODS)}, got {method!r}")
    path = values.get("path")
    if not isinstance(path, str) or not path.startswith("/") or len(path) > 2048:
        errors.append(f"{where}: test {label!r}: path must be an absolute request path, got {path!r}")
    expect = values.get("expect")
    if expect not in ("allow", "deny"):
        errors.append(f'{where}: test {label!r}: expect must be "allow" or "deny", got {expect!r}')
    query, body = values.get("query", ""), values.get("body")
    if not isinstance(query, str):
        errors.append(f"{where}: test {label!r}: query must be a query string such as \"a=1&b=2\"")
    if body is not None and not isinstance(body, HclObject):
        errors.append(f"{where}: test {label!r}: body must be an object (the request's JSON body)")
    optional = {key: values.get(key) for key in ("policy", "reason")}
    for key, value in optional.items():
        if value is not None and not isinstance(value, str):
            errors.append(f"{where}: test {label!r}: {key} must be a string")
    if len(errors) > before:
        return None
    claims = {"iss": this_issuer, "aud": f"api://{api}?actx={actx}", **_plain(token)}
    return Case(where, label, claims, str(method), str(path), str(query), _json(body) if body is not None else None,
                str(expect), optional["policy"], optional["reason"])


def run(rbac: CompiledRbac, cases: list[Case], this_issuer: str) -> list[str]:
    """Each failing case as "file:line: test 'name': what was expected, what the engine decided and why"."""
    failures: list[str] = []
    for case in cases:
        head = f"{case.where}: test {case.name!r}"
        try:
            params = request_parameters(case.query, case.body)
        except ParameterError as exc:
            failures.append(f"{head}: the request is malformed, the proxy would answer 400: {exc}")
            continue
        decision = rbac.authorize(case.claims, this_issuer, case.method, case.path, params)
        got = "allow" if decision.allowed else "deny"
        if got != case.expect:
            failures.append(f"{head}: expected {case.expect}, got {got}: {decision.reason}")
        elif case.policy is not None and decision.policy != case.policy:
            failures.append(f"{head}: expected the deciding policy {case.policy!r}, got {decision.policy!r}: "
                            f"{decision.reason}")
        elif case.reason is not None and case.reason not in decision.reason:
            failures.append(f"{head}: expected a reason containing {case.reason!r}, got: {decision.reason}")
    return failures

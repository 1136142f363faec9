"""`wid policy`: compile an RBAC directory to rbac.json, run its tests, or check one request against it.

The same compiler, owner rule and policy tests as a push (lib/wid/core/rbac/): what compiles here is
what the server accepts, for the same `wid --version`.
Exit codes: 0 compiled / allowed / tests passed, 1 denied / a test failed, 2 usage or compile error.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from wid import config
from wid.core.policy.engine import CompiledRbac, ParameterError, request_parameters
from wid.core.rbac import cases
from wid.core.rbac.compiler import CompileError, compile_tree, read_directory

EXAMPLE_ACTX = "00000000-0000-0000-0000-000000000000"
_AUDIENCE = re.compile(r"api://([A-Za-z][A-Za-z0-9]*)\?actx=([^&#\s]+)\Z")


class _UsageError(Exception):
    pass


def _compile(args: argparse.Namespace, api: str, actx: str, *, tests: bool = True) -> dict[str, Any]:
    """Compile the directory as a push would, its policy tests included (unless `tests` is False)."""
    settings = config.settings()
    trusted = args.trusted_issuers if args.trusted_issuers is not None else settings.trusted_issuers
    files, skipped = read_directory(Path(args.directory))
    options: dict[str, Any] = {"api": api, "actx": actx, "trusted_issuers": trusted,
                               "owner_claims": settings.issuer_owner_claims}
    result = cases.compile_and_test(files, **options)[0] if tests else compile_tree(files, **options)
    result["warnings"] = skipped + result["warnings"]
    for warning in result["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    return result


def cmd_test(args: argparse.Namespace) -> int:
    """Run tests/*.hcl against the compiled directory: one line per test, then a summary."""
    try:
        compiled = _compile(args, args.api, args.actx, tests=False)
        files, _ = read_directory(Path(args.directory))
        found, errors = cases.read_cases(files, api=args.api, actx=args.actx, this_issuer=cases.OFFLINE_ISSUER)
        if errors:
            raise CompileError(errors)
    except (CompileError, config.ConfigError) as exc:
        print(f"error: {exc}".replace("\n", "\nerror: "), file=sys.stderr)
        return 2
    rbac = CompiledRbac.from_dict(compiled)
    failed = 0
    for case in found:
        failures = cases.run(rbac, [case], cases.OFFLINE_ISSUER)
        failure = failures[0] if failures else None
        failed += failure is not None
        print(f"FAIL {failure}" if failure else f"ok   {case.where}: {case.name}")
    if not found:
        print(f"no policy tests: add {cases.FOLDER}/*.hcl files (docs/policies.md, \"Tests\")")
    else:
        print(f"{len(found) - failed} passed, {failed} failed")
    return 1 if failed else 0


def cmd_compile(args: argparse.Namespace) -> int:
    try:
        result = _compile(args, args.api, args.actx)
    except (CompileError, config.ConfigError) as exc:
        print(f"error: {exc}".replace("\n", "\nerror: "), file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2, sort_keys=True) + "\n"
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
    return 0


def _claims(path: str) -> dict[str, Any]:
    try:
        claims = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise _UsageError(f"--claims {path}: {exc}") from None
    if not isinstance(claims, dict):
        raise _UsageError(f"--claims {path}: must hold a JSON object of token claims")
    return claims


def _request(args: argparse.Namespace) -> tuple[str, bytes | None]:
    pairs = []
    for item in args.query:
        key, sep, value = item.partition("=")
        if not sep:
            raise _UsageError(f"--query {item!r}: write KEY=VALUE")
        pairs.append((key, value))
    body = args.body
    if body is not None and body.startswith("@"):
        try:
            return urlencode(pairs), Path(body[1:]).read_bytes()
        except OSError as exc:
            raise _UsageError(f"--body {body}: {exc}") from None
    return urlencode(pairs), None if body is None else body.encode("utf-8")


def cmd_check(args: argparse.Namespace) -> int:
    try:
        claims = _claims(args.claims)
        query, body = _request(args)
        # Without --api/--actx, the context is the one the token's audience names.
        audience = _AUDIENCE.match(claims.get("aud", "")) if isinstance(claims.get("aud"), str) else None
        api = args.api or (audience.group(1) if audience else "DigitalOcean")
        actx = args.actx or (audience.group(2) if audience else EXAMPLE_ACTX)
        issuer = args.issuer or config.settings().this_endpoint
        rbac = CompiledRbac.from_dict(_compile(args, api, actx, tests=False))
    except (_UsageError, CompileError, config.ConfigError) as exc:
        print(f"error: {exc}".replace("\n", "\nerror: "), file=sys.stderr)
        return 2
    try:
        params = request_parameters(query, body)
    except ParameterError as exc:
        print(f"deny: the proxy rejects this request as malformed (400): {exc}")
        return 1
    decision = rbac.authorize(claims, issuer, args.method.upper(), args.path, params)
    print(f"{'allow' if decision.allowed else 'deny'}: {decision.reason}")
    print(f"roles: {', '.join(decision.roles) or '(none)'} (this issuer: {issuer})")
    return 0 if decision.allowed else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    policy = subparsers.add_parser("policy", help="compile RBAC roles and policies, check a request against them")
    commands = policy.add_subparsers(dest="policy_command", required=True, metavar="{compile,test,check}")

    compile_ = commands.add_parser("compile", help="compile an RBAC directory to rbac.json")
    compile_.add_argument("directory", help="checkout of the RBAC repo (roles folders and policies/)")
    compile_.add_argument("-o", "--output", default="-", help="output file (default: stdout)")
    compile_.set_defaults(func=cmd_compile)

    test = commands.add_parser("test", help="run the repo's policy tests (tests/*.hcl) as a push does; exit 0/1")
    test.add_argument("directory", help="checkout of the RBAC repo (roles folders, policies/, tests/)")
    test.set_defaults(func=cmd_test)

    check = commands.add_parser("check", help="decide one request: prints allow/deny and why, exit 0/1")
    check.add_argument("directory", help="checkout of the RBAC repo (roles folders and policies/)")
    check.add_argument("--claims", required=True, metavar="FILE", help="JSON object of the token's claims")
    check.add_argument("--method", required=True, type=str.upper,
                       choices=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
                       help="the request's method")
    check.add_argument("--path", required=True, help="request path, as in /v2/spaces/keys")
    check.add_argument("--query", action="append", default=[], metavar="KEY=VALUE", help="repeatable")
    check.add_argument("--body", metavar="JSON", help="JSON request body, or @FILE")
    check.add_argument("--issuer", help="this proxy's issuer (default: THIS_ENDPOINT)")
    check.set_defaults(func=cmd_check)

    for command, actx_default, api_default in ((compile_, EXAMPLE_ACTX, "DigitalOcean"),
                                               (test, EXAMPLE_ACTX, "DigitalOcean"), (check, None, None)):
        command.add_argument("--actx", default=actx_default, help="context that replaces {actx}")
        command.add_argument("--api", default=api_default, help="upstream API name (DigitalOcean, ATProto)")
        command.add_argument(
            "--trusted-issuer",
            action="append",
            dest="trusted_issuers",
            metavar="URL",
            help="issuer roles may name (repeatable; default: WID_TRUSTED_ISSUERS)",
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wid")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())

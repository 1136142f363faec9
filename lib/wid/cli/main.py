"""`wid`: the admin command (setup, config, keys, audit, policy, tokens, demo)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from wid import config
from wid.cli import server
from wid.store import storage

# Subcommand families that live in their own modules; each exposes register(subparsers).
_PLUGINS = ("wid.cli.audit", "wid.cli.doctor", "wid.cli.policy", "wid.upstreams.atproto.tail", "wid.cli.demo")
# Commands that report on the settings themselves (`wid config check`, `wid doctor`) or run with an
# environment of their own (`wid demo` sets up its own proxy): every other command refuses to start
# while a setting is invalid.
_OWN_SETTINGS = frozenset({"config", "doctor", "demo"})


def _warn_unknown_variables() -> None:
    for warning in config.unknown_variables():
        print(f"wid: warning: {warning}", file=sys.stderr)


def cmd_setup(args: argparse.Namespace) -> int:
    from wid.store import encryption, keys, server_record, wellknown

    _warn_unknown_variables()
    s = config.settings()
    if args.render_cgi:
        config.check_socket_path(s)
    storage.ensure_data_dir(s.data_dir)
    db = storage.database()
    applied = db.migrate()
    with db.transaction() as tx:
        encryption.check_key(tx)
    kid = keys.active_key().kid
    server_record.record_issuer(s.this_endpoint)  # for `wid` run later from a shell without THIS_ENDPOINT
    kids = wellknown.publish()
    if args.render_cgi:
        render_cgi(Path(args.cgi_source), Path(args.render_cgi))
    print(f"database: {db.dialect}, migrations applied: {len(applied)}; active key {kid}; published {len(kids)} key(s)")
    return 0


def render_cgi(source: Path, target: Path) -> None:
    """Copy cgi-bin/ with this interpreter as an absolute shebang (no shell shim between fcgiwrap and Python).

    `-IS`: isolated from the caller's environment and without `site`, whose work (scanning
    site-packages and .pth files) costs every request; the module path `site` built for this
    process (venv, .pth entries such as an editable install) is written into each script instead.
    Each script first turns the cyclic garbage collector off: importing creates objects by the
    hundred thousand, none of them garbage, and scanning them was a twentieth of an exchange's
    instructions. wid.web.app run_cgi turns it back on for the request's own work.
    """
    import tempfile

    # The launcher's own folder (.venv/bin for `wid`) is no module folder. When this runs under `python -c`
    # (a pytest-xdist worker rendering a test's script), argv[0] is "-c", not a file: nothing to drop.
    launcher = Path(sys.argv[0]).resolve().parent if Path(sys.argv[0]).is_file() else None
    paths = [p for p in sys.path if p and Path(p).is_dir() and Path(p).resolve() != launcher]
    prologue = f"import gc\nimport sys\ngc.disable()\nsys.path[:] = {paths!r}\n"
    target.mkdir(parents=True, exist_ok=True)
    for script in sorted(source.glob("*.py")):
        body = script.read_text().split("\n", 1)[1]
        # A temporary name of its own, then an atomic rename: processes rendering at once never clash.
        fd, tmp = tempfile.mkstemp(dir=target, prefix=f".{script.name}.")
        with os.fdopen(fd, "w") as handle:
            handle.write(f"#!{sys.executable} -IS\n{prologue}{body}")
        os.chmod(tmp, 0o755)  # noqa: S103 - executables that fcgiwrap (another user) runs
        os.replace(tmp, target / script.name)


def cmd_config(args: argparse.Namespace) -> int:
    """Each setting, its value (never a secret's) and where it came from; what is wrong, one line each.

    check-port: exit 2 naming PORT when something already listens on it (scripts/run.sh, before Caddy).
    serving: `MODE WORKERS` for scripts/run.sh (WID_MODE; WID_WORKERS or WID_CGI_WORKERS), validated."""
    if args.action == "serving":
        s = config.settings()
        print(s.mode, s.persistent_workers() if s.mode == "persistent" else s.cgi_workers)
        return 0
    if args.action == "check-port":
        from wid.cli.port import check_port_free

        taken = check_port_free(config.settings().port)
        if taken:
            print(f"wid: {taken}", file=sys.stderr)
        return 2 if taken else 0
    shown, problems = config.sources()
    for entry in shown:
        if args.json:
            print(json.dumps(entry._asdict(), sort_keys=True))
        else:
            print(f"{entry.name:34} {entry.source:11} {entry.shown}")
    _warn_unknown_variables()
    for problem in problems:
        print(f"wid: {problem}", file=sys.stderr)
    return 2 if problems else 0


def cmd_keys(args: argparse.Namespace) -> int:
    from wid.store import audit, keyring, keys, wellknown

    print(f"wid keys: the server with {server.describe()}", file=sys.stderr)
    if args.action != "list":
        server.require_signing_key()
    if args.action == "list":
        rows = keys.listing()
        if args.json:
            for r in rows:
                print(json.dumps({k: v for k, v in r._asdict().items() if k != "jwk"}, sort_keys=True))
        for r in rows if not args.json else []:
            until = keyring.stamp(r.verify_until) if r.verify_until and r.state != "next" else "-"
            since = f"  signs from {keyring.stamp(r.activate_at)}" if r.state == "next" and r.activate_at else ""
            print(f"{r.kid}  {r.state:8}  created {keyring.stamp(r.created_at)}  verifies until {until}{since}")
        return 0
    if args.action == "rotate":
        return _rotate(args.emergency)
    if args.emergency:
        raise config.ConfigError("--emergency goes with `wid keys rotate` only")
    if args.action == "prune":
        pruned = keys.prune()
        audit.record("operator_keys_prune", "info", operator=audit.operator(), pruned=pruned)
        wellknown.publish()
        print(f"pruned {len(pruned)} key(s)" + (": " + ", ".join(pruned) if pruned else ""))
        return 0
    wellknown.publish()
    return 0


def _rotate(emergency: bool) -> int:
    from wid.store import audit, keyring, keys, wellknown

    if emergency:
        rotation = keys.rotate_emergency()
        audit.record("operator_keys_rotate", "info", operator=audit.operator(), emergency=True,
                     revoked=rotation.previous, active=rotation.kid)
        wellknown.publish()
        dropped = (f"key {rotation.previous} is dropped: it no longer verifies, so every token it signed is refused "
                   "from now on; ") if rotation.previous else ""
        print(f"{dropped}key {rotation.kid} signs from now on. This replica's JWKS is re-published; the others "
              f"re-publish within {config.settings().publish_interval}s. Verifiers that cached the old key set "
              f"keep trusting the dropped key for up to {config.settings().jwks_max_age}s")
        return 0
    try:
        rotation = keys.rotate(config.settings().max_token_ttl)
    except keyring.RotationError as exc:
        print(f"wid: {exc}", file=sys.stderr)
        return 1
    audit.record("operator_keys_rotate", "info", operator=audit.operator(), active=rotation.previous,
                 next=rotation.kid, activate_at=rotation.activate_at)
    wellknown.publish()
    if rotation.previous is None:
        print(f"key {rotation.kid} signs from now on (the first key)")
        return 0
    print(f"key {rotation.kid} is published now and signs from {keyring.stamp(rotation.activate_at)} (in "
          f"{keys.activation_delay()}s, once every replica's JWKS and every cached copy lists it); "
          f"{rotation.previous} signs until then, then retires and keeps verifying its tokens until they expire")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from wid.core import tokens
    from wid.store import audit, signing

    try:
        extra = json.loads(args.claims) if args.claims else {}
    except ValueError as exc:
        return _usage("token", f"--claims is not JSON ({exc}); write a JSON object such as '{{\"env\": \"prod\"}}'")
    if not isinstance(extra, dict) or tokens.RESERVED_CLAIMS.intersection(extra):
        return _usage("token", f"--claims must be a JSON object without {', '.join(sorted(tokens.RESERVED_CLAIMS))}")
    try:
        tokens.parse_audience(args.aud)
        tokens.sub_context(args.sub)
    except tokens.TokenError as exc:
        return _usage("token", f"--aud/--sub: {exc}")
    max_ttl = config.settings().max_token_ttl
    if not 0 < args.ttl <= max_ttl:
        return _usage("token", f"--ttl must be 1 to {max_ttl} seconds (WID_MAX_TOKEN_TTL), got {args.ttl}")
    server.require_signing_key()
    print(f"wid token: signed for the server with {server.describe()}", file=sys.stderr)
    token, claims = signing.sign({**extra, "aud": args.aud, "sub": args.sub}, kind=args.kind, lifetime=args.ttl)
    # A token signed by hand (an rbac token can push configuration) is an operator action: audited by jti.
    audience = tokens.parse_audience(claims["aud"])
    audit.record("operator_token", "info", api=audience.api, actx=audience.actx, sub=claims["sub"], jti=claims["jti"],
                 operator=audit.operator(), kind=args.kind, ttl=args.ttl, claims=sorted(extra))
    print(token)
    return 0


def _usage(command: str, message: str) -> int:
    """A usage error: one line naming what is wrong, exit status 2 (as argparse does)."""
    print(f"wid {command}: {message}", file=sys.stderr)
    return 2


def version() -> str:
    from importlib import metadata  # only for --version

    try:
        return metadata.version("wid")
    except metadata.PackageNotFoundError:
        return "unknown (not installed as a package)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wid", description=__doc__)
    parser.add_argument("--version", action="version", version=f"wid {version()}",
                        help="the release of wid (and of its policy engine)")
    sub = parser.add_subparsers(dest="command", required=True)

    setup = sub.add_parser("setup", help="migrate the database, create the signing key, publish issuer metadata")
    setup.add_argument("--render-cgi", metavar="DIR", help="also render cgi-bin/ into DIR with absolute shebangs")
    setup.add_argument("--cgi-source", default="cgi-bin", metavar="DIR",
                       help="the cgi-bin/ to render (default: ./cgi-bin)")
    setup.set_defaults(func=cmd_setup)

    settings = sub.add_parser("config", help="check the settings: each one's value and source (default or "
                              "environment), secrets hidden; exit 2 if any is invalid")
    settings.add_argument("action", choices=["check", "check-port", "serving"],
                          help="check: validate and list every setting; check-port: is PORT free (exit 2 if not); "
                               "serving: the serving mode and its worker count")
    settings.add_argument("--json", action="store_true", help="one JSON object per line: name, source, shown")
    settings.set_defaults(func=cmd_config)

    keys = sub.add_parser("keys", help="signing keys: list, rotate (publish the next key, which signs once every "
                                       "replica and cache can know it), prune, publish")
    keys.add_argument("action", choices=["list", "rotate", "prune", "publish"],
                      help="list them; rotate: publish a next key that signs once every replica and cache can know "
                           "it; prune retired keys no token can need; publish the JWKS")
    keys.add_argument("--json", action="store_true", help="list: one JSON object per line")
    keys.add_argument("--emergency", action="store_true",
                      help="rotate: drop the active key at once (compromised); tokens it signed stop verifying")
    keys.set_defaults(func=cmd_keys)

    token = sub.add_parser("token", help="sign a token with the active key (operators and tests)")
    token.add_argument("--aud", required=True, help="api://{API}?actx={actx}")
    token.add_argument("--sub", required=True, help="actx:{actx}:...")
    token.add_argument("--kind", default="exchanged", choices=["workload", "exchanged", "rbac"],
                       help="what the token is for (default: exchanged, a role token)")
    token.add_argument("--ttl", type=int, default=300, help="lifetime in seconds (default 300)")
    token.add_argument("--claims", help="extra claims as a JSON object")
    token.set_defaults(func=cmd_token)

    for name in _PLUGINS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command not in _OWN_SETTINGS:
            config.settings()
        if args.command not in server.NO_SERVER:
            server.attach()
        result: int = args.func(args)
        return result
    except (config.ConfigError, storage.DatabaseUnavailable, server.NoServer) as exc:
        print(f"wid: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""`wid audit`: read the audit log, and prune it after exporting what is pruned (docs/operator.md).

    wid audit --path /v2/databases/9cc1...ff30 --since 2026-12-07     who read that database's credentials
    wid audit --jti 3kT...                                              what one token did
    wid audit prune --before 2026-09-01 --export audit-2026q2.jsonl     retention: export, then delete
"""

from __future__ import annotations

import argparse
import calendar
import json
import os
import sys
import time
from typing import Any

from wid.store import audit, audit_queries

_TIME_FORMATS = ("%Y-%m-%d", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S")


class UsageError(Exception):
    """A flag's value is wrong; the message names the flag."""


def parse_time(flag: str, value: str) -> int:
    """A UTC date or time (2026-12-07, 2026-12-07T10:00:00Z) or epoch seconds -> epoch seconds."""
    if value.isdigit():
        return int(value)
    for fmt in _TIME_FORMATS:
        try:
            return calendar.timegm(time.strptime(value, fmt))
        except ValueError:
            continue
    raise UsageError(f"{flag} {value!r} is not a UTC date (2026-12-07), time (2026-12-07T10:00:00Z) or epoch seconds")


def _stamp(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _line(row: audit_queries.AuditEntry) -> str:
    where = f" {row.method} {row.path}" if row.path else ""
    if row.status is not None:
        where += f" -> {row.status}" + (f" {row.outcome}" if row.outcome else "")
    return (f"{_stamp(row.ts)} {row.event:10} {row.decision:5} actx={row.actx or '-'} sub={row.sub or '-'} "
            f"jti={row.jti or '-'}{where} {json.dumps(row.detail, sort_keys=True)}")


def _filter(args: argparse.Namespace) -> audit_queries.Filter:
    since = None
    if args.since_seconds is not None:
        if args.since_seconds < 0:
            raise UsageError(f"--since-seconds must be 0 or more, got {args.since_seconds}")
        since = int(time.time()) - args.since_seconds
    if args.since is not None:
        since = max(since or 0, parse_time("--since", args.since))
    before = parse_time("--before", args.before) if args.before is not None else None
    return audit_queries.Filter(actx=args.actx, event=args.event, decision=args.decision, jti=args.jti, sub=args.sub,
                        path=args.path, since=since, before=before)


def cmd_audit(args: argparse.Namespace) -> int:
    try:
        if args.action == "prune":
            return _prune(args)
        if args.limit < 1:
            raise UsageError(f"--limit must be 1 or more, got {args.limit}")
        which = _filter(args)
    except UsageError as exc:
        print(f"wid audit: {exc}", file=sys.stderr)
        return 2
    rows = audit_queries.entries(which=which, limit=args.limit + 1)
    more = len(rows) > args.limit
    rows = rows[1:] if more else rows
    for row in rows:
        print(json.dumps(row.as_dict(), sort_keys=True) if args.json else _line(row))
    if not rows:
        print("wid audit: no entries match", file=sys.stderr)
    elif more:
        print(f"wid audit: showing the newest {args.limit} matching entries; older ones match too "
              "(raise --limit, or narrow with --since/--before)", file=sys.stderr)
    return 0


def _prune(args: argparse.Namespace) -> int:
    if args.before is None:
        raise UsageError("prune needs --before DATE: rows older than it are deleted")
    for flag in ("actx", "event", "decision", "jti", "sub", "path", "since", "since_seconds"):
        if getattr(args, flag) is not None:
            raise UsageError(f"prune deletes by age only; --{flag.replace('_', '-')} does not apply")
    before = parse_time("--before", args.before)
    if before > time.time():
        raise UsageError(f"--before {args.before} is in the future: prune deletes only past rows")
    export: Any = None
    handle = None
    if args.export:
        try:
            handle = open(args.export, "x", encoding="utf-8")  # never overwrite an earlier export
        except OSError as exc:
            raise UsageError(f"--export {args.export}: {exc.strerror}") from None

        def export(row: audit_queries.AuditEntry) -> None:
            assert handle is not None
            handle.write(json.dumps(row.as_dict(), sort_keys=True) + "\n")
            handle.flush()
    try:
        pruned = audit_queries.prune(before, export)
        if handle is not None:
            os.fsync(handle.fileno())  # the export is on disk before anything more is said or deleted
    finally:
        if handle is not None:
            handle.close()
    audit.record("audit_prune", "info", operator=audit.operator(), before=before, pruned=pruned,
                 exported_to=os.path.abspath(args.export) if args.export else None)
    print(f"pruned {pruned} audit entr{'y' if pruned == 1 else 'ies'} older than {_stamp(before)}"
          + (f"; exported to {args.export}" if args.export else ""))
    return 0


def register(sub: Any) -> None:
    parser = sub.add_parser("audit", help="read the audit log (oldest first), or prune it",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", nargs="?", choices=["prune"], help="prune: delete rows older than --before")
    parser.add_argument("--actx", help="only this context (team UUID or DID)")
    parser.add_argument("--event", help="only this event (exchange, forward, rbac_push, operator_token, ...)")
    parser.add_argument("--decision", choices=["allow", "deny", "info"], help="only this decision")
    parser.add_argument("--jti", help="only rows about the token with this jti")
    parser.add_argument("--sub", help="only rows about this subject")
    parser.add_argument("--path", help="only calls of this upstream path; a trailing * matches a prefix")
    parser.add_argument("--since", metavar="DATE", help="only rows at or after this UTC date/time or epoch")
    parser.add_argument("--since-seconds", type=int, metavar="N", help="only the last N seconds")
    parser.add_argument("--before", metavar="DATE", help="only rows before this UTC date/time or epoch (prune: "
                        "required; rows before it are deleted)")
    parser.add_argument("--limit", type=int, default=100, help="at most N rows, the newest (default 100)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--export", metavar="FILE", help="prune: first write every pruned row to FILE as JSON "
                        "lines (FILE must not exist)")
    parser.set_defaults(func=cmd_audit)

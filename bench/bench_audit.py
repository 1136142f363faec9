"""What the audit log costs: the writes every exchange and every forwarded call make, on their own and as a
share of a whole request in each serving mode (issue: "Audit every call forwarded with a stored credential ...
within the performance budget").

Part 1, the writes alone, in this process, one thread, `--rounds` times each after a warm-up, on SQLite (opened
as the proxy opens it: WAL) and on a fresh PostgreSQL database:
  exchange          audit.record() with the fields an exchange records (lib/wid/service/exchange.py): one INSERT
  forwarded call    lib/wid/web/audited.py forward(), the function the DigitalOcean handler calls, with a send
                    that answers at once: its log line, begin_call() (an INSERT before the call) and
                    finish_call() (an UPDATE after it)
printed as wall time per audited request (median, p99) and CPU time: this thread's, and PostgreSQL's (its
processes, from /proc). Each write's log line goes to a file, as the proxy's stderr goes to a log. The
rounds measure a long-lived connection (a persistent worker's); a CGI process writes once on its
connection (psycopg prepares a statement from its 5th execution only), so its write may cost a little more.

Part 2, a whole request: each mode on each database, a stack as bench_serving.py starts them (Caddy +
fcgiwrap or uWSGI, the DigitalOcean stand-in, the articles' RBAC), wrk at one connection for `--duration`
s on POST /v1/oidc/issue and GET /v2/databases/{uuid}: the median, the CPU time per request of the proxy's
processes (Caddy included) and of PostgreSQL (persistent mode only: fcgiwrap's CGI processes are reaped
without their CPU times), and the audit rows the database gained per request (1: the write is in every
request measured). Then the audit's share: its median wall time over the request's median, and in
persistent mode its CPU (ours + PostgreSQL's) over the request's. A share of CPU is a share of capacity:
a 5% share means auditing costs 5% of the requests per second a core serves.

Measured beside each other, not with and without auditing: the library has no switch to turn auditing off
(every allowed call is recorded before it is made). Figures only; nothing is asserted.

Usage: .venv/bin/python bench/bench_audit.py [--rounds N] [--duration S] [--sqlite-only]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.load import (
    EXCHANGE,
    READ,
    ROLE_SOURCE,
    ROLE_TARGET,
    postgres_cpu_seconds,
    settle,
    start,
    targets,
    wrk,
    wrk_at_once,
)
from devkit.do_world import DATABASE_UUID, World
from devkit.proxy import ProxyServer
from tests.harness import PostgresServer
from wid.core.policy.engine import Decision
from wid.service import authz
from wid.store import audit, storage
from wid.upstreams.digitalocean.context import API
from wid.web import audited
from wid.web.handlers.do_proxy import route_name
from wid.web.response import Response

TEAM = str(uuid.uuid4())
ISSUER = "https://wid.example.test"
READ_PATH = f"/v2/databases/{DATABASE_UUID}"
WRITES = {EXCHANGE: "exchange: record()", READ: "forwarded call: forward()"}


@dataclass
class Cost:
    median_us: float
    p99_us: float
    cpu_us: float  # this thread's CPU per write, mean (as a share of capacity needs)
    postgres_us: float  # PostgreSQL's CPU per write, mean


def exchange_row() -> None:
    """The row an exchange writes, with the fields lib/wid/service/exchange.py gives it."""
    audit.record("exchange", "allow", api=API, actx=TEAM, sub=f"actx:{TEAM}:role:{ROLE_SOURCE}", iss=ISSUER,
                 jti=uuid.uuid4().hex, endpoint="/v1/oidc/issue", issued_jti=uuid.uuid4().hex,
                 issued_aud=f"api://{API}?actx={TEAM}", issued_sub=f"actx:{TEAM}:role:{ROLE_TARGET}",
                 exp=int(time.time()) + 300, ttl=300, extra_claims=[], roles=[ROLE_SOURCE],
                 policy="database-credential-read", rule="/v2/databases/+", reason="allowed by role")


def forwarded_call() -> None:
    """What the DigitalOcean handler does around an allowed call (lib/wid/web/handlers/do_proxy.py)."""
    claims = {"sub": f"actx:{TEAM}:role:{ROLE_TARGET}", "jti": uuid.uuid4().hex}
    principal = authz.Principal(claims, ISSUER, API, TEAM, None)
    decision = Decision(True, "allowed", (ROLE_TARGET,), "database-credential-read", "/v2/databases/+")
    audited.forward(principal, decision, "GET", READ_PATH, lambda: Response(200),
                    route=route_name("GET", READ_PATH))


def timed(write: Callable[[], None], rounds: int, postgres: PostgresServer | None) -> Cost:
    for _ in range(max(20, rounds // 20)):  # warm up: the connection, the statements, the table's pages
        write()
    walls, cpus = [], []
    database_before = postgres_cpu_seconds(postgres) if postgres is not None else 0.0
    for _ in range(rounds):
        started, cpu = time.perf_counter(), time.thread_time()
        write()
        walls.append(time.perf_counter() - started)
        cpus.append(time.thread_time() - cpu)
    database = (postgres_cpu_seconds(postgres) - database_before) if postgres is not None else 0.0
    walls.sort()
    return Cost(1e6 * statistics.median(walls), 1e6 * walls[int(len(walls) * 0.99) - 1],
                1e6 * statistics.fmean(cpus), 1e6 * database / rounds)


def writes(label: str, postgres: PostgresServer | None, rounds: int, folder: Path) -> dict[str, Cost]:
    env = {"THIS_ENDPOINT": ISSUER, **({"DATABASE_URI": postgres.fresh_database()} if postgres is not None else {})}
    server = ProxyServer(folder / f"writes-{label}", env)  # not started: its settings, for this process
    costs = {}
    with server.configured(), open(folder / f"log-{label}", "w") as log, contextlib.redirect_stderr(log):
        for route, write in ((EXCHANGE, exchange_row), (READ, forwarded_call)):
            costs[route] = timed(write, rounds, postgres)
    for route, cost in costs.items():
        database = f"{cost.postgres_us:6.0f}" if postgres is not None else f"{'-':>6}"
        print(f"{label:11} {WRITES[route]:27} {cost.median_us:9.0f} {cost.p99_us:9.0f}  "
              f"{cost.cpu_us:15.0f} + {database}", flush=True)
    return costs


def audit_rows(world: World) -> int:
    """Once the CGI processes still running (wrk's last requests) have ended."""
    settle()
    with world.proxy.configured(), storage.database().transaction(write=False) as tx:
        found = tx.one("SELECT count(*) FROM audit_log")
    return int(found[0]) if found else 0


def requests(label: str, postgres: PostgresServer | None, costs: dict[str, Cost], duration: int,
             folder: Path) -> None:
    for mode in ("cgi", "persistent"):
        print(f"-- starting a {mode} stack on {label}", flush=True)
        world = start(f"audit-{mode}", mode, {"DATABASE_URI": postgres.fresh_database()} if postgres else {})
        try:
            for target in targets(world):
                wrk(target, 2, 2, folder, world.proxy)  # warm up: page cache, byte code, the workers' caches
                rows = audit_rows(world)
                (got,), used = wrk_at_once([(target, 1, world.proxy)], duration, folder, postgres)
                per_row = (audit_rows(world) - rows) / max(1, got.requests)
                cost = costs[target.name]
                share = 100 * cost.median_us / (1000 * got.p50_ms) if got.p50_ms else 0.0
                line = (f"{label:11} {mode:10} {target.name:26} {got.p50_ms:9.2f} {got.requests:6d} {got.errors:4d} "
                        f"{per_row:6.2f}  {share:8.1f}%")
                if got.cpu_ms is not None and got.requests:
                    database_ms = 1000 * used.postgres / got.requests
                    of_cpu = 100 * (cost.cpu_us + cost.postgres_us) / (1000 * (got.cpu_ms + database_ms))
                    database = f"{database_ms:6.2f}" if postgres is not None else f"{'-':>6}"
                    line += f"  {got.cpu_ms:8.2f} + {database}  {of_cpu:5.1f}%"
                print(line, flush=True)
        finally:
            world.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2000, help="audited requests timed per write and database")
    parser.add_argument("--duration", type=int, default=5, help="seconds of wrk per request measured")
    parser.add_argument("--sqlite-only", action="store_true", help="skip PostgreSQL")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: scripts/install.sh --test (Debian package wrk)")
    folder = Path(tempfile.mkdtemp(prefix="wid-bench-audit-"))
    print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f} at start")
    pg = None if args.sqlite_only else PostgresServer()
    if pg is not None:
        pg.start()
    backends = [("SQLite", None)] + ([("PostgreSQL", pg)] if pg is not None else [])
    try:
        print(f"\n== Audit writes in this process, one thread, {args.rounds} rounds each: µs per audited request")
        print(f"{'database':11} {'write':27} {'median':>9} {'p99':>9}  {'CPU µs (mean): ours + PG':>24}")
        costs = {label: writes(label, server, args.rounds, folder) for label, server in backends}
        print(f"\n== The audit's share of a whole request: wrk, one connection, {args.duration} s each")
        print(f"{'database':11} {'mode':10} {'route':26} {'median ms':>9} {'n':>6} {'err':>4} {'rows/n':>6}  "
              f"{'of median':>9}  {'CPU ms: proxy + PG':>17}  {'of CPU':>6}")
        for label, server in backends:
            requests(label, server, costs[label], args.duration, folder)
    finally:
        if pg is not None:
            pg.stop()
        shutil.rmtree(folder, ignore_errors=True)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()

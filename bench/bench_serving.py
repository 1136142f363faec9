"""Serving modes side by side: persistent (uWSGI) vs CGI vs a bare Python CGI, all behind Caddy, with wrk.

Starts the proxy as `make run` does, once per mode (WID_MODE=cgi: Caddy + fcgiwrap; WID_MODE=persistent:
Caddy + uWSGI, WID_WORKERS and WID_THREADS default) and database (SQLite, then PostgreSQL), each with
its own DigitalOcean stand-in and a team connected through the OAuth flow with the articles' RBAC. The
floor is a CGI script that only starts the same interpreter with the same flags and prints a small JSON
answer, run by a CGI-mode stack of its own (the same Caddyfile, Caddy and fcgiwrap; the script replaces
that stack's /health/ready). Each point starts once the CGI processes of the one before have finished
(wrk gives up on requests that fcgiwrap still runs to their end).

Measured with wrk at each concurrency (one keep-alive connection each), for
  POST /v1/oidc/issue          a workload token exchanged for the role token (policy, signing, audit row)
  GET  /v2/databases/{uuid}    with the role token (policy, team token, the stand-in's answer)
and printed as req/s, median, p99, errors (non-2xx, socket errors, timeouts) and the CPU time the serving
processes (Caddy included) spent per request in persistent mode, per mode beside the floor, with
each mode / floor (req/s, median). Req/s depend on what else the machine runs; CPU ms per request does not: 1000 / it
is the requests per second one core gives (docs/operator.md sizes replicas with it). CGI processes are
reaped by the kernel under fcgiwrap, which drops their CPU time: the CGI columns have none. The
DigitalOcean stand-in is Python in this process: the database read waits on it (its CPU is not
counted). Also prints the uWSGI workers' memory before and after. Figures only, nothing is
asserted; wrk and the stand-in share the machine's cores with the proxy.

Then two replicas sharing one PostgreSQL database (bench/replicas.py), in persistent and in CGI mode:
replica B started as production starts another replica (same DATABASE_URI, WID_SECRET_KEY, THIS_ENDPOINT
and OAuth client, its own Caddy, workers and data directory). At each total concurrency C, one replica
alone at C connections, then both at once with C/2 each (two wrk processes): each replica's and the
combined req/s, errors, medians, and where the CPU went (each replica's processes, PostgreSQL's, the
stand-in's, wrk's, the rest of the machine from /proc/stat: in CGI mode that rest holds the CGI
processes, whose CPU time is otherwise lost). On one machine both replicas share its
cores, so when the cores are busy the pair cannot beat one replica: the line "what limits it" says
whether the point was CPU-bound, and the CPU ms per request of a replica and of PostgreSQL, which
convert to requests per second per core for sizing real replicas (docs/operator.md "Sizing").

Ends with a summary block: each target of issue 14 checked against this run's figures (PASS or short,
with the numbers), and the replicas' lines. Targets (issue 14; 2 cores, Caddy included, wrk the client,
audit writes included): persistent mode, SQLite, 32 connections: >= 6x the floor's exchanges/s at the
same concurrency in the same run, with zero errors (the database read's figure is shown beside it);
persistent exchange and database-read medians at one connection under a quarter of the floor's; CGI
mode: those medians at most 5.5x the floor's (at one connection). The PostgreSQL run is checked against
the same thresholds, for reference.

At the defaults: 72 points in the tables and 24 with the replicas, 5 s each, plus starting 9 stacks and
warming each up; progress lines (--) say what starts.

Usage: .venv/bin/python bench/bench_serving.py [--duration S] [--connections 1,8,32,64] [--sqlite-only]
                                               [--compare-sync] [--upstream-ms MS]
                                               [--replica-connections 8,32,64] [--replica-modes persistent,cgi]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.load import EXCHANGE, READ, Figures, Target, rss_mb, start, targets, wrk
from bench.replicas import run_replicas
from devkit.do_world import World
from devkit.proxy import ProxyServer
from tests.harness import PostgresServer

FLOOR = "floor"
Points = dict[tuple[str, int], dict[str, Figures]]  # (route, connections): figures by mode, and the floor's

def start_floor() -> tuple[ProxyServer, Target]:
    """The bare CGI on a CGI-mode stack of its own (its Caddy and fcgiwrap as the proxy's): the rendered
    scripts' interpreter line, then one print (no import of ours), as that stack's /health/ready."""
    server = ProxyServer(Path(tempfile.mkdtemp(prefix="wid-bench-floor-")) / "data", mode="cgi")
    server.start()
    scripts = Path(server.env["WID_DATA_DIR"]) / "run" / "cgi-bin"
    shebang = (scripts / "oidc_issue.py").read_text().splitlines()[0]
    floor = scripts / "health.py"
    floor.write_text(f"{shebang}\nprint('Status: 200 OK\\r\\nContent-Type: application/json\\r\\n\\r\\n{{}}')\n")
    return server, Target("bare python CGI", server.url, "GET", "/health/ready", {})


def run(label: str, modes: dict[str, World], floor: tuple[ProxyServer, Target], connections: list[int],
        duration: int, folder: Path, upstream_ms: int) -> Points:
    names = list(modes)
    print(f"\n== {label}: req/s, median ms, p99 ms, errors, CPU ms per request; each point {duration:g} s", flush=True)
    per_mode = {name: targets(world) for name, world in modes.items()}
    for name in names:  # warm up: page cache, byte code, every worker's caches
        for target in per_mode[name]:
            wrk(target, 4, 2, folder, modes[name].proxy)
    wrk(floor[1], 4, 2, folder, floor[0])
    print(f"{'route':34} {'conn':>4}  {'bare python CGI (floor)':>36}  "
          + "  ".join(f"{n:>36}" for n in names) + "  " + "  ".join(f"{n[:11] + ' / floor':>19}" for n in names))
    rows = [(route.name, index) for index, route in enumerate(per_mode[names[0]])]
    if upstream_ms:
        rows.append((f"{per_mode[names[0]][1].name}, +{upstream_ms} ms", 1))
    points: Points = {}
    for name, index in rows:
        if "+" in name:  # DigitalOcean answering as slowly as a real API across the internet
            for world in modes.values():
                world.stand_in.fail_next("/v2/databases/", None, delay_seconds=upstream_ms / 1000, times=0)
        for c in connections:
            base = wrk(floor[1], c, duration, folder, floor[0])
            got = {mode: wrk(per_mode[mode][index], c, duration, folder, modes[mode].proxy) for mode in names}
            print(f"{name:34} {c:4d}  {base.cell()}  " + "  ".join(got[n].cell() for n in names)
                  + "  " + "  ".join(ratio(got[n], base) for n in names), flush=True)
            points[name, c] = {FLOOR: base, **got}
    return points


def ratio(got: Figures, floor: Figures) -> str:
    if not floor.rps or not floor.p50_ms:
        return f"{'-':>19}"
    return f"{got.rps / floor.rps:6.1f}x {got.p50_ms / floor.p50_ms:5.2f}x p50"


def summary(results: dict[str, Points], replicas: list[str], load_at_start: float) -> None:
    """Issue 14's targets against this run's figures: PASS, or short, with the numbers."""
    print(f"\n== Summary: issue 14's targets, from this run ({os.cpu_count()} CPUs, load average "
          f"{load_at_start:.2f} at start; the targets are stated for 2 cores, SQLite)")
    for backend, points in results.items():
        note = "" if backend == "SQLite" else " (same thresholds, for reference)"
        for route in (EXCHANGE, READ):
            at = points.get((route, 32))
            if at is None or not at[FLOOR].rps:
                print(f"  -      persistent, {backend}, {route}, 32 connections: not measured")
                continue
            got, base = at["persistent"], at[FLOOR]
            times = got.rps / base.rps
            if route == EXCHANGE:
                print(f"  {verdict(times >= 6 and got.errors == 0)}  persistent, {backend}, {route}, 32 connections: "
                      f"{got.rps:.0f}/s = {times:.1f}x the floor's {base.rps:.0f}/s (target >= 6x), "
                      f"{got.errors} errors (target 0){note}")
            else:  # the throughput target is the exchange's; the stand-in answering this one shares the cores
                print(f"  info   persistent, {backend}, {route}, 32 connections: {got.rps:.0f}/s = {times:.1f}x the "
                      f"floor's {base.rps:.0f}/s, {got.errors} errors (no throughput target: the DigitalOcean "
                      "stand-in answering it runs on the same cores)")
        for mode, bound, target in (("persistent", 0.25, "< 0.25x"), ("CGI", 5.5, "<= 5.5x")):
            for route in (EXCHANGE, READ):
                at = points.get((route, 1))
                if at is None or not at[FLOOR].p50_ms:
                    print(f"  -      {mode}, {backend}, {route}, 1 connection: not measured")
                    continue
                got, base = at[mode], at[FLOOR]
                times = got.p50_ms / base.p50_ms
                passed = times < bound if mode == "persistent" else times <= bound
                print(f"  {verdict(passed)}  {mode}, {backend}, {route}, 1 connection: median {got.p50_ms:.2f} ms = "
                      f"{times:.2f}x the floor's {base.p50_ms:.2f} ms (target {target}), {got.errors} errors{note}")
    for line in replicas:
        print(f"  info   {line}")


def verdict(passed: bool) -> str:
    return "PASS " if passed else "short"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5, help="seconds per point")
    parser.add_argument("--connections", default="1,8,32,64")
    parser.add_argument("--sqlite-only", action="store_true", help="skip the PostgreSQL run and the replicas")
    parser.add_argument("--compare-sync", action="store_true",
                        help="also persistent mode with single-threaded workers (WID_THREADS=1)")
    parser.add_argument("--upstream-ms", type=int, default=100,
                        help="then the database read again with the stand-in answering this much later (0: skip)")
    parser.add_argument("--replica-connections", default="8,32,64",
                        help="total connections for the two replicas, split between them (empty: skip)")
    parser.add_argument("--replica-modes", default="persistent,cgi", help="modes of the two replicas (empty: skip)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: scripts/install.sh --test (Debian package wrk)")
    connections = [int(c) for c in args.connections.split(",")]
    replica_connections = sorted(int(c) for c in args.replica_connections.split(",") if c)
    replica_modes = [m for m in args.replica_modes.split(",") if m]
    if any(c < 2 for c in replica_connections) or not set(replica_modes) <= {"persistent", "cgi"}:
        raise SystemExit("--replica-connections are totals of at least 2; --replica-modes: persistent, cgi")
    folder = Path(tempfile.mkdtemp(prefix="wid-bench-wrk-"))
    load_at_start = os.getloadavg()[0]
    print(f"{os.cpu_count()} CPUs; load average {load_at_start:.2f} at start")

    pg = None if args.sqlite_only else PostgresServer()
    if pg is not None:
        pg.start()
    floor = start_floor()
    results: dict[str, Points] = {}
    replicas: list[str] = []
    try:
        for backend in [None, pg] if pg is not None else [None]:
            def database(server: PostgresServer | None = backend) -> dict[str, str]:  # each stack its own
                return {"DATABASE_URI": server.fresh_database()} if server is not None else {}

            label = "SQLite" if backend is None else "PostgreSQL"
            modes: dict[str, World] = {}
            print(f"\n-- {label}: starting a CGI and a persistent stack, connecting a team through each", flush=True)
            try:  # each stack is stopped, whatever happens after it started
                modes["CGI"] = start("cgi", "cgi", database())
                modes["persistent"] = start("persistent", "persistent", database())
                if args.compare_sync:
                    modes["persistent sync"] = start("sync", "persistent", {**database(), "WID_THREADS": "1"})
                at_start = {n: rss_mb(w) for n, w in modes.items() if n != "CGI"}
                results[label] = run(label, modes, floor, connections, args.duration, folder, args.upstream_ms)
                for name, mb in at_start.items():
                    print(f"{name}: uWSGI workers' RSS {mb:.0f} MB at start, {rss_mb(modes[name]):.0f} MB after")
            finally:
                for world in modes.values():
                    world.stop()
        if pg is not None and replica_connections:
            for mode in replica_modes:
                replicas += run_replicas(pg, mode, replica_connections, args.duration, folder)
    finally:
        floor[0].stop()
        if pg is not None:
            pg.stop()
        shutil.rmtree(folder, ignore_errors=True)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    summary(results, replicas, load_at_start)


if __name__ == "__main__":
    main()

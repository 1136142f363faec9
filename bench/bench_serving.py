"""Serving modes side by side: persistent (gunicorn) vs CGI vs a bare Python CGI, all behind Caddy, with wrk.

Starts the proxy as `make run` does, once per mode (WID_MODE=cgi: Caddy + fcgiwrap; WID_MODE=persistent:
Caddy + gunicorn, WID_WORKERS and WID_THREADS default) and database (SQLite, then PostgreSQL), each with
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
persistent / floor. Req/s depend on what else the machine runs; CPU ms per request does not: 1000 / it
is the requests per second one core gives (docs/operator.md sizes replicas with it). CGI processes are
reaped by the kernel under fcgiwrap, which drops their CPU time: the CGI columns have none. The
DigitalOcean stand-in is Python in this process: the database read waits on it (its CPU is not
counted). Also prints the gunicorn workers' memory before and after. Figures only, nothing is
asserted; wrk and the stand-in share the machine's cores with the proxy.

Targets (issue 14): persistent at 32 connections >= 6x the floor's req/s with zero errors; medians at
one connection under a quarter of the floor's.

Usage: .venv/bin/python bench/bench_serving.py [--duration S] [--connections 1,8,32,64] [--sqlite-only]
                                               [--compare-sync] [--upstream-ms MS]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devkit.do_world import DATABASE_UUID, World
from devkit.proxy import ProxyServer, child_pids, command_line
from tests.harness import PostgresServer

ROLE_SOURCE = "ex-database-and-spaces-keys-access"
ROLE_TARGET = "database-and-spaces-keys-access"
WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK {"requests":%d,"us":%d,"p50":%d,"p99":%d,"status":%d,"socket":%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), e.status,
    e.connect + e.read + e.write + e.timeout))
end
"""


@dataclass
class Figures:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_ms: float | None  # CPU time of the serving processes (Caddy included) per request answered

    def cell(self) -> str:
        cpu = "     -" if self.cpu_ms is None else f"{self.cpu_ms:6.2f}"
        return f"{self.rps:6.0f}/s {self.p50_ms:7.2f} {self.p99_ms:8.2f} {self.errors:4d} {cpu}"


@dataclass
class Target:
    name: str
    url: str
    method: str
    path: str
    headers: dict[str, str]
    body: str = ""


def lua(target: Target, folder: Path) -> Path:
    lines = [f"wrk.method = {json.dumps(target.method)}", f"wrk.path = {json.dumps(target.path)}"]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in target.headers.items()]
    if target.body:
        lines.append(f"wrk.body = {json.dumps(target.body)}")
    path = folder / f"{abs(hash((target.name, target.url, target.path)))}.lua"
    path.write_text("\n".join(lines) + "\n" + WRK_DONE)
    return path


def wrk(target: Target, connections: int, duration: int, folder: Path, server: ProxyServer) -> Figures:
    command = ["wrk", "-t", str(min(2, connections)), "-c", str(connections), "-d", f"{duration}s",
               "--timeout", "30s", "-s", str(lua(target, folder)), target.url]
    settle(server)
    cpu_before = cpu_seconds(server)
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 120)
    cpu = cpu_seconds(server) - cpu_before
    if done.returncode != 0:
        raise SystemExit(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    line = next(line for line in done.stdout.splitlines() if line.startswith("WRK "))
    result = json.loads(line[4:])
    # wrk counts non-2xx/3xx answers as status errors; 4xx are not expected here either.
    # fcgiwrap lets the kernel reap CGI processes (SIGCHLD ignored), which drops their CPU time: none for CGI.
    cpu_ms = 1000 * cpu / max(1, result["requests"]) if server.env["WID_MODE"] == "persistent" else None
    return Figures(result["requests"] / (result["us"] / 1e6), result["p50"] / 1000, result["p99"] / 1000,
                   result["status"] + result["socket"], cpu_ms)


def tree(server: ProxyServer) -> list[int]:
    """run.sh and every process under it."""
    assert server.process is not None
    found, pending = [], [server.process.pid]
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending.extend(child_pids(pid))
    return found


def settle(server: ProxyServer, timeout: float = 600) -> None:
    """Wait until no CGI process of an earlier point still runs (wrk leaves requests that Caddy gave up on
    but fcgiwrap runs to their end), so that no point measures the previous one's backlog."""
    deadline = time.monotonic() + timeout
    while any("/cgi-bin/" in " ".join(command_line(pid)) for pid in tree(server)):
        if time.monotonic() > deadline:
            raise SystemExit(f"{server.url} still runs CGI processes after {timeout:g} s")
        time.sleep(0.2)


def cpu_seconds(server: ProxyServer) -> float:
    """CPU time used so far by what run.sh started (Caddy, gunicorn's master and workers, and what exited
    and was reaped by them). Unlike req/s, this does not depend on what else the machine is running."""
    total = 0
    for pid in tree(server):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        total += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return total / os.sysconf("SC_CLK_TCK")


def rss_mb(world: World) -> float:
    total = 0
    for pid in world.proxy.worker_pids():
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def start(name: str, mode: str, env: dict[str, str]) -> World:
    return World.start(Path(tempfile.mkdtemp(prefix=f"wid-bench-{name}-")) / "data",
                       {"WID_UPSTREAM_TIMEOUT": "30", **env}, mode=mode)


def targets(world: World) -> list[Target]:
    team = world.connect_team("Bench Team")
    world.stand_in.add_database(team.uuid, "backend", ["my-tag"], uuid=DATABASE_UUID)
    workload = world.jwt(team.uuid, ROLE_SOURCE, kind="workload", ttl=3600)
    role = world.jwt(team.uuid, ROLE_TARGET, ttl=3600)
    body = json.dumps({"aud": f"api://DigitalOcean?actx={team.uuid}",
                       "sub": f"actx:{team.uuid}:role:{ROLE_TARGET}", "ttl": 300})
    return [Target("POST /v1/oidc/issue", world.url, "POST", "/v1/oidc/issue",
                   {"Authorization": f"Bearer {workload}", "Content-Type": "application/json"}, body),
            Target("GET /v2/databases/{uuid}", world.url, "GET", f"/v2/databases/{DATABASE_UUID}",
                   {"Authorization": f"Bearer {role}"})]


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
        duration: int, folder: Path, upstream_ms: int) -> None:
    names = list(modes)
    print(f"\n== {label}: req/s, median ms, p99 ms, errors, CPU ms per request; each point {duration:g} s")
    print(f"{'route':34} {'conn':>4}  {'bare python CGI (floor)':>36}  "
          + "  ".join(f"{n:>36}" for n in names) + "  " + "  ".join(f"{n[:11] + ' / floor':>19}" for n in names[1:]))
    per_mode = {name: targets(world) for name, world in modes.items()}
    for name in names:  # warm up: page cache, byte code, every worker's caches
        for target in per_mode[name]:
            wrk(target, 4, 2, folder, modes[name].proxy)
    wrk(floor[1], 4, 2, folder, floor[0])
    rows = [(route.name, index) for index, route in enumerate(per_mode[names[0]])]
    if upstream_ms:
        rows.append((f"{per_mode[names[0]][1].name}, +{upstream_ms} ms", 1))
    for name, index in rows:
        if "+" in name:  # DigitalOcean answering as slowly as a real API across the internet
            for world in modes.values():
                world.stand_in.fail_next("/v2/databases/", None, delay_seconds=upstream_ms / 1000, times=0)
        for c in connections:
            base = wrk(floor[1], c, duration, folder, floor[0])
            got = {mode: wrk(per_mode[mode][index], c, duration, folder, modes[mode].proxy) for mode in names}
            print(f"{name:34} {c:4d}  {base.cell()}  " + "  ".join(got[n].cell() for n in names)
                  + "  " + "  ".join(ratio(got[n], base) for n in names[1:]), flush=True)


def ratio(got: Figures, floor: Figures) -> str:
    if not floor.rps or not floor.p50_ms:
        return f"{'-':>19}"
    return f"{got.rps / floor.rps:6.1f}x {got.p50_ms / floor.p50_ms:5.2f}x p50"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5, help="seconds per point")
    parser.add_argument("--connections", default="1,8,32,64")
    parser.add_argument("--sqlite-only", action="store_true", help="skip the PostgreSQL run")
    parser.add_argument("--compare-sync", action="store_true",
                        help="also persistent mode with gunicorn's sync workers (WID_THREADS=1)")
    parser.add_argument("--upstream-ms", type=int, default=100,
                        help="then the database read again with the stand-in answering this much later (0: skip)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: scripts/install.sh --test (Debian package wrk)")
    connections = [int(c) for c in args.connections.split(",")]
    folder = Path(tempfile.mkdtemp(prefix="wid-bench-wrk-"))
    print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f} at start")

    pg = None if args.sqlite_only else PostgresServer()
    if pg is not None:
        pg.start()
    floor = start_floor()
    try:
        for backend in [None, pg] if pg is not None else [None]:
            def database(server: PostgresServer | None = backend) -> dict[str, str]:  # each stack its own
                return {"DATABASE_URI": server.fresh_database()} if server is not None else {}

            modes: dict[str, World] = {}
            try:  # each stack is stopped, whatever happens after it started
                modes["CGI"] = start("cgi", "cgi", database())
                modes["persistent"] = start("persistent", "persistent", database())
                if args.compare_sync:
                    modes["persistent sync"] = start("sync", "persistent", {**database(), "WID_THREADS": "1"})
                at_start = {n: rss_mb(w) for n, w in modes.items() if n != "CGI"}
                run("SQLite" if backend is None else "PostgreSQL", modes, floor, connections, args.duration, folder,
                    args.upstream_ms)
                for name, mb in at_start.items():
                    print(f"{name}: gunicorn workers' RSS {mb:.0f} MB at start, {rss_mb(modes[name]):.0f} MB after")
            finally:
                for world in modes.values():
                    world.stop()
    finally:
        floor[0].stop()
        if pg is not None:
            pg.stop()
        shutil.rmtree(folder, ignore_errors=True)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()

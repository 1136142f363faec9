"""Load through Caddy with wrk, for bench_serving.py and bench_audit.py: the proxy's stacks, the requests,
the figures wrk reports and the CPU time each process spent meanwhile (read from /proc)."""

from __future__ import annotations

import json
import os
import resource
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
EXCHANGE = "POST /v1/oidc/issue"
READ = "GET /v2/databases/{uuid}"
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
    requests: int
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


@dataclass
class Usage:
    """CPU seconds spent during a run, by whom, and the run's wall time."""

    stacks: list[float]  # each stack's run.sh and every process under it
    postgres: float  # every PostgreSQL process (the postmaster's tree)
    this: float  # this process: the DigitalOcean stand-in's threads, while wrk runs
    wrk: float
    machine: float  # every process on the machine (/proc/stat), other users' included
    wall: float

    def since(self, before: Usage) -> Usage:
        return Usage([a - b for a, b in zip(self.stacks, before.stacks, strict=True)], self.postgres - before.postgres,
                     self.this - before.this, self.wrk - before.wrk, self.machine - before.machine,
                     self.wall - before.wall)

    def cores(self, seconds: float) -> float:
        """How many cores `seconds` of CPU time kept busy over the run."""
        return seconds / self.wall if self.wall else 0.0


def lua(target: Target, folder: Path) -> Path:
    lines = [f"wrk.method = {json.dumps(target.method)}", f"wrk.path = {json.dumps(target.path)}"]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in target.headers.items()]
    if target.body:
        lines.append(f"wrk.body = {json.dumps(target.body)}")
    path = folder / f"{abs(hash((target.name, target.url, target.path)))}.lua"
    path.write_text("\n".join(lines) + "\n" + WRK_DONE)
    return path


def wrk(target: Target, connections: int, duration: int, folder: Path, server: ProxyServer) -> Figures:
    return wrk_at_once([(target, connections, server)], duration, folder)[0][0]


def wrk_at_once(runs: list[tuple[Target, int, ProxyServer]], duration: int, folder: Path,
                postgres: PostgresServer | None = None) -> tuple[list[Figures], Usage]:
    """One wrk process per (target, connections, stack), all started together; each stack's figures and
    the CPU time spent meanwhile."""
    servers = [server for _, _, server in runs]
    settle()
    before = snapshot(servers, postgres)
    processes = [subprocess.Popen(["wrk", "-t", str(min(2, c)), "-c", str(c), "-d", f"{duration}s", "--timeout",
                                   "30s", "-s", str(lua(target, folder)), target.url],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for target, c, _ in runs]
    try:
        outputs = [process.communicate(timeout=duration + 120) for process in processes]
    finally:  # a wrk that hangs past its duration is not left behind
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    usage = snapshot(servers, postgres).since(before)
    figures = []
    for process, (out, err), spent, server in zip(processes, outputs, usage.stacks, servers, strict=True):
        if process.returncode != 0:
            raise SystemExit(f"wrk failed ({process.returncode}): {err.strip() or out.strip()}")
        result = json.loads(next(line for line in out.splitlines() if line.startswith("WRK "))[4:])
        # wrk counts non-2xx/3xx answers as status errors; 4xx are not expected here either.
        # fcgiwrap lets the kernel reap CGI processes (SIGCHLD ignored), which drops their CPU time: none for CGI.
        cpu_ms = 1000 * spent / max(1, result["requests"]) if server.env["WID_MODE"] == "persistent" else None
        figures.append(Figures(result["requests"] / (result["us"] / 1e6), result["p50"] / 1000,
                               result["p99"] / 1000, result["status"] + result["socket"], result["requests"], cpu_ms))
    return figures, usage


def tree(pid: int) -> list[int]:
    """`pid` and every process under it."""
    found, pending = [], [pid]
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending.extend(child_pids(pid))
    return found


def settle(timeout: float = 600) -> None:
    """Wait until no CGI process of an earlier point still runs, on any stack a benchmark started (data dirs
    named wid-bench-*): wrk leaves requests that Caddy gave up on but fcgiwrap runs to their end, and those
    of the CGI stack's point would otherwise take the cores from the persistent stack's point after it."""
    deadline = time.monotonic() + timeout
    while any(_bench_cgi(pid) for pid in os.listdir("/proc") if pid.isdigit()):
        if time.monotonic() > deadline:
            raise SystemExit(f"CGI processes of an earlier point still run after {timeout:g} s")
        time.sleep(0.2)


def _bench_cgi(pid: str) -> bool:
    line = " ".join(command_line(int(pid)))
    return "/cgi-bin/" in line and "/wid-bench-" in line


def tree_cpu_seconds(pid: int) -> float:
    """CPU time used so far by `pid` and the processes under it (and what exited and was reaped by them).
    Unlike req/s, this does not depend on what else the machine is running."""
    total = 0
    for member in tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        total += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return total / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds(postgres: PostgresServer) -> float:
    """The postmaster's tree: the backends serving each connection, and its background processes."""
    return tree_cpu_seconds(int((postgres.dir / "data" / "postmaster.pid").read_text().split()[0]))


def machine_busy_seconds() -> float:
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def snapshot(servers: list[ProxyServer], postgres: PostgresServer | None) -> Usage:
    """CPU seconds used so far; wrk's are this process's reaped children's (nothing else is reaped meanwhile)."""
    mine, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    stacks = []
    for server in servers:
        assert server.process is not None
        stacks.append(tree_cpu_seconds(server.process.pid))
    return Usage(stacks, postgres_cpu_seconds(postgres) if postgres is not None else 0.0,
                 mine.ru_utime + mine.ru_stime, children.ru_utime + children.ru_stime, machine_busy_seconds(),
                 time.monotonic())


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
    """An exchange and a database read (the articles' RBAC) for a team connected through the OAuth flow."""
    team = world.connect_team("Bench Team")
    world.stand_in.add_database(team.uuid, "backend", ["my-tag"], uuid=DATABASE_UUID)
    workload = world.jwt(team.uuid, ROLE_SOURCE, kind="workload", ttl=3600)
    role = world.jwt(team.uuid, ROLE_TARGET, ttl=3600)
    body = json.dumps({"aud": f"api://DigitalOcean?actx={team.uuid}",
                       "sub": f"actx:{team.uuid}:role:{ROLE_TARGET}", "ttl": 300})
    return [Target(EXCHANGE, world.url, "POST", "/v1/oidc/issue",
                   {"Authorization": f"Bearer {workload}", "Content-Type": "application/json"}, body),
            Target(READ, world.url, "GET", f"/v2/databases/{DATABASE_UUID}", {"Authorization": f"Bearer {role}"})]

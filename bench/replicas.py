"""Two replicas sharing one PostgreSQL database, driven at once: bench_serving.py's last part.

Replica A is a stack as bench_serving.py starts them (World: Caddy + uWSGI or fcgiwrap, its own data
directory, a fresh database); replica B is a second complete stack started as production starts one
(docs/operator.md "Run several replicas"): its own data directory, Caddy and workers, and the same
DATABASE_URI, WID_SECRET_KEY, THIS_ENDPOINT and OAuth client. Both forward to the same DigitalOcean stand-in.
Each point runs one replica alone at C connections, then both at once with C split between them (two wrk
processes, C/2 each), so the same load either way and the ratio both / alone says what a second replica on
the same cores adds.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

from bench.load import Figures, Usage, start, targets, wrk, wrk_at_once
from devkit.proxy import ProxyServer
from tests.harness import PostgresServer

# What every replica shares (docs/operator.md "Run several replicas"), and where they forward.
SHARED = ("DATABASE_URI", "WID_SECRET_KEY", "THIS_ENDPOINT", "DIGITALOCEAN_OAUTH_CLIENT_ID",
          "DIGITALOCEAN_OAUTH_CLIENT_SECRET", "DIGITALOCEAN_API_URL", "DIGITALOCEAN_OAUTH_URL", "WID_UPSTREAM_TIMEOUT")
BUSY = 0.9  # the share of the machine's cores above which a point is called CPU-bound
OTHERS = 0.05  # the share of the cores that processes outside the benchmark may take unmentioned


def second_replica(first: ProxyServer, mode: str) -> ProxyServer:
    server = ProxyServer(Path(tempfile.mkdtemp(prefix=f"wid-bench-replica-b-{mode}-")) / "data",
                         {name: first.env[name] for name in SHARED}, mode=mode)
    server.start()
    return server


def run_replicas(postgres: PostgresServer, mode: str, connections: list[int], duration: int,
                 folder: Path) -> list[str]:
    """Prints every point; returns a line per route (its largest point) for the summary."""
    label = "persistent" if mode == "persistent" else "CGI"
    print(f"\n-- starting two {label} replicas on one PostgreSQL database, connecting a team", flush=True)
    world = start(f"replica-a-{mode}", mode, {"DATABASE_URI": postgres.fresh_database()})
    other: ProxyServer | None = None
    try:
        other = second_replica(world.proxy, mode)
        first = targets(world)
        second = [dataclasses.replace(target, url=other.url) for target in first]
        for a, b in zip(first, second, strict=True):  # warm up: page cache, byte code, every worker's caches
            wrk(a, 4, 2, folder, world.proxy)
            wrk(b, 4, 2, folder, other)
        print(f"\n== Two replicas sharing one PostgreSQL database, {label} mode, on this machine's {os.cpu_count()} "
              f"CPUs: one replica alone at C connections, then both with C/2 each; each point {duration:g} s")
        print(f"{'route':26} {'conn':>4}  {'one replica alone':>36}  {'replica A (C/2)':>36}  "
              f"{'replica B (C/2)':>36}  {'both':>8} {'errors':>6} {'both/alone':>10}")
        lines = []
        for index, target in enumerate(first):
            for c in connections:
                (alone,), used_alone = wrk_at_once([(target, c, world.proxy)], duration, folder, postgres)
                pair, used = wrk_at_once([(target, c // 2, world.proxy), (second[index], c - c // 2, other)],
                                         duration, folder, postgres)
                both = sum(f.rps for f in pair)
                errors = sum(f.errors for f in pair)
                print(f"{target.name:26} {c:4d}  {alone.cell()}  {pair[0].cell()}  {pair[1].cell()}  "
                      f"{both:6.0f}/s {errors:6d} {both / alone.rps if alone.rps else 0:9.2f}x")
                print(f"    alone: {cpu_line(used_alone, [alone], mode)}")
                print(f"    both:  {cpu_line(used, pair, mode)}", flush=True)
            lines.append(f"two replicas, {label}, {target.name}, {c} connections ({c // 2} + {c - c // 2}): "
                         f"{both:.0f}/s together = {both / alone.rps if alone.rps else 0:.2f}x one replica alone "
                         f"({alone.rps:.0f}/s), {errors} errors; {limit(used, pair, mode)}")
        print("what limits it (each route's largest point):")
        for line in lines:
            print(f"  {line}")
        return lines
    finally:
        if other is not None:
            other.stop()
        world.stop()


def rest(used: Usage) -> float:
    """CPU seconds nobody measured here: CGI processes (reaped without their times) and other users'."""
    return max(0.0, used.machine - sum(used.stacks) - used.postgres - used.this - used.wrk)


def cpu_line(used: Usage, figures: list[Figures], mode: str) -> str:
    requests = max(1, sum(f.requests for f in figures))
    other = "CGI processes and other users" if mode == "cgi" else "other users"
    cores = [f"replica{'s' if len(used.stacks) > 1 else ''} {' + '.join(f'{used.cores(s):.2f}' for s in used.stacks)}",
             f"PostgreSQL {used.cores(used.postgres):.2f}", f"stand-in {used.cores(used.this):.2f}",
             f"wrk {used.cores(used.wrk):.2f}", f"{other} {used.cores(rest(used)):.2f}"]
    per_request = [f"PostgreSQL {1000 * used.postgres / requests:.2f}"]
    if mode == "persistent":
        per_request.append(f"replicas {1000 * sum(used.stacks) / requests:.2f}")
    else:
        per_request += [f"replicas' Caddy + fcgiwrap {1000 * sum(used.stacks) / requests:.2f}",
                        f"{other} {1000 * rest(used) / requests:.2f}"]
    return (f"cores busy: {', '.join(cores)} = {used.cores(used.machine):.2f} of {os.cpu_count()}; "
            f"CPU ms per request: {', '.join(per_request)}")


def limit(used: Usage, figures: list[Figures], mode: str) -> str:
    """What bounds the pair's figure, and the CPU per request that sizes real replicas."""
    requests = sum(f.requests for f in figures)
    if not requests:
        return "no request was answered within the point"
    cpus = os.cpu_count() or 1
    busy = used.cores(used.machine) / cpus
    replica_ms = 1000 * (sum(used.stacks) + (rest(used) if mode == "cgi" else 0)) / requests
    database_ms = 1000 * used.postgres / requests
    sizing = (f"a replica spends {replica_ms:.2f} ms of CPU per request"
              f"{' at most (the CGI processes are counted as all the machine did besides)' if mode == 'cgi' else ''}, "
              f"{1000 / replica_ms if replica_ms else 0:.0f}/s per core; PostgreSQL {database_ms:.2f} ms, "
              f"{1000 / database_ms if database_ms else 0:.0f}/s per core")
    others = used.cores(rest(used))
    if mode == "persistent" and others > OTHERS * cpus:
        sizing += f" (other processes took {others:.2f} cores meanwhile: the req/s are low by their share)"
    if busy >= BUSY:
        return (f"CPU-bound: the {cpus} cores were {100 * busy:.0f}% busy, both replicas sharing them (and PostgreSQL,"
                f" the stand-in and wrk): on machines of their own each replica brings its cores; {sizing}")
    return (f"not CPU-bound: the cores were {100 * busy:.0f}% busy, so requests waited elsewhere (the database's "
            f"locks, the stand-in, the workers' threads); {sizing}")

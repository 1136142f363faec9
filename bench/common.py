"""Shared by the benchmark scripts: a real proxy (as `make run` starts it) and latency statistics."""

from __future__ import annotations

import http.client
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devkit.proxy import ProxyServer


def start_proxy(env: dict[str, str] | None = None) -> ProxyServer:
    server = ProxyServer(Path(tempfile.mkdtemp(prefix="wid-bench-")) / "data", env)
    server.start()
    return server


Request = Callable[[http.client.HTTPConnection], int]


def get(path: str, headers: dict[str, str] | None = None) -> Request:
    def run(conn: http.client.HTTPConnection) -> int:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        response.read()
        return response.status

    return run


def measure(port: int, request: Request, count: int, concurrency: int = 1, expect: int = 200) -> dict[str, float]:
    """Run `count` requests over `concurrency` keep-alive connections; latency in milliseconds."""
    latencies: list[float] = []
    lock = threading.Lock()
    failures: list[int] = []

    def worker(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = []
        for _ in range(n):
            started = time.perf_counter()
            status = request(conn)
            mine.append((time.perf_counter() - started) * 1000)
            if status != expect:
                failures.append(status)
        conn.close()
        with lock:
            latencies.extend(mine)

    per = count // concurrency
    threads = [threading.Thread(target=worker, args=(per,)) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise SystemExit(f"{len(failures)} requests answered {sorted(set(failures))}, expected {expect}")
    latencies.sort()
    return {
        "requests": len(latencies),
        "concurrency": concurrency,
        "median_ms": statistics.median(latencies),
        "p95_ms": latencies[int(len(latencies) * 0.95) - 1],
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1],
        "rps": len(latencies) / elapsed,
    }


def report(name: str, result: dict[str, float]) -> None:
    print(f"{name:44} n={int(result['requests']):5} c={int(result['concurrency']):2}  "
          f"median {result['median_ms']:7.2f} ms  p95 {result['p95_ms']:7.2f} ms  p99 {result['p99_ms']:7.2f} ms  "
          f"{result['rps']:8.0f} req/s")

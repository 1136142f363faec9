"""The proxy's Prometheus metrics (docs/operator.md, "Metrics"): what the code counts, in one place.

Every function here does nothing until `enable()` is called, and only persistent mode's server master
calls it (lib/wid/web/serve.py, when WID_METRICS_TOKEN is set): a CGI process imports this module
(standard library only) and pays one test per call, never prometheus_client nor a file.

Enabled, prometheus_client runs in multiprocess mode: each worker writes its figures to memory-mapped files
in a private directory (emptied before the workers fork), and a scrape, whichever worker answers it, adds
up every worker's files, including those of workers that have exited (counters never go back).

Labels are bounded by construction: route families, the methods the proxy serves, status codes, audit
event names and decisions, service names fixed in the code, cache names. Never a context, a sub, a jti, a
team or a path: callers pass only such names (wid.web.app names a method it does not serve "other").
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

# The seconds the latency histograms tell apart: from a cached answer to an upstream timing out.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_metrics: dict[str, Any] | None = None  # name -> prometheus_client metric, once enabled
_directory: str | None = None


def enable(directory: str) -> None:
    """Start counting in this process and every process it forks (once, in the server's master).

    The directory is emptied first: files left by an earlier run would be added to this one's figures.
    """
    global _metrics, _directory
    if _metrics is not None:
        return
    import shutil  # here only: it loads bz2 and lzma, milliseconds a CGI process must not pay

    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory, mode=0o700)
    # prometheus_client reads its directory from the environment when it is imported and when it writes.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    from prometheus_client import Counter, Histogram  # persistent mode only, once per server

    _directory = directory
    _metrics = {
        "requests": Counter("wid_http_requests_total", "HTTP requests answered by the proxy's Python routes, by "
                            "route family, method and status", ["route", "method", "status"]),
        "latency": Histogram("wid_http_request_duration_seconds", "Time from a request's arrival at a worker to "
                             "its response headers, by route family", ["route"], buckets=LATENCY_BUCKETS),
        "decisions": Counter("wid_decisions_total", "Audited decisions (rows of the audit log), by event and "
                             "outcome (allow, deny, info)", ["event", "outcome"]),
        "upstream": Counter("wid_upstream_requests_total", "Requests to upstream services, by service and status "
                            "(error: no answer; timeout: none in time)", ["service", "status"]),
        "upstream_latency": Histogram("wid_upstream_request_duration_seconds", "Time until an upstream service's "
                                      "response headers (or the failure), by service", ["service"],
                                      buckets=LATENCY_BUCKETS),
        "database_errors": Counter("wid_database_errors_total", "Database operations that failed because the "
                                   "database could not be reached or used (each one a 503)"),
        "cache": Counter("wid_cache_requests_total", "Lookups in the per-process caches, by cache and result "
                         "(hit, miss)", ["cache", "result"]),
    }


def enabled() -> bool:
    return _metrics is not None


def exposition() -> bytes:
    """Every worker's figures added up, in Prometheus' text exposition format (version 0.0.4)."""
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, str(_directory))
    return generate_latest(registry)


def request(route: str, method: str, status: int, seconds: float) -> None:
    """One answered request; `route` is its route family (the cgi-bin/ script's name)."""
    if _metrics is not None:
        _metrics["requests"].labels(route, method, str(status)).inc()
        _metrics["latency"].labels(route).observe(seconds)


def decision(event: str, outcome: str) -> None:
    """One audit row: its event name and decision, both fixed strings of the code that records it."""
    if _metrics is not None:
        _metrics["decisions"].labels(event, outcome).inc()


def upstream(service: str, status: int | str, seconds: float) -> None:
    """One request to an upstream: `service` is a fixed name (digitalocean_api...), never a host or URL."""
    if _metrics is not None:
        _metrics["upstream"].labels(service, str(status)).inc()
        _metrics["upstream_latency"].labels(service).observe(seconds)


class _Answer(Protocol):
    @property
    def status(self) -> int: ...


A = TypeVar("A", bound=_Answer)


def upstream_call(service: str, call: Callable[[], A], *, timeout: type[Exception], failure: type[Exception]) -> A:
    """Make one upstream request and count it: its status, or `timeout` / `error` for the two exceptions the
    HTTP client raises (wid.net.upstream for trusted upstreams, wid.net.safe_http for the others)."""
    started = time.monotonic()
    try:
        answer = call()
    except timeout:
        upstream(service, "timeout", time.monotonic() - started)
        raise
    except failure:
        upstream(service, "error", time.monotonic() - started)
        raise
    upstream(service, answer.status, time.monotonic() - started)
    return answer


def database_error() -> None:
    if _metrics is not None:
        _metrics["database_errors"].inc()


def cache(name: str, *, hit: bool) -> None:
    if _metrics is not None:
        _metrics["cache"].labels(name, "hit" if hit else "miss").inc()

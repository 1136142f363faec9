"""Persistent mode's server (scripts/run.sh: `wid-serve SOCKET`): uWSGI, from its PyPI wheel
(pyuwsgi), serving wid.web.server's application in pre-forked worker processes on a private unix socket.

Why uWSGI rather than gunicorn (docs/operator.md, "Choose a serving mode"): its HTTP parsing and worker
loop are C, so a worker spends its CPU on the handler. Measured side by side on 2 cores, same Caddy, same
workers and threads, an exchange cost 2.1 ms of the worker's CPU under uWSGI against 3.1 ms under
gunicorn's threaded worker (2.9 ms sync), and 32 connections got 756 exchanges/s against 503/s.

Every value comes from wid.config, validated there (a bad WID_WORKERS stops start-up naming it), and
`--strict` makes uWSGI refuse an option it does not know rather than ignore it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from wid import config, metrics

# Caddy opens a connection per request (a worker closes it after answering): room for a burst of them.
_BACKLOG = 1024


def options(settings: config.Settings, socket: Path) -> list[str]:
    """uWSGI's command line for this configuration."""
    upstream_timeout = int(settings.upstream_timeout)
    return [
        "--strict",
        "--master",
        # HTTP/1.0-style: a worker answers and closes (no worker sits on an idle kept-alive connection).
        "--http-socket", str(socket),
        "--umask", "077",  # the socket (and anything a worker creates) is the service user's: only Caddy connects
        "--listen", str(min(_BACKLOG, _somaxconn())),
        "--processes", str(settings.persistent_workers()),
        # Threads let a worker keep serving while some of its requests wait on DigitalOcean (docs/operator.md).
        "--threads", str(settings.threads),
        "--single-interpreter",
        # Imported once in the master; a worker that dies is replaced by a fork, ready at once.
        "--module", "wid.web.server:application",
        "--need-app",
        # The largest request head uWSGI takes: more than Caddy lets through (Caddyfile, max_header_size).
        "--buffer-size", "65535",
        # No harakiri: it would kill a whole worker, the requests of its other threads with it, for one slow
        # request (a large git push from a slow client). Upstream calls are cut at WID_UPSTREAM_TIMEOUT.
        # SIGTERM: stop accepting, let requests in flight finish for this long, then exit.
        "--hook-master-start", "unix_signal:15 gracefully_kill_them_all",
        "--worker-reload-mercy", str(upstream_timeout + 5),
        "--reload-mercy", str(upstream_timeout + 5),
        # wid.web logs one JSON line per request; uWSGI's own lines (start-up, a worker replaced)
        # stay plain text. No log encoder: it would route the workers' stderr, and so wid.log's lines, through
        # uWSGI's logger and wrap them.
        "--disable-logging",
        # A client (Caddy) that went away mid-answer is not an error worth a line.
        "--ignore-sigpipe", "--ignore-write-errors", "--disable-write-exception",
    ]


def _somaxconn() -> int:
    """The kernel's cap on a listen queue: uWSGI refuses to start asking for more."""
    try:
        return int(Path("/proc/sys/net/core/somaxconn").read_text())
    except (OSError, ValueError):
        return 128


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: wid-serve SOCKET_PATH (scripts/run.sh starts it in persistent mode)")
    try:
        settings = config.settings()
    except config.ConfigError as err:
        raise SystemExit(f"wid: {err}") from None
    if settings.metrics_token:
        # Here, in the master, before the application is imported and workers fork.
        metrics.enable(settings.metrics_dir)
    import pyuwsgi  # the server: only this process imports it

    sys.argv = ["wid-serve", *options(settings, Path(sys.argv[1]))]
    pyuwsgi.run()

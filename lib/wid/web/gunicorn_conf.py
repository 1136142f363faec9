"""Gunicorn's settings in persistent mode (scripts/run.sh: `gunicorn -c python:wid.web.gunicorn_conf ...`).

Every value comes from wid.config, validated there (a bad WID_WORKERS stops start-up naming it).
Gunicorn reads every public module-level name as a setting: helpers here start with an underscore.
"""

from __future__ import annotations

from typing import Any as _Any

from wid import config as _config
from wid import metrics as _metrics

_settings = _config.settings()
if _settings.metrics_token:
    # Here, in the master, before the application is preloaded and workers fork (this module is read once).
    _metrics.enable(_settings.metrics_dir)

wsgi_app = "wid.web.server:application"
workers = _settings.persistent_workers()
# Threads let a worker keep serving while some of its requests wait on DigitalOcean (docs/operator.md);
# WID_THREADS=1 is gunicorn's sync worker, one request per process.
threads = _settings.threads
worker_class = "gthread" if threads > 1 else "sync"
# Caddy keeps idle connections to the socket 60 s (Caddyfile): gunicorn keeps them longer, so it is
# always Caddy that closes one, never gunicorn just as Caddy sends a request on it (a POST would fail).
keepalive = 75
# Import every handler once in the master; a worker that dies is replaced by a fork, ready at once.
preload_app = True
# A worker that stops reporting this long (hung) is killed and replaced: longer than any request may take
# (an upstream call is cut at WID_UPSTREAM_TIMEOUT and becomes a 504).
timeout = int(_settings.upstream_timeout) + 30
# SIGTERM: stop accepting, let requests in flight finish for this long, then exit.
graceful_timeout = int(_settings.upstream_timeout) + 5
# The socket (and anything a worker creates) is private to the service user: only Caddy may connect.
umask = 0o077
# Header names with an underscore are dropped, so none can pose as X-Wid-Family (wid.web.server).
header_map = "drop"
accesslog = None  # wid.web logs one JSON line per request
errorlog = "-"
loglevel = "warning"


def child_exit(server: _Any, worker: _Any) -> None:
    """A worker exited (or was killed): its counts stay in the metrics (wid.metrics)."""
    _metrics.worker_exited(worker.pid)

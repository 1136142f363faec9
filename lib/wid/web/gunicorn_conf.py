"""Gunicorn's settings in persistent mode (scripts/run.sh: `gunicorn -c python:wid.web.gunicorn_conf ...`).

Every value comes from wid.config, validated there (a bad WID_WORKERS stops start-up naming it).
Gunicorn reads every public module-level name as a setting: helpers here start with an underscore.
"""

from __future__ import annotations

from wid import config as _config

_settings = _config.settings()

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

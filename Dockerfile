# The production image: the same Debian 12 packages and the same install script as `make run`
# (scripts/install.sh), served by the same entrypoint (scripts/run.sh) as an unprivileged user.
# Configuration is environment variables only (README.md, "Configuration"); nothing secret is baked in:
#   docker build -t wid .
#   docker run -p 8080:8080 -e THIS_ENDPOINT=https://wid.example.com -e DATABASE_URI=postgresql://... \
#              -e WID_SECRET_KEY=... -e DIGITALOCEAN_OAUTH_CLIENT_ID=... -e DIGITALOCEAN_OAUTH_CLIENT_SECRET=... wid
FROM debian:bookworm-slim

ENV LANG=C.UTF-8 \
    PIP_NO_CACHE_DIR=1 \
    PORT=8080 \
    WID_DATA_DIR=/var/lib/wid

WORKDIR /app

# Only what the service needs at run time; everything else stays out (see also .dockerignore): not tests/,
# bench/ nor devkit/ (the stand-ins and `wid demo`'s walkthrough, which says it runs from a source checkout).
COPY scripts/ scripts/
COPY requirements.lock pyproject.toml Caddyfile ./
COPY lib/ lib/
COPY cgi-bin/ cgi-bin/
COPY rbac-schema/ rbac-schema/

# As root: install.sh installs the Debian packages (Caddy, fcgiwrap, git, python3-venv, ...) and the pinned
# run-time Python packages (requirements.lock only: no test or lint tools; pyuwsgi, persistent mode's uWSGI,
# among them) into /app/.venv. Byte-code is compiled now because the service user cannot write it later (in
# CGI mode Python starts per request). Apt's package lists and caches go, whatever the base image's apt
# settings. The service user owns only its data dir; the code stays root's. docs/operator.md states the
# resulting image size.
RUN scripts/install.sh \
 && .venv/bin/python -m compileall -q lib \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /root/.cache \
 && useradd --uid 10001 --user-group --no-create-home --home-dir /var/lib/wid --shell /usr/sbin/nologin wid \
 && install -d -o wid -g wid -m 0700 /var/lib/wid

USER wid:wid
EXPOSE 8080

# Docker's own probe: liveness from Caddy (App Platform uses its health checks from app.yaml instead).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
  CMD curl -fsS -o /dev/null "http://127.0.0.1:${PORT}/health" || exit 1

# run.sh re-runs install.sh (which finds everything installed), prepares the database and keys
# (`wid setup`), then runs Caddy on $PORT in front of fcgiwrap (WID_MODE=cgi, the default) or uWSGI
# (WID_MODE=persistent: `docker run -e WID_MODE=persistent ...`); SIGTERM stops them all, letting requests
# in flight finish.
ENTRYPOINT ["/app/scripts/run.sh"]

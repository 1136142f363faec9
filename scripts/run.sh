#!/usr/bin/env bash
# `make run`: install what is missing, prepare the database and keys, then serve on $PORT:
# Caddy in front, fcgiwrap running the cgi-bin/ executables. Ctrl-C (or SIGTERM) stops everything.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
"$ROOT/scripts/install.sh" ${WID_INSTALL_FLAGS:-}
# Everything created from here on (data dir, database, socket) is the service user's alone.
umask 077

export PORT=${PORT:-8080}
export WID_DATA_DIR=$(realpath -m "${WID_DATA_DIR:-$ROOT/data}")
export THIS_ENDPOINT=${THIS_ENDPOINT:-http://localhost:$PORT}
export DIGITALOCEAN_API_URL=${DIGITALOCEAN_API_URL:-https://api.digitalocean.com}
export WID_RUN_DIR=$(realpath -m "${WID_RUN_DIR:-$WID_DATA_DIR/run}")
if ! mkdir -p "$WID_RUN_DIR" 2>/dev/null || [[ ! -w "$WID_RUN_DIR" ]]; then
  which=WID_DATA_DIR; [[ "$WID_RUN_DIR" == "$WID_DATA_DIR/run" ]] || which=WID_RUN_DIR
  echo "wid: $which: cannot create or write $WID_RUN_DIR as uid $(id -u); choose a directory this user can write" >&2
  exit 2
fi

"$ROOT/.venv/bin/wid" setup --render-cgi "$WID_RUN_DIR/cgi-bin" --cgi-source "$ROOT/cgi-bin"

# Job control: each background job below is a process group of its own (its group id is $!), so stop() ends
# a job with every process it started (fcgiwrap's workers, the publisher's `sleep` and `wid`) using kill
# alone: the image has no pkill (procps). All of them stay in this script's session.
set -m
fcgi_pid="" caddy_pid="" publisher_pid=""
stop_group() {  # stop_group SIGNAL PGID: signal a job's process group, if it is still there
  [[ -n "$2" ]] && kill -0 -- "-$2" 2>/dev/null && kill "-$1" -- "-$2"
}
stop() {
  trap - INT TERM EXIT
  set +e +m  # +m: no job status lines ("Terminated ...") for the jobs stopped below
  # Caddy first: it stops accepting and lets requests in flight finish.
  stop_group TERM "$caddy_pid" && wait "$caddy_pid"
  stop_group TERM "$publisher_pid"
  # fcgiwrap's workers ignore SIGTERM until their next request (libfcgi), and now none can come.
  stop_group KILL "$fcgi_pid"
  wait
  rm -f "$WID_RUN_DIR/fcgiwrap.sock"
}
trap stop INT TERM EXIT

rm -f "$WID_RUN_DIR/fcgiwrap.sock"
fcgiwrap -c "${WID_CGI_WORKERS:-8}" -s "unix:$WID_RUN_DIR/fcgiwrap.sock" &
fcgi_pid=$!
for _ in $(seq 100); do [[ -S "$WID_RUN_DIR/fcgiwrap.sock" ]] && break; sleep 0.05; done

# Caddy shares a port another process listens on (SO_REUSEPORT): refuse a taken PORT, naming it.
"$ROOT/.venv/bin/wid" config check-port
caddy run --config "$ROOT/Caddyfile" --adapter caddyfile &
caddy_pid=$!

# Another replica may rotate keys: refresh this replica's published JWKS once a minute.
(while sleep "${WID_PUBLISH_INTERVAL:-60}"; do "$ROOT/.venv/bin/wid" keys publish || true; done) &
publisher_pid=$!

echo "wid: serving $THIS_ENDPOINT on port $PORT (data in $WID_DATA_DIR)" >&2
wait -n "$fcgi_pid" "$caddy_pid" "$publisher_pid"

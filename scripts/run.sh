#!/usr/bin/env bash
# `make run`: install what is missing, prepare the database and keys, then serve on $PORT: Caddy in
# front, and behind it the Python routes either as cgi-bin/ executables under fcgiwrap (WID_MODE=cgi,
# the default) or in long-lived uWSGI workers (WID_MODE=persistent). Ctrl-C (or SIGTERM) stops
# everything, letting requests in flight finish.
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

# The mode and worker count, validated by wid.config (a bad value stops here, naming the variable).
serving=$("$ROOT/.venv/bin/wid" config serving)
read -r WID_MODE workers <<<"$serving"
export WID_MODE

"$ROOT/.venv/bin/wid" setup --render-cgi "$WID_RUN_DIR/cgi-bin" --cgi-source "$ROOT/cgi-bin"

# Job control: each background job below is a process group of its own (its group id is $!), so stop() ends
# a job with every process it started (fcgiwrap's or uWSGI's workers, the publisher's `sleep` and `wid`)
# using kill alone: the image has no pkill (procps). All of them stay in this script's session.
set -m
python_pid="" caddy_pid="" publisher_pid=""
stop_group() {  # stop_group SIGNAL PGID: signal a job's process group, if it is still there
  [[ -n "$2" ]] && kill -0 -- "-$2" 2>/dev/null && kill "-$1" -- "-$2"
}
stop() {
  trap - INT TERM EXIT
  set +e +m  # +m: no job status lines ("Terminated ...") for the jobs stopped below
  # Caddy first: it stops accepting and lets requests in flight finish.
  stop_group TERM "$caddy_pid" && wait "$caddy_pid"
  stop_group TERM "$publisher_pid"
  if [[ "$WID_MODE" == persistent ]]; then
    # uWSGI's graceful stop: workers finish what they hold (up to WID_UPSTREAM_TIMEOUT + 5 s).
    stop_group TERM "$python_pid"
  else
    # fcgiwrap's workers ignore SIGTERM until their next request (libfcgi), and now none can come.
    stop_group KILL "$python_pid"
  fi
  wait
  rm -f "$socket"
}
socket="$WID_RUN_DIR/fcgiwrap.sock"
[[ "$WID_MODE" == persistent ]] && socket="$WID_RUN_DIR/wsgi.sock"
trap stop INT TERM EXIT

rm -f "$socket"
if [[ "$WID_MODE" == persistent ]]; then
  "$ROOT/.venv/bin/wid-serve" "$socket" &
else
  fcgiwrap -c "$workers" -s "unix:$socket" &
fi
python_pid=$!
for _ in $(seq 200); do
  [[ -S "$socket" ]] && break
  kill -0 "$python_pid" 2>/dev/null || { echo "wid: the $WID_MODE-mode server exited at start" >&2; exit 1; }
  sleep 0.05
done

# Caddy shares a port another process listens on (SO_REUSEPORT): refuse a taken PORT, naming it.
"$ROOT/.venv/bin/wid" config check-port
caddy run --config "$ROOT/Caddyfile" --adapter caddyfile &
caddy_pid=$!

# Another replica may rotate keys: refresh this replica's published JWKS once a minute.
(while sleep "${WID_PUBLISH_INTERVAL:-60}"; do "$ROOT/.venv/bin/wid" keys publish || true; done) &
publisher_pid=$!

echo "wid: serving $THIS_ENDPOINT on port $PORT in $WID_MODE mode ($workers workers; data in $WID_DATA_DIR)" >&2
wait -n "$python_pid" "$caddy_pid" "$publisher_pid"

#!/usr/bin/env bash
# `make run`: install what is missing, prepare the database and keys, then serve on $PORT:
# Caddy in front, fcgiwrap running the cgi-bin/ executables. Ctrl-C (or SIGTERM) stops everything.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
"$ROOT/scripts/install.sh" ${WID_INSTALL_FLAGS:-}

export PORT=${PORT:-8080}
export WID_DATA_DIR=$(realpath -m "${WID_DATA_DIR:-$ROOT/data}")
export THIS_ENDPOINT=${THIS_ENDPOINT:-http://localhost:$PORT}
export DIGITALOCEAN_API_URL=${DIGITALOCEAN_API_URL:-https://api.digitalocean.com}
export WID_RUN_DIR=$(realpath -m "${WID_RUN_DIR:-$WID_DATA_DIR/run}")
mkdir -p "$WID_RUN_DIR"

"$ROOT/.venv/bin/wid" setup --render-cgi "$WID_RUN_DIR/cgi-bin" --cgi-source "$ROOT/cgi-bin"

pids=()
stop() {
  trap - INT TERM EXIT
  ((${#pids[@]})) && kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap stop INT TERM EXIT

rm -f "$WID_RUN_DIR/fcgiwrap.sock"
fcgiwrap -c "${WID_CGI_WORKERS:-8}" -s "unix:$WID_RUN_DIR/fcgiwrap.sock" &
pids+=($!)
for _ in $(seq 100); do [[ -S "$WID_RUN_DIR/fcgiwrap.sock" ]] && break; sleep 0.05; done

caddy run --config "$ROOT/Caddyfile" --adapter caddyfile &
pids+=($!)

# Another replica may rotate keys: refresh this replica's published JWKS once a minute.
(while sleep "${WID_PUBLISH_INTERVAL:-60}"; do "$ROOT/.venv/bin/wid" keys publish || true; done) &
pids+=($!)

echo "wid: serving $THIS_ENDPOINT on port $PORT (data in $WID_DATA_DIR)" >&2
wait -n "${pids[@]}"

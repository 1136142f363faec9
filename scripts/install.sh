#!/usr/bin/env bash
# Install what the proxy needs, skipping whatever is already there, and say what is being installed:
#   Debian packages (scripts/debian-packages*.txt), then Python packages into .venv (requirements*.lock).
# Usage: scripts/install.sh [--demo | --test]
#   (none)   what the service runs with: debian-packages.txt, requirements.lock (`make run`, the image)
#   --demo   adds what `wid demo` needs: debian-packages-demo.txt, requirements-demo.lock
#   --test   adds the demo's and what the tests and lint need: debian-packages-test.txt, requirements-dev.lock
# Nothing is printed when everything is installed already.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

case "${1:-}" in
  "") purpose="the service" lists=(scripts/debian-packages.txt) locks=(runtime) ;;
  --demo) purpose="the service and \`wid demo\`" lists=(scripts/debian-packages{,-demo}.txt) locks=(runtime demo) ;;
  --test) purpose="the service, \`wid demo\` and the tests"
          lists=(scripts/debian-packages{,-demo,-test}.txt) locks=(runtime demo dev) ;;
  *) echo "install.sh: unknown option ${1}; usage: scripts/install.sh [--demo | --test]" >&2; exit 2 ;;
esac
say() { echo "install.sh: $*" >&2; }

missing=()
for pkg in $(grep -hv '^\s*#' "${lists[@]}"); do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" && continue
  # A command of the same name installed another way (e.g. npm bundled with a nodesource nodejs) counts:
  # installing Debian's package over it would fight the existing one.
  command -v "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    say "missing Debian packages: ${missing[*]}; install them as root (apt-get install ${missing[*]})"
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  SECONDS=0
  say "Debian packages for $purpose: updating the package lists (apt-get update)"
  apt-get update -qq
  say "Debian packages: installing ${#missing[@]} missing (with their dependencies): ${missing[*]}"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  say "Debian packages: done in ${SECONDS}s"
fi

# Python packages: a pinned lock per purpose, each (re)installed only when it changed (a stamp per lock,
# so `make run` after `make test` installs nothing).
declare -A lock_file=([runtime]=requirements.lock [demo]=requirements-demo.lock [dev]=requirements-dev.lock)
declare -A lock_what=([runtime]="the service (what lib/ and cgi-bin/ import)"
                      [demo]="\`wid demo\` (pydo, requests, PyJWT)" [dev]="the tests and lint (pytest, ruff, mypy, ...)")
constraints=()
for name in "${locks[@]}"; do
  file=${lock_file[$name]}
  stamp=".venv/.installed-$name-$(sha256sum "$file" pyproject.toml | sha256sum | cut -c1-16)"
  if [[ ! -f "$stamp" ]]; then
    if [[ ! -x .venv/bin/python ]]; then
      say "Python: creating the virtual environment .venv"
      python3 -m venv .venv
    fi
    SECONDS=0
    say "Python: installing $(grep -cv '^\s*\(#\|$\)' "$file") pinned packages for ${lock_what[$name]} from $file"
    .venv/bin/python -m pip install -q --disable-pip-version-check -r "$file" "${constraints[@]}"
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
    rm -f ".venv/.installed-$name-"*
    touch "$stamp"
    say "Python: done in ${SECONDS}s"
  fi
  constraints+=(-c "$file")  # later locks keep what earlier ones pinned
done

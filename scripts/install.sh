#!/usr/bin/env bash
# Install what the proxy needs, skipping whatever is already there:
#   Debian packages (scripts/debian-packages*.txt) and Python packages into .venv (requirements.lock;
#   with --test also requirements-dev.lock).
# Usage: scripts/install.sh [--test]     (--test adds what the test suite, lint and the demo need)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

lists=(scripts/debian-packages.txt)
[[ "${1:-}" == "--test" ]] && lists+=(scripts/debian-packages-test.txt)

missing=()
for pkg in $(grep -hv '^\s*#' "${lists[@]}"); do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" && continue
  # A command of the same name installed another way (e.g. npm bundled with a nodesource nodejs) counts:
  # installing Debian's package over it would fight the existing one.
  command -v "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "install.sh: missing Debian packages: ${missing[*]}; install them as root (apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "install.sh: installing Debian packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Python packages: the service's pinned lock, and the development one with --test; each is (re)installed
# only when it changed (a stamp per lock, so `make run` after `make test` installs nothing).
[[ -x .venv/bin/python ]] || python3 -m venv .venv
install_lock() {  # install_lock NAME FILE [PIP ARGS]: pip install -r FILE unless this very FILE's stamp is there
  local stamp
  stamp=".venv/.installed-$1-$(sha256sum "$2" pyproject.toml | sha256sum | cut -c1-16)"
  [[ -f "$stamp" ]] && return 0
  .venv/bin/python -m pip install -q --disable-pip-version-check -r "$2" "${@:3}"
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
  rm -f ".venv/.installed-$1-"*
  touch "$stamp"
}
install_lock runtime requirements.lock
[[ "${1:-}" == "--test" ]] && install_lock dev requirements-dev.lock -c requirements.lock
exit 0

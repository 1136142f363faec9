#!/usr/bin/env bash
# Install what the proxy needs, skipping whatever is already there:
#   Debian packages (scripts/debian-packages*.txt) and Python packages into .venv (requirements.lock).
# Usage: scripts/install.sh [--test]     (--test adds what the test suite and the demo need)
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

# Python packages: one pinned lock for runtime and tests; re-installed only when the lock changes.
stamp=".venv/.installed-$(sha256sum requirements.lock pyproject.toml | sha256sum | cut -c1-16)"
if [[ ! -f "$stamp" ]]; then
  [[ -x .venv/bin/python ]] || python3 -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.lock
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
  rm -f .venv/.installed-*
  touch "$stamp"
fi

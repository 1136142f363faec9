"""scripts/install.sh says what it installs and installs what its option asks for, no more: run for real on a copy
of the checkout's lists and locks, with stand-ins only for what would change this machine (apt-get, dpkg-query's
view of what is installed, the venv's pip) that record how they were called."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from devkit.proxy import ROOT

# Packages the stand-in dpkg-query reports missing: one of the demo's list and two of the tests' (no command of
# the same name exists, which install.sh would count as installed).
MISSING = ("openssh-server", "postgresql", "chromium-driver")


def _script(path: Path, body: str) -> None:
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    tree = tmp_path / "checkout"
    (tree / "scripts").mkdir(parents=True)
    for name in ("install.sh", "debian-packages.txt", "debian-packages-demo.txt", "debian-packages-test.txt"):
        shutil.copy2(ROOT / "scripts" / name, tree / "scripts" / name)
    for name in ("requirements.lock", "requirements-demo.lock", "requirements-dev.lock", "pyproject.toml"):
        shutil.copy2(ROOT / name, tree / name)
    shims = tmp_path / "bin"
    shims.mkdir()
    calls = tmp_path / "calls.log"
    _script(shims / "apt-get", f'echo "apt-get $*" >> {calls}\n')
    _script(shims / "id", "echo 0\n")  # as root: install.sh installs Debian packages only then
    _script(shims / "dpkg-query", f'case " {" ".join(MISSING)} " in *" ${{@: -1}} "*) exit 1 ;; esac\n'
                                  'printf "install ok installed"\n')
    (tree / ".venv" / "bin").mkdir(parents=True)
    _script(tree / ".venv" / "bin" / "python", f'echo "pip ${{*:3}}" >> {calls}\n')
    return tree


def pinned(lock: Path) -> int:
    """How many packages a lock pins (what install.sh announces)."""
    return sum(1 for line in lock.read_text().splitlines() if "==" in line and not line.lstrip().startswith("#"))


def install(checkout: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    calls = checkout.parent / "calls.log"
    calls.unlink(missing_ok=True)
    env = {**os.environ, "PATH": f"{checkout.parent / 'bin'}:/usr/bin:/bin"}
    done = subprocess.run([str(checkout / "scripts" / "install.sh"), *args], env=env, capture_output=True,
                          text=True, timeout=60)
    return done, calls.read_text().splitlines() if calls.exists() else []


def test_demo_installs_what_the_demo_needs_and_says_so(checkout: Path) -> None:
    done, calls = install(checkout, "--demo")
    assert done.returncode == 0, done.stderr
    assert calls == [
        "apt-get update -qq",
        "apt-get install -y -qq --no-install-recommends openssh-server",
        "pip install -q --disable-pip-version-check -r requirements.lock",
        "pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .",
        "pip install -q --disable-pip-version-check -r requirements-demo.lock -c requirements.lock",
        "pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .",
    ]
    lines = done.stderr.splitlines()
    assert lines[0] == ("install.sh: Debian packages for the service and `wid demo`: updating the package lists "
                        "(apt-get update)")
    assert lines[1] == "install.sh: Debian packages: installing 1 missing (with their dependencies): openssh-server"
    assert lines[2].startswith("install.sh: Debian packages: done in ")
    runtime, demo = (pinned(checkout / name) for name in ("requirements.lock", "requirements-demo.lock"))
    assert lines[3] == (f"install.sh: Python: installing {runtime} pinned packages for the service (what lib/ and "
                        "cgi-bin/ import) from requirements.lock")
    assert lines[5] == (f"install.sh: Python: installing {demo} pinned packages for `wid demo` (pydo, requests, "
                        "PyJWT) from requirements-demo.lock")
    assert len(lines) == 7 and all(line.startswith("install.sh: ") for line in lines)

    again, calls = install(checkout, "--demo")
    assert again.returncode == 0 and calls == ["apt-get update -qq",
                                               "apt-get install -y -qq --no-install-recommends openssh-server"], \
        "the Python locks are stamped as installed"


def test_test_adds_the_test_bench_and_no_option_only_the_service(checkout: Path) -> None:
    done, calls = install(checkout, "--test")
    assert done.returncode == 0, done.stderr
    assert "apt-get install -y -qq --no-install-recommends openssh-server postgresql chromium-driver" in calls
    assert [c for c in calls if " -r " in c] == [
        "pip install -q --disable-pip-version-check -r requirements.lock",
        "pip install -q --disable-pip-version-check -r requirements-demo.lock -c requirements.lock",
        "pip install -q --disable-pip-version-check -r requirements-dev.lock -c requirements.lock "
        "-c requirements-demo.lock",
    ]
    assert "for the tests and lint (pytest, ruff, mypy, ...) from requirements-dev.lock" in done.stderr

    for stamp in (checkout / ".venv").glob(".installed-*"):
        stamp.unlink()
    service, calls = install(checkout)
    assert service.returncode == 0
    assert calls == ["pip install -q --disable-pip-version-check -r requirements.lock",
                     "pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e ."]
    quiet, calls = install(checkout)
    assert (quiet.returncode, quiet.stderr, calls) == (0, "", []), "nothing to do, nothing said"


def test_an_unknown_option_is_a_usage_error(checkout: Path) -> None:
    done, calls = install(checkout, "--tests")
    assert done.returncode == 2 and calls == []
    assert done.stderr == "install.sh: unknown option --tests; usage: scripts/install.sh [--demo | --test]\n"

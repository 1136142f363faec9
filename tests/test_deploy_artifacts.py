"""Deployment artifacts: the Dockerfile's contract and its unprivileged run, and the App Platform specs.

No Docker engine runs where the tests run, so the image is checked in two ways:

- its instructions are parsed and held to the contract (Debian 12 base, scripts/install.sh as the only
  installer, an unprivileged USER, PORT, run.sh as the entrypoint, no secret baked in, everything the
  service runs is copied and nothing the build needs is ignored);
- its run is reproduced: the Dockerfile's own COPY instructions lay out the image's tree (root-owned,
  read-only to the service), the RUN step's result is stood in for by a venv on Debian's python3 over the
  Python packages this checkout already installed from the same lock (with install.sh's own stamp), and the
  ENTRYPOINT runs as an unprivileged user with the image's ENV plus the run-time variables only.

app.yaml and .do/deploy.template.yaml are validated against the App Platform app spec schema derived from
DigitalOcean's OpenAPI description (tests/fixtures/appspec/), and additionally refused if they use any key
that schema does not declare (OpenAPI objects are open by default, so a misspelt key would pass otherwise).
"""

from __future__ import annotations

import ast
import base64
import fnmatch
import importlib.metadata
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import requests
import yaml
from packaging.requirements import Requirement

from devkit.proxy import free_port, kill_session, session_processes, wait_for
from tests.harness import PostgresServer

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = ROOT / "tests" / "fixtures" / "appspec" / "app_spec.schema.json"
SECRET_VARIABLES = ("WID_SECRET_KEY", "DIGITALOCEAN_OAUTH_CLIENT_ID", "DIGITALOCEAN_OAUTH_CLIENT_SECRET")
# Never in an image: anything that is a credential or says where one is.
NEVER_BAKED = (*SECRET_VARIABLES, "DATABASE_URI", "DIGITALOCEAN_TOKEN", "DIGITALOCEAN_ACCESS_TOKEN")
DEBIAN_12_BASES = re.compile(r"^(debian:(12|bookworm)(-slim)?|python:3\.11(\.\d+)?-(slim-)?bookworm)"
                             r"(@sha256:[0-9a-f]{64})?$")
BUTTON = re.compile(r"\[!\[Deploy to DigitalOcean\]\((?P<image>[^)]+)\)\]\((?P<url>https://cloud\.digitalocean\.com/"
                    r"apps/new\?repo=[^)]+)\)")


# ------------------------------------------------------------------------------------------- Dockerfile

def runtime_pins() -> dict[str, str]:
    """requirements.lock: distribution name (normalised) -> pinned version."""
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[re.sub(r"[-_.]+", "-", name.strip()).lower()] = version.strip()
    return pins


@dataclass(frozen=True)
class Instruction:
    op: str
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        if self.args.startswith("["):
            value = json.loads(self.args)
            assert isinstance(value, list) and all(isinstance(v, str) for v in value), self
            return value
        return None


def dockerfile(path: Path = ROOT / "Dockerfile") -> list[Instruction]:
    """Instructions with line continuations joined and comments dropped (enough for this Dockerfile)."""
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        text = " ".join(p for p in pending if p)
        pending = []
        op, _, args = text.partition(" ")
        out.append(Instruction(op.upper(), args.strip(), start))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def only(instructions: list[Instruction], op: str) -> list[Instruction]:
    return [i for i in instructions if i.op == op]


def env_of(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in only(instructions, "ENV"):
        words = shlex.split(ins.args)
        if words and "=" not in words[0]:  # legacy `ENV NAME value`
            env[words[0]] = " ".join(words[1:])
            continue
        for word in words:
            name, sep, value = word.partition("=")
            assert sep, f"line {ins.line}: cannot read ENV {ins.args!r}"
            env[name] = value
    return env


def copies(instructions: list[Instruction]) -> list[tuple[list[str], str]]:
    """(sources relative to the build context, destination) of every COPY, in order."""
    out = []
    for ins in only(instructions, "COPY"):
        words = ins.exec_form() or shlex.split(ins.args)
        assert not [w for w in words if w.startswith("--")], f"line {ins.line}: COPY flags are not expected here"
        out.append((words[:-1], words[-1]))
    return out


def workdir(instructions: list[Instruction]) -> str:
    dirs = only(instructions, "WORKDIR")
    assert len(dirs) == 1 and dirs[0].args.startswith("/"), "one absolute WORKDIR, the application's root"
    return dirs[0].args


def dockerignore() -> list[str]:
    return [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore-style `patterns` exclude `path` (relative to the context) or a directory above it.

    Close to Docker's rules for the patterns used here (`**/` matches at any depth; the last match wins); `*`
    also crossing `/` only makes this stricter."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").strip("/")
        if pat.startswith("**/"):
            candidates = ["/".join(p.split("/")[j:]) for p in prefixes for j in range(p.count("/") + 1)]
            hit = any(fnmatch.fnmatchcase(c, pat[3:]) for c in candidates)
        else:
            hit = any(fnmatch.fnmatchcase(p, pat) for p in prefixes)
        if hit:
            result = not negate
    return result


def test_dockerfile_base_is_debian_12_and_single_stage() -> None:
    froms = only(dockerfile(), "FROM")
    assert len(froms) == 1, "one stage: what runs is what install.sh installed"
    assert DEBIAN_12_BASES.match(froms[0].args), f"base {froms[0].args!r} is not a Debian 12 image"


def test_dockerfile_installs_only_through_the_install_script() -> None:
    runs = only(dockerfile(), "RUN")
    assert [r for r in runs if re.search(r"(^|[\s;&|])(\./)?scripts/install\.sh(\s|$|;|&)", r.args)], \
        "a RUN step runs scripts/install.sh, as `make run` does"
    installs_with_test_extras = [r for r in runs if "install.sh --test" in r.args]
    assert not installs_with_test_extras, "the image needs the run-time packages only"
    for run in runs:
        for installer in ("apt-get install", "apt install", "pip install", "pip3 install", "dpkg -i"):
            assert installer not in run.args, f"line {run.line}: packages come from scripts/install.sh only"


def test_dockerfile_runs_as_an_unprivileged_user() -> None:
    instructions = dockerfile()
    users = only(instructions, "USER")
    assert users, "a USER instruction: the service never runs as root"
    user = users[-1].args.split(":")[0]
    assert user not in {"root", "0"}, "the final USER is not root"
    last_user = instructions.index(users[-1])
    entry = only(instructions, "ENTRYPOINT")[-1]
    assert instructions.index(entry) > last_user, "ENTRYPOINT runs as the final USER"
    created = [r for r in only(instructions, "RUN") if re.search(rf"useradd\b[^;&]*\s{re.escape(user)}(\s|$)", r.args)]
    assert created, f"the user {user!r} is created by a RUN step"
    uid = re.search(r"--uid[ =](\d+)", created[0].args)
    assert uid and int(uid[1]) >= 1000, "a fixed non-zero uid (so volume ownership is predictable)"
    data_dir = env_of(instructions)["WID_DATA_DIR"]
    assert data_dir.startswith("/") and not data_dir.startswith(workdir(instructions) + "/"), \
        "the data dir lies outside the (root-owned) application tree"
    assert re.search(rf"(install -d\b[^;&]*-o {re.escape(user)}\b[^;&]*{re.escape(data_dir)}"
                     rf"|chown\b[^;&]*{re.escape(user)}[^;&]*{re.escape(data_dir)})",
                     " ".join(r.args for r in only(instructions, "RUN"))), \
        f"{data_dir} is made writable for {user}"


def test_dockerfile_listens_on_port_and_runs_run_sh() -> None:
    instructions = dockerfile()
    env = env_of(instructions)
    assert env.get("PORT", "").isdigit(), "ENV PORT names the default port"
    exposed = [p.split("/")[0] for e in only(instructions, "EXPOSE") for p in e.args.split()]
    assert exposed == [env["PORT"]], "EXPOSE is the default $PORT"
    entrypoints = only(instructions, "ENTRYPOINT")
    assert len(entrypoints) == 1
    form = entrypoints[0].exec_form()
    assert form == [f"{workdir(instructions)}/scripts/run.sh"], \
        "exec-form ENTRYPOINT is scripts/run.sh itself (PID 1, so SIGTERM reaches its trap)"
    assert not only(instructions, "CMD"), "no CMD: run.sh takes no arguments"
    caddyfile = (ROOT / "Caddyfile").read_text()
    assert ":{$PORT}" in caddyfile, "Caddy listens on $PORT on every interface"


def test_dockerfile_bakes_in_no_secret() -> None:
    instructions = dockerfile()
    names = set(env_of(instructions))
    for arg in only(instructions, "ARG"):
        names.add(arg.args.split("=")[0].strip())
    baked = names & set(NEVER_BAKED)
    assert not baked, f"credentials come from the environment at run time, not the image: {baked}"
    text = (ROOT / "Dockerfile").read_text()
    assert not re.search(r"[A-Za-z0-9_-]{43}=", text), "nothing that looks like a Fernet key"
    assert not re.search(r"postgres(ql)?://[^\s/]*:[^\s/]*@", text), "no database URI with a password"
    for sources, _ in copies(instructions):
        for source in sources:
            assert source not in {".", "./"}, "explicit COPY sources, never the whole context"
            assert not ignored(source, [".venv", "data", ".git", "*.key", "*.pem", ".env"]), source
    patterns = dockerignore()
    for must in (".git", ".venv", "data", ".env", "tests"):
        assert ignored(must, patterns), f".dockerignore keeps {must} out of the build context"


def test_dockerfile_copies_what_the_service_runs() -> None:
    instructions = dockerfile()
    patterns = dockerignore()
    copied: set[str] = set()
    for sources, _ in copies(instructions):
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
            assert not ignored(source, patterns), f"COPY {source} is excluded by .dockerignore"
            copied.add(source.rstrip("/"))

    def is_copied(path: str) -> bool:
        return any(path == c or path.startswith(c + "/") for c in copied)

    run_sh = (ROOT / "scripts" / "run.sh").read_text()
    needed = {"scripts/run.sh", "scripts/install.sh", "scripts/debian-packages.txt", "requirements.lock",
              "pyproject.toml", "Caddyfile", "lib/wid/__init__.py", "lib/wid/store/migrations",
              "rbac-schema/rbac.schema.json"}
    needed |= {f"cgi-bin/{name}.py" for name in re.findall(r"import cgi (\w+)", (ROOT / "Caddyfile").read_text())}
    assert "--cgi-source \"$ROOT/cgi-bin\"" in run_sh
    for path in sorted(needed):
        assert (ROOT / path).exists(), path
        assert is_copied(path), f"the image lacks {path}"


# ------------------------------------------------------------------ what the image carries: the service only

def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_top_level_modules() -> set[str]:
    """Every module lib/ and cgi-bin/ import, at any depth (function-level imports included), but the checkout's
    devkit/: `wid demo` imports its walkthrough from there (tests/test_demo.py checks it is the only import)."""
    names: set[str] = set()
    sources = [*sorted((ROOT / "lib").rglob("*.py")), *sorted((ROOT / "cgi-bin").glob("*.py"))]
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in {"wid", "devkit"}}


def _requirements_closure(roots: set[str]) -> set[str]:
    """`roots` and every distribution they require on this platform (with the extras pyproject.toml names)."""
    extras = {_normalise(r.name): r.extras for r in map(Requirement, tomllib.loads(
        (ROOT / "pyproject.toml").read_text())["project"]["dependencies"])}
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for requirement in map(Requirement, importlib.metadata.requires(name) or []):
            marker = requirement.marker
            if marker is None or any(marker.evaluate({"extra": e}) for e in extras.get(name, set()) or {""}):
                todo.append(_normalise(requirement.name))
    return seen


def test_runtime_lock_is_what_lib_and_cgi_bin_import() -> None:
    """requirements.lock pins exactly the distributions the service imports and what they require (and
    setuptools, the build backend of the editable install; pyuwsgi, the server wid.web.serve imports in persistent
    mode's master only, once no request path runs): no test, lint or demo tool."""
    by_module = dict(importlib.metadata.packages_distributions())
    imported = _imported_top_level_modules()
    by_module.setdefault("uwsgi", ["pyuwsgi"])  # the module uWSGI (pyuwsgi) builds into its workers
    unknown = sorted(m for m in imported if m not in by_module)
    assert not unknown, f"lib/ or cgi-bin/ import modules no installed distribution provides: {unknown}"
    direct = {_normalise(d) for m in imported for d in by_module[m]}
    pins = runtime_pins()
    assert direct <= set(pins), f"imported but not in requirements.lock: {sorted(direct - set(pins))}"
    needed = _requirements_closure(direct | {"pyuwsgi"}) | {"setuptools"}
    assert set(pins) == needed, (f"requirements.lock holds what the service never loads: {sorted(set(pins) - needed)}"
                                 f"; lacks: {sorted(needed - set(pins))}")
    for name, version in pins.items():
        assert importlib.metadata.version(name) == version, f"{name}: the venv is not what the lock pins"


def _pins(name: str) -> set[str]:
    return {_normalise(line.split("==")[0]) for line in (ROOT / name).read_text().splitlines()
            if line.strip() and not line.startswith("#")}


# What `wid demo` runs: its walkthrough and the helpers it drives the proxy with, from the checkout's devkit/.
DEMO_SOURCES = ("lib/wid/cli/demo.py", "devkit/demo/*.py", "devkit/standins/*.py", "devkit/sshd.py",
                "devkit/git_helpers.py", "devkit/do_world.py", "devkit/proxy.py")


def test_demo_lock_is_what_the_demo_imports_beyond_the_service() -> None:
    """requirements-demo.lock (scripts/install.sh --demo) pins what `wid demo` imports that the service does not
    (cloud-init excepted: the Droplet's boot runs under Debian's python3, from debian-packages-demo.txt)."""
    by_module = dict(importlib.metadata.packages_distributions())
    modules: set[str] = set()
    for pattern in DEMO_SOURCES:
        for path in sorted(ROOT.glob(pattern)):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    modules.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules.add(node.module.split(".")[0])
    modules -= {*sys.stdlib_module_names, "wid", "devkit", "cloudinit"}
    direct = {_normalise(d) for m in modules for d in by_module[m]}
    runtime = set(runtime_pins())
    needed = _requirements_closure(direct - runtime) - runtime
    assert _pins("requirements-demo.lock") == needed
    assert "cloud-init" in (ROOT / "scripts" / "debian-packages-demo.txt").read_text()


def test_development_packages_stay_out_of_the_image() -> None:
    demo, dev, runtime = _pins("requirements-demo.lock"), _pins("requirements-dev.lock"), set(runtime_pins())
    assert {"pytest", "mypy", "ruff", "selenium"} <= dev and {"pydo", "requests"} <= demo
    assert not (dev & demo or dev & runtime or demo & runtime), "a package is pinned once, in one lock"
    copied = {source for sources, _ in copies(dockerfile()) for source in sources}
    assert "requirements.lock" in copied
    assert not copied & {"requirements-dev.lock", "requirements-demo.lock"}


def _simulated_install(packages: list[str], tmp_path: Path) -> set[str]:
    """What apt-get would install for `packages` on a system with nothing installed (a simulation: nothing is
    installed, no root needed), with install.sh's --no-install-recommends."""
    status = tmp_path / "empty-dpkg-status"
    status.write_text("")
    done = subprocess.run(["apt-get", "-s", "-o", f"Dir::State::status={status}", "-o", "Dir::Cache::pkgcache=",
                           "-o", "Dir::Cache::srcpkgcache=", "-o", "Debug::NoLocking=1", "install",
                           "--no-install-recommends", *packages], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        pytest.fail(f"apt-get cannot plan the installation (no package lists? run apt-get update):\n{done.stderr}")
    return {line.split()[1] for line in done.stdout.splitlines() if line.startswith("Inst ")}


def test_fcgiwrap_comes_without_systemd(tmp_path: Path) -> None:
    """fcgiwrap depends on "systemd | spawn-fcgi": listed first, spawn-fcgi satisfies it (about 17 MB less)."""
    install = (ROOT / "scripts" / "install.sh").read_text()
    assert "--no-install-recommends" in install
    listed = [line.strip() for line in (ROOT / "scripts" / "debian-packages.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert listed.index("spawn-fcgi") < listed.index("fcgiwrap")
    planned = _simulated_install(listed, tmp_path)
    assert {"fcgiwrap", "spawn-fcgi", "caddy"} <= planned
    assert not planned & {"systemd", "libsystemd-shared", "libcryptsetup12"}, sorted(planned)
    without = _simulated_install([p for p in listed if p != "spawn-fcgi"], tmp_path)
    assert "systemd" in without, "the check is not vacuous: without spawn-fcgi, apt picks systemd"


def test_image_cleans_apt_and_states_its_size() -> None:
    runs = " ".join(r.args for r in only(dockerfile(), "RUN"))
    for step in ("apt-get clean", "rm -rf /var/lib/apt/lists/* /var/cache/apt/*"):
        assert step in runs, f"the image's RUN step does `{step}` whatever the base image's apt settings"
    operator = (ROOT / "docs" / "operator.md").read_text()
    assert re.search(r"image is about \d+ MB", operator), "docs/operator.md states the image size"


def test_run_sh_stops_its_jobs_with_what_the_image_has() -> None:
    """The image has no procps: run.sh stops its jobs by process group (kill, a bash builtin)."""
    run_sh = (ROOT / "scripts" / "run.sh").read_text()
    code = "\n".join(line.split("#")[0] for line in run_sh.splitlines())
    for tool in ("pkill", "pgrep", "killall", "ps"):
        assert not re.search(rf"(^|[\s;&|({{]){tool}\b", code, re.M), f"run.sh calls {tool}"
    assert "set -m" in code and 'kill "-$1" -- "-$2"' in code


DEVELOPMENT_TREES = ("tests", "bench", "devkit")  # the suite, the benchmarks, the stand-ins and the demo's walkthrough


def test_the_image_holds_no_tests_benchmarks_or_devkit() -> None:
    patterns = dockerignore()
    for tree in DEVELOPMENT_TREES:
        assert (ROOT / tree).is_dir(), tree
        assert ignored(tree, patterns), f".dockerignore keeps {tree}/ out of the build context"
        for sources, _ in copies(dockerfile()):
            for source in sources:
                top = source.strip("/").split("/")[0]
                assert top != tree, f"COPY {source}: {tree}/ is not part of the image"


# ------------------------------------------------------------------ the image's run, as an unprivileged user

def _unprivileged() -> pwd.struct_passwd:
    return pwd.getpwnam("nobody")


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _image_python() -> str:
    """The interpreter the image runs: Debian 12's python3 (the python3-venv package install.sh installs)."""
    return "/usr/bin/python3"


@pytest.fixture
def image_root() -> Iterator[Path]:
    """The image's file tree in a temp dir: the application (root-owned, read-only to the service user) as the
    Dockerfile's COPY instructions lay it out, and the service user's data dir."""
    if os.getuid() != 0:
        pytest.skip("needs root to switch to an unprivileged user (setpriv)")
    if not shutil.which("setpriv") or not Path(_image_python()).exists():
        pytest.skip("needs setpriv and Debian's python3")
    instructions = dockerfile()
    base = Path(tempfile.mkdtemp(prefix="wid-image-"))  # not pytest's tmp dirs: those are private to root
    base.chmod(0o755)
    app = base / workdir(instructions).lstrip("/")
    app.mkdir(parents=True)
    patterns = dockerignore()
    for sources, dest in copies(instructions):
        target = app / dest
        for source in sources:
            src = ROOT / source
            if src.is_dir():
                shutil.copytree(src, target, dirs_exist_ok=True,
                                ignore=lambda d, names: [n for n in names if ignored(
                                    str((Path(d) / n).relative_to(ROOT)), patterns)])
            else:
                dest_path = target / src.name if dest.endswith("/") else target
                dest_path.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest_path)

    # Stand-in for the RUN step (install.sh as root needs the network): a venv on the image's interpreter
    # with the distributions requirements.lock pins and nothing else (taken from the checkout's venv, where
    # install.sh installed them from the same lock), wid from the copy: what serves below is what the runtime
    # lock holds.
    venv = app / ".venv"
    subprocess.run([_image_python(), "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = venv / "lib" / version / "site-packages"
    installed = ROOT / ".venv" / "lib" / version / "site-packages"
    assert site.is_dir() and installed.is_dir(), "the checkout's venv and the image's python must be the same 3.x"
    (site / "00-wid.pth").write_text(f"{app / 'lib'}\n")
    # The packages themselves go into the image tree (hard links where the filesystem allows): the
    # unprivileged user may not be able to reach the checkout's venv (a clone under /root, say).
    for name in runtime_pins():
        files = importlib.metadata.distribution(name).files
        assert files is not None, f"{name} has no RECORD in the checkout's venv"
        for entry in files:
            if entry.parts[0] == ".." or "__pycache__" in entry.parts:
                continue  # console scripts outside site-packages; byte-code is compiled again below
            target = site / entry
            target.parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(str(installed / entry), str(target))
    for command, entry in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"].items():
        module, function = entry.split(":")  # the console scripts pip writes: `wid`, and `wid-serve`
        launcher = venv / "bin" / command
        launcher.write_text(f"#!{venv / 'bin' / 'python'}\nimport sys\nfrom {module} import {function}\n"
                            f"sys.exit({function}())\n")
        launcher.chmod(0o755)
    stamp = subprocess.run(["bash", "-c", "sha256sum requirements.lock pyproject.toml | sha256sum | cut -c1-16"],
                           cwd=app, check=True, capture_output=True, text=True).stdout.strip()
    (venv / f".installed-runtime-{stamp}").touch()
    subprocess.run([str(venv / "bin" / "python"), "-m", "compileall", "-q", str(app / "lib"), str(site)],
                   check=True, timeout=120)

    user = _unprivileged()
    data = base / env_of(instructions)["WID_DATA_DIR"].lstrip("/")
    data.mkdir(parents=True)
    os.chown(data, user.pw_uid, user.pw_gid)
    data.chmod(0o700)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _as_user(command: list[str]) -> list[str]:
    """Exec as the unprivileged user with no supplementary groups or capabilities, as Docker's USER does."""
    user = _unprivileged()
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "--inh-caps=-all",
            *command]


def _image_env(base: Path, **run_time: str) -> dict[str, str]:
    """What the container's processes see: the image's ENV (paths inside the temp root) and `docker run -e`."""
    env = env_of(dockerfile())
    env["WID_DATA_DIR"] = str(base / env["WID_DATA_DIR"].lstrip("/"))
    return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": env["WID_DATA_DIR"],
            **env, **run_time}


def _uid_of(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def test_the_image_runs_without_devkit_and_its_demo_says_so(image_root: Path) -> None:
    """The image's tree has no tests/, bench/ or devkit/; `wid demo` there names what it lacks instead of failing
    on an import (the service itself never imports devkit: tests/test_demo.py checks the library's imports)."""
    app = image_root / workdir(dockerfile()).lstrip("/")
    assert (app / "lib" / "wid").is_dir()
    assert not [tree for tree in DEVELOPMENT_TREES if (app / tree).exists()]
    done = subprocess.run(_as_user([str(app / ".venv" / "bin" / "wid"), "demo"]), env=_image_env(image_root),
                          cwd=app, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout.startswith("wid demo cannot run here:\n")
    assert f"  - wid demo runs from a source checkout: devkit/ not found at {app / 'devkit'}\n" in done.stdout
    assert "Traceback" not in done.stderr


def test_install_script_as_unprivileged_user(image_root: Path) -> None:
    app = image_root / workdir(dockerfile()).lstrip("/")
    install = str(app / "scripts" / "install.sh")
    env = _image_env(image_root)
    done = subprocess.run(_as_user([install]), env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"install.sh as non-root finds everything installed:\n{done.stderr}"
    assert "installing" not in done.stderr

    # A package the image lacks: a clear error and a non-zero exit, never an attempt to install as non-root.
    packages = app / "scripts" / "debian-packages.txt"
    packages.chmod(0o644)
    packages.write_text(packages.read_text() + "wid-test-no-such-package\n")
    failed = subprocess.run(_as_user([install]), env=env, capture_output=True, text=True, timeout=60)
    assert failed.returncode == 1
    assert "missing Debian packages: wid-test-no-such-package" in failed.stderr
    assert "install them as root" in failed.stderr


@pytest.mark.parametrize(("mode", "server"), [("cgi", "fcgiwrap"), ("persistent", "wid-serve")])
def test_entrypoint_serves_as_unprivileged_user(image_root: Path, postgres: PostgresServer, mode: str,
                                                server: str) -> None:
    """The ENTRYPOINT with the image's ENV plus run-time variables only, as the unprivileged user, on
    PostgreSQL, in each WID_MODE: health, readiness, issuer metadata and JWKS; every process
    unprivileged; SIGTERM stops it."""
    instructions = dockerfile()
    app = image_root / workdir(instructions).lstrip("/")
    entrypoint = only(instructions, "ENTRYPOINT")[0].exec_form()
    assert entrypoint
    port = free_port()
    endpoint = "https://wid.example.test"  # as behind App Platform: TLS ends at the platform's edge
    env = _image_env(image_root, PORT=str(port), THIS_ENDPOINT=endpoint, DATABASE_URI=postgres.fresh_database(),
                     WID_SECRET_KEY=base64.urlsafe_b64encode(os.urandom(32)).decode(),
                     DIGITALOCEAN_OAUTH_CLIENT_ID="client-id", DIGITALOCEAN_OAUTH_CLIENT_SECRET="client-secret",
                     WID_MODE=mode)
    data = Path(env["WID_DATA_DIR"])
    log_path = image_root / f"entrypoint-{mode}.log"
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(_as_user([str(image_root / entrypoint[0].lstrip("/"))]), env=env, cwd=app,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        try:
            wait_for(f"{url}/health", 60, process=process)
        except TimeoutError:
            pytest.fail(f"the entrypoint did not serve; log:\n{log_path.read_text(errors='replace')[-4000:]}")
        health = requests.get(f"{url}/health", timeout=5)
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        ready = requests.get(f"{url}/health/ready", timeout=10)
        assert ready.status_code == 200 and ready.json() == {"status": "ready"}, ready.text
        meta = requests.get(f"{url}/.well-known/openid-configuration", timeout=5).json()
        assert meta["issuer"] == endpoint and meta["jwks_uri"] == f"{endpoint}/.well-known/jwks"
        keys = requests.get(f"{url}/.well-known/jwks", timeout=5).json()["keys"]
        assert keys and all(k["kty"] == "RSA" and "d" not in k for k in keys)

        user = _unprivileged()
        processes = session_processes(process.pid)
        names = set(processes.values())
        assert {"caddy", server} <= names, processes
        for pid, name in processes.items():
            assert _uid_of(pid) == user.pw_uid, f"{name} ({pid}) does not run as {user.pw_name}"
        assert not (data / "secret.key").exists(), "with WID_SECRET_KEY set, no key is generated into the data dir"
        writable_by_service = [p for p in app.rglob("*") if p.stat().st_uid == user.pw_uid]
        assert not writable_by_service, f"the service wrote into the application tree: {writable_by_service[:5]}"

        # `docker stop`: SIGTERM to PID 1 (run.sh) only. Everything it started stops with it (fcgiwrap and its
        # workers, Caddy, the JWKS publisher and its `sleep`), with what the image has: no pkill (procps).
        assert "sleep" in names, processes  # the publisher, between two refreshes
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
        assert process.returncode is not None
        deadline = time.monotonic() + 10
        while session_processes(process.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert session_processes(process.pid) == {}, "every process the entrypoint started stops with it"
        output = log_path.read_text(errors="replace")
        assert "command not found" not in output and "Terminated" not in output, output[-2000:]
    finally:
        kill_session(process.pid)  # only what this test started (its own session)
        process.wait(timeout=10)


# ------------------------------------------------------------------------------------ App Platform specs

def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(SCHEMA_PATH.read_text())
    return schema


def _app_spec() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load((ROOT / "app.yaml").read_text())
    return spec


def _template() -> dict[str, Any]:
    template: dict[str, Any] = yaml.safe_load((ROOT / ".do" / "deploy.template.yaml").read_text())
    return template


def _validator(definition: str | None = None) -> jsonschema.Draft202012Validator:
    schema = _schema()
    if definition:
        schema = {**schema, "$ref": f"#/$defs/{definition}"}
    return jsonschema.Draft202012Validator(schema)


Schema = dict[str, Any]


def _declared(schema: Schema, root: Schema) -> tuple[dict[str, list[Schema]], list[Schema], bool]:
    """(properties -> subschemas, item schemas, open) a schema declares, through $ref and allOf/anyOf/oneOf."""
    props: dict[str, list[dict[str, Any]]] = {}
    items: list[dict[str, Any]] = []
    open_ = False
    if "$ref" in schema:
        p, i, o = _declared(root["$defs"][schema["$ref"].rsplit("/", 1)[-1]], root)
        for k, v in p.items():
            props.setdefault(k, []).extend(v)
        items += i
        open_ |= o
    for combinator in ("allOf", "anyOf", "oneOf"):
        for sub in schema.get(combinator, []):
            p, i, o = _declared(sub, root)
            for k, v in p.items():
                props.setdefault(k, []).extend(v)
            items += i
            open_ |= o
    for name, sub in schema.get("properties", {}).items():
        props.setdefault(name, []).append(sub)
    if "items" in schema:
        items.append(schema["items"])
    if schema.get("additionalProperties") not in (None, False):
        open_ = True
    return props, items, open_


def undeclared_keys(instance: Any, schemas: list[dict[str, Any]], root: dict[str, Any], path: str = "") -> list[str]:
    """Keys of `instance` that no applicable schema declares (App Platform ignores or refuses them)."""
    props: dict[str, list[dict[str, Any]]] = {}
    items: list[dict[str, Any]] = []
    open_ = False
    for schema in schemas:
        p, i, o = _declared(schema, root)
        for k, v in p.items():
            props.setdefault(k, []).extend(v)
        items += i
        open_ |= o
    found = []
    if isinstance(instance, dict) and props and not open_:
        for key, value in instance.items():
            if key not in props:
                found.append(f"{path}/{key}")
            else:
                found += undeclared_keys(value, props[key], root, f"{path}/{key}")
    elif isinstance(instance, list) and items:
        for index, element in enumerate(instance):
            found += undeclared_keys(element, items, root, f"{path}/{index}")
    return found


def test_schema_fixture_is_the_derived_app_spec_schema() -> None:
    schema = _schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert re.search(r"digitalocean/openapi at commit [0-9a-f]{40}", schema["$comment"])
    assert {"app_spec", "apps_deploy_template", "app_service_spec", "app_variable_definition",
            "app_database_spec"} <= set(schema["$defs"])
    assert (SCHEMA_PATH.parent / "SOURCE.md").exists()


@pytest.mark.parametrize("name", ["app.yaml", ".do/deploy.template.yaml"])
def test_app_platform_spec_is_valid(name: str) -> None:
    document = yaml.safe_load((ROOT / name).read_text())
    definition = "apps_deploy_template" if name.startswith(".do/") else None
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in _validator(definition).iter_errors(document)]
    assert not errors, errors
    root = _schema()
    start = {"$ref": f"#/$defs/{definition or 'app_spec'}"}
    assert undeclared_keys(document, [start], root) == []


def test_spec_validation_is_not_vacuous() -> None:
    """The same checks refuse a spec with a wrong value and one with a misspelt key."""
    wrong = _app_spec()
    wrong["services"][0]["envs"][0]["type"] = "ENCRYPTED"
    wrong["services"][0]["http_port"] = 70000
    assert len(list(_validator().iter_errors(wrong))) == 2
    misspelt = _app_spec()
    misspelt["services"][0]["health_checks"] = misspelt["services"][0].pop("health_check")
    assert list(_validator().iter_errors(misspelt)) == []  # the OpenAPI schema alone lets it through...
    assert undeclared_keys(misspelt, [{"$ref": "#/$defs/app_spec"}], _schema()) == ["/services/0/health_checks"]


def _envs(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {env["key"]: env for env in service.get("envs", [])}


def test_app_spec_runs_the_image_with_postgres_and_encrypted_secrets() -> None:
    spec = _app_spec()
    (service,) = spec["services"]
    assert service["dockerfile_path"] == "Dockerfile" and (ROOT / service["dockerfile_path"]).exists()
    port = env_of(dockerfile())["PORT"]
    envs = _envs(service)
    assert service["http_port"] == int(port) == int(envs["PORT"]["value"])
    assert envs["THIS_ENDPOINT"]["value"] == "${APP_URL}"
    (database,) = spec["databases"]
    assert database["engine"] == "PG"
    assert envs["DATABASE_URI"]["value"] == f"${{{database['name']}.DATABASE_URL}}"
    for name in SECRET_VARIABLES:
        assert envs[name].get("type") == "SECRET", f"{name} is an encrypted variable"
        assert "value" not in envs[name], f"{name} has no value in the spec: the operator sets it"
    for env in envs.values():
        assert env.get("scope", "RUN_TIME") == "RUN_TIME", f"{env['key']} is not needed at build time"
    readme = (ROOT / "README.md").read_text()
    for name in envs:
        assert f"`{name}`" in readme, f"{name} is documented in README.md's configuration table"
    caddyfile = (ROOT / "Caddyfile").read_text()
    for check in ("health_check", "liveness_health_check"):
        path = service[check]["http_path"]
        assert path in {"/health", "/health/ready"} and path in caddyfile
    assert service["health_check"]["http_path"] == "/health/ready", "readiness includes the database"
    assert spec["ingress"]["rules"][0]["component"]["name"] == service["name"]
    assert spec.get("disable_edge_cache") is True, "no CDN cache in front of an identity provider"


def test_deploy_template_is_app_yaml_from_its_public_repository() -> None:
    spec = _app_spec()
    template = _template()
    assert set(template) == {"spec"}
    github = spec["services"][0].pop("github")
    git = template["spec"]["services"][0].pop("git")
    assert template["spec"] == spec, "the button deploys what app.yaml describes"
    assert git == {"repo_clone_url": f"https://github.com/{github['repo']}.git", "branch": github["branch"]}


def test_readme_has_the_deploy_button_for_the_template_repository() -> None:
    readme = (ROOT / "README.md").read_text()
    match = BUTTON.search(readme)
    assert match, "README.md has the Deploy to DigitalOcean button"
    github = _app_spec()["services"][0]["github"]
    assert match["url"] == (f"https://cloud.digitalocean.com/apps/new?repo=https://github.com/{github['repo']}"
                            f"/tree/{github['branch']}")
    assert urlsplit(match["image"]).scheme == "https"
    assert re.search(r"^## Deploy", readme, re.M)
    assert "docs/operator.md" in readme and "docs/security.md" in readme


def test_operator_and_security_docs_cover_their_topics() -> None:
    operator = (ROOT / "docs" / "operator.md").read_text()
    for topic in ("/auth/digitalocean/v1/callback", "DIGITALOCEAN_OAUTH_SCOPES", "wid keys rotate", "wid keys prune",
                  "wid audit", "WID_SECRET_KEY", "DATABASE_URI", "/health/ready", "replica", "back up", "make run",
                  "docker run", "Deploy to DigitalOcean", "README.md#configuration"):
        assert topic.lower() in operator.lower(), f"docs/operator.md covers {topic}"
    security = (ROOT / "docs" / "security.md").read_text()
    for topic in ("anyone who may create droplets with a tag", "trust on first use", "jku", "x5u", "none",
                  "WID_TRUSTED_ISSUERS", "audit", "provisioning", "refresh", "exchanged", "deny"):
        assert topic.lower() in security.lower(), f"docs/security.md covers {topic}"

"""`wid demo`: the articles' whole walkthrough on this machine, against the stand-ins, step by step.

The steps themselves are in `wid.cli.demo_steps`; this module holds the command line, the checks for what
the demo needs, the progress display, a bash "session" for the articles' commands, and the clean-up.
It runs from a source checkout only: the stand-ins (`devkit/standins/`), the sshd "Droplets"
(`devkit/sshd.py`) and the proxy's `scripts/run.sh` come from the checkout this package lives in.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

# lib/wid/cli/demo.py -> the checkout's root.
ROOT = Path(__file__).resolve().parents[3]

HELP = f"""\
Runs the article series' complete walkthrough on this machine, each command shown as it runs:
DigitalOcean OAuth authorization of a team, `git push` of the articles' RBAC repo, Droplet creation
through the proxy, the Droplet's first boot (a real sshd on a loopback address and the real
cloud-init script), token exchange, database connection strings, Spaces keys (bucket 111 allowed,
bucket 222 refused), the GitHub Actions exchange, and token refresh.

Everything runs against local stand-ins for DigitalOcean and GitHub's OIDC issuer, with the proxy
served by scripts/run.sh (what `make run` runs) on a free port with a throw-away data dir; the
walkthrough talks to nothing outside this machine, and settings of a real deployment in your
environment (DATABASE_URI, WID_*, DIGITALOCEAN_*) are ignored. Every process and temporary file is
removed at the end, also on Ctrl-C. The exit status is 0 only if every step behaved as the articles
say (1 otherwise, 2 if something it needs is missing).

Needs a source checkout: the repository root is found from this package's location
({ROOT}), and devkit/standins/, devkit/sshd.py and scripts/run.sh are used from there.
Needs OpenSSH's sshd, cloud-init, jq, curl and git, and the Python packages pydo, requests and PyJWT
(`scripts/install.sh --demo` installs exactly these).
"""

TOOLS = {  # command -> Debian package
    "jq": "jq", "curl": "curl", "git": "git", "ssh-keygen": "openssh-client", "bash": "bash",
    "caddy": "caddy", "fcgiwrap": "fcgiwrap",
}
PYTHON_TOOLS = {"pydo": "pydo", "requests": "requests", "jwt": "PyJWT"}  # module -> distribution
SSHD = "/usr/sbin/sshd"
SYSTEM_PYTHON = "/usr/bin/python3"  # cloud-init's own user-data processing runs under Debian's python3

# The user's shell may point the proxy at real services; the demo's processes get none of it.
_SCRUBBED_PREFIXES = ("WID_", "DIGITALOCEAN_")
_SCRUBBED = {"DATABASE_URI", "THIS_ENDPOINT", "PORT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "GIT_DIR",
             "GIT_WORK_TREE"}
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_LONG_SECRET = re.compile(r"\b((?:do[opr]_v1_|widrt_)[A-Za-z0-9_-]{8})[A-Za-z0-9_-]{8,}")


class StepFailed(Exception):
    """A step did not behave as the articles say (the message says how)."""


class _Interrupted(BaseException):
    """Ctrl-C, SIGTERM or SIGHUP: unwind, so the clean-up runs."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Signals:
    """Signals raise _Interrupted, except inside critical(): while a process is being started and not yet
    recorded for the clean-up, the signal waits until it is."""

    def __init__(self) -> None:
        self.depth = 0
        self.pending: int | None = None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.depth:
            self.pending = signum
            return
        raise _Interrupted(signum)

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(signum) is not signal.SIG_IGN:
                signal.signal(signum, self.handle)

    @contextmanager
    def critical(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if not self.depth and self.pending is not None:
                signum, self.pending = self.pending, None
                raise _Interrupted(signum)


SIGNALS = _Signals()
critical = SIGNALS.critical


def missing_requirements() -> list[str]:
    """What the demo cannot run without, each with what to install."""
    problems = []
    for path in ("devkit/standins/digitalocean.py", "devkit/sshd.py", "scripts/run.sh", "rbac-schema/examples"):
        if not (ROOT / path).exists():
            problems.append(f"{ROOT / path} is missing: `wid demo` runs from a source checkout of the proxy")
            break
    if not os.path.exists(SSHD):
        problems.append(f"OpenSSH's sshd ({SSHD}) is not installed: apt-get install openssh-server "
                        "(or scripts/install.sh --demo)")
    if not _has_cloud_init():
        problems.append(f"cloud-init is not installed for {SYSTEM_PYTHON}: apt-get install cloud-init "
                        "(or scripts/install.sh --demo)")
    for command, package in TOOLS.items():
        if shutil.which(command) is None:
            problems.append(f"`{command}` is not on PATH: apt-get install {package} (or scripts/install.sh --demo)")
    for module, distribution in PYTHON_TOOLS.items():
        if importlib.util.find_spec(module) is None:
            problems.append(f"the Python package {distribution} is not installed: scripts/install.sh --demo")
    return problems


def _has_cloud_init() -> bool:
    return any(Path(p, "cloudinit", "__init__.py").exists()
               for p in ("/usr/lib/python3/dist-packages", "/usr/local/lib/python3/dist-packages"))


# -- display ---------------------------------------------------------------------------------------------------

def abbreviate(text: str) -> str:
    """Tokens shortened for display (the demo's secrets are throw-away, but a screen of base64 helps nobody)."""
    text = _JWT.sub(lambda m: m.group(0)[:20] + f"…({len(m.group(0))} chars)", text)
    return _LONG_SECRET.sub(lambda m: m.group(1) + "…", text)


@dataclass
class Console:
    stream: TextIO = field(default_factory=lambda: sys.stdout)
    color: bool = False
    max_lines: int = 24

    def _paint(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.color else text

    def write(self, text: str = "") -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def heading(self, number: int, total: int, title: str) -> None:
        self.write()
        self.write(self._paint("1;36", f"[{number:>2}/{total}] {title}"))

    def note(self, text: str) -> None:
        for line in text.splitlines():
            self.write(self._paint("2", f"  # {line}") if line else "")

    def info(self, text: str) -> None:
        for line in text.splitlines():
            self.write(f"  {line}")

    def command(self, text: str) -> None:
        """Shell commands: `$ ` starts each command, continuation lines (after a backslash) are indented."""
        previous = ""
        for line in text.strip("\n").splitlines():
            prefix = "    " if previous.rstrip().endswith("\\") else "  $ "
            self.write(self._paint("1", prefix + abbreviate(line)))
            previous = line

    def action(self, text: str) -> None:
        """Something done that is not a shell command (a browser's request, a library call)."""
        self.write(self._paint("1", f"  > {abbreviate(text)}"))

    def output(self, text: str, max_lines: int | None = None, width: int = 0) -> None:
        limit = self.max_lines if max_lines is None else max_lines
        lines = abbreviate(text).rstrip("\n").splitlines()
        if width:
            lines = [line if len(line) <= width else line[:width - 1] + "…" for line in lines]
        shown = lines if limit <= 0 or len(lines) <= limit + 2 else lines[:limit]
        for line in shown:
            self.write(self._paint("2", f"    {line}"))
        if len(shown) < len(lines):
            self.write(self._paint("2", f"    … ({len(lines) - len(shown)} more lines)"))

    def passed(self, text: str, seconds: float) -> None:
        self.write(self._paint("32", f"  ✓ {text}") + self._paint("2", f" ({seconds:.1f}s)"))

    def failed(self, text: str) -> None:
        for i, line in enumerate(text.splitlines() or [""]):
            self.write(self._paint("1;31", ("  ✗ " if i == 0 else "    ") + line))


# -- the articles' commands, run by bash -----------------------------------------------------------------------

@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


class Shell:
    """A bash "session": each run() is one bash process, but variables assigned by earlier runs are kept
    in `state` (as when one types the articles' commands into one terminal; None: nothing is kept).
    Commands are shown, then run with `set -eo pipefail` (as the articles' workflow steps are): the first
    command that fails ends the run, with its status."""

    def __init__(self, console: Console, cwd: Path, env: Mapping[str, str], state: Path | None):
        self.console = console
        self.cwd = cwd
        self.env = dict(env)
        self.state = state
        self.names: list[str] = []

    def _bash(self, script: str, env: Mapping[str, str] | None, timeout: float) -> Ran:
        import subprocess

        prologue = f"[ -f {_q(self.state)} ] && source {_q(self.state)}\n" if self.state else ""
        done = subprocess.run(["bash", "-c", f"{prologue}set -eo pipefail\n{script}\n"], cwd=self.cwd,
                              env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=timeout)
        return Ran(done.returncode, done.stdout, done.stderr)

    def run(self, *commands: str, show_stderr: bool = False, quiet: bool = False, timeout: float = 60,
            env: Mapping[str, str] | None = None) -> Ran:
        script = "\n".join(c.strip("\n") for c in commands)
        for command in commands:
            self.console.command(command)
        if self.state is not None:
            for name in re.findall(r"^([A-Za-z_][A-Za-z0-9_]*)=", script, re.M):
                if name not in self.names:
                    self.names.append(name)
            if self.names:
                script += f"\ndeclare -p {' '.join(self.names)} > {_q(self.state)}"
        ran = self._bash(script, env, timeout)
        if not quiet:
            self.console.output(ran.stdout)
            if show_stderr or ran.returncode != 0:
                self.console.output(ran.stderr)
        return ran

    def peek(self, name: str) -> str:
        """A variable of the session (not shown)."""
        return self._bash(f'printf %s "${{{name}:-}}"', None, 10).stdout


def _q(path: Path) -> str:
    import shlex

    return shlex.quote(str(path))


# -- running the steps -----------------------------------------------------------------------------------------

def _environment_for_demo() -> None:
    """Forget settings meant for a real deployment; keep everything on loopback."""
    for name in list(os.environ):
        if name.startswith(_SCRUBBED_PREFIXES) or name in _SCRUBBED:
            del os.environ[name]
    for name in ("no_proxy", "NO_PROXY"):
        os.environ[name] = ",".join(x for x in ("127.0.0.1,localhost", os.environ.get(name)) if x)


def run(args: argparse.Namespace) -> int:
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")  # ✓ and … on a terminal that cannot show them
    console = Console(color=_use_color(args.color))
    problems = missing_requirements()
    if problems:
        console.write("wid demo cannot run here:")
        for problem in problems:
            console.write(f"  - {problem}")
        return 2
    faults = [_parse_fault(spec) for spec in args.fault]
    _environment_for_demo()
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # devkit.standins, devkit.sshd, ... from this checkout
    from wid.cli import demo_steps

    SIGNALS.install()
    tmp = Path(tempfile.mkdtemp(prefix="wid-demo-"))
    tmp.chmod(0o755)  # sshd runs as nobody when we are root, and reads its keys below here
    ctx = demo_steps.Context(console=console, tmp=tmp, client=args.client, faults=faults)
    steps = demo_steps.STEPS
    console.write(f"wid demo: the articles' walkthrough against local stand-ins ({len(steps)} steps; "
                  f"scratch dir {tmp})")
    started = time.monotonic()
    failed: tuple[int, str] | None = None
    status = 0
    try:
        for number, (title, step) in enumerate(steps, 1):
            console.heading(number, len(steps), title)
            t0 = time.monotonic()
            try:
                summary = step(ctx)
            except StepFailed as exc:
                console.failed(str(exc))
                failed = (number, title)
                break
            except Exception as exc:  # a crash is a failed step too, reported the same way
                console.failed(f"{type(exc).__name__}: {exc}")
                failed = (number, title)
                break
            console.passed(summary, time.monotonic() - t0)
    except (KeyboardInterrupt, _Interrupted) as exc:
        signum = exc.signum if isinstance(exc, _Interrupted) else signal.SIGINT
        console.write(f"\nwid demo: interrupted ({signal.Signals(signum).name}); cleaning up")
        status = 128 + signum
    finally:
        if failed is not None:
            ctx.show_logs()
        ctx.close()
        if args.keep:
            console.write(f"wid demo: kept {tmp} (logs, the RBAC repo, the Droplet's files)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.monotonic() - started
    if status:
        return status
    if failed is not None:
        console.write(f"\nwid demo: FAILED at step {failed[0]}/{len(steps)} \"{failed[1]}\" after {elapsed:.1f}s; "
                      "everything it started has been stopped")
        return 1
    console.write(f"\nwid demo: all {len(steps)} steps behaved as the articles say ({elapsed:.1f}s); "
                  "everything it started has been stopped")
    return 0


def _use_color(choice: str) -> bool:
    if choice != "auto":
        return choice == "always"
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


@dataclass(frozen=True)
class Fault:
    method: str
    path: str
    status: int


def _parse_fault(spec: str) -> Fault:
    parts = spec.split()
    if len(parts) != 3 or not parts[1].startswith("/") or not parts[2].isdigit():
        raise SystemExit(f"wid demo: --fault wants 'METHOD PATH STATUS', e.g. 'POST /v2/spaces/keys 500'; got {spec!r}")
    return Fault(parts[0].upper(), parts[1], int(parts[2]))


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("demo", help="run the articles' walkthrough locally against stand-ins",
                                   description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--client", choices=["auto", "pydo", "doctl"], default="auto",
                        help="what creates the Droplet: doctl if it is installed (auto), else pydo")
    parser.add_argument("--keep", action="store_true",
                        help="keep the scratch dir (proxy log, the RBAC repo, the Droplet's files); "
                             "processes are stopped all the same")
    parser.add_argument("--fault", action="append", default=[], metavar="'METHOD PATH STATUS'",
                        help="make the DigitalOcean stand-in answer STATUS to the next METHOD request under PATH, "
                             "to see how a step that misbehaves is reported (repeatable)")
    parser.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                        help="colour the output: auto (a terminal without NO_COLOR), always or never")
    parser.set_defaults(func=run)


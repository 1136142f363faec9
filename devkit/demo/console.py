"""What `wid demo` shows and runs: the progress display, and a bash "session" for the articles' commands."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_LONG_SECRET = re.compile(r"\b((?:do[opr]_v1_|widrt_)[A-Za-z0-9_-]{8})[A-Za-z0-9_-]{8,}")


def abbreviate(text: str) -> str:
    """Tokens shortened for display (the demo's secrets are throw-away, but a screen of base64 helps nobody)."""
    text = _JWT.sub(lambda m: m.group(0)[:20] + f"…({len(m.group(0))} chars)", text)
    return _LONG_SECRET.sub(lambda m: m.group(1) + "…", text)


def use_color(choice: str) -> bool:
    """--color auto|always|never; auto: a terminal that is not dumb, unless NO_COLOR is set."""
    if choice != "auto":
        return choice == "always"
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


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
    return shlex.quote(str(path))

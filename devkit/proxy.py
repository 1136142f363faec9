"""The proxy itself under Caddy + fcgiwrap (`scripts/run.sh`, what `make run` runs), on a free port.

Used by the tests (tests/conftest.py shares one per test session: it is expensive to start), the
benchmarks (bench/) and `wid demo`.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def session_processes(sid: int) -> dict[int, str]:
    """The processes of session `sid` (pid: command name): run.sh and every job it started, each job in a
    process group of its own."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    found[int(entry.name)] = (entry / "comm").read_text().strip()
            except (OSError, ProcessLookupError):
                continue
    return found


def kill_session(sid: int) -> None:
    """SIGKILL every process of session `sid` (one this test process started with start_new_session)."""
    for pid in session_processes(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while we looked
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return sorted(children)


def command_line(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def wait_for(url: str, timeout: float = 30.0, status: int = 200,
             process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise TimeoutError(f"the process serving {url} exited with status {process.returncode}")
        try:
            response = requests.get(url, timeout=2)
            if response.status_code == status:
                return
            last = response.status_code
        except requests.RequestException as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer {status} within {timeout}s (last: {last})")


class ProxyServer:
    """`scripts/run.sh` (what `make run` runs) on a free port with its own data dir.

    `root`: the source tree to run (with its own `.venv`), by default this one; tests of rolling
    deploys run the previous release beside it.
    """

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, mode: str | None = None, *,
                 root: Path = ROOT):
        self.root = root
        self.port = free_port()
        self.data_dir = data_dir
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "PORT": str(self.port),
            "WID_DATA_DIR": str(data_dir),
            "THIS_ENDPOINT": self.url,
            "DIGITALOCEAN_API_URL": "http://127.0.0.1:9",
            "WID_ALLOW_INSECURE_ISSUERS": "1",
            # WID_TEST_MODE=persistent runs every test's proxy in persistent mode (`make test` uses cgi).
            "WID_MODE": mode or os.environ.get("WID_TEST_MODE", "cgi"),
            **(env or {}),
        }
        if self.env.get("DATABASE_URI") and not self.env.get("WID_SECRET_KEY"):
            self.env["WID_SECRET_KEY"] = base64.urlsafe_b64encode(os.urandom(32)).decode()
        self.log_path = data_dir.parent / f"proxy-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ProxyServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 60.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")  # the server writes here until stop()
        self.process = subprocess.Popen([str(self.root / "scripts" / "run.sh")], env=self.env, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(f"{self.url}/health", timeout, process=self.process)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"proxy did not start; log:\n{self.log_text()[-4000:]}") from None

    def server_master(self) -> int:
        """Persistent mode: the pid of uWSGI's master (`wid-serve`, a child of run.sh)."""
        assert self.process is not None
        for pid in child_pids(self.process.pid):
            if any(part.endswith("/wid-serve") for part in command_line(pid)):
                return pid
        raise AssertionError(f"no uWSGI master under run.sh (pid {self.process.pid}); log:\n{self.log_text()[-2000:]}")

    def worker_pids(self) -> list[int]:
        """Persistent mode: uWSGI's worker processes serving now."""
        return child_pids(self.server_master())

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wid(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the `wid` admin command against this server's database."""
        return subprocess.run([str(self.root / ".venv" / "bin" / "wid"), *args], env=self.env, text=True,
                              capture_output=True, check=check, timeout=60)

    @contextmanager
    def cgi_replaced(self, name: str, code: str) -> Iterator[None]:
        """Serve `code` as cgi-bin/{name}.py while the block runs, then the script `wid setup` rendered again.

        How tests inject faults (the service reads no test setting): `code` is rendered as `wid setup
        --render-cgi` renders the checkout's scripts, with this interpreter and this process's module path,
        so it can import the checkout's tests/ and devkit/. CGI starts a process per request, so the next
        request runs it.
        """
        from wid.cli.main import render_cgi

        if self.env["WID_MODE"] != "cgi":
            raise RuntimeError(f"cgi_replaced({name!r}) needs a CGI-mode server; this one runs in "
                               f"{self.env['WID_MODE']} mode, where no cgi-bin/ script serves a request")
        script = Path(self.env.get("WID_RUN_DIR") or self.data_dir / "run", "cgi-bin", f"{name}.py")
        rendered = script.read_bytes()
        with tempfile.TemporaryDirectory() as source:
            Path(source, script.name).write_text(f"#!/usr/bin/env python3\n{code}")
            render_cgi(Path(source), script.parent)
        try:
            yield
        finally:
            restored = script.with_suffix(".restored")
            restored.write_bytes(rendered)
            restored.chmod(0o755)
            restored.replace(script)

    @contextmanager
    def configured(self) -> Iterator[None]:
        """Run library code in this test process against this server's database and keys."""
        from wid import config
        from wid.store import storage

        names = ("WID_DATA_DIR", "THIS_ENDPOINT", "DATABASE_URI", "WID_SECRET_KEY", "WID_TRUSTED_ISSUERS",
                 "WID_ISSUER_OWNER_CLAIMS", "WID_ALLOW_INSECURE_ISSUERS", "DIGITALOCEAN_API_URL",
                 "DIGITALOCEAN_OAUTH_URL")
        saved = {name: os.environ.get(name) for name in names}
        for name in names:
            if self.env.get(name) is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = self.env[name]
        config.settings.cache_clear()
        try:
            yield
        finally:
            storage.close_all()
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            config.settings.cache_clear()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # run.sh's trap stops every job it started
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                kill_session(self.process.pid)
                self.process.wait()

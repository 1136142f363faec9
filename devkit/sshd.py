"""Real OpenSSH `sshd`s standing in for Droplets: each on its own loopback address, with its own host keys.

All of them listen on one port number (the proxy connects to WID_DROPLET_SSH_PORT on every Droplet),
each on a different 127.x.y.z address, so several "Droplets" can run at once. They are started on
demand and shared by the whole test session (`pool()`); nobody can log in to them (every
authentication method is off): the proxy only needs their key exchange.

When the tests run as root, sshd runs as `nobody`, so it needs no privilege separation directory
and nothing on the system is touched.

Helpers for the attacks: `closed_address()` (nothing listens), `silent_address()` (accepts and
never speaks).
"""

from __future__ import annotations

import atexit
import base64
import functools
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SSHD = "/usr/sbin/sshd"
KEY_TYPES = ("ed25519", "ecdsa", "rsa")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _accepts(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Sshd:
    """One sshd. `host_key(type)` is the private key file, `public_key(type)` its SSH wire blob."""

    address: str
    port: int
    dir: Path
    process: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.dir / "sshd.log"

    def host_key(self, key_type: str) -> Path:
        return self.dir / f"ssh_host_{key_type}_key"

    def public_key(self, key_type: str) -> bytes:
        text = (self.dir / f"ssh_host_{key_type}_key.pub").read_text().split()
        return base64.b64decode(text[1])

    def fingerprint(self, key_type: str) -> str:
        out = subprocess.run(["ssh-keygen", "-l", "-f", str(self.dir / f"ssh_host_{key_type}_key.pub")],
                             capture_output=True, text=True, check=True)
        return out.stdout.split()[1]

    def copy_host_keys(self, etc_ssh: Path) -> None:
        """Put this server's host keys where a Droplet keeps them (`/etc/ssh` under a test root), mode 0600."""
        etc_ssh.mkdir(parents=True, exist_ok=True)
        for key_type in KEY_TYPES:
            for suffix in ("", ".pub"):
                target = etc_ssh / f"ssh_host_{key_type}_key{suffix}"
                shutil.copyfile(self.dir / f"ssh_host_{key_type}_key{suffix}", target)
                target.chmod(0o600 if not suffix else 0o644)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # sshd and its pre-auth children
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


class SshdPool:
    def __init__(self) -> None:
        if not os.path.exists(SSHD):
            raise RuntimeError("OpenSSH sshd is not installed: run scripts/install.sh --test (openssh-server)")
        self.port = _free_port()
        self.base = Path(tempfile.mkdtemp(prefix="wid-sshd-"))
        self.base.chmod(0o755)
        # A random 127.a.b.0/24 per session, so parallel sessions on one machine do not collide.
        self._prefix = f"127.{random.randint(64, 250)}.{random.randint(1, 250)}"
        self._next = 1
        self._lock = threading.Lock()
        self.servers: list[Sshd] = []
        self._shared: list[Sshd] = []
        self._listeners: list[socket.socket] = []
        self._user = "nobody" if os.getuid() == 0 else None

    def _address(self) -> str:
        with self._lock:
            self._next += 1
            if self._next > 254:
                raise RuntimeError("out of loopback addresses for sshd")
            return f"{self._prefix}.{self._next}"

    def closed_address(self) -> str:
        """A loopback address where nothing listens on the pool's port."""
        return self._address()

    def silent_address(self) -> str:
        """A loopback address whose port accepts TCP connections and never says a word."""
        address = self._address()
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((address, self.port))
        listener.listen(16)
        self._listeners.append(listener)
        held: list[socket.socket] = []

        def accept() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                held.append(conn)  # keep it open, say nothing

        threading.Thread(target=accept, daemon=True).start()
        return address

    def start(self) -> Sshd:
        """A new sshd with fresh host keys (ed25519, ecdsa, rsa) on a new loopback address."""
        for _ in range(5):
            address = self._address()
            directory = self.base / address
            directory.mkdir()
            keygens = [subprocess.Popen(["ssh-keygen", "-q", "-t", key_type, *(["-b", "2048"] if key_type == "rsa"
                                                                              else []),
                                         "-N", "", "-C", f"host@{address}",
                                         "-f", str(directory / f"ssh_host_{key_type}_key")])
                       for key_type in KEY_TYPES]
            if any(k.wait() != 0 for k in keygens):
                raise RuntimeError("ssh-keygen failed")
            config = directory / "sshd_config"
            config.write_text("\n".join([
                f"ListenAddress {address}:{self.port}",
                *(f"HostKey {directory / f'ssh_host_{t}_key'}" for t in KEY_TYPES),
                f"PidFile {directory / 'sshd.pid'}",
                "UsePAM no",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication no",
                "HostbasedAuthentication no",
                "AuthorizedKeysFile none",
                "PermitRootLogin no",
                "DenyUsers *",
                "MaxStartups 100:30:200",
                "LoginGraceTime 10",
                "LogLevel ERROR",
                "",
            ]))
            if self._user:
                pw = pwd.getpwnam(self._user)
                for path in [directory, *directory.iterdir()]:
                    os.chown(path, pw.pw_uid, pw.pw_gid)
            server = Sshd(address, self.port, directory)
            command = [SSHD, "-D", "-e", "-f", str(config)]
            drop: dict[str, object] = {}
            if self._user:
                pw = pwd.getpwnam(self._user)
                drop = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
            with open(server.log, "wb") as log:
                server.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                                  start_new_session=True, **drop)  # type: ignore[call-overload]
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and server.process.poll() is None:
                if _accepts(address, self.port):
                    self.servers.append(server)
                    return server
                time.sleep(0.02)
            server.stop()
        raise RuntimeError(f"sshd did not start; last log:\n{server.log.read_text(errors='replace')}")

    def shared(self, index: int) -> Sshd:
        """The index-th sshd shared by every test of the session (started on first use)."""
        with self._lock:
            missing = index + 1 - len(self._shared)
        for _ in range(max(0, missing)):
            server = self.start()
            with self._lock:
                self._shared.append(server)
        return self._shared[index]

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        self.servers.clear()
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()
        shutil.rmtree(self.base, ignore_errors=True)


_pool: SshdPool | None = None
_pool_lock = threading.Lock()


def pool() -> SshdPool:
    """The session's pool (started on first use, stopped when the test process exits)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = SshdPool()
            atexit.register(_pool.stop)
        return _pool


# -- a Droplet's side: cloud-init's view of user_data, and the script running under a test root ----------

SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, which has the cloud-init package
# What cloud-init's runcmd and a systemd service see on Ubuntu: the system's sh, curl, python3, ssh-keygen.
DROPLET_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_CLOUD_INIT_PROCESS = r"""
import json, os, sys, tempfile
from cloudinit import handlers, helpers, user_data
from cloudinit.handlers.cloud_config import CloudConfigPartHandler
from cloudinit.handlers.shell_script import ShellScriptPartHandler

raw = sys.stdin.read()
tmp = tempfile.mkdtemp()
paths = helpers.Paths({"cloud_dir": tmp})
message = user_data.UserDataProcessor(paths).process(raw)
config = CloudConfigPartHandler(paths)
config.cloud_fn = os.path.join(tmp, "cloud-config.txt")
scripts = ShellScriptPartHandler(paths)
scripts.script_dir = os.path.join(tmp, "scripts")
os.makedirs(scripts.script_dir)
config.handle_part(None, handlers.CONTENT_START, None, None, None, None)
parts = []
for part in message.walk():
    if part.is_multipart():
        continue
    ctype, name = part.get_content_type(), part.get_filename()
    payload = part.get_payload(decode=True).decode()
    parts.append([ctype, name])
    if ctype == "text/cloud-config":
        config.handle_part(None, ctype, name, payload, None, dict(part.items()))
    elif ctype == "text/x-shellscript":
        scripts.handle_part(None, ctype, name, payload, None)
config.handle_part(None, handlers.CONTENT_END, None, None, None, None)
text = open(config.cloud_fn).read() if os.path.exists(config.cloud_fn) else ""
print(json.dumps({"parts": parts, "cloud_config": text, "scripts": sorted(os.listdir(scripts.script_dir))}))
"""


@functools.lru_cache(maxsize=32)
def _cloud_init_view(user_data: str) -> str:
    out = subprocess.run([SYSTEM_PYTHON, "-c", _CLOUD_INIT_PROCESS], input=user_data, capture_output=True,
                         text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"cloud-init could not process the user_data:\n{out.stderr[-3000:]}")
    return out.stdout


def cloud_init_view(user_data: str) -> dict[str, Any]:
    """What cloud-init itself makes of user_data: its parts, the merged cloud-config text, the scripts
    it would write (cloud-init runs them, and its runcmd script, in name order)."""
    import json

    view: dict[str, Any] = json.loads(_cloud_init_view(user_data))
    return view


class FakeDroplet:
    """A Droplet under a test root: cloud-init's write_files, then the first runcmd command, run for real.

    The host keys in `{root}/etc/ssh` are those of `sshd` (what the proxy sees at the Droplet's IPv4),
    unless a test signs with others. The metadata service is `file://{root}/metadata/v1` (`id`).
    systemctl is a stub that records its arguments in `{root}/systemctl.log`.
    """

    SCRIPT = "/usr/local/sbin/wid-droplet"
    SECRETS = "root/secrets/digitalocean.com/serviceaccount"

    def __init__(self, root: Path, sshd: Sshd, droplet_id: int | None = None):
        self.root = root
        self.sshd = sshd
        self.root.mkdir(parents=True, exist_ok=True)
        sshd.copy_host_keys(root / "etc" / "ssh")
        stub = root / "bin" / "systemctl"
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text(f'#!/bin/sh\necho "$*" >> {root / "systemctl.log"}\n')
        stub.chmod(0o755)
        self.cloud_config: dict[str, object] = {}
        if droplet_id is not None:
            self.set_droplet_id(droplet_id)

    def set_droplet_id(self, droplet_id: int) -> None:
        metadata = self.root / "metadata" / "v1"
        metadata.mkdir(parents=True, exist_ok=True)
        (metadata / "id").write_text(str(droplet_id))

    @property
    def secrets_dir(self) -> Path:
        return self.root / self.SECRETS

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "PATH": DROPLET_PATH, "WID_DROPLET_ROOT": str(self.root),
                "WID_METADATA_URL": f"file://{self.root}/metadata/v1", "WID_RETRY_DELAYS": "0.2 0.5",
                "WID_SYSTEMCTL": str(self.root / "bin" / "systemctl"), **extra}

    def install(self, user_data: str) -> list[object]:
        """cloud-init's write_files, as cloud-init merged user_data; returns runcmd."""
        import yaml

        view = cloud_init_view(user_data)
        config = yaml.safe_load(str(view["cloud_config"])) or {}
        self.cloud_config = config
        for entry in config.get("write_files", []):
            target = self.root / entry["path"].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(entry["content"])
            target.chmod(int(str(entry.get("permissions", "0644")), 8))
        runcmd: list[object] = config.get("runcmd", [])
        return runcmd

    def run(self, command: list[str], **env: str) -> subprocess.CompletedProcess[str]:
        mapped = [str(self.root / arg.lstrip("/")) if arg == self.SCRIPT else arg for arg in command]
        return subprocess.run(mapped, env=self.env(**env), capture_output=True, text=True, timeout=120)

    def boot(self, user_data: str, **env: str) -> subprocess.CompletedProcess[str]:
        """First boot: install, then run our step (runcmd's first command) under sh."""
        runcmd = self.install(user_data)
        first = runcmd[0]
        assert isinstance(first, list) and first[:3] == ["sh", self.SCRIPT, "provision"], first
        return self.run([str(a) for a in first], **env)

    def timer_command(self) -> list[str]:
        unit = (self.root / "etc/systemd/system/wid-token-refresh.service").read_text()
        line = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
        return line[len("ExecStart="):].split()

    def run_timer(self, **env: str) -> subprocess.CompletedProcess[str]:
        """What wid-token-refresh.timer starts: the service's ExecStart."""
        return self.run(self.timer_command(), **env)

    def secrets(self) -> dict[str, str]:
        return {p.name: p.read_text() for p in sorted(self.secrets_dir.iterdir()) if not p.name.startswith(".")}

    def systemctl_calls(self) -> list[str]:
        log = self.root / "systemctl.log"
        return log.read_text().splitlines() if log.exists() else []

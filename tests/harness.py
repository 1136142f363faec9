"""Real components for tests: a throw-away PostgreSQL cluster (the proxy itself is devkit/proxy.py).

Expensive to start, so tests/conftest.py shares one per test session.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from devkit.proxy import free_port


class PostgresServer:
    """A throwaway cluster on a loopback port (initdb + pg_ctl as the postgres user when we are root)."""

    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if not bins:
            raise RuntimeError("PostgreSQL is not installed: run scripts/install.sh --test")
        self.bin = Path(bins[-1])
        # Not under pytest's tmp dirs: those are private to root, and the server runs as postgres.
        self.dir = Path(tempfile.mkdtemp(prefix="wid-pg-"))
        self.port = free_port()
        self.user = "wid"

    def _run(self, *args: str | Path) -> None:
        command = [str(a) for a in args]
        if os.getuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        if os.getuid() == 0:
            shutil.chown(self.dir, "postgres")
        self._run(self.bin / "initdb", "-D", self.dir / "data", "-A", "trust", "-U", self.user, "--no-sync")
        self.resume()

    def halt(self) -> None:
        """An outage: the server stops (every client connection is cut) and keeps its data."""
        self._run(self.bin / "pg_ctl", "-D", self.dir / "data", "-w", "-m", "fast", "stop")

    def resume(self) -> None:
        """Start (again) on the same port, with the same data."""
        self._run(self.bin / "pg_ctl", "-D", self.dir / "data", "-w", "-l", self.dir / "log", "-o",
                  f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def stop(self) -> None:
        self._run(self.bin / "pg_ctl", "-D", self.dir / "data", "-m", "immediate", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def admin_uri(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def fresh_database(self) -> str:
        """A new empty database; tests never share tables."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_uri, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{name}"

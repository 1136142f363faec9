"""`wid` acts on the configuration of the server it administers: the data dir `make run` uses (never the
current directory), the issuer `wid setup` recorded, and never a key or database of its own making."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

from devkit.proxy import ROOT
from wid import config

TEAM = "5a5c4f2e-6d8e-4a43-9f70-0e6f5b8a1c2d"
TOKEN_ARGS = ("token", "--aud", f"api://DigitalOcean?actx={TEAM}", "--sub", f"actx:{TEAM}:role:reader")


def wid(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("WID_", "THIS_ENDPOINT", "DATABASE_URI", "PORT"))}
    return subprocess.run([str(ROOT / ".venv" / "bin" / "wid"), *args], env={**base, **env}, cwd=cwd, text=True,
                          capture_output=True, timeout=60)


def claims(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    decoded: dict[str, object] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return decoded


def test_the_default_data_dir_is_the_checkouts_never_the_current_directory(tmp_path: Path) -> None:
    assert config.default_data_dir() == str(ROOT / "data")
    done = wid("keys", "list", cwd=tmp_path)
    assert str(ROOT / "data") in done.stderr
    assert not (tmp_path / "data").exists()


def test_a_data_dir_without_a_server_is_refused_and_nothing_is_created(tmp_path: Path) -> None:
    empty = tmp_path / "elsewhere"
    done = wid(*TOKEN_ARGS, WID_DATA_DIR=str(empty))
    assert done.returncode == 2 and done.stdout == ""
    assert f"WID_DATA_DIR {empty} holds no server configuration" in done.stderr
    assert not empty.exists()


def test_wid_signs_with_the_issuer_the_server_was_set_up_with(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert wid("setup", WID_DATA_DIR=str(data), THIS_ENDPOINT="http://localhost:18080").returncode == 0
    # Later, from another shell: no THIS_ENDPOINT, no PORT.
    done = wid(*TOKEN_ARGS, WID_DATA_DIR=str(data))
    assert done.returncode == 0, done.stderr
    assert claims(done.stdout.strip())["iss"] == "http://localhost:18080"
    assert f"data dir {data}" in done.stderr and "issuer http://localhost:18080" in done.stderr
    # An explicit THIS_ENDPOINT that differs is said out loud.
    other = wid(*TOKEN_ARGS, WID_DATA_DIR=str(data), THIS_ENDPOINT="http://localhost:8080")
    assert other.returncode == 0 and "but the server records http://localhost:18080" in other.stderr
    assert claims(other.stdout.strip())["iss"] == "http://localhost:8080"

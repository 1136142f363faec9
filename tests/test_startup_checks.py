"""`make run` (scripts/run.sh) refuses a PORT another process listens on, naming PORT, and creates its files
private to the service user."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from devkit.proxy import ProxyServer


def test_a_second_proxy_on_a_busy_port_is_refused_naming_port(proxy: ProxyServer, tmp_path: Path) -> None:
    second = ProxyServer(tmp_path / "data", {"PORT": str(proxy.port)})
    with pytest.raises(RuntimeError) as refused:
        second.start(timeout=60)
    assert f"wid: PORT {proxy.port} is already in use" in str(refused.value)
    assert "set PORT to a free port" in str(refused.value)
    # The first proxy still answers, and with its own keys only.
    import requests

    assert requests.get(f"{proxy.url}/health", timeout=5).status_code == 200


def test_make_run_creates_its_files_private(proxy: ProxyServer) -> None:
    # (the test harness makes the data dir itself; what run.sh creates under umask 077 is private)
    assert stat.S_IMODE((proxy.data_dir / "run").stat().st_mode) == 0o700
    for name in ("wid.sqlite3", "secret.key"):
        path = proxy.data_dir / name
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, name


def test_a_data_dir_that_cannot_be_created_names_wid_data_dir(tmp_path: Path) -> None:
    import os
    import subprocess

    from devkit.proxy import ROOT

    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    env = {**os.environ, "WID_DATA_DIR": str(blocked / "data"), "PORT": "1"}
    done = subprocess.run([str(ROOT / "scripts" / "run.sh")], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert f"wid: WID_DATA_DIR: cannot create or write {blocked}/data/run" in done.stderr

"""`wid` follows command-line conventions: one line naming what is wrong and exit 2 for usage errors (never a
traceback), --version, help on every option, JSON lines for listings, listings that create nothing."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

import pytest

from devkit.proxy import ROOT
from wid.cli import main as cli

TEAM = "5a5c4f2e-6d8e-4a43-9f70-0e6f5b8a1c2d"
AUD = f"api://DigitalOcean?actx={TEAM}"
SUB = f"actx:{TEAM}:role:reader"


def wid(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ROOT / ".venv" / "bin" / "wid"), *args], env=dict(os.environ), text=True,
                          capture_output=True, timeout=60)


@pytest.fixture
def ready(app_env: Path) -> Path:
    assert wid("setup").returncode == 0
    return app_env


@pytest.mark.parametrize(("args", "message"), [
    (["--aud", "foo", "--sub", SUB], "wid token: --aud/--sub: aud 'foo' is not of the form"),
    (["--aud", AUD, "--sub", "nobody"], "wid token: --aud/--sub: sub must start with actx:"),
    (["--aud", AUD, "--sub", SUB, "--ttl", "999999"],
     "wid token: --ttl must be 1 to 86400 seconds (WID_MAX_TOKEN_TTL)"),
    (["--aud", AUD, "--sub", SUB, "--ttl", "0"], "--ttl must be 1 to"),
    (["--aud", AUD, "--sub", SUB, "--claims", "notjson"], "wid token: --claims is not JSON"),
    (["--aud", AUD, "--sub", SUB, "--claims", "[1]"], "--claims must be a JSON object without"),
    (["--aud", AUD, "--sub", SUB, "--claims", '{"exp": 1}'], "--claims must be a JSON object without"),
    (["--aud", AUD, "--sub", SUB, "--ttl", "abc"], "argument --ttl: invalid int value"),
])
def test_token_usage_errors_are_one_line_and_exit_2(ready: Path, args: list[str], message: str) -> None:
    done = wid("token", *args)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_a_good_token_is_still_signed(ready: Path) -> None:
    done = wid("token", "--aud", AUD, "--sub", SUB, "--claims", '{"env": "prod"}')
    assert done.returncode == 0 and done.stdout.count(".") == 2


def test_version_names_the_release() -> None:
    done = wid("--version")
    assert done.returncode == 0 and done.stdout.startswith("wid ") and done.stdout.strip() == f"wid {cli.version()}"


def test_every_option_of_every_command_has_help() -> None:
    def walk(parser: argparse.ArgumentParser, where: str) -> list[str]:
        missing = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    missing += walk(child, f"{where} {name}")
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append(f"{where} {'/'.join(action.option_strings) or action.dest}")
        return missing

    assert walk(cli.build_parser(), "wid") == []


def test_keys_list_json_is_one_object_per_line(ready: Path) -> None:
    assert wid("keys", "rotate").returncode == 0
    lines = wid("keys", "list", "--json").stdout.splitlines()
    assert len(lines) >= 2
    rows = [json.loads(line) for line in lines]
    assert all(isinstance(row, dict) and "kid" in row and "jwk" not in row for row in rows)


def test_listing_atproto_client_keys_creates_none(ready: Path) -> None:
    from wid.store import storage

    done = wid("atproto", "client-keys", "list")
    assert done.returncode == 0 and done.stdout == "" and "none yet" in done.stderr
    with storage.database().transaction(write=False) as tx:
        assert tx.execute("SELECT count(*) FROM atproto_client_keys") == [(0,)]


@pytest.mark.parametrize("fault", ["foo", "GET /v2 abc", "GET v2 500"])
def test_demo_fault_usage_errors_exit_2(fault: str) -> None:
    done = wid("demo", "--fault", fault)
    assert done.returncode == 2 and "--fault wants 'METHOD PATH STATUS'" in done.stderr
    assert "Traceback" not in done.stderr

"""`wid demo`: the articles' walkthrough end to end, as a user runs it (a subprocess of the installed `wid`).

It must pass every step, say what it showed, fail (non-zero, naming the step) when a step misbehaves,
and leave no process or temporary file behind, also when interrupted.
"""

from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devkit.demo.signals import Interrupted, _Signals
from devkit.demo.steps_workloads import curl_status_lines
from devkit.proxy import ROOT
from wid.cli import demo

WID = str(ROOT / ".venv" / "bin" / "wid")


def run_demo(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([WID, "demo", "--color", "never", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "DATABASE_URI": "postgresql://must-not-be-used"})


def scratch_dir(output: str) -> str:
    match = re.search(r"scratch dir (/\S+?)\)", output)
    assert match, output[:500]
    return match.group(1)


def assert_nothing_left(scratch: str) -> None:
    assert not Path(scratch).exists()
    # fcgiwrap's socket, the proxy's data dir: every process the demo started names its scratch dir.
    left = subprocess.run(["pgrep", "-af", scratch], capture_output=True, text=True).stdout
    assert left == "", left


def test_the_walkthrough_passes_every_step() -> None:
    done = run_demo()
    out = done.stdout
    assert done.returncode == 0, out[-6000:] + done.stderr[-2000:]
    assert "wid demo: all 15 steps behaved as the articles say" in out
    assert out.count("  ✓ ") == 15 and "✗" not in out
    for expected in [
        'team "Demo Team" connected',
        "$ git push -u deploy main",
        "remote: wid: main is now",
        "$ git fetch --all && git show deploy/schema:rbac.json | jq",
        '--tag-names "oidc-sub:role:ex-database-and-spaces-keys-access"',
        "$ sh /usr/local/sbin/wid-droplet provision http://127.0.0.1:",
        "workload token sub actx:",
        "base_url  droplet_id  expires_at  refresh_token  team_uuid  token",
        '"${URL}/v1/oidc/issue"',
        "| jq -r .database.connection.uri",
        "postgres://doadmin:",
        '"bucket": "111"',
        "< HTTP/1.1 403 Forbidden",
        "policy 'spaces-keys' denies create on /v2/spaces/keys: grants[0].bucket '222' is not one of ['111']",
        "role ex-gha-readwrite is in force",
        "- name: Get data-readwrite token",
        "::add-mask::postgres://doadmin:",
        "$ /bin/sh /usr/local/sbin/wid-droplet refresh",
        "wid-droplet: token refreshed",
        "authorize  deny",
    ]:
        assert expected in out, expected
    assert_nothing_left(scratch_dir(out))


def test_a_step_that_misbehaves_fails_the_demo_and_names_it() -> None:
    done = run_demo("--fault", "POST /v2/spaces/keys 500")
    out = done.stdout
    assert done.returncode == 1, out[-4000:]
    assert "the next POST /v2/spaces/keys is answered 500" in out
    assert "✗ curl: curl exited with status 22" in out
    assert "POST /v2/spaces/keys -> 502" in out  # the proxy's log, shortened: upstream 5xx is our 502
    assert 'FAILED at step 10/15 "Spaces key for bucket 111"' in out
    assert "[11/15]" not in out  # nothing runs after a failed step
    assert_nothing_left(scratch_dir(out))


def test_curls_status_line_is_shown_also_when_its_progress_meter_shares_the_line() -> None:
    # curl -vf ... | jq with a response that took a second: the meter's last update precedes the status line.
    stderr = ("  % Total    % Received % Xferd  Average Speed   Time    Time     Time  Current\n"
              "\r  0     0    0     0    0     0      0      0 --:--:-- --:--:-- --:--:--     0*   Trying 127.0.0.1\n"
              "> POST /v2/spaces/keys HTTP/1.1\r\n"
              "\r100   150    0     0  100   150      0    149  0:00:01  0:00:01 --:--:--   149"
              "< HTTP/1.1 403 Forbidden\r\n"
              "< Content-Type: application/json\r\n"
              "curl: (22) The requested URL returned error: 403\n")
    assert curl_status_lines(stderr) == ("< HTTP/1.1 403 Forbidden\n"
                                         "curl: (22) The requested URL returned error: 403")


# A shell starts a background job (`make test &`) with SIGINT ignored, and the demo, as it should, leaves an
# ignored signal ignored: the demo here is started as from a terminal, with Ctrl-C's default disposition
# (which exec keeps).
_WITH_CTRL_C = [sys.executable, "-c", "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                "os.execv(sys.argv[1], sys.argv[1:])"]


def test_ctrl_c_stops_everything() -> None:
    process = subprocess.Popen([*_WITH_CTRL_C, WID, "demo", "--color", "never"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        lines.append(line)
        if not line or line.startswith("[ 7/15]"):  # the proxy, the sshd and the Droplet's files all exist
            break
    scratch = scratch_dir("".join(lines))
    running = subprocess.run(["pgrep", "-af", scratch], capture_output=True, text=True).stdout
    assert "fcgiwrap" in running, "".join(lines)
    process.send_signal(signal.SIGINT)
    rest = process.stdout.read()
    assert process.wait(timeout=60) == 130, f"the demo went on after SIGINT; its output:\n{rest[-3000:]}"
    assert "wid demo: interrupted (SIGINT); cleaning up" in rest
    assert_nothing_left(scratch)


def test_missing_tools_are_named_with_what_to_install(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(demo, "SSHD", "/nonexistent/sshd")
    real_which = demo.shutil.which
    monkeypatch.setattr(demo.shutil, "which", lambda name: None if name == "jq" else real_which(name))
    problems = demo.missing_requirements()
    assert any("sshd" in p and "apt-get install openssh-server" in p for p in problems), problems
    assert any("`jq`" in p and "apt-get install jq" in p for p in problems), problems

    parser = demo.argparse.ArgumentParser()
    demo.register(parser.add_subparsers())
    args = parser.parse_args(["demo"])
    assert args.func(args) == 2
    assert "wid demo cannot run here:" in capsys.readouterr().out


def test_help_says_it_needs_this_checkout() -> None:
    assert demo.ROOT == ROOT
    assert f"({ROOT})" in demo.HELP and "source checkout" in demo.HELP


def test_missing_python_tools_name_install_sh_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = demo.importlib.util.find_spec
    monkeypatch.setattr(demo.importlib.util, "find_spec", lambda name: None if name == "pydo" else real_find_spec(name))
    problems = demo.missing_requirements()
    assert "the Python package pydo is not installed: scripts/install.sh --demo" in problems
    assert not [p for p in problems if "requests" in p or "PyJWT" in p]


def test_without_devkit_it_says_it_runs_from_a_source_checkout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    absent = tmp_path / "devkit"  # an installed package or the image: no devkit/ beside lib/
    monkeypatch.setattr(demo, "DEVKIT", absent)
    message = f"wid demo runs from a source checkout: devkit/ not found at {absent}"
    assert message in demo.missing_requirements()

    parser = demo.argparse.ArgumentParser()
    demo.register(parser.add_subparsers())
    args = parser.parse_args(["demo"])
    assert args.func(args) == 2
    out = capsys.readouterr().out
    assert out.startswith("wid demo cannot run here:\n") and f"  - {message}\n" in out


def _imports(tree: ast.AST) -> list[tuple[str, ast.AST]]:
    """(module, the import's node) for every import in a module, those inside functions included."""
    found: list[tuple[str, ast.AST]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node))
    return found


def test_only_the_demo_imports_the_devkit_and_nothing_imports_the_tests() -> None:
    """The service runs without devkit/, tests/ and bench/ (the image has none of them): the library imports
    none of them, except `wid demo`'s one import of the walkthrough, inside the function that runs it."""
    found: list[tuple[str, str, str]] = []
    for path in sorted((ROOT / "lib").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        functions = {id(inner): node.name for node in ast.walk(tree)
                     if isinstance(node, ast.FunctionDef) for inner in ast.walk(node)}
        for module, node in _imports(tree):
            if module.split(".")[0] in {"devkit", "tests", "bench"}:
                where = functions.get(id(node), "module level")
                found.append((str(path.relative_to(ROOT)), module, where))
    assert found == [("lib/wid/cli/demo.py", "devkit.demo", "run")]



@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the drop this test makes
def test_a_signal_whose_interrupted_was_lost_in_a_destructor_stops_the_demo_at_the_next_step() -> None:
    signals = _Signals()

    class Collected:
        def __del__(self) -> None:  # a signal handled while an object is collected raises in here
            signals.handle(signal.SIGINT, None)

    signals.check()  # nothing received yet
    Collected()  # Python prints "Exception ignored in ..." and drops the Interrupted
    with pytest.raises(Interrupted) as raised:
        signals.check()
    assert raised.value.signum == signal.SIGINT

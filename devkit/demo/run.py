"""`wid demo`'s walkthrough: the steps in the articles' order, the progress display, and the clean-up.

lib/wid/cli/demo.py holds the command line and the checks for what the demo needs, then hands over to
main() here; the steps are in devkit/demo/steps_setup.py (1-6) and devkit/demo/steps_workloads.py (7-15).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from devkit.demo import steps_setup as setup
from devkit.demo import steps_workloads as workloads
from devkit.demo.console import Console, use_color
from devkit.demo.context import Context, StepFailed, parse_fault
from devkit.demo.signals import SIGNALS, Interrupted

STEPS: list[tuple[str, Callable[[Context], str]]] = [
    ("Start the stand-ins and the proxy", setup.start_services),
    ("Authorize the proxy for a team (DigitalOcean OAuth web flow)", setup.authorize_team),
    ("git push the articles' RBAC repo", setup.push_rbac),
    ("View the compiled configuration", setup.view_config),
    ("Create a Droplet through the proxy", setup.create_droplet),
    ("First boot: the Droplet proves its SSH host key", setup.first_boot),
    ("Exchange the workload token for a role token", workloads.exchange),
    ("Database connection string by UUID", workloads.database_by_uuid),
    ("Database connection strings by tag", workloads.database_by_tag),
    ("Spaces key for bucket 111", workloads.spaces_key_111),
    ("Spaces key for bucket 222 is refused", workloads.spaces_key_222),
    ("Allow a GitHub Actions workflow (second push)", workloads.push_gha_role),
    ("GitHub Actions: workflow token -> role token -> database", workloads.github_actions),
    ("Token refresh (the Droplet's timer)", workloads.refresh),
    ("The audit log", workloads.audit),
]

# The user's shell may point the proxy at real services; the demo's processes get none of it.
_SCRUBBED_PREFIXES = ("WID_", "DIGITALOCEAN_")
_SCRUBBED = {"DATABASE_URI", "THIS_ENDPOINT", "PORT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "GIT_DIR",
             "GIT_WORK_TREE"}


def _environment_for_demo() -> None:
    """Forget settings meant for a real deployment; keep everything on loopback."""
    for name in list(os.environ):
        if name.startswith(_SCRUBBED_PREFIXES) or name in _SCRUBBED:
            del os.environ[name]
    for name in ("no_proxy", "NO_PROXY"):
        os.environ[name] = ",".join(x for x in ("127.0.0.1,localhost", os.environ.get(name)) if x)


def main(*, client: str, faults: list[str], keep: bool, color: str) -> int:
    """Run every step (options as `wid demo --help` describes them); the exit status `wid demo` returns."""
    console = Console(color=use_color(color))
    parsed = [parse_fault(spec) for spec in faults]
    _environment_for_demo()
    SIGNALS.install()
    tmp = Path(tempfile.mkdtemp(prefix="wid-demo-"))
    tmp.chmod(0o755)  # sshd runs as nobody when we are root, and reads its keys below here
    ctx = Context(console=console, tmp=tmp, client=client, faults=parsed)
    console.write(f"wid demo: the articles' walkthrough against local stand-ins ({len(STEPS)} steps; "
                  f"scratch dir {tmp})")
    started = time.monotonic()
    failed: tuple[int, str] | None = None
    status = 0
    try:
        for number, (title, step) in enumerate(STEPS, 1):
            SIGNALS.check()
            console.heading(number, len(STEPS), title)
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
        SIGNALS.check()
    except (KeyboardInterrupt, Interrupted) as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        console.write(f"\nwid demo: interrupted ({signal.Signals(signum).name}); cleaning up")
        status = 128 + signum
    finally:
        if failed is not None:
            ctx.show_logs()
        ctx.close()
        if keep:
            console.write(f"wid demo: kept {tmp} (logs, the RBAC repo, the Droplet's files)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.monotonic() - started
    if status:
        return status
    if failed is not None:
        console.write(f"\nwid demo: FAILED at step {failed[0]}/{len(STEPS)} \"{failed[1]}\" after {elapsed:.1f}s; "
                      "everything it started has been stopped")
        return 1
    console.write(f"\nwid demo: all {len(STEPS)} steps behaved as the articles say ({elapsed:.1f}s); "
                  "everything it started has been stopped")
    return 0


"""Fault injection for tests/test_git_push.py's kill -9 test: park a push just before its transaction commits.

The test serves `serve()` as the proxy's cgi-bin/git.py (devkit/proxy.py, ProxyServer.cgi_replaced): the
real git handler, given a `before_commit` that waits there. Inert unless a file `armed` exists in the hold
dir; the push that claims it renames it to `held-{pid}` and waits (up to 60 s) until that file is removed,
so that the test can kill -9 the process in the middle of the push, everything written but not committed.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

from wid.web.app import run_cgi
from wid.web.handlers.git import handler


def hold(folder: Path) -> None:
    held = folder / f"held-{os.getpid()}"
    try:
        os.rename(folder / "armed", held)
    except OSError:
        return
    deadline = time.monotonic() + 60
    while held.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def serve(folder: Path) -> None:
    """cgi-bin/git.py, with the hold."""
    run_cgi(functools.partial(handler, before_commit=functools.partial(hold, folder)))

"""Ctrl-C, SIGTERM and SIGHUP during `wid demo`: unwind, so that the clean-up stops what was started."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class Interrupted(BaseException):
    """Ctrl-C, SIGTERM or SIGHUP: unwind, so the clean-up runs."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Signals:
    """Signals raise Interrupted, except inside critical(): while a process is being started and not yet
    recorded for the clean-up, the signal waits until it is."""

    def __init__(self) -> None:
        self.depth = 0
        self.pending: int | None = None
        self.received: int | None = None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        # Kept for check(): Python prints and drops an exception raised while a destructor runs (a socket or
        # file being collected), and the handler can run inside one.
        self.received = signum
        if self.depth:
            self.pending = signum
            return
        raise Interrupted(signum)

    def check(self) -> None:
        """Raise Interrupted for a signal that came earlier and whose Interrupted was lost."""
        if self.received is not None:
            raise Interrupted(self.received)

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(signum) is not signal.SIG_IGN:
                signal.signal(signum, self.handle)

    @contextmanager
    def critical(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if not self.depth and self.pending is not None:
                signum, self.pending = self.pending, None
                raise Interrupted(signum)


SIGNALS = _Signals()
critical = SIGNALS.critical

"""SIGTERM, what schedulers and containers send before they stop a job, handled like Ctrl-C but gentler.

During training (and the final save) the first SIGTERM asks the run to stop at the end of the current optimizer
step and save a checkpoint there (``callbacks.GracefulStop``; all ranks agree on the step), so a preempted run
loses at most the step in progress and re-running the same command continues it; a second SIGTERM, or one
outside training, stops at once like Ctrl-C. The command then exits with 143 (128 + SIGTERM), as shells and
schedulers expect.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

INTERRUPTED = 130  # the shell's code for a process ended by SIGINT (Ctrl-C)
TERMINATED = 143  # ... and by SIGTERM


class Terminated(KeyboardInterrupt):
    """Raised by the SIGTERM handler where stopping at once is right; caught wherever Ctrl-C is."""


class StopRequest:
    """Whether a SIGTERM arrived, and whether a training loop is there to stop gracefully."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.training = False
        self.pid = os.getpid()

    def handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self.pid:  # a forked worker (data loading): its parent decides
            return
        first = not self.requested.is_set()
        self.requested.set()
        if not (self.training and first):
            raise Terminated()
        from tunelab.console import console

        if int(os.environ.get("RANK", "0")) == 0:
            console.print("[yellow]SIGTERM[/yellow]: stopping after this step with a checkpoint (send it again to "
                          "stop now)")

    def reset(self) -> None:
        self.requested.clear()
        self.training = False
        self.pid = os.getpid()

    @property
    def exit_code(self) -> int:
        return TERMINATED if self.requested.is_set() else INTERRUPTED


STOP = StopRequest()


@contextlib.contextmanager
def handling_sigterm() -> Iterator[None]:
    """Route SIGTERM through ``STOP`` for one command, then put back whatever handled it before (main thread
    only, where Python delivers signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    STOP.reset()
    previous = signal.signal(signal.SIGTERM, STOP.handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

"""Crash tests' child processes: kill one the moment it has done what the test waits for."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable


def kill_when(child: subprocess.Popen, done: Callable[[], bool], seconds: float, what: str) -> None:
    """SIGKILL ``child`` as soon as ``done()`` holds; fail with ``what`` if the child exits
    or ``seconds`` pass first."""
    deadline = time.monotonic() + seconds
    while not done():
        assert child.poll() is None and time.monotonic() < deadline, what
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()

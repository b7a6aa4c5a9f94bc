"""Waiting for a child process to end, woken the moment it does.

``Popen.wait`` with a timeout polls, sleeping up to 50 ms between looks: at the
end of every engine, plan-time reader and reaper, a run would wait that out. A
pidfd (Linux 5.3) becomes readable when the process exits; without one,
``Popen.wait`` it is.
"""

from __future__ import annotations

import os
import select
import subprocess

__all__ = ["ExitWaiter", "wait_exit"]


class ExitWaiter:
    """``proc.wait(timeout)``, called as often as needed; :meth:`close` it at the end."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        try:
            self.fd: int | None = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):  # an older kernel, or the process already reaped
            self.fd = None

    def __call__(self, timeout: float) -> int:
        """The exit code; :class:`subprocess.TimeoutExpired` when it still runs."""
        if self.fd is not None and self.proc.returncode is None:
            select.select([self.fd], [], [], timeout)
            timeout = 0
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """``proc.wait(timeout)`` once, woken at the process's end."""
    waiter = ExitWaiter(proc)
    try:
        return waiter(timeout)
    finally:
        waiter.close()

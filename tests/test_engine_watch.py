"""Waiting for an engine: its exit code as soon as it ends, its group stopped at its limit."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from cratebridge.engines.process import watch
from cratebridge.exits import ExitWaiter, wait_exit


def _start(script: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sh", "-c", script], start_new_session=True)


@pytest.mark.parametrize("pidfd", [True, False])
def test_watch_returns_the_engines_exit_code(monkeypatch: pytest.MonkeyPatch,
                                             pidfd: bool) -> None:
    if not pidfd:  # an older kernel: Popen.wait's own polling
        def no_pidfd(pid: int) -> int:
            raise OSError("pidfd_open")
        monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    ticks: list[float] = []
    ended = watch(_start("sleep 0.3; exit 3"), None, lambda: ticks.append(time.monotonic()),
                  0.05)
    assert ended.exit_code == 3 and not ended.timed_out
    assert len(ticks) >= 2  # it ticked while the engine ran, and once more at its end


def test_watch_stops_the_engine_at_its_deadline() -> None:
    proc = _start("sleep 30")
    ended = watch(proc, time.monotonic() + 0.3, lambda: None, 0.05)
    assert ended.timed_out
    assert proc.poll() is not None


def test_the_waiter_closes_its_descriptor() -> None:
    proc = _start("exit 0")
    waiter = ExitWaiter(proc)
    assert waiter(5) == 0
    waiter.close()
    assert waiter.fd is None
    waiter.close()  # twice is harmless


def test_wait_exit_gives_the_code_or_says_it_still_runs() -> None:
    assert wait_exit(_start("exit 4"), 5) == 4
    proc = _start("sleep 30")
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            wait_exit(proc, 0.1)
    finally:
        proc.kill()
        proc.wait()

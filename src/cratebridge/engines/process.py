"""Running an engine program as a child process: its own session, a time limit, clean stops.

Every engine plugin runs its engine through :func:`run_engine` so that a
timeout, SIGTERM or Ctrl-C stops the engine's whole process group, and the
sandbox then removes the run's containers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["EngineExit", "run_engine"]


@dataclass(frozen=True)
class EngineExit:
    """How the engine process ended."""

    exit_code: int
    timed_out: bool = False
    stopped_by: str | None = None

    @property
    def reason(self) -> str | None:
        if self.timed_out:
            return "the run exceeded its time limit and was stopped"
        if self.stopped_by:
            return f"the run was stopped by {self.stopped_by}"
        return None


def _stop_group(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def run_engine(command: Sequence[str], *, env: Mapping[str, str], cwd: Path,
               stdout: Path, stderr: Path, timeout: float | None = None,
               on_tick: Callable[[], None] = lambda: None,
               tick: float = 0.5) -> EngineExit:
    """Run ``command`` to the end (or the time limit), calling ``on_tick`` meanwhile.

    If this process is interrupted (KeyboardInterrupt, or any exception raised
    by a signal handler) the engine's process group is stopped and the
    exception propagates.
    """
    deadline = time.monotonic() + timeout if timeout else None
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(list(command), env=dict(env), cwd=cwd, stdout=out,
                                stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            while True:
                try:
                    code = proc.wait(tick)
                    on_tick()
                    return EngineExit(code)
                except subprocess.TimeoutExpired:
                    on_tick()
                if deadline is not None and time.monotonic() > deadline:
                    _stop_group(proc)
                    on_tick()
                    return EngineExit(proc.returncode or -signal.SIGTERM, timed_out=True)
        except BaseException:
            _stop_group(proc)
            raise

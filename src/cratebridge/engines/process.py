"""Running an engine program as a child process: its own session, a time limit, clean stops.

Every engine plugin runs its engine through :func:`run_engine` so that a
timeout, SIGTERM or Ctrl-C stops the engine's whole process group, and the
sandbox then removes the run's containers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

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


def _stop_group(proc: subprocess.Popen[bytes] | _Forked, grace: float = 10.0) -> None:
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


class _Forked:
    """A forked child, waited on like a :class:`subprocess.Popen`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
            time.sleep(0.02)
        return code


def _fork(main: Callable[[], int], env: Mapping[str, str], cwd: Path, out: BinaryIO,
          err: BinaryIO) -> _Forked:
    """Run ``main`` in a forked child set up as a fresh engine process would be.

    The child is its own session, has the engine's environment, working
    folder and standard streams, default signal handlers, and ends with
    ``os._exit`` so nothing of the parent's (buffers, atexit) runs twice.
    """
    pid = os.fork()
    if pid:
        return _Forked(pid)
    code = 1
    try:
        os.setsid()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        sys.stdin = open(0, closefd=False)
        sys.stdout = open(1, "w", closefd=False)
        sys.stderr = open(2, "w", closefd=False)
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        code = main()
    except BaseException:  # the child must never return into the parent's code
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run_engine(command: Sequence[str], *, env: Mapping[str, str], cwd: Path,
               stdout: Path, stderr: Path, timeout: float | None = None,
               on_tick: Callable[[], None] = lambda: None,
               tick: float = 0.5, in_process: Callable[[], int] | None = None) -> EngineExit:
    """Run ``command`` to the end (or the time limit), calling ``on_tick`` meanwhile.

    ``in_process``, when given, is a function that does exactly what
    ``command`` would (the same program, in Python, already imported): it is
    run in a forked child instead of starting a new interpreter, so that work
    the engine already did in this process (imports, schemas) is not repeated.

    If this process is interrupted (KeyboardInterrupt, or any exception raised
    by a signal handler) the engine's process group is stopped and the
    exception propagates.
    """
    deadline = time.monotonic() + timeout if timeout else None
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc: subprocess.Popen[bytes] | _Forked
        if in_process is not None:
            proc = _fork(in_process, env, cwd, out, err)
        else:
            proc = subprocess.Popen(list(command), env=dict(env), cwd=cwd, stdout=out,
                                    stderr=err, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
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

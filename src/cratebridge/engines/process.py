"""Running an engine confined: its own session, a time limit, clean stops.

Every engine plugin runs its engine through :func:`run_engine`, and whatever
reads the workflow at plan time through :func:`run_confined`: both in the
run's :class:`~cratebridge.containers.confine.Room`, so that the submitter's
code never runs with the executor's rights, and a timeout, SIGTERM or Ctrl-C
stops the engine's whole process group (the broker then stops the run's
containers).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from cratebridge.containers.confine import Room
from cratebridge.errors import CrateRejected, MetadataError, UnsafeCrate, UnsupportedCrate
from cratebridge.exits import ExitWaiter, wait_exit

__all__ = ["EngineExit", "Stop", "confined_report", "print_report", "report_of",
           "run_confined", "run_engine", "stop_group", "stoppable", "sweep", "tail", "watch"]

# The errors a confined reader may report; anything else it says is UnsupportedCrate.
_REPORTABLE: dict[str, type[CrateRejected]] = {
    cls.__name__: cls for cls in (UnsafeCrate, UnsupportedCrate, MetadataError)}


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


class Stop:
    """A request to end a run early, made from a signal handler or another thread.

    The first request wins: its ``reason`` ("SIGTERM", "its disk budget ...")
    is what the run's record says stopped it. :func:`watch` sees the request
    within one tick, stops the engine's process group and returns, so the
    engine plugin still reports every step it started.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._reason: str | None = None
        self._before_start: str | None = None
        self.when: datetime | None = None
        self._lock = threading.Lock()

    def request(self, reason: str, *, before_start: str | None = None) -> bool:
        """Ask for the stop; False when one was already asked for.

        ``before_start``: the whole error of a run this stops before its engine
        starts, when "the run was stopped by REASON before its engine started"
        would not say it right.
        """
        with self._lock:
            if self._event.is_set():
                return False
            self._reason = reason
            self._before_start = before_start
            self.when = datetime.now(UTC)
            self._event.set()
            return True

    @property
    def reason(self) -> str | None:
        return self._reason

    @property
    def before_start(self) -> str:
        """The error of a run stopped before its engine started."""
        return self._before_start or (f"the run was stopped by {self._reason} "
                                      "before its engine started")

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)


_STOP: ContextVar[Stop | None] = ContextVar("cratebridge_stop", default=None)


@contextmanager
def stoppable(stop: Stop) -> Iterator[Stop]:
    """Every engine :func:`watch` waits for inside the block ends early when ``stop`` is asked."""
    token = _STOP.set(stop)
    try:
        yield stop
    finally:
        _STOP.reset(token)


def stop_group(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
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


def run_engine(command: Sequence[str], *, room: Room, env: Mapping[str, str], cwd: Path,
               stdout: Path, stderr: Path, timeout: float | None = None,
               on_tick: Callable[[], None] = lambda: None,
               tick: float = 0.5) -> EngineExit:
    """Run ``command`` confined in ``room`` to the end (or the time limit).

    ``env`` is exactly the engine's environment; ``on_tick`` is called
    meanwhile. If this process is interrupted (KeyboardInterrupt, or
    any exception raised by a signal handler) the engine's process group is
    stopped and the exception propagates.
    """
    deadline = time.monotonic() + timeout if timeout else None
    try:
        return _run_engine(command, room, env, cwd, stdout, stderr, deadline, on_tick, tick)
    finally:
        sweep(room, stderr)


def sweep(room: Room, log: Path) -> None:
    """Once the engine is gone: remove its links leading out of the room, noting them in ``log``.

    The host reads what the engine left, and never through such a link.
    """
    removed = room.sweep_links()
    if removed:
        with log.open("a") as out:
            out.writelines(f"cratebridge: removed a link leading outside the run: {link}\n"
                           for link in removed)


def _run_engine(command: Sequence[str], room: Room, env: Mapping[str, str], cwd: Path,
                stdout: Path, stderr: Path, deadline: float | None,
                on_tick: Callable[[], None], tick: float) -> EngineExit:
    with stdout.open("wb") as out, stderr.open("wb") as err, \
            room.command(command, env, cwd) as (argv, fds):
        _hand_to(room, out, err)
        proc = subprocess.Popen(argv, env={}, cwd="/", stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL, pass_fds=fds,
                                start_new_session=True)
    return watch(proc, deadline, on_tick, tick)


def _hand_to(room: Room, *files: IO[bytes]) -> None:
    """Make the room's uid the owner of its standard output and error files.

    Code in the room may reopen them by name (``> /dev/stderr``, a Snakefile's
    ``shell("... > /dev/stderr")``), which the kernel allows only to their
    owner: a pipe or a file of ours would refuse it ("Permission denied")
    where the same code works for its author. The files are the run's logs,
    outside every folder the room sees; owning them gives the room nothing
    its descriptors did not.
    """
    if os.geteuid() == 0:
        for file in files:
            os.fchown(file.fileno(), room.uid, room.gid)


def _read_back(file: IO[bytes]) -> bytes:
    file.seek(0)
    return file.read()


def watch(proc: subprocess.Popen[bytes], deadline: float | None,
           on_tick: Callable[[], None], tick: float) -> EngineExit:
    """Wait for the engine to end, its time limit or a :class:`Stop`; stop its group early.

    An exception raised meanwhile (KeyboardInterrupt, a signal handler's)
    stops the group too, and propagates.
    """
    stop = _STOP.get()
    wait = ExitWaiter(proc)
    try:
        while True:
            try:
                code = wait(tick)
                on_tick()
                return EngineExit(code)
            except subprocess.TimeoutExpired:
                on_tick()
            if deadline is not None and time.monotonic() > deadline:
                stop_group(proc)
                on_tick()
                return EngineExit(proc.returncode or -signal.SIGTERM, timed_out=True)
            if stop is not None and stop.is_set():
                stop_group(proc)
                on_tick()
                return EngineExit(proc.returncode or -signal.SIGTERM, stopped_by=stop.reason)
    except BaseException:
        stop_group(proc)
        raise
    finally:
        wait.close()


def run_confined(command: Sequence[str], *, room: Room, env: Mapping[str, str], cwd: Path,
                 timeout: float, what: str, where: str) -> tuple[str, str]:
    """Run a plan-time reader of the workflow in ``room``; its standard output and error.

    For code that evaluates the submitter's workflow (loading a CWL document,
    a Snakefile) while nothing runs yet. Raises UnsupportedCrate, naming
    ``what`` and ``where``, when it takes longer than ``timeout`` seconds.
    """
    with tempfile.TemporaryFile() as out_file, tempfile.TemporaryFile() as err_file, \
            room.command(command, env, cwd) as (argv, fds):
        _hand_to(room, out_file, err_file)
        proc = subprocess.Popen(argv, env={}, cwd="/", stdout=out_file,
                                stderr=err_file, stdin=subprocess.DEVNULL,
                                pass_fds=fds, start_new_session=True)
        try:
            wait_exit(proc, timeout)
            out, err = _read_back(out_file), _read_back(err_file)
        except subprocess.TimeoutExpired:
            stop_group(proc, grace=1)
            raise UnsupportedCrate(f"{what} took longer than {timeout:.0f}s",
                                   where=where) from None
        except BaseException:
            stop_group(proc, grace=1)
            raise
        finally:
            room.sweep_links()
    return out.decode(errors="replace"), err.decode(errors="replace")


def print_report(described: dict[str, object] | None, error: BaseException | None) -> int:
    """Inside the room: print what a plan-time reader found, or its error, as one JSON line."""
    if error is None:
        print(json.dumps({"ok": described}))
        return 0
    kind = type(error).__name__ if type(error).__name__ in _REPORTABLE else "UnsupportedCrate"
    message = getattr(error, "message", None) or f"{type(error).__name__}: {error}"
    print(json.dumps({"error": kind, "message": str(message),
                      "where": getattr(error, "where", None)}))
    return 1


def confined_report(command: Sequence[str], *, room: Room, env: Mapping[str, str], cwd: Path,
                    timeout: float, what: str, where: str) -> dict[str, object]:
    """Run a reader that ends with :func:`print_report` in ``room``; what it found.

    Its error is raised here as the crate error it named, with its message.
    """
    out, err = run_confined(command, room=room, env=env, cwd=cwd, timeout=timeout, what=what,
                            where=where)
    return report_of(out, tail(err), what, where)


def report_of(out: str, err_tail: str, what: str, where: str) -> dict[str, object]:
    """What a reader's last output line reports; its error raised as the crate error it named."""
    try:
        report = json.loads(out.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        raise UnsupportedCrate(f"{what} ended without an answer: {err_tail}",
                               where=where) from None
    if "ok" in report:
        return dict(report["ok"])
    error = _REPORTABLE.get(str(report.get("error")), UnsupportedCrate)
    raise error(f"{what}: {report.get('message')}", where=str(report.get("where") or where))


def tail(text: str, lines: int = 3) -> str:
    """The last lines of a confined program's error output, on one line."""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:]) or "no output"

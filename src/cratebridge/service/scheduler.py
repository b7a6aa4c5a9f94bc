"""The queue: runs claimed in order, at most N at once, each a ``cratebridge run`` child.

Each run is ``python -m cratebridge run request.zip --out result.zip --json``
with the server's configuration, so it goes through exactly the pipeline of
the command line, and a crash of one run cannot take the server down. Its
folder (``state_dir/runs/RUN_ID``) holds the uploaded request, the result
crate, the ``--json`` document and the run's events and stderr.

One long-lived thread starts every child with ``PR_SET_PDEATHSIG`` (through
``setpriv``): when the server dies, even by ``kill -9``, its runs get SIGHUP
and, as for any stop, write a failed result crate recording what started
("stopped by SIGHUP": their server went away; a cancel is SIGTERM).
At the next start, :meth:`Scheduler.recover` settles the runs the dead server
left: queued runs simply run; a run that was running ends as SYSTEM_ERROR once
its process is gone, with its own result crate or, when it wrote none, one
the pipeline writes for it (:mod:`cratebridge.service.settle`). No run is
started twice: a row is claimed by compare-and-set, and a run that may have
started is never queued again.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cratebridge.config import ServiceSettings
from cratebridge.containers.reaper import SETPRIV, reaping
from cratebridge.service.store import RunRow, Store
from cratebridge.service.wes import SERVER_STOPPED, outcome_of

__all__ = ["RunFiles", "Scheduler", "now"]

_log = logging.getLogger("cratebridge.service")
_TICK = 0.2
#: After the grace, a run that still has not ended is killed; its reaper then writes its crate.
_AFTER_KILL = 30.0


def now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass(frozen=True)
class RunFiles:
    """A run's files; every path built from a server-made run id, never from a client."""

    folder: Path

    @property
    def request(self) -> Path:
        return self.folder / "request.zip"

    @property
    def result(self) -> Path:
        return self.folder / "result.zip"

    @property
    def doc(self) -> Path:
        return self.folder / "run.json"

    @property
    def events(self) -> Path:
        return self.folder / "events.jsonl"

    @property
    def stderr(self) -> Path:
        return self.folder / "stderr.log"

    def read_doc(self) -> dict[str, Any] | None:
        try:
            doc = json.loads(self.doc.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None


@dataclass
class _Child:
    row: RunRow
    proc: subprocess.Popen[bytes]


class Scheduler:
    """Runs queued runs as children, at most ``max_concurrent_runs`` at once."""

    def __init__(self, store: Store, settings: ServiceSettings, state_dir: Path,
                 config_file: Path | None) -> None:
        self.store = store
        self.settings = settings
        self.state_dir = state_dir
        self.config_file = config_file
        self._children: dict[str, _Child] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping: str | None = None
        self._thread = threading.Thread(target=self._loop, name="cratebridge-dispatcher",
                                        daemon=True)
        self._settlers: list[threading.Thread] = []

    def files(self, run_id: str) -> RunFiles:
        return RunFiles(self.state_dir / "runs" / run_id)

    # -- the dispatcher ------------------------------------------------------------------------

    def start(self) -> None:
        self.recover()
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def running(self) -> int:
        with self._lock:
            return len(self._children)

    def _loop(self) -> None:
        while self._stopping is None:
            try:
                self._reap()
                while self.running() < self.settings.max_concurrent_runs \
                        and self._stopping is None:
                    row = self.store.claim_next(now())
                    if row is None:
                        break
                    self._spawn(row)
            except Exception:  # the database went away for a moment: try again next tick
                _log.exception("the dispatcher failed; retrying")
            self._wake.wait(_TICK)
            self._wake.clear()
        self._stop_children(self._stopping)

    def _command(self, row: RunRow, files: RunFiles) -> list[str]:
        command = [sys.executable, "-m", "cratebridge", "run", str(files.request),
                   "--out", str(files.result), "--json", "--run-id", row.id,
                   "--events", str(files.events)]
        if self.config_file is not None:
            command += ["--config", str(self.config_file)]
        if row.engine:
            command += ["--engine", row.engine]
        return command

    def _spawn(self, row: RunRow) -> None:
        files = self.files(row.id)
        # stderr.log existing says "this run may have started": it is never queued again
        try:
            with files.stderr.open("wb") as err, files.doc.open("wb") as out:
                command = self._command(row, files)
                prefix = [SETPRIV, "--pdeathsig", "HUP", "--"] if SETPRIV else []
                proc = subprocess.Popen(prefix + command, stdin=subprocess.DEVNULL,
                                        stdout=out, stderr=err, start_new_session=True,
                                        preexec_fn=None if SETPRIV else _die_with_parent)
        except OSError as exc:  # nothing ran: say why, and go on with the queue
            self.store.move(row.id, ("INITIALIZING", "CANCELING"), "SYSTEM_ERROR",
                            ended=now(), outcome="error",
                            reason=f"the run could not be started: {exc}")
            _log.error("run %s could not be started: %s", row.id, exc)
            return
        with self._lock:
            self._children[row.id] = _Child(row, proc)
        self.store.update(row.id, pid=proc.pid, pid_start=_start_time(proc.pid))
        fresh = self.store.get(row.id)
        if fresh is not None and fresh.state == "CANCELING":  # cancelled while it started
            proc.send_signal(signal.SIGTERM)
        _log.info("run %s started (pid %d)", row.id, proc.pid)

    def _reap(self) -> None:
        with self._lock:
            ended = [(i, c) for i, c in self._children.items() if c.proc.poll() is not None]
        for run_id, child in ended:
            code = child.proc.returncode
            files = self.files(run_id)
            if code < 0 and not files.result.is_file() and reaping(run_id):
                # killed while its engine ran (kill -9, the OOM killer): its reaper is
                # writing its crate; the run ends once it has, without holding the queue
                settler = threading.Thread(target=self._finish_after_reaper,
                                           args=(run_id, code, self._stopping),
                                           name=f"cratebridge-reaped-{run_id}", daemon=True)
                self._settlers = [*(t for t in self._settlers if t.is_alive()), settler]
                settler.start()
            else:
                self._finish(run_id, code, self._stopping)
            with self._lock:
                del self._children[run_id]

    def _finish_after_reaper(self, run_id: str, exit_code: int, stopped: str | None) -> None:
        self._await_reaper(run_id)
        self._finish(run_id, exit_code, stopped)

    def _await_reaper(self, run_id: str) -> None:
        """Wait (at most ``_AFTER_KILL``) until the dead run's crate is there or its
        reaper is gone (it removes the containers first, then writes the crate)."""
        result = self.files(run_id).result
        _wait_for(lambda: result.is_file() or not reaping(run_id), _AFTER_KILL)

    def _finish(self, run_id: str, exit_code: int | None, stopped: str | None) -> None:
        files = self.files(run_id)
        row = self.store.get(run_id)
        if row is None:
            return
        doc = files.read_doc()
        outcome = outcome_of(exit_code, doc, cancel_by=row.cancel_by, server_stopped=stopped)
        code = exit_code if exit_code is not None else (doc or {}).get("exit_code")
        self.store.move(run_id, ("INITIALIZING", "RUNNING", "CANCELING"), outcome.state,
                        ended=now(), exit_code=code, outcome=outcome.outcome,
                        reason=outcome.reason, has_result=int(files.result.is_file()))
        _log.info("run %s ended: %s (%s)%s", run_id, outcome.state, outcome.outcome,
                  f": {outcome.reason}" if outcome.reason else "")

    # -- cancelling, stopping ------------------------------------------------------------------

    def cancel(self, row: RunRow, by: str) -> str:
        """Ask ``row`` to stop; its state now. A queued run is cancelled before it starts."""
        if self.store.move(row.id, ("QUEUED",), "CANCELED", cancel_by=by, ended=now(),
                           outcome="cancelled",
                           reason=f"cancelled by {by} before it started; nothing ran"):
            return "CANCELED"
        if self.store.move(row.id, ("INITIALIZING", "RUNNING"), "CANCELING", cancel_by=by):
            with self._lock:
                child = self._children.get(row.id)
            if child is not None and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)  # the run writes its failed crate
            return "CANCELING"
        fresh = self.store.get(row.id)
        return fresh.state if fresh else row.state

    def stop(self, reason: str) -> None:
        """Stop dispatching; stop the running runs and wait for their result crates.

        Queued runs stay queued: the next start runs them.
        """
        self._stopping = reason
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        for settler in self._settlers:
            settler.join(timeout=self.settings.shutdown_grace)

    def _stop_children(self, reason: str) -> None:
        with self._lock:
            children = list(self._children.values())
        for child in children:
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGHUP)  # as when the server dies
        deadline = time.monotonic() + self.settings.shutdown_grace
        for child in children:
            left = max(0.1, deadline - time.monotonic())
            try:
                child.proc.wait(timeout=left)
            except subprocess.TimeoutExpired:
                child.proc.kill()  # its reaper writes its crate
                child.proc.wait()
                _wait_for(self.files(child.row.id).result.is_file, _AFTER_KILL)
        self._reap()

    # -- a restart -----------------------------------------------------------------------------

    def recover(self) -> None:
        """Settle what a stopped server left: queued runs wait, running runs end failed."""
        for row in self.store.in_states("INITIALIZING", "RUNNING", "CANCELING"):
            files = self.files(row.id)
            if row.pid is None and not files.stderr.exists():
                self.store.move(row.id, (row.state,), "QUEUED", started=None)
                _log.info("run %s had not started: queued again", row.id)
                continue
            settler = threading.Thread(target=self._settle, args=(row,),
                                       name=f"cratebridge-settle-{row.id}", daemon=True)
            self._settlers.append(settler)
            settler.start()

    def _settle(self, row: RunRow) -> None:
        files = self.files(row.id)
        if row.pid is not None and row.pid_start is not None:
            self._await_exit(row.pid, row.pid_start, files)
        self._await_reaper(row.id)  # a run killed with the server: its reaper may be writing
        doc = files.read_doc()
        rejected = doc is not None and doc.get("exit_code") in (2, 3, 4, 5)
        if not files.result.is_file() and not rejected and files.request.is_file():
            self._write_failed_crate(row, files)
            doc = files.read_doc()
        reason = (f"cancelled by {row.cancel_by}; {SERVER_STOPPED}" if row.cancel_by
                  else SERVER_STOPPED)
        outcome = outcome_of(None, doc, cancel_by=row.cancel_by, server_stopped=reason)
        if rejected:
            outcome = outcome_of(None, doc)
        self.store.move(row.id, (row.state,), outcome.state, ended=now(),
                        exit_code=(doc or {}).get("exit_code"), outcome=outcome.outcome,
                        reason=outcome.reason, has_result=int(files.result.is_file()))
        _log.warning("run %s, running when the server stopped, settled: %s: %s", row.id,
                     outcome.state, outcome.reason)

    def _await_exit(self, pid: int, started: str, files: RunFiles) -> None:
        """Wait for the dead server's run to end (it got SIGHUP); kill it after the grace."""
        def alive() -> bool:
            return _start_time(pid) == started

        if _wait_for(lambda: not alive(), self.settings.shutdown_grace):
            return
        _log.warning("run process %d still going after %gs: killing it", pid,
                     self.settings.shutdown_grace)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        _wait_for(lambda: not alive() and files.result.is_file(), _AFTER_KILL)

    def _write_failed_crate(self, row: RunRow, files: RunFiles) -> None:
        """The run's failed result crate, written by the pipeline for a run that wrote none."""
        command = [sys.executable, "-m", "cratebridge.service.settle", str(files.request),
                   str(files.result), f"{SERVER_STOPPED}, and it wrote no result crate"]
        if self.config_file is not None:
            command += ["--config", str(self.config_file)]
        if row.engine:
            command += ["--engine", row.engine]
        with files.stderr.open("ab") as err, (files.folder / "settle.json").open("wb") as out:
            done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                  check=False)
        if not files.doc.is_file() or files.doc.stat().st_size == 0:
            (files.folder / "settle.json").replace(files.doc)
        _log.info("run %s: failed result crate written at restart (exit %d)", row.id,
                  done.returncode)


def _wait_for(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(_TICK)
    return True


def _start_time(pid: int) -> str | None:
    """A process's start time (clock ticks since boot): with the pid, its identity."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def _die_with_parent() -> None:  # pragma: no cover - only without setpriv
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGHUP)  # PR_SET_PDEATHSIG

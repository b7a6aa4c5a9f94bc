"""A plan-time reader kept alive in its room, to become the engine of the run.

Loading a workflow (cwltool and its CWL schema, for example) is most of an
engine's start-up. The plan reads the workflow in the run's room; instead of
ending, that reader can wait, and when the run starts, become the engine in
the same process: the work is done once, and still never in cratebridge's
own process. Both sides live here: :func:`hold` and :class:`HeldReader` on
the host, :func:`serve` in the room (the reader's ``main`` ends with it).

The reader prints its report (one JSON line, as
:func:`~cratebridge.engines.process.print_report`) and then reads one line
on standard input: the engine to become (a module whose ``main(argv)`` runs
it, its arguments, and where its standard output and error go), or end of
input, and it exits.
"""

from __future__ import annotations

import importlib
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

from cratebridge.containers.confine import Room
from cratebridge.engines.process import EngineExit, report_of, stop_group, sweep, tail, watch
from cratebridge.errors import UnsupportedCrate

__all__ = ["HeldReader", "hold", "serve"]


class HeldReader:
    """The reader, waiting in its room; :meth:`run` it as the engine, or :meth:`release` it."""

    def __init__(self, proc: subprocess.Popen[bytes], room: Room, report: dict[str, object],
                 env: Mapping[str, str]) -> None:
        self.proc = proc
        self.room = room
        self.report = report
        self.env = dict(env)

    def run(self, command: Sequence[str], *, env: Mapping[str, str], stdout: Path,
            stderr: Path, timeout: float | None, on_tick: Callable[[], None] = lambda: None,
            tick: float = 0.5) -> EngineExit | None:
        """Become ``python -m MODULE ARGS`` (``command``); None when that cannot be.

        It cannot when the command is not such a Python module, the environment
        differs from the one the reader started with, or the reader is gone.
        """
        if list(command[:2]) != [sys.executable, "-m"] or dict(env) != self.env or \
                self.proc.poll() is not None or self.proc.stdin is None:
            self.release()
            return None
        for path in (stdout, stderr):
            path.touch()
        self.room.hand_over()  # what the executor wrote since the reader started
        deadline = time.monotonic() + timeout if timeout else None
        go = {"module": command[2], "argv": list(command[3:]), "stdout": str(stdout),
              "stderr": str(stderr)}
        try:
            self.proc.stdin.write((json.dumps(go) + "\n").encode())
            self.proc.stdin.close()
        except OSError:
            self.release()
            return None
        try:
            return watch(self.proc, deadline, on_tick, tick)
        finally:
            sweep(self.room, stderr)

    def release(self) -> None:
        """End the reader if it still waits."""
        if self.proc.poll() is None:
            stop_group(self.proc, grace=1)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


def hold(command: Sequence[str], *, room: Room, env: Mapping[str, str], cwd: Path,
         log: Path, timeout: float, what: str, where: str) -> HeldReader:
    """Start a reader that ends with :func:`serve` in ``room``; its report, and the reader.

    ``log`` takes the reader's standard error while it reads. Raises the crate
    error the reader reported, as :func:`~cratebridge.engines.process.confined_report`.
    """
    with log.open("wb") as err, room.command(command, env, cwd) as (argv, fds):
        proc = subprocess.Popen(argv, env={}, cwd="/", stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err, pass_fds=fds,
                                start_new_session=True)
    assert proc.stdout is not None
    try:
        line = _read_line(proc.stdout, time.monotonic() + timeout)
        if line is None:
            raise UnsupportedCrate(f"{what} took longer than {timeout:.0f}s", where=where)
        report = report_of(line, tail(log.read_text(errors="replace")), what, where)
    except BaseException:
        stop_group(proc, grace=1)
        room.sweep_links()
        raise
    return HeldReader(proc, room, report, env)


def _read_line(stream: IO[bytes], deadline: float) -> str | None:
    """One line from ``stream`` before ``deadline`` (None: too late); "" at its end."""
    data = b""
    fd = stream.fileno()
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace")


def serve() -> int:
    """In the room, after the report: become the engine the host names, or end."""
    sys.stdout.flush()
    line = sys.stdin.readline()
    if not line.strip():
        return 0
    go = json.loads(line)
    for fd, path in ((1, go["stdout"]), (2, go["stderr"])):
        target = os.open(path, os.O_WRONLY | os.O_APPEND)
        os.dup2(target, fd)
        os.close(target)
    sys.stdout = open(1, "w", closefd=False)
    sys.stderr = open(2, "w", closefd=False)
    main: Callable[[list[str]], int] = importlib.import_module(go["module"]).main
    try:
        return int(main(list(go["argv"])) or 0)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()

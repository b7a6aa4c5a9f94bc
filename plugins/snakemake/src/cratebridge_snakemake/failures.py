"""The run's error when Snakemake fails: which jobs, their exit codes, the end of their stderr.

So that the cause is in the JSON ``error`` a TRE agent sees, not only inside
the result crate. Every log path in a step record comes from what the room
wrote: a log is read only when it lies (links resolved) in a folder the
caller names, only when it is a regular file, and only its tail.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cratebridge.containers.ledger import refusal_note
from cratebridge.engines.record import RunStatus, StepRecord

__all__ = ["STDERR_LINES", "failure_summary"]

STDERR_LINES = 5  # of a failed job's stderr, in the run's error
_TAIL_BYTES = 64 * 1024


def failure_summary(stderr: Path, steps: tuple[StepRecord, ...], code: int,
                    readable: tuple[Path, ...], refusals: tuple[str, ...] = ()) -> str:
    """Which rules failed, with their exit codes and the last lines of their stderr;
    then what the sandbox refused (a container that never started says no more).

    Step logs are named by what the room wrote: only those inside ``readable``
    (links resolved) are read, so no file from elsewhere is ever quoted.
    """
    failed = [s for s in steps if s.status is RunStatus.FAILED]
    refused = "; " + refusal_note(refusals) if refusals else ""
    if failed:
        return f"snakemake exited {code}: rule(s) failed: " + "; ".join(
            _job_failure(s, readable) for s in failed) + refused
    tail = [line.strip() for line in _tail(stderr)
            if "Error" in line or "error" in line.lower()][-3:]
    return f"snakemake exited {code}" + (": " + " | ".join(tail) if tail else "") + refused


def _job_failure(step: StepRecord, readable: tuple[Path, ...]) -> str:
    """``NAME (exit N)``, then the last lines of its stderr (else its ``log:`` files, stdout)."""
    ran = "no container" if step.exit_code is None else f"exit {step.exit_code}"
    text = f"{step.name} ({ran})"
    if step.error:
        text += f": {_printable(step.error)}"
    kinds: dict[str, list[Path]] = {"stderr": [], "log": [], "stdout": []}
    roots = tuple(Path(os.path.realpath(r)) for r in readable)
    for log in step.logs:
        real = Path(os.path.realpath(log.path))
        if not any(real.is_relative_to(root) for root in roots):
            continue
        kind = "log" if " log: " in log.name else log.name.rpartition(" ")[2]
        kinds.setdefault(kind, []).append(real)
    for kind, paths in kinds.items():
        lines = _last_lines(paths)
        if lines:
            return f"{text}, its {kind} ends: " + " | ".join(lines)
    return text


def _last_lines(paths: list[Path], count: int = STDERR_LINES, width: int = 200) -> list[str]:
    lines = [line.strip() for path in paths for line in _tail(path) if line.strip()]
    return [_printable(line)[:width] for line in lines[-count:]]


def _tail(path: Path) -> list[str]:
    """The last lines of a regular file; none for anything else (a fifo must not stall us)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return []
    with os.fdopen(fd, "rb") as stream:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return []
        stream.seek(max(info.st_size - _TAIL_BYTES, 0))
        return stream.read().decode(errors="replace").splitlines()


def _printable(line: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in line)

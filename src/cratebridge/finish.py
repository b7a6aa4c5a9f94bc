"""Finishing a run, however it ended: its record made whole, and its result crate written.

The engine reports a :class:`~cratebridge.engines.record.RunRecord`, or could
not (it raised; a second signal cut it short). Here that record gets what
only the executor knows (why stopped steps ended, the log cap, secrets
scrubbed), and :func:`write_result_crate` writes it as a result crate even
when the disk is full: without the outputs, then making room, and when not
even that can be written, the run's folder is marked and the error says so.
"""

from __future__ import annotations

import errno
import pickle
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cratebridge.budget import cap_file, shrink_in_place
from cratebridge.config import redact
from cratebridge.containers.ledger import read_ledger
from cratebridge.containers.reaper import LastWords
from cratebridge.containers.sandbox import STEP_LABEL
from cratebridge.crashlog import write_traceback
from cratebridge.engines.interface import EnginePlan, RunContext
from cratebridge.engines.process import Stop
from cratebridge.engines.record import LogRecord, RunRecord, RunStatus, StepRecord
from cratebridge.errors import InternalError
from cratebridge.intake.request import RunRequest
from cratebridge.provenance.entities import Publisher

__all__ = ["DISK_FULL", "KilledRun", "capped", "failed_record", "last_words", "last_words_for",
           "redacted", "replace_error", "stopped_steps", "write_result_crate"]

#: errno values that mean "the disk is full", for the run's folder or the result's
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
#: What each log keeps when a full disk leaves no other way to write the crate
EMERGENCY_LOG_BYTES = 256 * 1024


def replace_error(record: RunRecord, note: str) -> RunRecord:
    """``record`` with ``note`` added to its error."""
    return replace(record, error=(record.error + "; " if record.error else "") + note)


def failed_record(engine: str, context: RunContext, started: datetime, error: str) -> RunRecord:
    """The record of a run whose engine could not report: its logs, and a step per container."""
    logs = tuple(LogRecord(p, p.name) for p in sorted(context.logs_dir.rglob("*")) if p.is_file())
    return RunRecord(engine=engine, engine_version=None, status=RunStatus.FAILED,
                     start_time=started, end_time=datetime.now(UTC),
                     steps=_ledger_steps(context), logs=logs, error=error)


def _ledger_steps(context: RunContext) -> tuple[StepRecord, ...]:
    """The containers the broker started, as steps, when the engine could not say more."""
    steps = []
    for entry in read_ledger(context.sandbox.ledger).entries:
        token = entry.labels.get(STEP_LABEL) or entry.token
        name = f"container {token[:12]} ({entry.container.image})"
        logs = (LogRecord(entry.stderr, f"{name} stderr", about=name, cut=entry.stderr_cut),) \
            if entry.stderr is not None and entry.stderr.is_file() else ()
        steps.append(StepRecord(
            step=token, name=name, tool=entry.container.image,
            status=RunStatus.COMPLETED if entry.exit_code == 0 else RunStatus.FAILED,
            start_time=entry.start, end_time=entry.end, exit_code=entry.exit_code,
            container=entry.container, logs=logs, native_id=entry.token))
    return tuple(steps)


def stopped_steps(record: RunRecord, stop: Stop) -> RunRecord:
    """Say, on each failed step that was still running when the run was stopped, why it ended."""
    since = (stop.when or datetime.now(UTC)) - timedelta(seconds=1)

    def why(step: StepRecord) -> StepRecord:
        cut_off = step.end_time is None or step.exit_code is None or step.end_time >= since
        if step.status is not RunStatus.FAILED or not cut_off or step.error:
            return step
        return replace(step, error=f"Step {step.name} was stopped before it finished: the "
                                   f"run was stopped by {stop.reason}")

    return replace(record, steps=tuple(why(s) for s in record.steps))


def _each_log(record: RunRecord, change: Callable[[LogRecord], LogRecord]) -> RunRecord:
    steps = tuple(replace(s, logs=tuple(change(log) for log in s.logs)) for s in record.steps)
    return replace(record, logs=tuple(change(log) for log in record.logs), steps=steps)


def capped(record: RunRecord, limit: int, context: RunContext) -> RunRecord:
    """Every log the record names, capped at ``limit`` bytes; each says what was cut."""
    cut_by_broker = {str(e.stderr): e.stderr_cut
                     for e in read_ledger(context.sandbox.ledger).entries if e.stderr}
    return _each_log(record, lambda log: replace(
        log, cut=cap_file(log.path, limit) or cut_by_broker.get(str(log.path), 0) or log.cut))


def redacted(record: RunRecord, secrets: Mapping[str, str]) -> RunRecord:
    """Scrub secret values from every log the record points at, and from its error."""
    if not secrets:
        return record
    logs = list(record.logs) + [log for step in record.steps for log in step.logs]
    for log in logs:
        try:
            text = log.path.read_text(errors="replace")
        except OSError:
            continue
        clean = redact(text, secrets)
        if clean != text:
            log.path.write_text(clean)
    return replace(record, error=redact(record.error, secrets) if record.error else None)


def write_result_crate(request: RunRequest, record: RunRecord, plan: EnginePlan,
                       context: RunContext, out: Path, *, bagit: bool,
                       bag_info: Mapping[str, str],
                       publisher: Publisher | None = None) -> tuple[Path, RunRecord]:
    """Write the result crate at ``out``; the path and the record it holds.

    When the full crate cannot be written (a full disk; a file the builder
    refuses), a failed run's crate without the outputs is written instead,
    its error saying why. On a full disk, room is made in turn: the steps'
    scratch (``tmp/``) emptied, then the engine's ``work/``, then every log
    cut to its head and tail (:data:`EMERGENCY_LOG_BYTES`). When not even that
    can be written, nothing half-written is left at ``out``, the run's folder
    is marked ``INCOMPLETE`` and :class:`~cratebridge.errors.InternalError`
    names it.
    """
    from cratebridge.provenance import build_result_crate, write_result

    run_dir = context.run_dir
    makers = _room_makers(context)
    # a folder out is the result folder moved into place: its files are copies of their
    # own; a ZIP (or a folder on another filesystem) reads files linked to the run's
    to_folder = out.suffix.lower() != ".zip" and _same_filesystem(out, run_dir)
    attempt, tries = record, 0
    while True:
        shutil.rmtree(run_dir / "result", ignore_errors=True)
        try:
            result_dir = build_result_crate(request, attempt, run_dir=run_dir,
                                            dest=run_dir / "result", plan=plan,
                                            publisher=publisher, link=not to_folder)
            return write_result(result_dir, out, bagit=bagit, bag_info=bag_info,
                                move=to_folder), attempt
        except Exception as exc:  # the crate of a failed run must still be written
            tries += 1
            full = isinstance(exc, OSError) and exc.errno in DISK_FULL
            log = write_traceback(exc, context.logs_dir, f"cratebridge-result-error-{tries}.log")
            if tries > 1 and not (full and makers):
                shutil.rmtree(run_dir / "result", ignore_errors=True)
                _mark_incomplete(run_dir, exc)
                raise InternalError(
                    f"no result crate could be written ({type(exc).__name__}: {exc}); the "
                    f"run's folder {run_dir} keeps its logs and is marked INCOMPLETE",
                    where=str(out), log=str(log) if log else None) from exc
            if tries == 1:
                attempt = _without_files(replace_error(
                    attempt, f"the result crate could not be written in full "
                    f"({type(exc).__name__}: {exc}): it holds the logs, not the outputs"
                    + (f" (traceback in logs/{log.name})" if log else "")))
            if full and makers:
                attempt = makers.pop(0)(attempt)


def _same_filesystem(out: Path, run_dir: Path) -> bool:
    """Whether ``out`` (or the nearest folder above it that exists) is on ``run_dir``'s
    filesystem: where a folder can be renamed from one to the other."""
    there = out.absolute()
    while not there.exists() and there != there.parent:
        there = there.parent
    try:
        return there.stat().st_dev == run_dir.stat().st_dev
    except OSError:
        return False


def _quiet(event: object) -> None:
    """Progress nobody watches: the killed run's finisher reports to no one."""


def last_words_for(request: RunRequest, record_start: datetime, engine: str, plan: EnginePlan,
                   context: RunContext, out: Path, *, bagit: bool, bag_info: Mapping[str, str],
                   log_bytes: int, secrets: Mapping[str, str],
                   publisher: Publisher | None = None) -> LastWords:
    """What the run's reaper needs to write its result crate should cratebridge be killed.

    It travels in the reaper's pipe and stays in its memory (secrets included),
    never on disk: :func:`last_words` receives it.
    """
    killed = KilledRun(request, record_start, engine, plan, replace(context, progress=_quiet),
                       out, bagit, dict(bag_info), log_bytes, dict(secrets), publisher)
    return LastWords(__name__, pickle.dumps(killed))


@dataclass(frozen=True)
class KilledRun:
    """Everything :func:`last_words` needs; made by the run itself, read only by its reaper."""

    request: RunRequest
    started: datetime
    engine: str
    plan: EnginePlan
    context: RunContext
    out: Path
    bagit: bool
    bag_info: dict[str, str]
    log_bytes: int
    secrets: dict[str, str]
    publisher: Publisher | None = None


def last_words(payload: bytes) -> None:
    """In the reaper of a killed run: write its result crate (failed, the steps from the ledger).

    The payload is what :func:`last_words_for` made, handed over by the run's
    own process through the reaper's pipe: trusted, as the executor's own.
    """
    killed: KilledRun = pickle.loads(payload)
    context = killed.context
    try:
        record = failed_record(
            killed.engine, context, killed.started,
            "cratebridge was killed while the run went on (SIGKILL, or the OOM killer); its "
            "reaper removed the run's containers and wrote this crate")
        steps = tuple(s if s.exit_code is not None else replace(
            s, error=f"Step {s.name} was stopped before it finished: cratebridge was killed")
            for s in record.steps)
        record = capped(replace(record, steps=steps), killed.log_bytes, context)
        record = redacted(record, killed.secrets)
        write_result_crate(killed.request, record, killed.plan, context, killed.out,
                           bagit=killed.bagit, bag_info=killed.bag_info,
                           publisher=killed.publisher)
    except Exception as exc:
        write_traceback(exc, context.logs_dir, "cratebridge-killed-result-error.log")


def _room_makers(context: RunContext) -> list[Callable[[RunRecord], RunRecord]]:
    """What a full disk may take, in turn, so that a failed run's crate still fits."""
    def empty(folder: Path) -> Callable[[RunRecord], RunRecord]:
        def make_room(record: RunRecord) -> RunRecord:
            for child in list(folder.iterdir()) if folder.is_dir() else []:
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
            kept = _without_logs_under(record, folder)
            return replace_error(kept, f"{folder.name}/ was emptied to make room")
        return make_room

    def shrink_logs(record: RunRecord) -> RunRecord:
        record = _each_log(record, lambda log: replace(
            log, cut=log.cut + shrink_in_place(log.path, EMERGENCY_LOG_BYTES)))
        return replace_error(record, f"every log was cut to {EMERGENCY_LOG_BYTES // 1024} KiB "
                                     "(head and tail) to make room")

    return [empty(context.room.tmp), empty(context.work_dir), shrink_logs]


def _without_files(record: RunRecord) -> RunRecord:
    """A failed record naming no output and no step file: only its logs are copied."""
    steps = tuple(replace(s, inputs=(), outputs=()) for s in record.steps)
    return replace(record, status=RunStatus.FAILED, outputs=(), steps=steps)


def _without_logs_under(record: RunRecord, gone: Path) -> RunRecord:
    def kept(logs: tuple[LogRecord, ...]) -> tuple[LogRecord, ...]:
        return tuple(log for log in logs if not log.path.is_relative_to(gone))

    steps = tuple(replace(s, logs=kept(s.logs)) for s in record.steps)
    return replace(record, logs=kept(record.logs), steps=steps)


def _mark_incomplete(run_dir: Path, exc: BaseException) -> None:
    try:
        (run_dir / "INCOMPLETE").write_text(
            f"cratebridge could not write this run's result crate: {type(exc).__name__}: "
            f"{exc}\nThe run's logs are in logs/ and broker/.\n")
    except OSError:
        pass  # the disk is full: the InternalError still names the folder

"""The pipeline: intake -> policy -> engine plan -> execute -> provenance -> package.

This module wires the stages together; each stage lives in its own
sub-package. Errors travel as :mod:`cratebridge.errors` exceptions; the CLI
turns them into exit codes.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from cratebridge.budget import DiskWatch
from cratebridge.config import Config, load_config
from cratebridge.containers import reaper
from cratebridge.containers.broker import Broker
from cratebridge.containers.confine import Room
from cratebridge.containers.mounts import release_stale
from cratebridge.containers.sandbox import (
    Sandbox,
    find_docker,
    remove_stale_containers,
)
from cratebridge.crashlog import write_traceback
from cratebridge.engines.interface import Engine, EnginePlan, ProgressEvent, RunContext
from cratebridge.engines.process import Stop, stoppable
from cratebridge.engines.record import FileRecord, RunRecord, RunStatus, within
from cratebridge.engines.registry import Registry
from cratebridge.errors import (
    EngineUnavailable,
    InternalError,
    Interrupted,
    PolicyRefused,
    UsageError,
)
from cratebridge.events import RunEvent, fan_out
from cratebridge.finish import (
    DISK_FULL,
    capped,
    failed_record,
    last_words_for,
    redacted,
    replace_error,
    stopped_steps,
    write_result_crate,
)
from cratebridge.intake import open_crate, parse_request, verify_bag
from cratebridge.intake.request import RunRequest
from cratebridge.stopsignals import SignalStop

__all__ = ["Interrupted", "PlanOutcome", "RunOutcome", "new_run_id", "plan", "run"]

_log = logging.getLogger("cratebridge")


@dataclass(frozen=True)
class PlanOutcome:
    """What ``cratebridge plan`` found: the request and the engine's full plan."""

    request: RunRequest
    plan: EnginePlan
    engine_version: str | None
    run_dir: Path


@dataclass(frozen=True)
class RunOutcome:
    """What ``cratebridge run`` did: status, where the result crate is, the record."""

    run_id: str
    run_dir: Path
    result: Path
    status: RunStatus
    record: RunRecord
    plan: EnginePlan

    @property
    def exit_code(self) -> int:
        return 0 if self.status is RunStatus.COMPLETED else 1


@dataclass(frozen=True)
class _Prepared:
    request: RunRequest
    engine: Engine
    context: RunContext
    bag_info: dict[str, str]
    bagit: bool


def new_run_id() -> str:
    """A fresh run id: the time, and eight random hex digits."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]


def _prepare(crate: Path, run_dir: Path, run_id: str, config: Config,
             registry: Registry, engine_name: str | None,
             progress: Callable[[ProgressEvent], None]) -> _Prepared:
    """Intake, policy and engine choice; raises before anything runs."""
    if not crate.exists():
        raise UsageError("no such file or folder", where=str(crate))
    opened = open_crate(crate, run_dir / "request", config.intake)
    bag_info: dict[str, str] = {}
    if opened.bag_dir is not None:
        bag_info = verify_bag(opened.bag_dir, known=opened.digests)
    request = parse_request(opened.root, workflow_mirror=config.workflow_mirror,
                            workflow_dest=run_dir / "workflow", dataset_map=config.datasets,
                            bagit=opened.bag_dir is not None, bag_info=bag_info,
                            limits=config.intake, languages=registry.languages())
    config.check_sign_off({r.additional_type: r.status for r in request.reviews})
    name = registry.choose(request.workflow.language, engine_name, config.engines)
    engine = registry.load(name, config.engine_settings.get(name, {}))
    docker = find_docker()
    if docker is None:
        raise EngineUnavailable("no docker client on PATH; every step runs in Docker",
                                where="docker")
    uid, gid = config.step_uid_gid
    folders = _run_folders(run_dir, uid, gid)
    host_data = tuple(sorted({b.path for b in request.inputs
                              if b.path is not None and not b.path.is_relative_to(run_dir)}))
    sandbox = Sandbox(run_id=run_id, docker=docker, ledger=folders["broker"] / "ledger.jsonl",
                      writable=(folders["work"],), readable=(run_dir, *host_data),
                      room_tmp=folders["tmp"], user=f"{uid}:{gid}", limits=config.limits,
                      approved_images=config.images.approved, runs_dir=config.runs_dir,
                      slurm_broker=config.slurm_broker)
    # the crate's root only: a bag's tag files and whatever else came with it stay unseen
    readable = [opened.root, *host_data]
    if (run_dir / "workflow").is_dir():
        readable.append(run_dir / "workflow")
    room = Room(uid=uid, gid=gid, etc=folders["sandbox"] / "etc", tmp=folders["tmp"],
                readable=tuple(readable), broker=folders["sandbox"],
                writable=(folders["work"], folders["outputs"], folders["logs"]))
    room.write_etc()
    context = RunContext(
        run_id=run_id, run_dir=run_dir, work_dir=folders["work"],
        outputs_dir=folders["outputs"], logs_dir=folders["logs"], sandbox=sandbox, room=room,
        broker_socket=folders["sandbox"] / "docker.sock",
        settings=dict(config.engine_settings.get(name, {})), timeout=config.timeout,
        progress=progress, env=environment_allowlist(config),
    )
    return _Prepared(request, engine, context, bag_info, opened.bag_dir is not None)


def _run_folders(run_dir: Path, uid: int, gid: int) -> dict[str, Path]:
    """The run's folders: private to the executor, the engine's own writable by its uid.

    ``sandbox`` (the broker's socket, the engine's ``docker`` and ``/etc``) is
    read-only in the room; ``broker`` (the ledger, container logs) is never in it.
    """
    run_dir.chmod(0o700)
    folders = {name: run_dir / name for name in
               ("work", "outputs", "logs", "tmp", "sandbox", "broker")}
    for name, folder in folders.items():
        folder.mkdir(parents=True, exist_ok=True)
        if name in ("work", "outputs", "logs", "tmp") and os.geteuid() == 0:
            os.chown(folder, uid, gid)
    folders["broker"].chmod(0o700)
    return folders


def _check_images(plan_: EnginePlan, config: Config) -> None:
    for use in plan_.images:
        if not use.present:
            raise PolicyRefused(
                f"image {use.image} (steps: {', '.join(use.steps)}) is not present "
                "locally; cratebridge never pulls: load the approved image first",
                rule="images.local-only", where=f"image {use.image}",
            )
        config.images.check(use.image, use.image_id)


def _shown(plan_: EnginePlan, cfg: Config) -> EnginePlan:
    """The plan as it may be shown or returned: secret values replaced by their names."""
    if not cfg.secrets:
        return plan_
    return replace(plan_, env={k: cfg.redact(v) for k, v in plan_.env.items()},
                   command=tuple(cfg.redact(c) for c in plan_.command),
                   files={k: cfg.redact(v) for k, v in plan_.files.items()})


def _discard(run_dir: Path) -> None:
    shutil.rmtree(run_dir, ignore_errors=True)


def plan(crate: Path, *, engine: str | None = None, config: Config | Path | None = None,
         registry: Registry | None = None) -> PlanOutcome:
    """Dry run: intake, policy, engine choice, input binding and images. Runs nothing."""
    cfg = config if isinstance(config, Config) else load_config(config)
    reg = registry or Registry.from_entry_points(cfg.allowed_engines)
    scratch = Path(tempfile.mkdtemp(prefix="cratebridge-plan-"))
    prepared = None
    try:
        prepared = _prepare(Path(crate), scratch, "plan", cfg, reg, engine, lambda e: None)
        plan_ = prepared.engine.plan(prepared.request, prepared.context)
        _check_images(plan_, cfg)
        return PlanOutcome(prepared.request, _shown(plan_, cfg),
                           prepared.engine.info().version, scratch)
    finally:
        if prepared is not None:
            prepared.engine.release()
        _discard(scratch)


#: A caller's run id: it names the run's folder, so a safe file name
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}$")


def run(crate: Path, out: Path, *, engine: str | None = None,
        config: Config | Path | None = None, registry: Registry | None = None,
        progress: Callable[[ProgressEvent], None] | None = None,
        events: Callable[[RunEvent], None] | None = None, run_id: str | None = None,
        labels: Mapping[str, str] | None = None, stop: Stop | None = None) -> RunOutcome:
    """Run a request crate and write the result crate at ``out`` (a folder or ``.zip``).

    A workflow that fails, or a run that is stopped (a signal, ``stop``
    asked from any thread, the time limit, the disk budget), still returns an
    outcome (status FAILED) with a result crate; refusals raise
    :class:`~cratebridge.errors.CrateRejected`,
    :class:`~cratebridge.errors.PolicyRefused` or
    :class:`~cratebridge.errors.EngineUnavailable` and leave no run folder.
    When not even a failed run's crate can be written (a full disk),
    :class:`~cratebridge.errors.InternalError` names the run's folder, marked
    ``INCOMPLETE``. ``events`` hears what happens as it happens
    (:mod:`cratebridge.events`); ``run_id`` and ``labels`` are the caller's,
    kept in the run's folder name and the result crate.
    """
    cfg = config if isinstance(config, Config) else load_config(config)
    reg = registry or Registry.from_entry_points(cfg.allowed_engines)
    out = Path(out).absolute()
    if out.exists() and out.is_dir() and any(out.iterdir()):
        raise UsageError("the result folder exists and is not empty", where=str(out))
    tags = _checked_labels(labels or {})
    run_id = _checked_run_id(run_id, cfg.runs_dir) if run_id else new_run_id()
    _remove_stale_containers(cfg.runs_dir)
    run_dir = cfg.runs_dir / run_id
    run_dir.mkdir(parents=True, mode=0o700)
    emit = fan_out(events)
    emit(RunEvent("accepted", run_id, path=str(crate), labels=dict(tags) or None))
    stop = stop or Stop()
    signals = SignalStop(stop)
    with signals.installed():
        prepared = None
        try:
            emit(RunEvent("stage", run_id, stage="intake"))
            prepared = _prepare(Path(crate), run_dir, run_id, cfg, reg, engine,
                                _step_events(run_id, progress, emit))
            emit(RunEvent("stage", run_id, stage="plan"))
            # while the plan's reader works in its room, this process mostly waits
            threading.Thread(target=_load_writers, name="cratebridge-load-writers",
                             daemon=True).start()
            plan_ = prepared.engine.plan(prepared.request, prepared.context)
            _check_images(plan_, cfg)
        except BaseException as exc:
            # a refused crate (or an interrupted set-up) leaves no half-made run behind
            if prepared is not None:
                prepared.engine.release()
            _discard(run_dir)
            if isinstance(exc, OSError) and exc.errno in DISK_FULL:
                full = InternalError(f"the disk is full: {exc.strerror}; no run was started",
                                     where=str(cfg.runs_dir))
                emit(RunEvent("refused", run_id, error=str(full), exit_code=full.exit_code))
                raise full from exc
            emit(RunEvent("refused", run_id, error=str(exc) or type(exc).__name__,
                          exit_code=getattr(exc, "exit_code", None)))
            raise
        # from here on the run ends with its result crate: only the engine's own
        # stretch may be cut short by a second signal (_execute records it)
        with signals.not_cut_short():
            emit(RunEvent("stage", run_id, stage="execute"))
            try:
                last_words = last_words_for(
                    prepared.request, datetime.now(UTC), prepared.engine.name, plan_,
                    prepared.context, out, bagit=prepared.bagit, bag_info=prepared.bag_info,
                    log_bytes=cfg.limits.log_bytes, secrets=cfg.secrets,
                    publisher=cfg.publisher)
                with reaper.guard(prepared.context.sandbox, run_dir, last_words):
                    record = _execute(prepared, plan_, cfg, signals)
            finally:
                prepared.engine.release()
            emit(RunEvent("stage", run_id, stage="package"))
            written, record = write_result_crate(
                prepared.request, replace(record, labels=tags), plan_, prepared.context, out,
                bagit=prepared.bagit, bag_info=prepared.bag_info, publisher=cfg.publisher)
    _recorded_events(run_id, record, written, emit)
    if record.status is RunStatus.COMPLETED and not cfg.keep_runs:
        _discard(run_dir)
    return RunOutcome(run_id, run_dir, written, record.status, record, _shown(plan_, cfg))


def _load_writers() -> None:
    """Import what writes the result crate while the host only waits (for the plan's
    reader, then the engine): the crate is written sooner once the engine ends."""
    try:
        import cratebridge.provenance.builder
        import cratebridge.provenance.package  # noqa: F401
    except Exception:  # writing the crate imports them again, and says why
        pass


def _checked_run_id(run_id: str, runs_dir: Path) -> str:
    if not _RUN_ID.match(run_id):
        raise UsageError("a run id is 1 to 64 letters, digits, '.', '_' or '-', starting "
                         f"with a letter or digit, not {run_id!r}", where="--run-id")
    if (runs_dir / run_id).exists():
        raise UsageError(f"a run with id {run_id!r} exists already in {runs_dir}",
                         where="--run-id")
    return run_id


def _checked_labels(labels: Mapping[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        if not _LABEL_KEY.match(key) or not isinstance(value, str) or len(value) > 1024 \
                or any(ord(c) < 32 for c in value):
            raise UsageError(f"a label is KEY=VALUE, KEY 1 to 64 letters, digits or "
                             f"'._/-', VALUE up to 1024 printable characters; not {key!r}",
                             where="--label")
    return dict(labels)


def _step_events(run_id: str, progress: Callable[[ProgressEvent], None] | None,
                 emit: Callable[[RunEvent], None]) -> Callable[[ProgressEvent], None]:
    """What the engine reports of its steps, to the caller's progress and as events."""
    def heard(event: ProgressEvent) -> None:
        if progress is not None:
            progress(event)
        emit(RunEvent("step", run_id, step=event.step, state=event.kind,
                      detail=event.detail or None))
    return heard


def _recorded_events(run_id: str, record: RunRecord, result: Path,
                     emit: Callable[[RunEvent], None]) -> None:
    """The run as recorded: each step's end, each output, and how the run ended."""
    for step in record.steps:
        emit(RunEvent("step", run_id, step=step.name, state=step.status.value,
                      image=step.container.image if step.container else None,
                      exit_code=step.exit_code, error=step.error))
    for item in record.outputs:
        if isinstance(item, FileRecord):
            emit(RunEvent("output", run_id, parameter=item.parameter, path=str(item.path)))
    emit(RunEvent("finished", run_id, status=record.status.value, path=str(result),
                  error=record.error))


def _remove_stale_containers(runs_dir: Path) -> None:
    """What a killed run's reaper could not remove, the next run of its runs folder does.

    The bind mounts its broker pinned at once; its containers in a thread of
    their own, each docker call bounded, so that a stuck container never delays
    this run (one not removed in time is reported as a warning). Only this
    runs folder's runs are touched, never another's.
    """
    if os.geteuid() == 0:
        release_stale(runs_dir)
    docker = find_docker()
    if docker is None:
        return

    def sweep() -> None:
        _, left = remove_stale_containers(docker, runs_dir)
        if left:
            _log.warning("the sweep of containers left by killed runs of %s could not remove "
                         "%d in time (%s); `cratebridge cleanup` retries", runs_dir, len(left),
                         ", ".join(left))

    threading.Thread(target=sweep, name="cratebridge-sweep", daemon=True).start()


def _execute(prepared: _Prepared, plan_: EnginePlan, cfg: Config,
             signals: SignalStop) -> RunRecord:
    """Run the engine; whatever happens, return a record (failed when it did not finish).

    The run's disk is watched meanwhile: past its budget the run is stopped
    like a signal stops it, and the engine reports the steps it started. Only
    the engine's own run may be cut short by a second signal.
    """
    stop = signals.stop
    context = prepared.context
    started = datetime.now(UTC)
    uid, gid = cfg.step_uid_gid
    broker = Broker(context.sandbox, context.broker_socket, uid, gid, room=context.room,
                    images={use.image: use.image_id for use in plan_.images if use.image_id})
    # the time limit stops the run as a signal does, so that its record says why
    timer = threading.Timer(cfg.timeout, stop.request,
                            [f"its time limit ([run] timeout = {cfg.timeout:g} s)"]) \
        if cfg.timeout else None
    try:
        if stop.is_set():
            record = failed_record(prepared.engine.name, context, started, stop.before_start)
        else:
            if timer is not None:
                timer.start()
            with DiskWatch(context.run_dir, cfg.limits.disk, stop.request) as disk, \
                    stoppable(stop), broker.serving(), signals.cut_short():
                record = prepared.engine.run(plan_, context)
            # a run over its budget fails, even when its engine ended before the stop
            # (or a step passed the budget between two looks)
            over = disk.reason or disk.check()
            if over is not None:
                stop.request(over)
                if record.status is RunStatus.COMPLETED:
                    record = replace(replace_error(record, f"the run was stopped by {over}"),
                                     status=RunStatus.FAILED)
    except (Interrupted, KeyboardInterrupt) as hard:
        context.sandbox.stop_all()
        record = failed_record(prepared.engine.name, context, started,
                               f"the run was interrupted: {str(hard) or 'SIGINT'}")
    except Exception as exc:  # an engine bug must still leave a result crate behind
        context.sandbox.stop_all()
        log = write_traceback(exc, context.logs_dir, "cratebridge-engine-error.log")
        record = failed_record(prepared.engine.name, context, started,
                               f"engine error: {type(exc).__name__}: {exc}"
                               + (f" (traceback in logs/{log.name})" if log else ""))
    finally:
        if timer is not None:
            timer.cancel()
    if stop.is_set():
        record = stopped_steps(record, stop)
    leftover = context.sandbox.stop_all()
    if leftover and record.status is RunStatus.COMPLETED:
        record = replace_error(record, f"{len(leftover)} container(s) left running were removed")
    context.room.sweep_links()  # again: Slurm jobs ran until the broker cancelled them
    record, outside = within(record, context.sandbox.mountable)
    if outside:
        record = replace(replace_error(
            record, f"the engine reported {len(outside)} file(s) outside the run's folder, "
            f"not recorded: {', '.join(str(p) for p in outside[:3])}"), status=RunStatus.FAILED)
    return redacted(capped(record, cfg.limits.log_bytes, context), cfg.secrets)


def environment_allowlist(cfg: Config) -> dict[str, str]:
    """The caller's variables an engine may see (the operator's ``[env] allow``)."""
    return {k: os.environ[k] for k in cfg.env_allow if k in os.environ}


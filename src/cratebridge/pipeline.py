"""The pipeline: intake -> policy -> engine plan -> execute -> provenance -> package.

This module wires the stages together; each stage lives in its own
sub-package. Errors travel as :mod:`cratebridge.errors` exceptions; the CLI
turns them into exit codes.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from cratebridge.config import Config, load_config
from cratebridge.containers.broker import Broker
from cratebridge.containers.confine import Room
from cratebridge.containers.mounts import release_stale
from cratebridge.containers.sandbox import Sandbox, find_docker, remove_stale_containers
from cratebridge.engines.interface import Engine, EnginePlan, ProgressEvent, RunContext
from cratebridge.engines.record import LogRecord, RunRecord, RunStatus, within
from cratebridge.engines.registry import Registry
from cratebridge.errors import EngineUnavailable, PolicyRefused, UsageError
from cratebridge.intake import open_crate, parse_request, verify_bag
from cratebridge.intake.request import RunRequest

__all__ = ["Interrupted", "PlanOutcome", "RunOutcome", "plan", "run"]


class Interrupted(BaseException):
    """The run was stopped by a signal or its time limit (not an error of the crate)."""


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


def _new_run_id() -> str:
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
                            limits=config.intake)
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
                      approved_images=config.images.approved)
    readable = [run_dir / "request", *host_data]
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


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into :class:`Interrupted` so the run can still be recorded."""
    def handler(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(f"stopped by {signal.Signals(signum).name}")

    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers (the API used from a worker thread)
        return
    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def run(crate: Path, out: Path, *, engine: str | None = None,
        config: Config | Path | None = None, registry: Registry | None = None,
        progress: Callable[[ProgressEvent], None] | None = None) -> RunOutcome:
    """Run a request crate and write the result crate at ``out`` (a folder or ``.zip``).

    A workflow that fails still returns an outcome (status FAILED) with a
    result crate; refusals raise :class:`~cratebridge.errors.CrateRejected`,
    :class:`~cratebridge.errors.PolicyRefused` or
    :class:`~cratebridge.errors.EngineUnavailable` and leave no run folder.
    """
    from cratebridge.provenance import build_result_crate, write_result

    cfg = config if isinstance(config, Config) else load_config(config)
    reg = registry or Registry.from_entry_points(cfg.allowed_engines)
    out = Path(out).absolute()
    if out.exists() and out.is_dir() and any(out.iterdir()):
        raise UsageError("the result folder exists and is not empty", where=str(out))
    _remove_stale_containers(cfg.runs_dir)
    run_id = _new_run_id()
    run_dir = cfg.runs_dir / run_id
    run_dir.mkdir(parents=True, mode=0o700)
    prepared = None
    try:
        prepared = _prepare(Path(crate), run_dir, run_id, cfg, reg, engine,
                            progress or (lambda e: None))
        plan_ = prepared.engine.plan(prepared.request, prepared.context)
        _check_images(plan_, cfg)
    except BaseException:
        # a refused crate (or an interrupted set-up) leaves no half-made run behind
        if prepared is not None:
            prepared.engine.release()
        _discard(run_dir)
        raise
    try:
        record = _execute(prepared, plan_, cfg)
    finally:
        prepared.engine.release()
    result_dir = build_result_crate(prepared.request, record, run_dir=run_dir,
                                    dest=run_dir / "result", plan=plan_)
    written = write_result(result_dir, out, bagit=prepared.bagit, bag_info=prepared.bag_info)
    if record.status is RunStatus.COMPLETED and not cfg.keep_runs:
        _discard(run_dir)
    return RunOutcome(run_id, run_dir, written, record.status, record, _shown(plan_, cfg))


def _remove_stale_containers(runs_dir: Path) -> None:
    """A run killed with SIGKILL could not stop its containers: the next run does.

    Nor release the bind mounts its broker pinned: those too.
    """
    if os.geteuid() == 0:
        release_stale(runs_dir)
    docker = find_docker()
    if docker is not None:
        remove_stale_containers(docker)


def _execute(prepared: _Prepared, plan_: EnginePlan, cfg: Config) -> RunRecord:
    """Run the engine; whatever happens, return a record (failed when it did not finish)."""
    context = prepared.context
    started = datetime.now(UTC)
    uid, gid = cfg.step_uid_gid
    broker = Broker(context.sandbox, context.broker_socket, uid, gid, room=context.room)
    try:
        with _signals_interrupt(), broker.serving():
            record = prepared.engine.run(plan_, context)
    except (Interrupted, KeyboardInterrupt) as stop:
        context.sandbox.stop_all()
        record = _failed(prepared, started, f"run interrupted: {stop or 'SIGINT'}")
    except Exception as exc:  # an engine bug must still leave a result crate behind
        context.sandbox.stop_all()
        record = _failed(prepared, started, f"engine error: {type(exc).__name__}: {exc}")
    leftover = context.sandbox.stop_all()
    if leftover and record.status is RunStatus.COMPLETED:
        record = _replace_error(record, f"{len(leftover)} container(s) left running were removed")
    context.room.sweep_links()  # again: Slurm jobs ran until the broker cancelled them
    record, outside = within(record, context.sandbox.mountable)
    if outside:
        record = replace(_replace_error(
            record, f"the engine reported {len(outside)} file(s) outside the run's folder, "
            f"not recorded: {', '.join(str(p) for p in outside[:3])}"), status=RunStatus.FAILED)
    return _redacted(record, cfg)


def _logs_of(context: RunContext) -> tuple[LogRecord, ...]:
    return tuple(LogRecord(p, p.name) for p in sorted(context.logs_dir.rglob("*"))
                 if p.is_file())


def _failed(prepared: _Prepared, started: datetime, error: str) -> RunRecord:
    engine = prepared.engine
    return RunRecord(engine=engine.name, engine_version=None, status=RunStatus.FAILED,
                     start_time=started, end_time=datetime.now(UTC),
                     logs=_logs_of(prepared.context), error=error)


def _replace_error(record: RunRecord, note: str) -> RunRecord:
    return replace(record, error=(record.error + "; " if record.error else "") + note)


def _redacted(record: RunRecord, cfg: Config) -> RunRecord:
    """Scrub secret values from every log the record points at, and from its error."""
    if not cfg.secrets:
        return record
    logs = list(record.logs) + [log for step in record.steps for log in step.logs]
    for log in logs:
        try:
            text = log.path.read_text(errors="replace")
        except OSError:
            continue
        clean = cfg.redact(text)
        if clean != text:
            log.path.write_text(clean)
    return replace(record, error=cfg.redact(record.error) if record.error else None)


def environment_allowlist(cfg: Config) -> dict[str, str]:
    """The caller's variables an engine may see (the operator's ``[env] allow``)."""
    return {k: os.environ[k] for k in cfg.env_allow if k in os.environ}


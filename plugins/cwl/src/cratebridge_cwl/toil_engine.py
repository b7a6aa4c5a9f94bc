"""The ``toil`` engine: CWL on Toil, on one machine or a cluster, with step-level records.

The operator picks the Toil batch system in ``[engines.toil]``
(``batch_system = "single_machine"`` by default, ``"slurm"``, or any other
Toil batch system). The job store and Toil's work folders live in the run's
work folder, which every worker must see (a shared filesystem on a cluster).
Images, input binding and offline loading are those of the cwltool engine.

Toil is an extra of this distribution (``pip install 'cratebridge-cwl[toil]'``):
nothing here imports it, and without it the engine reports itself unavailable.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from cratebridge.containers.ledger import read_ledger, refusal_note
from cratebridge.containers.shim import BROKER_ENV
from cratebridge.engines.installed import version as installed_version
from cratebridge.engines.interface import (
    Capabilities,
    Engine,
    EngineInfo,
    EnginePlan,
    RunContext,
)
from cratebridge.engines.process import EngineExit
from cratebridge.engines.record import (
    FileRecord,
    LogRecord,
    ParameterValue,
    RunRecord,
    RunStatus,
    StepRecord,
)
from cratebridge.errors import EngineUnavailable, UsageError
from cratebridge.intake.request import Language, RunRequest
from cratebridge_cwl.cwltool_engine import CwltoolEngine, run_held_or_new
from cratebridge_cwl.progress import JobProgress
from cratebridge_cwl.records import read_events, values_to_records, with_nesting
from cratebridge_cwl.toil_records import toil_step_records
from cratebridge_cwl.workflow import bind_inputs

__all__ = ["INSTALL_TOIL", "UNREADABLE", "ToilEngine", "ToilSettings"]

JOB_FILE = "job.json"
SLURM_COMMENT = "cratebridge-run:"
#: What the driver logs for a job whose container could not read an input (the same
#: text as ``toil_driver.UNREADABLE``); the run's error quotes those lines.
UNREADABLE = "cannot be read by the step user"
#: How an operator gets the engine when Toil is missing: this distribution's extra.
INSTALL_TOIL = "pip install 'cratebridge-cwl[toil]'"


@dataclass(frozen=True)
class ToilSettings:
    """The operator's ``[engines.toil]`` table, checked.

    ``batch_system``: a Toil batch system (``single_machine``, ``slurm``, ...).
    ``args``: extra toil-cwl-runner arguments, appended as given.
    ``retry_count``: Toil retries of a failed job (0: a failing step fails the run at once).
    ``slurm_partition``, ``slurm_time``, ``slurm_args``: passed to Toil's Slurm batch system.
    ``default_memory``, ``max_cores``: Toil's per-job defaults and cap.
    ``default_container``: image for steps without a DockerRequirement.
    ``keep_job_store``: keep Toil's job store after a successful run.
    """

    batch_system: str = "single_machine"
    args: tuple[str, ...] = ()
    retry_count: int = 0
    slurm_partition: str | None = None
    slurm_time: str | None = None
    slurm_args: str | None = None
    default_memory: str | None = None
    max_cores: int | None = None
    default_container: str | None = None
    keep_job_store: bool = False
    hold: bool = True

    @classmethod
    def from_table(cls, table: Mapping[str, object]) -> ToilSettings:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(table) - known)
        if unknown:
            raise UsageError(f"unknown setting(s) {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(known))}", where="config [engines.toil]")
        values: dict[str, Any] = dict(table)
        args = values.get("args", ())
        if not isinstance(args, (list, tuple)) or not all(isinstance(a, str) for a in args):
            raise UsageError("args must be a list of strings", where="config [engines.toil]")
        values["args"] = tuple(args)
        for name in ("retry_count", "max_cores"):
            if values.get(name) is not None and not isinstance(values[name], int):
                raise UsageError(f"{name} must be a whole number",
                                 where="config [engines.toil]")
        return cls(**values)


class ToilEngine(Engine):
    """Runs CWL with toil-cwl-runner; every step runs through the sandbox's ``docker``."""

    name: ClassVar[str] = "toil"
    language: ClassVar[Language] = Language.CWL
    capabilities: ClassVar[Capabilities] = Capabilities(
        step_provenance=True, containers=("docker",),
        schedulers=("single_machine", "slurm", "grid_engine", "lsf", "torque", "htcondor",
                    "kubernetes", "aws_batch"),
        offline=True)

    def __init__(self, settings: Mapping[str, object] | None = None) -> None:
        super().__init__(settings)
        # Images, the sandbox environment: exactly as the cwltool engine decides them.
        self._cwltool = CwltoolEngine(settings)

    def info(self) -> EngineInfo:
        """Toil as this Python finds it (the driver runs with this interpreter).

        Looks Toil up without importing it, so ``cratebridge engines`` stays light.
        """
        missing = [m for m in ("toil", "cwltool") if not _importable(m)]
        if missing:
            raise EngineUnavailable(
                f"Toil is not installed: {' and '.join(missing)} cannot be imported by "
                f"{sys.executable}; the toil engine is an extra: {INSTALL_TOIL}",
                where="engine toil")
        version = installed_version("toil")  # None: importable, yet not a distribution
        return EngineInfo(program="toil-cwl-runner", version=version, path=sys.executable)

    def toil_args(self, settings: ToilSettings, context: RunContext) -> list[str]:
        """toil-cwl-runner flags: the batch system, everything inside the run folder, offline."""
        work, logs = context.work_dir, context.logs_dir
        args = [
            "--batchSystem", settings.batch_system,
            "--jobStore", f"file:{work / 'jobstore'}",
            "--workDir", str(work / "toil-work"),
            "--coordinationDir", str(work / "toil-coordination"),
            "--outdir", str(context.outputs_dir),
            "--tmpdir-prefix", f"{work}/tmp/", "--tmp-outdir-prefix", f"{work}/out/",
            "--no-prepull", "--retryCount", str(settings.retry_count),
            "--relax-path-checks",  # data file names may hold spaces, '#', '%'...
            "--stats", "--clean", "never", "--disableProgress",
            "--writeLogs", str(logs / "toil-jobs"), "--writeLogsFromAllJobs", "true",
            # Workers (Slurm jobs too) must find the shim as their docker.
            "--setEnv", "PATH", "--setEnv", BROKER_ENV, "--setEnv", "HOME",
        ]
        if settings.default_container:
            args += ["--default-container", settings.default_container]
        if settings.default_memory:
            args += ["--defaultMemory", settings.default_memory]
        if settings.max_cores:
            args += ["--maxCores", str(settings.max_cores)]
        if settings.batch_system == "slurm":
            slurm_args = f"--comment={SLURM_COMMENT}{context.run_id}"
            if settings.slurm_args:
                slurm_args += " " + settings.slurm_args
            # one token: argparse would take a value starting with "--" for a flag
            args.append(f"--slurmArgs={slurm_args}")
            if settings.slurm_partition:
                args += ["--slurmPartition", settings.slurm_partition]
            if settings.slurm_time:
                args += ["--slurmTime", settings.slurm_time]
        return [*args, *settings.args]

    def plan(self, request: RunRequest, context: RunContext) -> EnginePlan:
        self.info()  # without Toil, refuse now (exit 5), not as a failed run
        settings = ToilSettings.from_table(context.settings)
        workflow = self._cwltool.load(request, context,
                                      hold=self.settings.get("hold") is not False)
        job = bind_inputs(request, workflow)
        images = self._cwltool.images(workflow, context)
        if settings.batch_system == "slurm":
            context.use_scheduler("slurm")  # sbatch & co. through the broker
        env = self._cwltool.environment(context)
        work = context.work_dir
        command = (sys.executable, "-m", "cratebridge_cwl.toil_driver",
                   "--events", str(work / "events.jsonl"), "--keep", str(work / "kept"),
                   # each job checks that its container's user can read what Toil staged
                   "--step-user", context.sandbox.user, "--open-within", str(work), "--",
                   *self.toil_args(settings, context), str(request.workflow.main_file),
                   str(work / JOB_FILE))
        notes = [f"language: {request.workflow.language_source}",
                 f"CWL {workflow.cwl_version} {workflow.cls}",
                 f"Toil batch system: {settings.batch_system}"]
        if settings.batch_system != "single_machine":
            notes.append(f"the run folder {context.run_dir} must be on a filesystem every "
                         "node of the cluster sees")
        return EnginePlan(engine=self.name, language=Language.CWL,
                          workflow=request.workflow.main_file, command=command, env=env,
                          images=images, parameters=job,
                          files={JOB_FILE: json.dumps(job, indent=2)}, notes=tuple(notes),
                          steps=tuple(s.name for s in workflow.steps))

    def release(self) -> None:
        self._cwltool.release()

    def run(self, plan: EnginePlan, context: RunContext) -> RunRecord:
        settings = ToilSettings.from_table(context.settings)
        work = context.work_dir
        for name, content in plan.files.items():
            (work / name).write_text(content)
        for folder in (Path(plan.env["HOME"]), work / "toil-work", work / "toil-coordination"):
            folder.mkdir(parents=True, exist_ok=True)
        events_path = work / "events.jsonl"
        stdout = context.logs_dir / "toil.stdout.json"
        stderr = context.logs_dir / "toil.stderr.log"
        progress = JobProgress(events_path, context)
        started = datetime.now(UTC)
        try:
            ended = run_held_or_new(self._cwltool, plan, context, stdout, stderr, progress)
        finally:
            if settings.batch_system == "slurm":
                _cancel_slurm_jobs(context.run_id)
        finished = datetime.now(UTC)
        events = read_events(events_path)
        ledger = read_ledger(context.sandbox.ledger)
        steps = toil_step_records(events, ledger,
                                  # the plan's job order, not the work folder's copy:
                                  # that one the engine could have changed
                                  dict(plan.parameters), context.logs_dir / "toil-jobs")
        # before the job store goes: a tool's default file is read from it
        steps = _out_of_job_store(steps, work / "jobstore", work / "kept" / "job-store",
                                  context.run_dir, Path(plan.workflow).parent)
        status = RunStatus.COMPLETED if ended.exit_code == 0 and not ended.reason \
            else RunStatus.FAILED
        logs = [LogRecord(stderr, "toil-cwl-runner log"),
                LogRecord(stdout, "toil-cwl-runner output object")]
        stats = _job_store_stats(work, context.logs_dir)
        if stats is not None:
            logs.append(LogRecord(stats, "Toil job statistics (toil stats --raw)"))
        if status is RunStatus.COMPLETED and not settings.keep_job_store:
            shutil.rmtree(work / "jobstore", ignore_errors=True)
        return with_nesting(RunRecord(
            engine=self.name, engine_version=self.info().version, status=status,
            start_time=started, end_time=finished, outputs=_outputs(stdout), steps=steps,
            logs=tuple(logs), command=tuple(plan.command),
            error=_error(ended, stderr, steps, ledger.refusals)
            if status is RunStatus.FAILED else None,
        ), events_path, events)


def _importable(module: str) -> bool:
    """Whether ``import module`` would find it; the module itself is not run."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a blocking import hook, or a half-imported module
        return False


def _outputs(stdout: Path) -> tuple[Any, ...]:
    try:
        data = json.loads(stdout.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        return ()
    return values_to_records(data if isinstance(data, dict) else {})


def _job_store_stats(work: Path, logs: Path) -> Path | None:
    """Toil's own per-job-type statistics, kept with the logs."""
    toil = Path(sys.executable).parent / "toil"
    if not (work / "jobstore").is_dir() or not toil.exists():
        return None
    target = logs / "toil-stats.json"
    try:
        done = subprocess.run([str(toil), "stats", "--raw", f"file:{work / 'jobstore'}"],
                              capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0 or not done.stdout.strip():
        return None
    target.write_text(done.stdout)
    return target


def _out_of_job_store(steps: tuple[StepRecord, ...], store: Path, kept: Path,
                      run_dir: Path, workflow_dir: Path) -> tuple[StepRecord, ...]:
    """Step files that are Toil job store files, recorded where they outlive the job store.

    Toil reads a tool's default files (``default: {class: File, location: ...}``)
    from copies in its job store, which goes when the run succeeds. Such a
    file is recorded as the workflow's own file it is a copy of (same name and
    checksum, under ``workflow_dir``), as the cwltool engine records it, or as
    the file a job store link leads to in the run folder; any other job store
    file is hard-linked (or copied) under ``kept``. One that leads out of the
    run folder is left as it is, for the core to refuse.
    """
    run, real_store = Path(os.path.realpath(run_dir)), Path(os.path.realpath(store))

    def moved(value: FileRecord | ParameterValue) -> FileRecord | ParameterValue:
        if not isinstance(value, FileRecord) or not value.path.is_relative_to(store):
            return value
        real = Path(os.path.realpath(value.path))
        if not real.is_relative_to(run) or not real.exists():
            return value
        if not real.is_relative_to(real_store):
            return replace(value, path=real)
        original = None if real.is_dir() else _same_file_in(workflow_dir, real)
        if original is not None:
            return replace(value, path=original)
        target = kept / value.path.relative_to(store)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            if real.is_dir():
                shutil.copytree(real, target, symlinks=True, copy_function=_link_or_copy)
            else:
                _link_or_copy(str(real), str(target))
        return replace(value, path=target)

    return tuple(replace(step, inputs=tuple(map(moved, step.inputs)),
                         outputs=tuple(map(moved, step.outputs))) for step in steps)


def _same_file_in(folder: Path, copy: Path) -> Path | None:
    """A regular file under ``folder`` with the name and content of ``copy``, if any."""
    digest = _sha256(copy)
    for candidate in sorted(folder.rglob(glob.escape(copy.name))) if folder.is_dir() else []:
        if candidate.is_file() and not candidate.is_symlink() and \
                candidate.stat().st_size == copy.stat().st_size and _sha256(candidate) == digest:
            return candidate
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        for chunk in iter(lambda: data.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _cancel_slurm_jobs(run_id: str) -> None:
    """Cancel this run's Slurm jobs still queued or running (after a stop or a failure)."""
    squeue = shutil.which("squeue")
    if squeue is None:
        return
    listed = subprocess.run([squeue, "-h", "-o", "%i|%k"], capture_output=True, text=True,
                            check=False)
    mine = [line.split("|", 1)[0] for line in listed.stdout.splitlines()
            if line.split("|", 1)[-1] == f"{SLURM_COMMENT}{run_id}"]
    if mine:
        subprocess.run(["scancel", *mine], capture_output=True, check=False)


def _error(ended: EngineExit, stderr: Path, steps: tuple[StepRecord, ...],
           refusals: tuple[str, ...] = ()) -> str:
    """Which steps failed (or Toil's last errors), then what the sandbox refused."""
    if ended.reason:
        return ended.reason
    refused = "; " + refusal_note(refusals) if refusals else ""
    try:
        lines = stderr.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    # a job whose container could not read its inputs says so before it starts
    unreadable = list(dict.fromkeys(
        line.split("cratebridge: ", 1)[-1].strip() for line in lines if UNREADABLE in line))
    failed = [s for s in steps if s.status is RunStatus.FAILED]
    if failed:
        names = ", ".join(f"{s.name} (exit {s.exit_code})" if s.exit_code is not None
                          else s.name for s in failed)
        return f"toil-cwl-runner exited {ended.exit_code}: step(s) failed: {names}" + (
            "; " + " | ".join(unreadable[:3]) if unreadable else "") + refused
    if refused:  # Toil's own last lines then say only which jobs failed
        return f"toil-cwl-runner exited {ended.exit_code}{refused}"
    tail = unreadable[:3] or [line for line in lines if "[E]" in line or "ERROR" in line][-3:]
    return f"toil-cwl-runner exited {ended.exit_code}" + (": " + " | ".join(tail) if tail else "")

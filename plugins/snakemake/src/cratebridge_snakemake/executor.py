"""The ``cratebridge`` Snakemake executor: every job's shell command in a Docker container.

Registered with Snakemake as the executor plugin ``cratebridge`` (the
top-level package :mod:`snakemake_executor_plugin_cratebridge`, found by
Snakemake's package-name discovery). It runs jobs on this machine, at most
``--cores`` at a time, each as ``docker run <the rule's image> sh -c <the
job's shell command>`` through the cratebridge sandbox shim, and writes one
``started`` and one ``finished`` JSON line per job to ``--cratebridge-events``
from the executor API (rule, wildcards, inputs, outputs, image, times, exit).
Rules that run nothing are reported done at once; those that make files
(``touch()`` outputs, made by Snakemake itself) get their two events too,
with no image. A ``benchmark:`` file is written here, from the container's
time; the jobs of a group (joined by ``pipe()`` or ``service()``) run at once,
a service stopped when its readers have ended (:mod:`cratebridge_snakemake.groups`).
A ``run:`` or ``script:`` job runs Snakemake's own per-job command in an image with Snakemake
(:mod:`cratebridge_snakemake.snakejob`). The workflow's final targets are
written when the executor starts and again when it shuts down, after
checkpoints have updated the DAG.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from snakemake.io import is_flagged
from snakemake_interface_executor_plugins.executors.base import SubmittedJobInfo
from snakemake_interface_executor_plugins.executors.real import RealExecutor
from snakemake_interface_executor_plugins.settings import (
    CommonSettings,
    ExecMode,
    ExecutorSettingsBase,
)

from cratebridge_snakemake.benchmarks import write_benchmark
from cratebridge_snakemake.groups import GroupRun, JobFailed, Launched
from cratebridge_snakemake.jobs import (
    EventLog,
    SnakemakeJob,
    now,
    spec_for,
)
from cratebridge_snakemake.snakejob import (
    is_snakemake_job,
    job_command,
    job_files,
    job_folders,
)

__all__ = ["CratebridgeSettings", "Executor", "ExecutorSettings", "JobFailed", "common_settings",
           "record_norun", "record_targets", "service_files", "snakemake_job",
           "target_files"]

common_settings = CommonSettings(
    non_local_exec=False,
    implies_no_shared_fs=False,
    job_deploy_sources=False,
    pass_envvar_declarations_to_cmd=True,
    auto_deploy_default_storage_provider=False,
)


@dataclass
class CratebridgeSettings:
    """Our executors' own settings (``--cratebridge-events`` and the rest; on Slurm
    ``--cratebridge-slurm-...``): the local executor's and the Slurm one's alike."""

    events: str | None = field(default=None, metadata={
        "help": "JSON-lines file the executor appends one event per job to", "type": str,
        "env_var": False, "required": False})
    default_image: str | None = field(default=None, metadata={
        "help": "image for rules without a container: directive (operator setting)",
        "type": str, "env_var": False, "required": False})
    shell: str | None = field(default=None, metadata={
        "help": "program each job's command runs under (the Snakefile's shell.executable, "
                "checked at plan time to be in every image); default: see bash_images",
        "type": str, "env_var": False, "required": False})
    bash_images: str | None = field(default=None, metadata={
        "help": "images (comma-separated) the plan found bash in: with no shell, jobs run "
                "under bash in these and under sh in others",
        "type": str, "env_var": False, "required": False})
    python_image: str | None = field(default=None, metadata={
        "help": "image with Snakemake for run: and script: rules without a container: "
                "directive (operator setting)",
        "type": str, "env_var": False, "required": False})


@dataclass
class ExecutorSettings(ExecutorSettingsBase, CratebridgeSettings):  # type: ignore[misc]
    """The local executor's settings: ours (:class:`CratebridgeSettings`)."""


def events_of(workflow: Any) -> EventLog:
    settings = workflow.executor_settings
    path = getattr(settings, "events", None) or ".snakemake/cratebridge-events.jsonl"
    return EventLog(Path(path).absolute())


def shell_of(workflow: Any) -> tuple[str | None, frozenset[str]]:
    """The Snakefile's shell (None: its default), and the images the plan found bash in."""
    settings = workflow.executor_settings
    images = getattr(settings, "bash_images", None) or ""
    return (getattr(settings, "shell", None) or None,
            frozenset(name for name in images.split(",") if name))


def target_files(job: Any) -> list[str]:
    """A target job's final files, as Snakemake names them (relative to the workdir).

    A job that runs a command: its outputs. A job that runs none: its inputs
    (``rule all``), then the files Snakemake itself makes for it, its
    ``touch()`` outputs and its ``log:`` files, which no command wrote and
    which are the job's only result.
    """
    if not job.rule.norun:
        return [str(f) for f in job.output]
    return [str(f) for f in (*job.input, *job.output, *job.log)]


def snakemake_job(executor: Any, job: Any) -> SnakemakeJob | None:
    """How a ``run:`` / ``script:`` job runs (None for any other job): image, command, mounts."""
    if not is_snakemake_job(job):
        return None
    workflow = executor.workflow
    return SnakemakeJob(getattr(workflow.executor_settings, "python_image", None),
                        job_command(executor, job), tuple(job_files(workflow)),
                        tuple(job_folders(workflow)))


def record_targets(workflow: Any, events: EventLog, final: bool = False) -> None:
    """The workflow's final files: those of its target jobs (see :func:`target_files`).

    Written when the executor starts and, with ``final``, when it shuts down:
    by then a checkpoint may have replaced the target jobs, and the engine
    reads the last of these events.
    """
    workdir = str(workflow.workdir_init)
    files: dict[str, None] = {}  # ordered, each file once
    for job in sorted(workflow.dag.targetjobs, key=lambda j: j.jobid or 0):
        files.update((os.path.normpath(os.path.join(workdir, f)), None)
                     for f in target_files(job))
    events.write("workflow", targets=list(files), workdir=workdir, final=final,
                 default_target=getattr(workflow, "default_target", None))


def record_norun(job: Any, workdir: str, events: EventLog) -> None:
    """A job that runs no command but makes files (``touch()`` outputs): its two events.

    Snakemake itself makes the files once the job is reported done, so the
    job has no image and no container; its record still names its inputs
    and outputs.
    """
    if not job.output:
        return
    spec = spec_for(job, workdir, None, norun=True)
    start = now()
    events.started(spec, start=start)
    events.finished(spec, start=start, exit_code=None, status="success")


def service_files(job: Any, workdir: str) -> list[str]:
    """A job's ``service()`` outputs, as absolute paths (none: the job is no service)."""
    return [os.path.join(workdir, str(f)) for f in job.output if is_flagged(f, "service")]


class Executor(RealExecutor):  # type: ignore[misc]
    """Runs each job's container from a thread pool; Snakemake schedules the jobs."""

    def __post_init__(self) -> None:
        cores = self.workflow.resource_settings.cores or 1
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=int(cores) + 2)
        self.events = events_of(self.workflow)
        self.default_image = getattr(self.workflow.executor_settings, "default_image", None)
        self.shell, self.bash_images = shell_of(self.workflow)
        self.docker = shutil.which("docker") or "docker"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        # a group's Snakemake in a Slurm job (--mode remote) runs only the group's jobs:
        # the run's targets are the outer Snakemake's to say
        self.whole_run = not self.workflow.remote_exec
        if self.whole_run:
            record_targets(self.workflow, self.events)

    def get_exec_mode(self) -> ExecMode:
        return ExecMode.SUBPROCESS

    def get_python_executable(self) -> str:
        return sys.executable

    @property
    def cores(self) -> Any:
        return self.workflow.resource_settings.cores

    def run_job(self, job: Any) -> None:
        job_info = SubmittedJobInfo(job=job)
        if not job.is_group() and job.is_norun:
            record_norun(job, str(self.workflow.workdir_init), self.events)
            self.report_job_submission(job_info)
            self.report_job_success(job_info)
            return
        future = self.pool.submit(self._run_group if job.is_group() else self._run, job)
        future.add_done_callback(partial(self._done, job_info))
        self.report_job_submission(job_info)

    def _run(self, job: Any) -> None:
        self._wait(self._launch(job))

    def _run_group(self, group: Any) -> None:
        """A group job (joined by ``pipe()`` or ``service()`` outputs): its jobs level by
        level, those of a level at once (:class:`~cratebridge_snakemake.groups.GroupRun`)."""
        workdir = str(self.workflow.workdir_init)
        run = GroupRun(launch=self._launch, finish=self._wait, stopped=self._stopped,
                       service_files=partial(service_files, workdir=workdir),
                       latency_wait=float(self.workflow.execution_settings.latency_wait or 0))
        for level in self.workflow.dag.toposorted(group.jobs, inherit_pipe_dependencies=True):
            for job in level:
                if job.is_norun:
                    record_norun(job, workdir, self.events)
            run.level([job for job in level if not job.is_norun])

    def _stopped(self, launched: Launched, code: int) -> None:
        """A service stopped once its readers ended: recorded as done."""
        self.processes.pop(launched.spec.token, None)
        self.events.finished(launched.spec, start=launched.start, exit_code=code,
                             status="success", service_stopped=True)

    def _launch(self, job: Any) -> Launched:
        """Start a job's container (its start event written); :class:`JobFailed` if it cannot."""
        snakemake = snakemake_job(self, job)
        if snakemake is None:  # Snakemake in the container prepares its own job
            self.workflow.async_run(job.prepare())
        try:
            spec = spec_for(job, str(self.workflow.workdir_init), self.default_image,
                            self.shell, snakemake=snakemake, bash_images=self.bash_images)
        except (ValueError, OSError) as exc:
            raise JobFailed(str(exc)) from None
        start = now()
        self.events.started(spec, start=start)
        out_dir = self.events.path.parent / "jobs"
        out_dir.mkdir(parents=True, exist_ok=True)
        argv = [self.docker, *spec.argv[1:]]
        began = time.monotonic()
        try:
            with (out_dir / f"{spec.token}.stdout.log").open("wb") as stdout:
                proc = subprocess.Popen(argv, stdout=stdout, stdin=subprocess.DEVNULL)
        except OSError as exc:  # docker could not even be started
            error = f"rule {spec.rule}: its container could not be started: {exc.strerror}"
            self.events.finished(spec, start=start, exit_code=None, error=error)
            raise JobFailed(error) from None
        self.processes[spec.token] = proc
        return Launched(job, spec, start, began, proc)

    def _wait(self, launched: Launched) -> None:
        """Wait for a started job's container; its end event; :class:`JobFailed` if it failed."""
        job, spec = launched.job, launched.spec
        try:
            code = launched.proc.wait()
        finally:
            self.processes.pop(spec.token, None)
        self.events.finished(spec, start=launched.start, exit_code=code)
        if code != 0:
            raise JobFailed(f"rule {spec.rule}: container {spec.image} exited with status "
                            f"{code}")
        # Snakemake expects it among the outputs; it is never shadowed. (A run: or script:
        # job's Snakemake writes its own, in the container.)
        if job.benchmark and not spec.snakemake:
            path = os.path.join(str(self.workflow.workdir_init), str(job.benchmark))
            write_benchmark(job, path, time.monotonic() - launched.began,
                            bool(self.workflow.output_settings.benchmark_extended))

    def _done(self, job_info: SubmittedJobInfo, future: concurrent.futures.Future[None]) -> None:
        error = future.exception()
        if error is None:
            self.report_job_success(job_info)
        elif isinstance(error, JobFailed):
            self.report_job_error(job_info, msg=str(error))
        else:  # ours, not the job's: its traceback goes to Snakemake's log
            traceback.print_exception(error, file=sys.stderr)
            self.report_job_error(job_info, msg=f"{type(error).__name__}: {error}")

    def handle_job_success(self, job: Any) -> None:
        pass

    def handle_job_error(self, job: Any) -> None:
        pass

    def cancel(self) -> None:
        for proc in list(self.processes.values()):
            proc.terminate()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def shutdown(self) -> None:
        self.pool.shutdown()
        if self.whole_run:
            record_targets(self.workflow, self.events, final=True)

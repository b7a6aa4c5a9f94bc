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
a service stopped when its readers have ended. A ``run:`` or ``script:`` job
runs Snakemake's own per-job command in an image with Snakemake
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
from cratebridge_snakemake.jobs import (
    EventLog,
    JobSpec,
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
           "record_group", "record_norun", "record_targets", "snakemake_job",
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


class JobFailed(Exception):
    """A job's container exited non-zero, or the job could not be started."""


@dataclass
class _Launched:
    """A job whose container was started: its spec, start time and docker client."""

    job: Any
    spec: JobSpec
    start: str
    began: float
    proc: subprocess.Popen[bytes]


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


def record_group(group: Any, workdir: str, events: EventLog, why: str) -> str:
    """A group job we cannot run (``why``): refused, each of its jobs failed.

    On Slurm every group is refused (each job is a Slurm job of its own). The
    plan refuses such rules when it sees them; one can still appear once a
    checkpoint has changed the DAG. Each job of the group gets its two events
    with the reason, so that the run's error names them.
    """
    jobs = sorted(group.jobs, key=lambda j: j.jobid or 0)
    rules = ", ".join(sorted({j.rule.name for j in jobs}))
    error = (f"rules {rules} are joined into one group job (by pipe() or service() outputs, "
             f"or group:): Snakemake would run them together, but {why}; write regular "
             "files instead of pipe() or service()")
    for job in jobs:
        spec = spec_for(job, workdir, None, norun=True)
        start = now()
        events.started(spec, start=start)
        events.finished(spec, start=start, exit_code=None, status="failed", error=error)
    return error


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
        """A group job: its jobs level by level, those joined by a ``pipe()`` or a
        ``service()`` at once.

        Snakemake joins jobs that share a ``pipe()`` or ``service()`` output into a
        group, whose jobs must run at the same time: each runs in its own
        container, and the pipe (a FIFO Snakemake makes in the working folder,
        which every job mounts) or the service's file (a socket, a link) joins
        them as it joins two processes. A service starts first, and the jobs
        reading it once its outputs are there (as a bare job waits for its
        inputs, up to ``--latency-wait``); when they have all ended, the
        service is stopped, as Snakemake stops it, and recorded as done. When a
        job fails, the others of its level are stopped (a reader would wait
        forever for a writer that is gone), and the group fails with it.
        """
        workdir = str(self.workflow.workdir_init)
        for level in self.workflow.dag.toposorted(group.jobs, inherit_pipe_dependencies=True):
            serving: list[_Launched] = []
            launched: list[_Launched] = []
            try:
                for job in level:
                    if job.is_norun:
                        record_norun(job, workdir, self.events)
                    elif job.is_service:
                        serving.append(self._launch(job))
                self._await_services(serving)
                for job in level:  # a pipe's writer before its readers: it makes the FIFO
                    if not job.is_norun and not job.is_service:
                        launched.append(self._launch(job))
            except JobFailed:
                self._stop([*launched, *serving])
                raise
            errors: list[JobFailed] = []
            pending = list(launched)
            while pending:
                done = next((one for one in pending if one.proc.poll() is not None), None)
                if done is None:
                    time.sleep(0.05)
                    continue
                pending.remove(done)
                try:
                    self._wait(done)
                except JobFailed as exc:
                    errors.append(exc)
                    self._stop(pending)  # waited for (and recorded) there
                    pending.clear()
            if errors:
                self._stop(serving)
                raise errors[0]
            self._end_services(serving)

    def _await_services(self, serving: list[_Launched]) -> None:
        """Wait until each service has made its ``service()`` outputs; :class:`JobFailed`
        when it ends first or they are not there within ``--latency-wait``."""
        wait = max(float(self.workflow.execution_settings.latency_wait or 0), 5.0)
        deadline = time.monotonic() + wait
        for one in serving:
            made = [os.path.join(str(self.workflow.workdir_init), str(f))
                    for f in one.job.output if is_flagged(f, "service")]
            while not all(os.path.lexists(path) for path in made):
                if one.proc.poll() is not None:
                    self._wait(one)  # raises for a failure; an exit 0 is no service either
                    raise JobFailed(f"rule {one.spec.rule}: its service ended before making "
                                    f"{', '.join(map(repr, made))}")
                if time.monotonic() > deadline:
                    raise JobFailed(f"rule {one.spec.rule}: its service() output did not "
                                    f"appear within {wait:.0f} s (--latency-wait)")
                time.sleep(0.05)

    def _end_services(self, serving: list[_Launched]) -> None:
        """Stop the services whose readers have all ended: each is recorded as done."""
        for one in serving:
            if one.proc.poll() is not None:  # ended by itself: as any job
                self._wait(one)
                continue
            one.proc.terminate()
            try:
                code = one.proc.wait()
            finally:
                self.processes.pop(one.spec.token, None)
            self.events.finished(one.spec, start=one.start, exit_code=code, status="success",
                                 service_stopped=True)

    def _launch(self, job: Any) -> _Launched:
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
        return _Launched(job, spec, start, began, proc)

    def _wait(self, launched: _Launched) -> None:
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

    def _stop(self, launched: list[_Launched]) -> None:
        """Stop started containers (the broker removes a container whose client goes away),
        and record the end of each not waited for yet: one end event a job."""
        running = [one for one in launched if one.spec.token in self.processes]
        for one in running:
            if one.proc.poll() is None:
                one.proc.terminate()
        for one in running:
            try:
                self._wait(one)
            except JobFailed:
                pass

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
        record_targets(self.workflow, self.events, final=True)

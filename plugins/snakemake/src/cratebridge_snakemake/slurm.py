"""The ``cratebridge-slurm`` Snakemake executor: Slurm submits, the sandbox runs the container.

A subclass of ``snakemake-executor-plugin-slurm``'s executor: sbatch
submission, ``sacct`` status checks, cancellation and logs are the Slurm
plugin's own. Only what a Slurm job runs changes: instead of a nested
Snakemake, each job runs :mod:`cratebridge_snakemake.jobstep` on a job spec
written here, which starts the job's container through the sandbox shim and
records the job's event. A group job (``pipe()``, ``service()``, ``group:``)
is one Slurm job running Snakemake for the group's jobs with the local
``cratebridge`` executor, as the Slurm plugin runs a group with its
``slurm-jobstep``. Registered as the top-level package
:mod:`snakemake_executor_plugin_cratebridge_slurm`.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from snakemake_executor_plugin_slurm import Executor as SlurmExecutor
from snakemake_executor_plugin_slurm import ExecutorSettings as SlurmSettings
from snakemake_executor_plugin_slurm import common_settings
from snakemake_interface_common.exceptions import WorkflowError
from snakemake_interface_executor_plugins.utils import format_cli_arg, join_cli_args

from cratebridge.containers.shim import BROKER_ENV
from cratebridge_snakemake.benchmarks import write_benchmark
from cratebridge_snakemake.executor import (
    CratebridgeSettings,
    events_of,
    record_norun,
    record_targets,
    shell_of,
    snakemake_job,
)
from cratebridge_snakemake.jobs import now, spec_for
from cratebridge_snakemake.records import read_events

__all__ = ["Executor", "ExecutorSettings", "common_settings"]


@dataclass
class ExecutorSettings(SlurmSettings, CratebridgeSettings):  # type: ignore[misc]
    """The Slurm plugin's settings and ours (:class:`CratebridgeSettings`)."""


class Executor(SlurmExecutor):  # type: ignore[misc]
    """Submits each job to Slurm as a container run through the cratebridge sandbox."""

    def __post_init__(self, test_mode: bool = False) -> None:
        super().__post_init__(test_mode)
        self.cb_events = events_of(self.workflow)
        self.cb_default_image = getattr(self.workflow.executor_settings, "default_image", None)
        self.cb_shell, self.cb_bash_images = shell_of(self.workflow)
        self.cb_docker = shutil.which("docker") or "docker"
        sandbox = os.environ.get(BROKER_ENV)
        if not sandbox:
            raise WorkflowError("cratebridge-slurm runs only inside a cratebridge run "
                                f"({BROKER_ENV} is not set)")
        self.cb_sandbox = sandbox
        self.cb_benchmarked: dict[int, str] = {}  # jobid -> step token, for benchmark:
        record_targets(self.workflow, self.cb_events)

    def format_job_exec(self, job: Any) -> str:
        jobs_dir = self.cb_events.path.parent / "jobs"
        jobs_dir.mkdir(parents=True, exist_ok=True)
        where = {"shim_dir": os.path.dirname(self.cb_docker), "sandbox": self.cb_sandbox}
        if job.is_group():
            spec_path = jobs_dir / f"group-{job.jobid}.json"
            spec_path.write_text(json.dumps(
                {**where, "group": str(job.name), "command": super().format_job_exec(job),
                 "workdir": str(self.workflow.workdir_init)}, indent=2))
        else:
            spec_path = jobs_dir / f"{self._job_spec(job, jobs_dir, where)}.json"
        return f"{shlex.quote(sys.executable)} -m cratebridge_snakemake.jobstep " \
               f"{shlex.quote(str(spec_path))}"

    def additional_general_args(self) -> str:
        """A group's Snakemake (``format_job_exec`` of a group job) runs its jobs with the
        local ``cratebridge`` executor, with this run's settings and events file."""
        settings = self.workflow.executor_settings
        return str(join_cli_args([
            "--executor cratebridge",
            format_cli_arg("--cratebridge-events", str(self.cb_events.path)),
            *(format_cli_arg(f"--cratebridge-{name.replace('_', '-')}",
                             getattr(settings, name, None),
                             skip=not getattr(settings, name, None))
              for name in ("default_image", "shell", "bash_images", "python_image")),
        ]))

    def _job_spec(self, job: Any, jobs_dir: Path, where: dict[str, str]) -> str:
        """Write what the Slurm job needs to run one job's container (and its start
        event); its token."""
        snakemake = snakemake_job(self, job)
        if snakemake is None:  # Snakemake in the container prepares its own job
            self.workflow.async_run(job.prepare())
        try:
            spec = spec_for(job, str(self.workflow.workdir_init), self.cb_default_image,
                            self.cb_shell, snakemake=snakemake,
                            bash_images=self.cb_bash_images)
        except ValueError as exc:
            raise WorkflowError(str(exc)) from None
        (jobs_dir / f"{spec.token}.json").write_text(json.dumps({
            **where, "token": spec.token, "jobid": spec.jobid, "rule": spec.rule,
            "argv": spec.argv, "docker": self.cb_docker, "events": str(self.cb_events.path),
            "workdir": spec.workdir, "stdout": str(jobs_dir / f"{spec.token}.stdout.log"),
        }, indent=2))
        self.cb_events.started(spec, start=now(), scheduler="slurm")
        if job.benchmark and not spec.snakemake:
            self.cb_benchmarked[job.jobid] = spec.token
        return spec.token

    def report_job_success(self, job_info: Any) -> None:
        # before Snakemake checks the job's outputs, which include its benchmark: file
        # (a group's Snakemake writes its jobs' own)
        job = job_info.job
        token = self.cb_benchmarked.pop(job.jobid, None)
        done = read_events(self.cb_events.path).finished.get(token, {}) if token else {}
        if done.get("start") and done.get("end"):
            took = datetime.fromisoformat(done["end"]) - datetime.fromisoformat(done["start"])
            write_benchmark(job, os.path.join(str(self.workflow.workdir_init), str(job.benchmark)),
                            took.total_seconds(),
                            bool(self.workflow.output_settings.benchmark_extended))
        super().report_job_success(job_info)

    def shutdown(self) -> None:
        # Jobs that run nothing are Snakemake's local jobs here, never ours: record
        # those that made files, and the targets as the checkpoints left them.
        workdir = str(self.workflow.workdir_init)
        dag = self.workflow.dag
        for job in sorted(dag.jobs, key=lambda j: j.jobid or 0):
            # (those of a group: its own Snakemake recorded them)
            if job.is_norun and dag.finished(job) and dag.get_job_group(job) is None:
                record_norun(job, workdir, self.cb_events)
        record_targets(self.workflow, self.cb_events, final=True)
        super().shutdown()

"""A group job's jobs, run at once as Snakemake runs them: one level at a time.

Snakemake joins jobs that share a ``pipe()`` or ``service()`` output into a
group job (and, on a cluster, the jobs of a ``group:``). Its jobs run level
by level (:meth:`snakemake.dag.DAG.toposorted` with the pipes' dependencies
inherited, so a pipe's writer and readers share a level), and the jobs of a
level run at the same time, each in its own container: the FIFO or the
service's file in the working folder, which every job mounts, joins them as
it joins two processes.

A level's services start first; the other jobs start once the services'
files are there (as a bare job waits for its inputs, up to
``--latency-wait``). When a job fails, the others of its level are stopped
(a reader would wait forever for a writer that is gone) and the group fails
with it. When a level's jobs have all ended, its services are stopped, as
Snakemake stops them, and recorded as done.

The local executor runs each group through a :class:`GroupRun`, saying how
one of its jobs is started, waited for and ended (on Slurm too: there a
group is one Slurm job whose own Snakemake runs this executor,
:mod:`cratebridge_snakemake.jobstep`). Snakemake's local executors ignore
``group:``, so the groups met here are those pipes and services make.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cratebridge_snakemake.jobs import JobSpec

__all__ = ["GroupRun", "JobFailed", "Launched"]

#: how long a level waits for its services' files at least (seconds)
MIN_SERVICE_WAIT = 5.0


class JobFailed(Exception):
    """A job's container exited non-zero, or the job could not be started."""


@dataclass
class Launched:
    """A job whose container was started: the job, its spec, start time and docker client."""

    job: Any
    spec: JobSpec
    start: str
    began: float
    proc: subprocess.Popen[bytes]
    waited: bool = False


@dataclass
class GroupRun:
    """Runs a group's levels with the caller's ways to start and end one job.

    ``launch(job)`` starts a job's container (its start recorded) and raises
    :class:`JobFailed` when it cannot; ``finish(launched)`` waits for it,
    records its end and raises :class:`JobFailed` when it failed;
    ``stopped(launched, code)`` records a service this run stopped as done.
    ``service_files(job)`` are a job's ``service()`` outputs (absolute
    paths; none: not a service).
    """

    launch: Callable[[Any], Launched]
    finish: Callable[[Launched], None]
    stopped: Callable[[Launched, int], None]
    service_files: Callable[[Any], Sequence[str]]
    latency_wait: float = 0.0

    def level(self, jobs: Sequence[Any]) -> None:
        """Run one level's jobs at once; :class:`JobFailed` for the first that failed."""
        serving: list[Launched] = []
        launched: list[Launched] = []
        services = [bool(self.service_files(job)) for job in jobs]
        try:
            serving += [self.launch(job) for job, service in zip(jobs, services, strict=True)
                        if service]
            self._await_services(serving)
            # in the level's order: a pipe's writer before its readers
            for job, service in zip(jobs, services, strict=True):
                if not service:
                    launched.append(self.launch(job))
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
                self._finish(done)
            except JobFailed as exc:
                errors.append(exc)
                self._stop(pending)  # waited for (and recorded) there
                pending.clear()
        if errors:
            self._stop(serving)
            raise errors[0]
        self._end_services(serving)

    def _finish(self, one: Launched) -> None:
        one.waited = True
        self.finish(one)

    def _await_services(self, serving: list[Launched]) -> None:
        """Wait until each service has made its ``service()`` outputs; :class:`JobFailed`
        when it ends first or they are not there within ``--latency-wait``."""
        wait = max(self.latency_wait, MIN_SERVICE_WAIT)
        deadline = time.monotonic() + wait
        for one in serving:
            made = list(self.service_files(one.job))
            while not all(os.path.lexists(path) for path in made):
                if one.proc.poll() is not None:
                    self._finish(one)  # raises for a failure; an exit 0 is no service either
                    raise JobFailed(f"rule {one.spec.rule}: its service ended before making "
                                    f"{', '.join(map(repr, made))}")
                if time.monotonic() > deadline:
                    raise JobFailed(f"rule {one.spec.rule}: its service() output did not "
                                    f"appear within {wait:.0f} s (--latency-wait)")
                time.sleep(0.05)

    def _end_services(self, serving: list[Launched]) -> None:
        """Stop the services whose readers have all ended: each is recorded as done."""
        for one in serving:
            if one.proc.poll() is not None:  # ended by itself: as any job
                self._finish(one)
                continue
            one.proc.terminate()
            one.waited = True
            self.stopped(one, one.proc.wait())

    def _stop(self, launched: list[Launched]) -> None:
        """Stop started containers (the broker removes a container whose client goes away),
        and record the end of each not waited for yet: one end event a job."""
        running = [one for one in launched if not one.waited]
        for one in running:
            if one.proc.poll() is None:
                one.proc.terminate()
        for one in running:
            try:
                self._finish(one)
            except JobFailed:
                pass

"""GroupRun alone, with plain processes in place of containers (a fast layer).

The local executor runs a group's containers with it, on this machine and in a
group's Slurm job (test_snakemake_targets.py and test_snakemake_slurm.py run it
with real Snakemake, Docker and Slurm); here each job is ``sh -c`` in a folder.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cratebridge_snakemake.groups import GroupRun, JobFailed, Launched


class Jobs:
    """Each job a dict: name, shell command, service files; what happened, in order."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.seen: list[tuple[str, str, int | None]] = []  # (event, job, exit code)

    def launch(self, job: dict[str, Any]) -> Launched:
        if job.get("unstartable"):
            self.seen.append(("refused", job["name"], None))
            raise JobFailed(f"rule {job['name']}: its container could not be started")
        proc = subprocess.Popen(["sh", "-c", job["sh"]], cwd=self.folder)
        self.seen.append(("started", job["name"], None))
        return Launched(job, SimpleNamespace(rule=job["name"]), "", time.monotonic(), proc)

    def finish(self, launched: Launched) -> None:
        code = launched.proc.wait()
        self.seen.append(("finished", launched.job["name"], code))
        if code:
            raise JobFailed(f"rule {launched.job['name']}: exit {code}")

    def stopped(self, launched: Launched, code: int) -> None:
        self.seen.append(("stopped", launched.job["name"], code))

    def run(self, *levels: list[dict[str, Any]]) -> None:
        group = GroupRun(self.launch, self.finish, self.stopped,
                         lambda job: [str(self.folder / f) for f in job.get("service", ())])
        for level in levels:
            group.level(level)

    def events(self, name: str) -> list[str]:
        return [event for event, job, _ in self.seen if job == name]


def test_a_pipes_jobs_run_at_once_and_levels_one_after_the_other(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    jobs = Jobs(tmp_path)
    jobs.run([{"name": "writer", "sh": "echo data > pipe"},
              {"name": "reader", "sh": "cat pipe > out"}],
             [{"name": "after", "sh": "cp out after"}])
    assert (tmp_path / "after").read_text() == "data\n"
    # both of the first level started before either was waited for
    assert [e for e, _, _ in jobs.seen[:2]] == ["started", "started"]
    assert jobs.seen[-2:] == [("started", "after", None), ("finished", "after", 0)]


def test_a_failed_writer_stops_its_reader_each_ends_once_and_the_next_level_never_starts(
        tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    jobs = Jobs(tmp_path)
    with pytest.raises(JobFailed, match="writer: exit 3"):
        jobs.run([{"name": "writer", "sh": "exit 3"},
                  {"name": "reader", "sh": "cat pipe > out"}],  # waits for a writer forever
                 [{"name": "after", "sh": "true"}])
    assert jobs.events("writer") == ["started", "finished"]
    assert jobs.events("reader") == ["started", "finished"]
    assert ("finished", "reader", 0) not in jobs.seen  # stopped, not done
    assert jobs.events("after") == []


def test_a_service_starts_first_and_is_stopped_after_its_readers(tmp_path: Path) -> None:
    jobs = Jobs(tmp_path)
    jobs.run([{"name": "reader", "sh": "cat socket socket > out"},
              {"name": "serve", "service": ["socket"],
               "sh": "sleep 0.3; echo served > socket.new; mv socket.new socket; sleep 60"}])
    assert (tmp_path / "out").read_text() == "served\nserved\n"
    assert [job for event, job, _ in jobs.seen if event == "started"] == ["serve", "reader"]
    assert jobs.seen[-1][:2] == ("stopped", "serve") and jobs.seen[-1][2] != 0
    assert jobs.events("serve") == ["started", "stopped"]


def test_a_service_that_ends_before_its_file_fails_and_its_readers_never_start(
        tmp_path: Path) -> None:
    jobs = Jobs(tmp_path)
    with pytest.raises(JobFailed, match="serve: its service ended before making"):
        jobs.run([{"name": "serve", "service": ["socket"], "sh": "true"},
                  {"name": "reader", "sh": "cat socket"}])
    assert jobs.events("serve") == ["started", "finished"]
    assert jobs.events("reader") == []


def test_a_job_that_cannot_start_stops_those_already_started(tmp_path: Path) -> None:
    jobs = Jobs(tmp_path)
    with pytest.raises(JobFailed, match="could not be started"):
        jobs.run([{"name": "serve", "service": ["socket"], "sh": "touch socket; sleep 60"},
                  {"name": "broken", "unstartable": True}])
    assert jobs.events("serve") == ["started", "finished"]
    assert jobs.events("broken") == ["refused"]

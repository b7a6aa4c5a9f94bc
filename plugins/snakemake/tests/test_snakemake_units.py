"""Fast checks of the pieces that need neither Docker nor a Snakemake run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cratebridge.engines.record import LogRecord, RunStatus, StepRecord
from cratebridge_snakemake.failures import failure_summary
from cratebridge_snakemake.jobs import JobSpec, docker_argv, image_of, job_script
from cratebridge_snakemake.workflow import config_value


@pytest.mark.parametrize(("raw", "bound"), [
    ("42", 42), ("-3", -3), ("0.25", 0.25), ("1e3", 1000.0), ("true", True), ("False", False),
    ("007", "007"), ("hello crate", "hello crate"), ("", ""), (7, 7), (True, True),
    (0.5, 0.5), ("1.2.3", "1.2.3"),
])
def test_config_values(raw: object, bound: object) -> None:
    assert config_value(raw) == bound
    assert type(config_value(raw)) is type(bound)


def test_image_of_drops_the_docker_scheme() -> None:
    assert image_of("docker://cratebridge/busybox:1") == "cratebridge/busybox:1"
    assert image_of("cratebridge/busybox:1") == "cratebridge/busybox:1"
    assert image_of(None) is None


def test_docker_argv_mounts_workdir_rw_and_everything_else_ro(tmp_path: Path) -> None:
    work, flow, data = tmp_path / "work", tmp_path / "flow", tmp_path / "in" / "data.txt"
    for folder in (work, flow, data.parent):
        folder.mkdir(parents=True)
    data.write_text("x")
    spec = JobSpec(token="t0", jobid=1, rule="r", name="r", wildcards={},
                   inputs=[("data", str(data)), ("mid", str(work / "mid.txt")),
                           ("code", str(flow / "x.py"))],
                   outputs=[("output", str(work / "out.txt"))], logs=[],
                   image="cratebridge/busybox:1", image_source="container",
                   shellcmd="cat {input} > out.txt", workdir=str(work))
    argv = docker_argv(spec, str(flow))
    assert argv[:3] == ["docker", "run", "--rm"]
    assert "--label=org.cratebridge.step=t0" in argv
    mounts = [a for a in argv if a.startswith("--volume=")]
    assert mounts == [f"--volume={work}:{work}", f"--volume={flow}:{flow}:ro",
                      f"--volume={data}:{data}:ro"]
    assert argv[-3:] == ["cratebridge/busybox:1", "-c", "set -eu\ncat {input} > out.txt"]


def _spec(**changes: object) -> JobSpec:
    fields: dict[str, object] = {
        "token": "t0", "jobid": 1, "rule": "r", "name": "r", "wildcards": {}, "inputs": [],
        "outputs": [], "logs": [], "image": "cratebridge/bash:1",
        "image_source": "container", "shellcmd": "a | b", "workdir": "/w"}
    return JobSpec(**{**fields, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize(("changes", "script"), [
    ({}, "set -eu\na | b"),
    ({"shell": "bash"}, "set -euo pipefail;  a | b"),
    ({"shell": "bash", "prefix": "set -e; "}, "set -e;  a | b"),
    ({"shell": "zsh"}, "a | b"),
    ({"prefix": "umask 022;", "suffix": "; sync"}, "set -eu\numask 022; a | b ; sync"),
])
def test_job_script_follows_snakemakes_shell_affixes(changes: dict[str, object],
                                                     script: str) -> None:
    assert job_script(_spec(**changes)) == script


def test_a_chosen_shell_is_the_entrypoint_found_on_the_images_path(tmp_path: Path) -> None:
    argv = docker_argv(_spec(shell="bash", workdir=str(tmp_path)), None)
    assert "--entrypoint=bash" in argv
    assert "--entrypoint=/bin/sh" in docker_argv(_spec(workdir=str(tmp_path)), None)


def test_a_script_too_long_for_one_argument_is_given_as_a_file(tmp_path: Path) -> None:
    script = tmp_path / ".snakemake" / "cratebridge-scripts" / "t0.sh"
    argv = docker_argv(_spec(shell="bash", workdir=str(tmp_path), script_file=str(script)), None)
    assert argv[-2:] == ["cratebridge/bash:1", str(script)] and "-c" not in argv


def test_a_failed_jobs_error_quotes_only_logs_inside_the_run(tmp_path: Path) -> None:
    work, stderr_dir, outside = tmp_path / "work", tmp_path / "broker" / "stderr", tmp_path
    for folder in (work, stderr_dir):
        folder.mkdir(parents=True)
    (outside / "secret.txt").write_text("SECRET\n")
    (work / "leak.log").symlink_to(outside / "secret.txt")
    os.mkfifo(work / "stall.log")
    (stderr_dir / "t.stderr.log").write_text("".join(f"line {i}\n" for i in range(9)))
    step = StepRecord(step="a", name="a", tool="a", status=RunStatus.FAILED, start_time=None,
                      end_time=None, exit_code=2, container=None, logs=(
                          LogRecord(outside / "secret.txt", "a log: secret.txt"),
                          LogRecord(work / "leak.log", "a log: leak.log"),
                          LogRecord(work / "stall.log", "a log: stall.log"),
                          LogRecord(stderr_dir / "t.stderr.log", "a stderr")))
    error = failure_summary(tmp_path / "none.log", (step,), 1, (work, stderr_dir))
    assert error == ("snakemake exited 1: rule(s) failed: a (exit 2), its stderr ends: "
                     "line 4 | line 5 | line 6 | line 7 | line 8")
    (stderr_dir / "t.stderr.log").write_text("")
    error = failure_summary(tmp_path / "none.log", (step,), 1, (work, stderr_dir))
    assert error == "snakemake exited 1: rule(s) failed: a (exit 2)"


def test_a_shadow_job_runs_in_its_shadow_only_inside_the_workdir(tmp_path: Path) -> None:
    work = tmp_path / "work"
    shadow = work / ".snakemake" / "shadow" / "tmpabc"
    shadow.mkdir(parents=True)
    argv = docker_argv(_spec(workdir=str(work), shadow_dir=str(shadow)), None)
    assert f"--workdir={shadow}" in argv
    assert [a for a in argv if a.startswith("--volume=")] == [f"--volume={work}:{work}"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (shadow / "escape").symlink_to(elsewhere)  # a shadow that leads out is refused, too
    for outside in (elsewhere, shadow / "escape"):
        with pytest.raises(ValueError, match=r"shadow folder .* is not inside"):
            docker_argv(_spec(workdir=str(work), shadow_dir=str(outside)), None)

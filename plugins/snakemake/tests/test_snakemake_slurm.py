"""The same crates on the real one-node Slurm cluster through snakemake-executor-plugin-slurm."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from cratebridge.config import Config
from cratebridge.engines.record import RunStatus
from cratebridge.pipeline import run
from cratebridge.testing.crates import FileInput, RequestSpec, ValueInput, write_request_zip

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "workflows" / "snakemake"
INPUT = "alpha beta gamma\ndelta epsilon\nzeta\neta theta iota kappa\n"
REPORT = "lines: 4\nwords: 10\nfirst lines:\nalpha beta gamma\ndelta epsilon\n"
SLURM = '[engines.snakemake]\nexecutor = "slurm"\njobs = 2\nstatus_interval = 5\n'


def _request(tmp: Path, name: str) -> Path:
    data = tmp / "data.txt"
    data.write_text(INPUT)
    spec = RequestSpec(workflow_dir=FIXTURES / name, main_workflow="Snakefile",
                       inputs=(FileInput("data", data), ValueInput("repeat", 2)))
    return write_request_zip(spec, tmp / f"{name}.zip")


def _sacct(job_ids: list[str]) -> dict[str, str]:
    done = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State,ExitCode", "-j",
                           ",".join(job_ids)], capture_output=True, text=True, check=True)
    rows = [line.split("|") for line in done.stdout.splitlines() if line]
    return {row[0]: f"{row[1]} {row[2]}" for row in rows}


@pytest.mark.slurm
@pytest.mark.docker
def test_three_step_on_slurm_one_slurm_job_per_rule(
        tmp_path: Path, config: Callable[[str], Config], slurm: bool,
        docker_available: bool) -> None:
    outcome = run(_request(tmp_path, "three-step"), tmp_path / "result", engine="snakemake",
                  config=config(SLURM))
    assert outcome.exit_code == 0, outcome.record.error
    assert "cratebridge-slurm" in outcome.plan.command
    assert (outcome.run_dir / "outputs" / "report.txt").read_text() == REPORT
    steps = outcome.record.steps
    assert sorted(s.step for s in steps) == ["combine", "count", "head"]
    for step in steps:
        assert step.container and step.container.image_id.startswith("sha256:")
        assert step.native_id and step.native_id.isdigit(), step.native_id
    states = _sacct([s.native_id for s in steps if s.native_id])
    assert len(states) == 3 and all(v == "COMPLETED 0:0" for v in states.values()), states


@pytest.mark.slurm
@pytest.mark.docker
def test_failed_rule_on_slurm(tmp_path: Path, config: Callable[[str], Config], slurm: bool,
                              docker_available: bool) -> None:
    outcome = run(_request(tmp_path, "step-fails"), tmp_path / "result", engine="snakemake",
                  config=config(SLURM))
    assert outcome.status is RunStatus.FAILED and outcome.exit_code == 1
    assert outcome.record.error and "head (exit 3)" in outcome.record.error
    head = next(s for s in outcome.record.steps if s.step == "head")
    assert head.native_id and _sacct([head.native_id])[head.native_id] == "FAILED 3:0"
    assert any("CRATEBRIDGE_FIXTURE_FAILURE" in log.path.read_text() for log in head.logs)


@pytest.mark.slurm
@pytest.mark.docker
@pytest.mark.parametrize(("name", "outputs", "steps"), [
    ("checkpoint", ["parts", *(f"upper/{p}.txt" for p in "abc")],
     ["split", "upper[part=a]", "upper[part=b]", "upper[part=c]"]),
    ("touch-rule", ["data.txt", "done.flag"], ["make", "mark"]),
])
def test_checkpoint_targets_and_touch_jobs_on_slurm(
        tmp_path: Path, config: Callable[[str], Config], slurm: bool, docker_available: bool,
        name: str, outputs: list[str], steps: list[str]) -> None:
    spec = RequestSpec(workflow_dir=FIXTURES / name, main_workflow="Snakefile")
    outcome = run(write_request_zip(spec, tmp_path / f"{name}.zip"), tmp_path / "result",
                  engine="snakemake", config=config(SLURM))
    assert outcome.exit_code == 0, outcome.record.error
    assert sorted(str(o.parameter) for o in outcome.record.outputs) == outputs
    assert sorted(s.name for s in outcome.record.steps) == steps


SHADOW_AND_BENCHMARK = '''
rule all:
    input: "minimal.txt"

rule minimal:
    input: "test/config.yaml"
    output: "minimal.txt"
    benchmark: "minimal.bench.tsv"
    shadow: "minimal"
    container: "docker://cratebridge/busybox:1"
    shell: "pwd > {output}; test -L {input} && cat {input} > /dev/null && echo link >> {output}"
'''


@pytest.mark.slurm
@pytest.mark.docker
def test_a_shadow_rule_with_a_benchmark_on_slurm(
        tmp_path: Path, make_request: Callable[..., Path], config: Callable[[str], Config],
        slurm: bool, docker_available: bool) -> None:
    outcome = run(make_request(SHADOW_AND_BENCHMARK), tmp_path / "result", engine="snakemake",
                  config=config(SLURM))
    assert outcome.exit_code == 0, outcome.record.error
    workdir = outcome.run_dir / "work" / "snakemake"
    shadow, linked = (outcome.run_dir / "outputs" / "minimal.txt").read_text().splitlines()
    assert Path(shadow).parent == workdir.resolve() / ".snakemake" / "shadow"
    assert linked == "link"
    header, row = (workdir / "minimal.bench.tsv").read_text().splitlines()
    assert header.startswith("s\th:m:s") and float(row.split("\t")[0]) > 0

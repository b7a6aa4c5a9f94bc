"""The Snakemake engine through the full pipeline: real Snakemake, real Docker through the shim."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from cratebridge.config import Config
from cratebridge.engines.record import FileRecord, RunStatus
from cratebridge.errors import PolicyRefused, UnsupportedCrate
from cratebridge.pipeline import plan, run
from cratebridge.testing.crates import (
    FileInput,
    RequestSpec,
    ValueInput,
    write_request_zip,
)

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "workflows" / "snakemake"
MakeRequest = Callable[..., Path]

INPUT = "alpha beta gamma\ndelta epsilon\nzeta\neta theta iota kappa\n"
REPORT = "lines: 4\nwords: 10\nfirst lines:\nalpha beta gamma\ndelta epsilon\n"
MARK = "CRATEBRIDGE_FIXTURE_FAILURE"

WILDCARDS = '''
SAMPLES = ["a", "b"]

rule all:
    input: expand("upper/{sample}.txt", sample=SAMPLES)

rule upper:
    output: "upper/{sample}.txt"
    container: "docker://cratebridge/busybox:1"
    shell: "echo {wildcards.sample} | tr a-z A-Z > {output}"
'''

NO_CONTAINER = '''
rule all:
    input: "out.txt"

rule make:
    output: "out.txt"
    shell: "echo made by $(id -u) > {output}"
'''

RUN_BLOCK = '''
rule all:
    input: "out.txt"

rule make:
    output: "out.txt"
    container: "docker://cratebridge/busybox:1"
    run:
        open(output[0], "w").write("python on the host")
'''


def _three_step(tmp: Path, name: str = "three-step") -> Path:
    data = tmp / "data.txt"
    data.write_text(INPUT)
    spec = RequestSpec(workflow_dir=FIXTURES / name, main_workflow="Snakefile",
                       inputs=(FileInput("data", data), ValueInput("repeat", "2")))
    return write_request_zip(spec, tmp / f"{name}.zip")


@pytest.mark.docker
def test_one_step_record_per_job_with_image_inputs_and_outputs(
        tmp_path: Path, config: Callable[[str], Config], docker_available: bool) -> None:
    outcome = run(_three_step(tmp_path), tmp_path / "result", engine="snakemake",
                  config=config(""))
    record = outcome.record
    assert outcome.exit_code == 0, record.error
    assert (outcome.run_dir / "outputs" / "report.txt").read_text() == REPORT
    # the final target first, then what the jobs made (outputs = "all", the default)
    assert next(o.parameter for o in record.outputs if isinstance(o, FileRecord)) == "report.txt"
    assert sorted(o.parameter for o in record.outputs if isinstance(o, FileRecord)) == [
        "counts.txt", "head.txt", "report.txt"]
    by_rule = {s.step: s for s in record.steps}
    assert sorted(by_rule) == ["combine", "count", "head"]
    assert by_rule["combine"].container is not None
    assert by_rule["combine"].container.image == "cratebridge/python:3.11"
    for step in record.steps:
        assert step.container and step.container.image_id.startswith("sha256:")
        assert step.status is RunStatus.COMPLETED and step.exit_code == 0
        assert step.command[:2] == ("docker", "run")
    combine_inputs = {i.parameter for i in by_rule["combine"].inputs}
    assert combine_inputs == {"counts", "head"}
    assert by_rule["count"].outputs[0].path.name == "counts.txt"
    # "2" arrived as a string and was bound as the int 2
    assert outcome.plan.parameters["repeat"] == 2


@pytest.mark.docker
def test_failed_rule_names_the_rule_and_keeps_its_stderr(
        tmp_path: Path, config: Callable[[str], Config], docker_available: bool) -> None:
    outcome = run(_three_step(tmp_path, "step-fails"), tmp_path / "result", engine="snakemake",
                  config=config(""))
    record = outcome.record
    assert outcome.status is RunStatus.FAILED and outcome.exit_code == 1
    assert record.error and "head (exit 3)" in record.error
    # the cause is in the run's error too, not only inside the result crate
    assert f"its stderr ends: {MARK}" in record.error, record.error
    failed = [s for s in record.steps if s.status is RunStatus.FAILED]
    assert [s.step for s in failed] == ["head"]
    assert any(MARK in log.path.read_text() for log in failed[0].logs)
    assert "combine" not in {s.step for s in record.steps}


@pytest.mark.docker
def test_wildcard_jobs_are_recorded_one_by_one(
        tmp_path: Path, make_request: MakeRequest, config: Callable[[str], Config],
        docker_available: bool) -> None:
    outcome = run(make_request(WILDCARDS), tmp_path / "result", engine="snakemake",
                  config=config(""))
    assert outcome.exit_code == 0, outcome.record.error
    names = sorted(s.name for s in outcome.record.steps)
    assert names == ["upper[sample=a]", "upper[sample=b]"]
    assert (outcome.run_dir / "outputs" / "upper" / "b.txt").read_text() == "B\n"


def test_rule_without_container_is_refused_by_default(
        make_request: MakeRequest, config: Callable[[str], Config]) -> None:
    with pytest.raises(PolicyRefused, match="rule make has no container"):
        plan(make_request(NO_CONTAINER), engine="snakemake", config=config(""))


@pytest.mark.docker
def test_run_block_in_an_image_without_snakemake_is_refused(
        make_request: MakeRequest, config: Callable[[str], Config],
        docker_available: bool) -> None:
    # a run: job runs Snakemake's own job command in its rule's image (test_snakemake_python)
    with pytest.raises(UnsupportedCrate, match=r"rule make runs Python in Snakemake .*"
                       r"cratebridge/busybox:1, which has no Snakemake"):
        plan(make_request(RUN_BLOCK), engine="snakemake", config=config(""))


@pytest.mark.docker
def test_default_container_runs_rules_without_one_in_the_sandbox(
        tmp_path: Path, make_request: MakeRequest, config: Callable[[str], Config],
        docker_available: bool) -> None:
    cfg = config('[engines.snakemake]\ndefault_container = "cratebridge/busybox:1"\n')
    crate = make_request(NO_CONTAINER)
    planned = plan(crate, engine="snakemake", config=cfg).plan
    assert any("default image cratebridge/busybox:1" in note for note in planned.notes)
    assert [u.image for u in planned.images] == ["cratebridge/busybox:1"]
    outcome = run(crate, tmp_path / "result", engine="snakemake", config=cfg)
    assert outcome.exit_code == 0, outcome.record.error
    # the sandbox's non-root user ran it, not the host's root
    assert (outcome.run_dir / "outputs" / "out.txt").read_text() == "made by 1000\n"


def test_plan_is_exact_and_says_how_the_language_was_found(
        make_request: MakeRequest, config: Callable[[str], Config]) -> None:
    outcome = plan(make_request(WILDCARDS, silent=True), engine="snakemake", config=config(""))
    planned = outcome.plan
    assert any(note.startswith("language:") and "Snakefile" in note for note in planned.notes), \
        planned.notes
    command = list(planned.command)
    assert command[1:3] == ["-m", "snakemake"]
    assert command[command.index("--executor") + 1] == "cratebridge"
    assert "--directory" in command and "--cores" in command
    # Snakemake runs in a working copy of the workflow's folder, in the run's work folder
    tree = Path(command[command.index("--directory") + 1])
    assert tree.name == "snakemake" and tree.parent.name == "work"
    assert Path(command[command.index("--snakefile") + 1]) == tree / "Snakefile"
    # no request inputs: no --configfile, so a missing configfile: stays Snakemake's error
    assert "--configfile" not in command and "config.json" not in planned.files
    assert "--sdm" not in command and "--use-conda" not in command
    assert sorted(planned.steps) == ["upper[sample=a]", "upper[sample=b]"]

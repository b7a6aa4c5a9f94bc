"""``run:`` and ``script:`` rules: Snakemake's own job command in a container with Snakemake.

Real Snakemake, real Docker through the broker, the image ``cratebridge images
build`` makes (``cratebridge/snakemake:<version>``), and the real Slurm cluster
for one run. The fixture ``python-rules`` has a shell rule, a ``run:`` block
and a ``script:`` rule.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from cratebridge.config import Config
from cratebridge.engines.record import RunStatus
from cratebridge.errors import PolicyRefused, UnsupportedCrate
from cratebridge.pipeline import RunOutcome, plan, run
from cratebridge.testing.crates import FileInput, RequestSpec, write_request_zip
from cratebridge_snakemake.jobs import JobSpec, docker_argv

FIXTURE = Path(__file__).resolve().parents[3] / "fixtures" / "workflows" / "snakemake" / \
    "python-rules"
MakeRequest = Callable[..., Path]
VERSION = importlib.metadata.version("snakemake")
IMAGE = f"cratebridge/snakemake:{VERSION}"
REPORT = "total times ten: 120\n"

RUN_IN_BUSYBOX = '''
rule all:
    input: "out.txt"

rule make:
    output: "out.txt"
    container: "docker://cratebridge/busybox:1"
    run:
        open(output[0], "w").write("python")
'''

SAMPLE_SHEET = '''
SAMPLES = open(config["samples"]).read().split()

rule all:
    input: expand("out/{sample}.txt", sample=SAMPLES)

rule make:
    output: "out/{sample}.txt"
    run:
        open(output[0], "w").write(wildcards.sample.upper() + "\\n")
'''

SCRIPT_ONLY = '''
rule all:
    input: "out.txt"

rule make:
    output: "out.txt"
    script: "make.py"
'''


@pytest.fixture(scope="module")
def snakemake_image() -> str:
    """Skip unless the image with Snakemake is built (``make images``)."""
    done = subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True,
                          check=False)
    if done.returncode != 0:
        pytest.skip(f"image {IMAGE} is missing: run `cratebridge images build` (make images)")
    return IMAGE


def _python_image(config: Config, image: str) -> Config:
    """``config`` with ``[engines.snakemake] python_image = image``.

    Set on the parsed configuration: the operator schema in the core
    (src/cratebridge/config_schema.py) is where the key is declared for TOML files.
    """
    settings = {**config.engine_settings.get("snakemake", {}), "python_image": image}
    return replace(config, engine_settings={**config.engine_settings, "snakemake": settings})


def _request(tmp: Path) -> Path:
    spec = RequestSpec(workflow_dir=FIXTURE, main_workflow="Snakefile")
    return write_request_zip(spec, tmp / "python-rules.zip")


def _check_records(outcome: RunOutcome) -> None:
    record = outcome.record
    assert outcome.exit_code == 0, record.error
    assert (outcome.run_dir / "outputs" / "report.txt").read_text() == REPORT
    by_rule = {s.step: s for s in record.steps}
    assert sorted(by_rule) == ["numbers", "report", "total"]
    assert by_rule["numbers"].container is not None
    assert by_rule["numbers"].container.image == "cratebridge/busybox:1"
    for name in ("total", "report"):
        step = by_rule[name]
        assert step.status is RunStatus.COMPLETED and step.exit_code == 0
        assert step.container is not None and step.container.image == IMAGE
        assert step.container.image_id.startswith("sha256:")
        assert step.start_time is not None and step.end_time is not None
        # Snakemake's own per-job command, in the container
        assert "--target-jobs" in step.command[-1] and f"{name}:" in step.command[-1]
        assert [o.path.name for o in step.outputs] == [f"{name}.txt"]
    stderr = [log for log in by_rule["total"].logs if log.name.endswith("stderr")]
    assert stderr and "counted numbers.txt" in stderr[0].path.read_text()


@pytest.mark.docker
def test_run_and_script_rules_run_in_the_snakemake_image(
        tmp_path: Path, config: Callable[[str], Config], docker_available: bool,
        snakemake_image: str) -> None:
    outcome = run(_request(tmp_path), tmp_path / "result", engine="snakemake",
                  config=config(""))
    _check_records(outcome)
    uses = {u.image: sorted(u.steps) for u in outcome.plan.images}
    assert uses == {"cratebridge/busybox:1": ["numbers"], IMAGE: ["report", "total"]}
    assert any(f"rule total (run:) runs as Snakemake's own job command in the operator "
               f"python_image {IMAGE}" in note for note in outcome.plan.notes)
    assert f"--cratebridge-python-image={IMAGE}" in " ".join(outcome.plan.command).replace(
        "--cratebridge-python-image ", "--cratebridge-python-image=")


@pytest.mark.docker
def test_a_request_file_the_snakefile_reads_is_there_for_the_jobs_snakemake(
        tmp_path: Path, make_request: MakeRequest, config: Callable[[str], Config],
        docker_available: bool, snakemake_image: str) -> None:
    # The job's Snakemake reads the Snakefile again, in the container: its top level
    # opens the request's sample sheet (a File input, outside the working folder).
    sheet = tmp_path / "samples.txt"
    sheet.write_text("a b\n")
    crate = make_request(SAMPLE_SHEET, inputs=(FileInput("samples", sheet),))
    outcome = run(crate, tmp_path / "result", engine="snakemake", config=config(""))
    assert outcome.exit_code == 0, outcome.record.error
    assert (outcome.run_dir / "outputs" / "out" / "b.txt").read_text() == "B\n"
    assert sorted(s.name for s in outcome.record.steps) == ["make[sample=a]", "make[sample=b]"]


@pytest.mark.slurm
@pytest.mark.docker
def test_run_and_script_rules_on_slurm(
        tmp_path: Path, config: Callable[[str], Config], slurm: bool, docker_available: bool,
        snakemake_image: str) -> None:
    outcome = run(_request(tmp_path), tmp_path / "result", engine="snakemake",
                  config=config('[engines.snakemake]\nexecutor = "slurm"\njobs = 2\n'
                                'status_interval = 5\n'))
    _check_records(outcome)
    for step in outcome.record.steps:
        assert step.native_id and step.native_id.isdigit(), (step.name, step.native_id)


def test_no_python_image_refuses_naming_the_setting(
        make_request: MakeRequest, config: Callable[[str], Config]) -> None:
    crate = make_request(SCRIPT_ONLY)
    with pytest.raises(UnsupportedCrate, match=r"rule make has a script: directive.*"
                       r"\[engines\.snakemake\] python_image is set to none"):
        plan(crate, engine="snakemake", config=_python_image(config(""), ""))


def test_absent_python_image_refuses_naming_the_setting(
        make_request: MakeRequest, config: Callable[[str], Config]) -> None:
    crate = make_request(SCRIPT_ONLY)
    cfg = _python_image(config(""), "cratebridge/absent:0")
    with pytest.raises(PolicyRefused, match=r"python_image = 'cratebridge/absent:0', which is "
                       r"not present locally; build it with `cratebridge images build`"):
        plan(crate, engine="snakemake", config=cfg)


@pytest.mark.docker
def test_rule_image_without_snakemake_is_refused(
        make_request: MakeRequest, config: Callable[[str], Config],
        docker_available: bool) -> None:
    with pytest.raises(UnsupportedCrate, match=r"rule make runs Python in Snakemake .* image "
                       r"cratebridge/busybox:1, which has no Snakemake for its python3"):
        plan(make_request(RUN_IN_BUSYBOX), engine="snakemake", config=config(""))


@pytest.mark.docker
def test_rule_image_with_the_same_snakemake_needs_no_python_image(
        make_request: MakeRequest, config: Callable[[str], Config], docker_available: bool,
        snakemake_image: str) -> None:
    crate = make_request(RUN_IN_BUSYBOX.replace("cratebridge/busybox:1", snakemake_image))
    planned = plan(crate, engine="snakemake", config=_python_image(config(""), "")).plan
    assert [(u.image, u.steps) for u in planned.images] == [(snakemake_image, ("make",))]
    assert any(f"rule make (run:) runs as Snakemake's own job command in its image "
               f"{snakemake_image}" in note for note in planned.notes)


def test_snakemake_job_mounts_its_configfiles_ro_and_its_source_cache_rw(
        tmp_path: Path) -> None:
    work, cache, flow = tmp_path / "work" / "snakemake", tmp_path / "work" / "cache", \
        tmp_path / "work" / "snakemake"
    config_file = tmp_path / "work" / "config.json"
    spec = JobSpec(token="t0", jobid=1, rule="r", name="r", wildcards={}, inputs=[],
                   outputs=[], logs=[], image=IMAGE, image_source="operator python_image",
                   shellcmd="python3 -m snakemake --target-jobs 'r:'", workdir=str(work),
                   snakemake=True)
    argv = docker_argv(spec, str(flow), (str(config_file),), (str(cache),))
    mounts = [a for a in argv if a.startswith("--volume=")]
    assert mounts == [f"--volume={work}:{work}", f"--volume={cache}:{cache}",
                      f"--volume={config_file}:{config_file}:ro"]
    assert "--env=USER=snakemake" in argv and "--entrypoint=/bin/sh" in argv
    assert argv[-3:] == [IMAGE, "-c", "set -eu\npython3 -m snakemake --target-jobs 'r:'"]

"""What a run hands back, for workflows shaped as in Snakemake's own test suite.

Real Snakemake, real Docker through the broker, the real pipeline: a target
rule that runs no command (its ``touch()`` and ``log:`` files are outputs),
``shadow:`` rules and a ``benchmark:``, a module's ``config:``, a target that is a
link, jobs joined by a ``pipe()`` or a ``service()``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from cratebridge.config import Config
from cratebridge.engines.record import FileRecord, RunStatus
from cratebridge.pipeline import RunOutcome, run
from cratebridge.testing.crates import RequestSpec, write_request_zip

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "workflows" / "snakemake"
MakeRequest = Callable[..., Path]


def _run(request: Path, tmp: Path, cfg: Config) -> RunOutcome:
    outcome = run(request, tmp / "result", engine="snakemake", config=cfg)
    assert outcome.exit_code == 0, outcome.record.error
    return outcome


def _request(tmp: Path, files: dict[str, str]) -> Path:
    """A request crate whose workflow folder holds ``files`` (main file ``Snakefile``)."""
    flow = tmp / "flow"
    for name, text in files.items():
        (flow / name).parent.mkdir(parents=True, exist_ok=True)
        (flow / name).write_text(text)
    metadata = FIXTURES / "scalar-inputs" / "ro-crate-metadata.json"
    (flow / "ro-crate-metadata.json").write_text(metadata.read_text())
    spec = RequestSpec(workflow_dir=flow, main_workflow="Snakefile")
    return write_request_zip(spec, tmp / "request.zip")


def _outputs(outcome: RunOutcome) -> dict[str, str]:
    return {str(o.parameter): o.path.read_text() for o in outcome.record.outputs
            if isinstance(o, FileRecord) and not o.is_dir}


TOUCH_TARGET = '''
rule all:
    output: touch("done")
    log: "all.log"
'''


@pytest.mark.docker
def test_a_target_rule_with_no_command_hands_back_its_touch_and_log_files(
        tmp_path: Path, make_request: MakeRequest, config: Callable[[str], Config],
        docker_available: bool) -> None:
    outcome = _run(make_request(TOUCH_TARGET), tmp_path, config(""))
    assert sorted(_outputs(outcome)) == ["all.log", "done"]
    assert (outcome.run_dir / "outputs" / "done").is_file()
    (step,) = outcome.record.steps
    assert step.name == "all" and step.status is RunStatus.COMPLETED and step.container is None


SHADOWS = '''
rule all:
    input: "minimal.txt", "copy.txt", "full.txt"

rule minimal:
    input: "test/config.yaml"
    output: "minimal.txt"
    benchmark: "minimal.bench.tsv"
    shadow: "minimal"
    container: "docker://cratebridge/busybox:1"
    shell: "pwd > {output}; test -L {input} && cat {input} > /dev/null && echo link >> {output}; "
           "touch junk.txt"

rule copy:
    input: "test/config.yaml"
    output: "copy.txt"
    shadow: "copy-minimal"
    container: "docker://cratebridge/busybox:1"
    shell: "test -f {input} && test ! -L {input} && echo copy > {output}"

rule full:
    output: "full.txt"
    shadow: "full"
    container: "docker://cratebridge/busybox:1"
    shell: "test -L Snakefile && cat Snakefile > /dev/null && echo full > {output}"
'''


@pytest.mark.docker
def test_shadow_rules_run_in_the_shadow_folder_snakemake_prepared(
        tmp_path: Path, make_request: MakeRequest, config: Callable[[str], Config],
        docker_available: bool) -> None:
    outcome = _run(make_request(SHADOWS), tmp_path, config(""))
    outputs = _outputs(outcome)
    workdir = outcome.run_dir / "work" / "snakemake"
    # minimal: the job's folder is the shadow, its input a link that resolves in the container
    shadow, linked = outputs["minimal.txt"].splitlines()
    assert Path(shadow).parent == workdir.resolve() / ".snakemake" / "shadow"
    assert linked == "link"
    assert outputs["copy.txt"] == "copy\n"  # copy-minimal: a copy, not a link
    assert outputs["full.txt"] == "full\n"  # full: the whole workdir linked
    # what the job left beside its outputs stays in the shadow, which Snakemake removed
    assert not (workdir / "junk.txt").exists() and not Path(shadow).exists()
    # benchmark: written by the executor, in the workdir, in Snakemake's format
    header, row = (workdir / "minimal.bench.tsv").read_text().splitlines()
    assert header.split("\t")[:2] == ["s", "h:m:s"] and float(row.split("\t")[0]) > 0
    assert all(s.container is not None for s in outcome.record.steps)


MODULE_USER = '''
config["who"] = "main"

module greet:
    snakefile: "module/Snakefile"
    config: {"who": "module"}
    prefix: "m"

use rule * from greet as greet_*

rule all:
    input: "m/hello.txt", "main.txt"
    default_target: True

rule main:
    output: "main.txt"
    container: "docker://cratebridge/busybox:1"
    shell: "echo {config[who]} > {output}"
'''

MODULE = '''
rule hello:
    output: "hello.txt"
    container: "docker://cratebridge/busybox:1"
    shell: "echo {config[who]} > {output}"
'''


@pytest.mark.docker
def test_a_module_rules_command_sees_the_modules_own_config(
        tmp_path: Path, config: Callable[[str], Config], docker_available: bool) -> None:
    request = _request(tmp_path, {"Snakefile": MODULE_USER, "module/Snakefile": MODULE})
    outcome = _run(request, tmp_path, config(""))
    assert _outputs(outcome) == {"m/hello.txt": "module\n", "main.txt": "main\n"}


LINKS = '''
rule all:
    input: "res/link.txt", "res/outside.txt"

rule make:
    output: directory("res/data")
    container: "docker://cratebridge/busybox:1"
    shell: "mkdir -p {output} && echo payload > {output}/f.txt"

rule link:
    input: "res/data"
    output: "res/link.txt"
    container: "docker://cratebridge/busybox:1"
    shell: "ln -s data/f.txt {output}"

rule outside:
    output: "res/outside.txt"
    container: "docker://cratebridge/busybox:1"
    shell: "ln -s /etc/hostname {output}"
'''


@pytest.mark.docker
def test_a_final_target_that_is_a_link_is_handed_back_as_the_bytes_it_points_to(
        tmp_path: Path, make_request: MakeRequest, config: Callable[[str], Config],
        docker_available: bool) -> None:
    outcome = _run(make_request(LINKS), tmp_path, config(""))
    # under the link's own name, as a file; a link leading out of the workdir is no output
    assert _outputs(outcome) == {"res/link.txt": "payload\n"}
    exported = outcome.run_dir / "outputs" / "res"
    assert not (exported / "link.txt").is_symlink()
    # the folder a job made is there too (links inside a folder stay links)
    assert sorted(p.name for p in exported.iterdir()) == ["data", "link.txt"]
    assert (exported / "data" / "f.txt").read_text() == "payload\n"


PIPE = '''
rule all:
    input: "out.txt"

rule produce:
    output: pipe("stream.txt")
    container: "docker://cratebridge/busybox:1"
    shell: "echo data > {output}"

rule consume:
    input: "stream.txt"
    output: "out.txt"
    container: "docker://cratebridge/busybox:1"
    shell: "cat {input} > {output}"
'''


@pytest.mark.docker
def test_jobs_joined_by_a_pipe_run_at_once_each_in_its_own_container(
        tmp_path: Path, make_request: MakeRequest, config: Callable[[str], Config],
        docker_available: bool) -> None:
    # the reader and the writer run at once, in two containers, joined by the FIFO
    # Snakemake makes in the working folder; the pipe is no output afterwards
    outcome = _run(make_request(PIPE), tmp_path, config(""))
    assert _outputs(outcome) == {"out.txt": "data\n"}
    steps = {s.step: s for s in outcome.record.steps}
    assert sorted(steps) == ["consume", "produce"]
    assert all(s.status is RunStatus.COMPLETED and s.container for s in steps.values())
    assert steps["consume"].container != steps["produce"].container
    # they ran at the same time: each started before the other ended
    assert steps["consume"].start_time < steps["produce"].end_time
    assert steps["produce"].start_time < steps["consume"].end_time


PIPE_WRITER_FAILS = PIPE.replace('shell: "echo data > {output}"',
                                 'shell: "echo no data >&2; exit 3"')


@pytest.mark.docker
def test_a_pipe_writer_that_fails_stops_its_reader_and_fails_the_run(
        tmp_path: Path, make_request: MakeRequest, config: Callable[[str], Config],
        docker_available: bool) -> None:
    # the reader waits for a writer that never opens the pipe: it is stopped, not waited for
    outcome = run(make_request(PIPE_WRITER_FAILS), tmp_path / "result", engine="snakemake",
                  config=config(""))
    assert outcome.exit_code == 1
    assert "produce (exit 3)" in str(outcome.record.error)
    assert "no data" in str(outcome.record.error)
    statuses = {s.step: s.status for s in outcome.record.steps}
    assert statuses == {"produce": RunStatus.FAILED, "consume": RunStatus.FAILED}
    # each job ended once: the reader stopped is not waited for again
    events = (outcome.run_dir / "work" / "events.jsonl").read_text().splitlines()
    assert sum('"event": "finished"' in line for line in events) == 2


# As Snakemake's own test_service_jobs: a service makes its file and never ends; a
# job reads it; the service is stopped once that job has ended. (There the file is a
# link to /dev/random, which no container of a run may mount: outside its folder. A
# group's jobs share its cores: two here, as on a two-core machine.)
SERVICE = '''
rule all:
    input: "a.txt"

rule serve:
    output: service("socket.txt")
    container: "docker://cratebridge/busybox:1"
    shell: "sleep 1; echo served > {output}.new; mv {output}.new {output}; sleep 600"

rule a:
    input: "socket.txt"
    output: "a.txt"
    container: "docker://cratebridge/busybox:1"
    shell: "cat {input} {input} > {output}"
'''


@pytest.mark.docker
def test_a_service_runs_beside_its_readers_and_is_stopped_after_them(
        tmp_path: Path, make_request: MakeRequest, config: Callable[[str], Config],
        docker_available: bool) -> None:
    # the reader starts once the service has made its file (here after a second), in a
    # container of its own; the service never ends by itself: stopped, and done
    outcome = _run(make_request(SERVICE), tmp_path, config(""))
    assert _outputs(outcome) == {"a.txt": "served\nserved\n"}
    steps = {s.step: s for s in outcome.record.steps}
    assert sorted(steps) == ["a", "serve"]
    assert all(s.status is RunStatus.COMPLETED and s.container for s in steps.values())
    assert steps["a"].container != steps["serve"].container
    assert steps["serve"].start_time < steps["a"].start_time
    assert steps["a"].end_time <= steps["serve"].end_time
    assert steps["serve"].exit_code != 0  # that of its stop
    assert (steps["serve"].end_time - steps["serve"].start_time).total_seconds() < 300


SERVICE_OF_A_DEVICE = SERVICE.replace(
    "sleep 1; echo served > {output}.new; mv {output}.new {output}; sleep 600",
    "ln -s /dev/zero {output}; sleep 600")


@pytest.mark.docker
def test_a_service_file_that_links_to_a_device_is_refused_and_the_error_says_so(
        tmp_path: Path, make_request: MakeRequest, config: Callable[[str], Config],
        docker_available: bool) -> None:
    # Snakemake's own test_service_jobs links /dev/random: a reader's container would
    # mount a device of the machine, outside the run's folder
    outcome = run(make_request(SERVICE_OF_A_DEVICE), tmp_path / "result",
                  engine="snakemake", config=config(""))
    assert outcome.exit_code == 1
    error = str(outcome.record.error)
    assert "rule(s) failed: " in error and "a (exit 125)" in error, error
    assert "sandbox refused: docker run: mount source /dev/zero is outside the run's " \
        "folder" in error, error


SERVICE_THAT_DIES = SERVICE.replace(
    "sleep 1; echo served > {output}.new; mv {output}.new {output}; sleep 600",
    "echo no socket >&2; exit 4")


@pytest.mark.docker
def test_a_service_that_ends_before_making_its_file_fails_the_run(
        tmp_path: Path, make_request: MakeRequest, config: Callable[[str], Config],
        docker_available: bool) -> None:
    # its reader never starts: it would wait for a file that will not come
    outcome = run(make_request(SERVICE_THAT_DIES), tmp_path / "result", engine="snakemake",
                  config=config(""))
    assert outcome.exit_code == 1
    assert "serve (exit 4)" in str(outcome.record.error)
    assert "no socket" in str(outcome.record.error)
    steps = {s.step: s for s in outcome.record.steps}
    assert steps["serve"].status is RunStatus.FAILED
    assert "a" not in steps
    # the service ended once, and is recorded once
    events = (outcome.run_dir / "work" / "events.jsonl").read_text().splitlines()
    assert sum('"event": "finished"' in line for line in events) == 1


PIPE_AFTER_CHECKPOINT = '''
import os

def piped(wildcards):
    folder = checkpoints.split.get().output[0]
    names = glob_wildcards(os.path.join(folder, "{name}.txt")).name
    return expand("piped/{name}.txt", name=names)

rule all:
    input: piped

checkpoint split:
    output: directory("parts")
    container: "docker://cratebridge/busybox:1"
    shell: "mkdir -p {output} && echo a > {output}/a.txt"

rule produce:
    output: pipe("stream/{name}.txt")
    container: "docker://cratebridge/busybox:1"
    shell: "echo data > {output}"

rule consume:
    input: "stream/{name}.txt"
    output: "piped/{name}.txt"
    container: "docker://cratebridge/busybox:1"
    shell: "cat {input} > {output}"
'''


@pytest.mark.docker
def test_a_pipe_the_plan_could_not_see_runs_too(
        tmp_path: Path, make_request: MakeRequest, config: Callable[[str], Config],
        docker_available: bool) -> None:
    # the pipe's rules join the DAG only once the checkpoint ran: the plan cannot see them
    outcome = _run(make_request(PIPE_AFTER_CHECKPOINT), tmp_path, config(""))
    assert _outputs(outcome)["piped/a.txt"] == "data\n"
    assert sorted(s.step for s in outcome.record.steps) == ["consume", "produce", "split"]

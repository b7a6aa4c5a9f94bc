"""The same crates on the real one-node Slurm cluster through snakemake-executor-plugin-slurm."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_snakemake_targets import PIPE, SERVICE

from cratebridge.config import Config, load_config
from cratebridge.engines.record import RunStatus
from cratebridge.pipeline import run
from cratebridge.testing.cluster import (
    TWO_HOSTS,
    SecondNode,
    containers_created,
    containers_left,
    has_image,
    job_nodes,
    second_node,
    shared_folder,
)
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


# Jobs Snakemake joins into a group job: one Slurm job each group, whose own
# Snakemake runs them with the local executor (a pipe's writer and reader at once;
# a group:'s jobs one after the other). Snakemake forms groups from group: only on
# a cluster.
PIPE_AND_GROUP = PIPE.replace('input: "out.txt"\n', 'input: "out.txt", "grouped.txt"\n', 1) + '''
rule first:
    output: "first.txt"
    group: "pair"
    container: "docker://cratebridge/busybox:1"
    shell: "echo one > {output}"

rule second:
    input: "first.txt"
    output: "grouped.txt"
    group: "pair"
    benchmark: "second.bench.tsv"
    container: "docker://cratebridge/busybox:1"
    shell: "cat {input} > {output}; echo two >> {output}"
'''


@pytest.mark.slurm
@pytest.mark.docker
def test_a_pipe_and_a_group_each_run_as_one_slurm_job(
        tmp_path: Path, make_request: Callable[..., Path], config: Callable[[str], Config],
        slurm: bool, docker_available: bool) -> None:
    outcome = run(make_request(PIPE_AND_GROUP), tmp_path / "result", engine="snakemake",
                  config=config(SLURM))
    assert outcome.exit_code == 0, outcome.record.error
    exported = outcome.run_dir / "outputs"
    assert (exported / "out.txt").read_text() == "data\n"
    assert (exported / "grouped.txt").read_text() == "one\ntwo\n"
    steps = {s.step: s for s in outcome.record.steps}
    assert sorted(steps) == ["consume", "first", "produce", "second"]
    assert all(s.status is RunStatus.COMPLETED and s.container for s in steps.values())
    piped, grouped = steps["produce"].native_id, steps["first"].native_id
    assert piped and grouped and piped.isdigit() and grouped.isdigit() and piped != grouped
    assert steps["consume"].native_id == piped and steps["second"].native_id == grouped
    # the pipe's jobs at once, in two containers; the group's one after the other
    assert steps["consume"].container != steps["produce"].container
    assert steps["consume"].start_time < steps["produce"].end_time
    assert steps["produce"].start_time < steps["consume"].end_time
    assert steps["first"].end_time <= steps["second"].start_time
    assert _sacct([piped, grouped]) == {piped: "COMPLETED 0:0", grouped: "COMPLETED 0:0"}
    header, row = (outcome.run_dir / "work" / "snakemake" / "second.bench.tsv") \
        .read_text().splitlines()
    assert header.startswith("s\th:m:s") and float(row.split("\t")[0]) > 0


@pytest.mark.slurm
@pytest.mark.docker
def test_with_a_broker_on_each_node_a_jobs_containers_go_through_its_own(
        tmp_path: Path, make_request: Callable[..., Path], config: Callable[[str], Config],
        slurm: bool, docker_available: bool) -> None:
    """``[slurm] broker = "node"``: each Slurm job (here a pipe's and a group's, two
    containers each) starts its containers through the broker it started on its node."""
    outcome = run(make_request(PIPE_AND_GROUP), tmp_path / "result", engine="snakemake",
                  config=config(SLURM + '[slurm]\nbroker = "node"\n'))
    assert outcome.exit_code == 0, outcome.record.error
    assert (outcome.run_dir / "outputs" / "grouped.txt").read_text() == "one\ntwo\n"
    broker = outcome.run_dir / "broker"
    assert '"token"' not in (broker / "ledger.jsonl").read_text()
    steps = outcome.record.steps
    assert len(steps) == 4
    for step in steps:
        assert step.container and step.container.image_id.startswith("sha256:")
        ledger = broker / "nodes" / f"job-{step.native_id}" / "broker" / "ledger.jsonl"
        assert step.container.container_id in ledger.read_text(), step.step


@pytest.mark.slurm
@pytest.mark.docker
def test_a_service_and_its_reader_run_as_one_slurm_job(
        tmp_path: Path, make_request: Callable[..., Path], config: Callable[[str], Config],
        slurm: bool, docker_available: bool) -> None:
    outcome = run(make_request(SERVICE), tmp_path / "result", engine="snakemake",
                  config=config(SLURM))
    assert outcome.exit_code == 0, outcome.record.error
    assert (outcome.run_dir / "outputs" / "a.txt").read_text() == "served\nserved\n"
    steps = {s.step: s for s in outcome.record.steps}
    assert sorted(steps) == ["a", "serve"]
    assert all(s.status is RunStatus.COMPLETED and s.container for s in steps.values())
    native = steps["serve"].native_id
    assert native and native.isdigit() and steps["a"].native_id == native
    # started first, stopped once its reader ended, long before its own end
    assert steps["serve"].start_time < steps["a"].start_time
    assert steps["a"].end_time <= steps["serve"].end_time
    assert steps["serve"].exit_code != 0
    assert (steps["serve"].end_time - steps["serve"].start_time).total_seconds() < 300
    assert _sacct([native]) == {native: "COMPLETED 0:0"}


# one group: a pipe whose writer fails, then a job after it
GROUP_WRITER_FAILS = '''
rule all:
    input: "last.txt"

rule produce:
    output: pipe("stream.txt")
    group: "g"
    container: "docker://cratebridge/busybox:1"
    shell: "echo no data >&2; exit 3"

rule consume:
    input: "stream.txt"
    output: "out.txt"
    group: "g"
    container: "docker://cratebridge/busybox:1"
    shell: "cat {input} > {output}"

rule last:
    input: "out.txt"
    output: "last.txt"
    group: "g"
    container: "docker://cratebridge/busybox:1"
    shell: "cp {input} {output}"
'''


@pytest.mark.slurm
@pytest.mark.docker
def test_a_failing_pipe_writer_stops_its_group_and_fails_its_slurm_job(
        tmp_path: Path, make_request: Callable[..., Path], config: Callable[[str], Config],
        slurm: bool, docker_available: bool) -> None:
    outcome = run(make_request(GROUP_WRITER_FAILS), tmp_path / "result", engine="snakemake",
                  config=config(SLURM))
    assert outcome.exit_code == 1
    assert "produce (exit 3)" in str(outcome.record.error)
    assert "no data" in str(outcome.record.error)
    steps = {s.step: s for s in outcome.record.steps}
    # the reader was stopped; the job after them never started, as with bare Snakemake
    assert {name: s.status for name, s in steps.items()} == \
        {"produce": RunStatus.FAILED, "consume": RunStatus.FAILED}
    events = (outcome.run_dir / "work" / "events.jsonl").read_text().splitlines()
    assert sum('"event": "finished"' in line for line in events) == 2
    native = steps["produce"].native_id
    assert native and native.isdigit() and steps["consume"].native_id == native
    assert _sacct([native])[native].startswith("FAILED")


TWO_HOST_RULES = 4
PARTS = ", ".join(f'"part-{n}.txt"' for n in range(TWO_HOST_RULES))
SPREAD = f'''rule all:
    input: {PARTS}

rule part:
    output: "part-{{n}}.txt"
    resources: slurm_partition="{TWO_HOSTS}"
    container: "docker://cratebridge/busybox:1"
    shell: "sleep 2; echo {{wildcards.n}} > {{output}}"
'''


@pytest.fixture
def two_hosts(tmp_path: Path, slurm: bool, docker_available: bool) -> Iterator[
        tuple[SecondNode, Callable[[str], Config]]]:
    """The second node, and configurations (the given extra TOML) for Slurm runs of
    ``TWO_HOST_RULES`` jobs at once, with the runs folder where both nodes see it."""
    node = second_node()
    if not isinstance(node, SecondNode):
        pytest.skip(node)
    with shared_folder() as shared:
        def config(extra: str) -> Config:
            path = tmp_path / "cratebridge.toml"
            path.write_text(f'[run]\nruns_dir = "{shared / "runs"}"\ntimeout = "10m"\n\n'
                            f'{SLURM.replace("jobs = 2", f"jobs = {TWO_HOST_RULES}")}\n{extra}')
            return load_config(path)

        yield node, config


@pytest.mark.slurm
@pytest.mark.docker
def test_jobs_on_two_hosts_start_their_containers_on_their_own_nodes_docker(
        tmp_path: Path, make_request: Callable[..., Path],
        two_hosts: tuple[SecondNode, Callable[[str], Config]]) -> None:
    """Four jobs at once in the partition ``twohosts`` (this host's node and a second
    node with its own name, Docker, /tmp and slurmd: scripts/start-second-node), with
    ``[slurm] broker = "node"``: they spread over both nodes, and each job's container
    is created by its own node's Docker; none is left on either."""
    node, config = two_hosts
    began = time.time()
    outcome = run(make_request(SPREAD), tmp_path / "result", engine="snakemake",
                  config=config('[slurm]\nbroker = "node"\n'))
    assert outcome.exit_code == 0, outcome.record.error
    for n in range(TWO_HOST_RULES):
        assert (outcome.run_dir / "outputs" / f"part-{n}.txt").read_text() == f"{n}\n"
    steps = outcome.record.steps
    assert len(steps) == TWO_HOST_RULES
    nodes = job_nodes([str(s.native_id) for s in steps])
    on = {name: sorted(str(s.container.container_id) for s in steps
                       if s.container and nodes[str(s.native_id)] == name)
          for name in set(nodes.values())}
    assert set(on) == {node.name, socket.gethostname().split(".")[0]}, nodes
    run_id = outcome.run_dir.name
    for name, ids in on.items():  # the steps' containers (the run's reader is not one)
        docker_host = node.docker_host if name == node.name else None
        created = containers_created(run_id, began, docker_host)
        assert sorted(c for c, labels in created.items()
                      if "org.cratebridge.step" in labels) == ids, name
        assert not containers_left(run_id, docker_host)


@pytest.mark.slurm
@pytest.mark.docker
def test_with_the_hosts_broker_a_job_placed_on_another_host_is_refused_saying_why(
        tmp_path: Path, make_request: Callable[..., Path],
        two_hosts: tuple[SecondNode, Callable[[str], Config]]) -> None:
    """``[slurm] broker = "host"`` (the default) with jobs in the partition ``twohosts``:
    a job Slurm places on the second node cannot reach the run's broker (a unix socket on
    this host), so its wrapper refuses it, and the run's error says why and what to set."""
    node, config = two_hosts
    began = time.time()
    outcome = run(make_request(SPREAD), tmp_path / "result", engine="snakemake",
                  config=config(""))
    assert outcome.status is RunStatus.FAILED
    assert (f'Slurm job on {node.name}: with [slurm] broker = "host" every job must run '
            f"on {socket.gethostname()}") in str(outcome.record.error)
    assert '[slurm] broker = "node"' in str(outcome.record.error)
    run_id = outcome.run_dir.name
    assert not containers_created(run_id, began, node.docker_host)
    assert not containers_left(run_id, node.docker_host) and not containers_left(run_id)


@pytest.mark.slurm
@pytest.mark.docker
def test_an_image_missing_on_a_node_is_refused_there_naming_the_node(
        tmp_path: Path, make_request: Callable[..., Path],
        two_hosts: tuple[SecondNode, Callable[[str], Config]]) -> None:
    """An approved image this host's Docker has but the second node's has not (not
    preloaded there): a job placed on the second node is refused by its own broker,
    and the run's error names the image, the node and the job."""
    node, config = two_hosts
    image = "cratebridge/bash:1"  # made by `make setup`; not copied to the second node
    assert has_image(image) and not has_image(image, node.docker_host)
    began = time.time()
    outcome = run(make_request(SPREAD.replace("cratebridge/busybox:1", image)),
                  tmp_path / "result", engine="snakemake",
                  config=config('[slurm]\nbroker = "node"\n'))
    assert outcome.status is RunStatus.FAILED
    error = str(outcome.record.error)
    assert f"image {image} is not in the Docker of node {node.name} (Slurm job " in error
    assert "Load the approved image into every node's Docker first" in error
    assert not containers_created(outcome.run_dir.name, began, node.docker_host)

"""The toil engine: the conformance kit on one machine and on the local Slurm cluster,
Slurm accounting of the steps, and a scatter on Slurm recorded step by step.

Real Toil, real Docker, a real Slurm cluster (scripts/setup-slurm, scripts/start-slurm);
the Slurm tests are skipped, with the reason, when the cluster is not up.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from cratebridge.config import load_config
from cratebridge.engines.record import FileRecord, RunStatus
from cratebridge.errors import UsageError
from cratebridge.pipeline import plan, run
from cratebridge.testing.cluster import (
    TWO_HOSTS,
    SecondNode,
    containers_created,
    containers_left,
    job_nodes,
    second_node,
    shared_folder,
    slurm_down,
)
from cratebridge.testing.crates import (
    RequestSpec,
    ReviewAction,
    ReviewKind,
    ValueInput,
    ZipLayout,
    write_request_zip,
)
from cratebridge.testing.kit import CASES, EngineConformance, KitResult
from cratebridge_cwl.toil_driver import _scatter_index
from cratebridge_cwl.toil_engine import ToilSettings

REPO = Path(__file__).resolve().parents[3]
CWL = REPO / "fixtures" / "workflows" / "cwl"
SLURM_TOML = '[engines.toil]\nbatch_system = "slurm"\n'


SLURM_DOWN = slurm_down()
needs_slurm = pytest.mark.skipif(SLURM_DOWN is not None, reason=SLURM_DOWN or "")


def _events(run_dir: Path) -> list[dict[str, object]]:
    lines = (run_dir / "work" / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _sacct(job_ids: list[str]) -> list[list[str]]:
    """sacct's rows (JobID, JobName, State, ExitCode, WorkDir) for these jobs, allocations only."""
    done = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-j", ",".join(job_ids),
         "--format=JobID,JobName%80,State,ExitCode,WorkDir%300"],
        capture_output=True, text=True, check=True)
    return [line.split("|") for line in done.stdout.splitlines() if line.strip()]


# -- the conformance kit -----------------------------------------------------------------


@pytest.mark.docker
class TestToilConformance(EngineConformance):
    """Every kit crate on Toil's single_machine batch system."""

    __test__ = True
    engine = "toil"
    workflows = CWL
    main_file = "workflow.cwl"
    config_toml = '[engines.toil]\nbatch_system = "single_machine"\n'

    def test_inputs_point_at_the_outputs_they_came_from(self, three_step: KitResult) -> None:
        steps = {s.step: s for s in three_step.outcome.record.steps}
        made = {f.path for s in (steps["count"], steps["head"]) for f in s.outputs
                if isinstance(f, FileRecord)}
        used = {f.path for f in steps["combine"].inputs if isinstance(f, FileRecord)}
        assert used == made

    def test_failing_step_record_has_its_stderr(self, step_fails: KitResult) -> None:
        failed = [s for s in step_fails.outcome.record.steps if s.status is RunStatus.FAILED]
        assert [s.step for s in failed] == ["head"]
        assert failed[0].exit_code == 3
        assert any("CRATEBRIDGE_FIXTURE_FAILURE" in log.path.read_text() for log in failed[0].logs)


@pytest.mark.docker
@pytest.mark.slurm
@needs_slurm
class TestToilSlurmConformance(EngineConformance):
    """Every kit crate with each CWL job submitted to the local Slurm cluster."""

    __test__ = True
    engine = "toil"
    workflows = CWL
    main_file = "workflow.cwl"
    config_toml = SLURM_TOML

    def test_sacct_lists_each_step_as_a_slurm_job(self, three_step: KitResult) -> None:
        run_dir = three_step.outcome.run_dir
        started = [e for e in _events(run_dir) if e["event"] == "started"]
        job_ids = sorted({str(e["slurm_job"]) for e in started if e.get("slurm_job")})
        assert len(job_ids) == CASES["three-step"].steps
        rows = _sacct(job_ids)
        assert sorted(r[0] for r in rows) == job_ids
        assert all(r[2] == "COMPLETED" and r[3] == "0:0" for r in rows), rows
        assert all(Path(r[4]) == run_dir / "work" for r in rows), rows

    def test_failed_step_is_a_failed_slurm_job(self, step_fails: KitResult) -> None:
        started = {str(e["token"]): e for e in _events(step_fails.outcome.run_dir)
                   if e["event"] == "started"}
        failed = [s for s in step_fails.outcome.record.steps if s.status is RunStatus.FAILED]
        assert [s.step for s in failed] == ["head"]
        slurm_job = started[str(failed[0].native_id)]["slurm_job"]
        assert slurm_job, "the failing step did not run as a Slurm job"
        assert any("Slurm job" in log.name for log in failed[0].logs)


# -- a scatter on Slurm, one Slurm job per part -------------------------------------------


SLURM_SCATTER_PARTS = 12


@pytest.mark.docker
@pytest.mark.slurm
@needs_slurm
def test_scatter_on_slurm_recorded_step_by_step(tmp_path: Path) -> None:
    # Twelve Slurm jobs show the per-job records as well as fifty did (the scale
    # itself is measured by benchmarks/overhead.py's 100-way scatter).
    parts = SLURM_SCATTER_PARTS
    spec = RequestSpec(
        workflow_dir=CWL / "scatter-50", main_workflow="workflow.cwl",
        inputs=(ValueInput("n", parts),), name=f"Scatter of {parts} jobs on Slurm",
        reviews=(ReviewAction(ReviewKind.CHECK_VALUE), ReviewAction(ReviewKind.VALIDATION_CHECK),
                 ReviewAction(ReviewKind.SIGN_OFF)),
    )
    crate = write_request_zip(spec, tmp_path / "scatter-request.zip", ZipLayout.FOLDER)
    config = tmp_path / "cratebridge.toml"
    config.write_text(f'[run]\nruns_dir = "{tmp_path / "runs"}"\ntimeout = "20m"\n\n'
                      + SLURM_TOML)
    began = time.monotonic()
    outcome = run(crate, tmp_path / "result", engine="toil", config=load_config(config))
    took = time.monotonic() - began
    print(f"scatter-{parts} on Slurm: {took:.0f}s for {len(outcome.record.steps)} step records")

    assert outcome.status is RunStatus.COMPLETED, outcome.record.error
    squares = [s for s in outcome.record.steps if s.step == "square"]
    assert len(squares) == parts
    assert len(outcome.record.steps) == parts + 1  # the split step, then the squares
    assert len({s.name for s in squares}) == parts
    for step in squares:
        assert step.container is not None and step.container.image == "cratebridge/busybox:1"
        assert step.container.image_id and step.container.image_id.startswith("sha256:")
        assert step.exit_code == 0 and step.status is RunStatus.COMPLETED
    # the result is a BagIt bag (the request was one): outputs under data/outputs/
    outputs = sorted((tmp_path / "result").rglob("outputs/part-*.squared.txt"))
    assert [int(p.read_text()) for p in outputs] == [n * n for n in range(1, parts + 1)]

    started = [e for e in _events(outcome.run_dir) if e["event"] == "started"]
    job_ids = sorted({str(e["slurm_job"]) for e in started if e.get("slurm_job")})
    assert len(job_ids) == parts + 1
    rows = _sacct(job_ids)
    assert len(rows) == parts + 1 and all(r[2] == "COMPLETED" for r in rows), rows


# -- a broker on each job's node ---------------------------------------------------------


class _NodeBrokers(EngineConformance):
    engine = "toil"
    workflows = CWL
    main_file = "workflow.cwl"
    config_toml = SLURM_TOML + '\n[slurm]\nbroker = "node"\n'


@pytest.mark.docker
@pytest.mark.slurm
@needs_slurm
def test_each_slurm_job_starts_its_containers_through_a_broker_on_its_node(
        tmp_path: Path) -> None:
    result = _NodeBrokers.run_case("three-step", tmp_path)
    outcome = result.outcome
    assert outcome.status is RunStatus.COMPLETED, outcome.record.error
    for name, content in CASES["three-step"].outputs.items():
        assert result.output(name).read_text() == content
    broker = outcome.run_dir / "broker"
    run_lines = [json.loads(line) for line in (broker / "ledger.jsonl").read_text().splitlines()]
    # the run's own broker submitted the jobs and started no container
    assert not [e for e in run_lines if "token" in e], run_lines
    submitted = {str(e["slurm_job"]) for e in run_lines if e.get("slurm_job")}
    started = {str(e["token"]): e for e in _events(outcome.run_dir) if e["event"] == "started"}
    steps = outcome.record.steps
    assert len(steps) == CASES["three-step"].steps
    for step in steps:
        job = str(started[str(step.native_id)]["slurm_job"])
        assert job in submitted
        # its container is in the ledger of the broker its own job started on its node
        node_ledger = broker / "nodes" / f"job-{job}" / "broker" / "ledger.jsonl"
        tokens = {json.loads(line).get("token") for line in node_ledger.read_text().splitlines()}
        assert step.native_id in tokens, (step.name, job)
        assert step.container is not None and step.container.image_id
        assert step.container.image_id.startswith("sha256:")
    assert not list(broker.glob("nodes/*/broker/docker.sock"))  # each job's broker ended
    left = subprocess.run(["docker", "ps", "-aq", "--filter",
                           f"label=org.cratebridge.run={outcome.run_dir.name}"],
                          capture_output=True, text=True, check=True)
    assert not left.stdout.split()


# -- two hosts: each job's containers on its own node's Docker ------------------------


TWO_HOST_PARTS = 6


@pytest.mark.docker
@pytest.mark.slurm
@needs_slurm
def test_a_scatter_over_two_hosts_starts_each_container_on_its_jobs_node(
        tmp_path: Path) -> None:
    """The partition ``twohosts`` (this host's node and a second node with its own name,
    Docker, /tmp and slurmd: scripts/start-second-node) with ``[slurm] broker = "node"``:
    the jobs spread over both nodes, and each step's container is created by its own
    node's Docker, under the token its record carries; none is left on either."""
    node = second_node()
    if not isinstance(node, SecondNode):
        pytest.skip(node)
    with shared_folder() as shared:  # where both nodes see the runs folder
        spec = RequestSpec(
            workflow_dir=CWL / "scatter-50", main_workflow="workflow.cwl",
            inputs=(ValueInput("n", TWO_HOST_PARTS),), name="A scatter over two hosts",
            reviews=(ReviewAction(ReviewKind.CHECK_VALUE), ReviewAction(ReviewKind.SIGN_OFF)))
        crate = write_request_zip(spec, tmp_path / "request.zip", ZipLayout.FOLDER)
        config = tmp_path / "cratebridge.toml"
        config.write_text(f'[run]\nruns_dir = "{shared / "runs"}"\ntimeout = "10m"\n\n'
                          f'{SLURM_TOML}slurm_partition = "{TWO_HOSTS}"\n\n'
                          '[slurm]\nbroker = "node"\n')
        began = time.time()
        outcome = run(crate, tmp_path / "result", engine="toil", config=load_config(config))
        assert outcome.status is RunStatus.COMPLETED, outcome.record.error
        run_id = outcome.run_dir.name

        started = {str(e["token"]): e for e in _events(outcome.run_dir)
                   if e["event"] == "started"}
        steps = outcome.record.steps
        assert len(steps) == TWO_HOST_PARTS + 1
        assert {str(s.native_id) for s in steps} == set(started)
        # where each step's Slurm job ran, as sacct says and as the step's event says
        nodes = job_nodes([str(e["slurm_job"]) for e in started.values()])
        hosts = {token: nodes[str(e["slurm_job"])] for token, e in started.items()}
        assert hosts == {token: e["host"] for token, e in started.items()}
        on_second = sorted(t for t in hosts if hosts[t] == node.name)
        on_first = sorted(t for t in hosts if hosts[t] != node.name)
        assert on_second and on_first, hosts  # LLN spreads the parts over both nodes
        # each container was created by the Docker of the node its job ran on, nowhere else
        for tokens, docker_host in ((on_second, node.docker_host), (on_first, None)):
            created = containers_created(run_id, began, docker_host)
            assert sorted(labels.get("org.cratebridge.step", "") for labels in created.values()) \
                == tokens
            assert not containers_left(run_id, docker_host)
        for step in steps:
            assert step.container is not None and step.container.image_id
            assert step.exit_code == 0 and step.status is RunStatus.COMPLETED
        outputs = sorted((tmp_path / "result").rglob("outputs/part-*.squared.txt"))
        assert [int(p.read_text()) for p in outputs] == [n * n for n in
                                                         range(1, TWO_HOST_PARTS + 1)]


# -- the operator's settings and the plan (no run) --------------------------------------


def test_settings_reject_unknown_keys() -> None:
    with pytest.raises(UsageError, match="batch_sytem"):
        ToilSettings.from_table({"batch_sytem": "slurm"})
    with pytest.raises(UsageError, match="args"):
        ToilSettings.from_table({"args": "--foo"})
    settings = ToilSettings.from_table({"batch_system": "slurm", "args": ["--maxJobs", "8"]})
    assert settings.batch_system == "slurm" and settings.args == ("--maxJobs", "8")


def test_scatter_position_read_from_toil_job_names() -> None:
    assert _scatter_index("workflow.cwl.count.count.cwl") is None
    assert _scatter_index("workflow.cwl.0.square.cwl") == 0
    assert _scatter_index("workflow.cwl.17.square.cwl") == 17


@pytest.mark.docker
def test_plan_shows_toil_command_and_batch_system(tmp_path: Path) -> None:
    crate = TestToilConformance.request(CASES["three-step"], tmp_path)
    config = tmp_path / "cratebridge.toml"
    config.write_text(f'[run]\nruns_dir = "{tmp_path / "runs"}"\n\n'
                      '[engines.toil]\nbatch_system = "slurm"\nslurm_partition = "debug"\n')
    outcome = plan(crate, engine="toil", config=load_config(config))
    command = list(outcome.plan.command)
    assert command[command.index("--batchSystem") + 1] == "slurm"
    assert command[command.index("--slurmPartition") + 1] == "debug"
    assert "--no-prepull" in command
    assert any("batch system: slurm" in note for note in outcome.plan.notes)

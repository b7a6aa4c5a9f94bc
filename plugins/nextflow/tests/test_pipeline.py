"""Nextflow crates through the whole pipeline: intake, plan, run, result crate, validator.

Each test runs against the stand-in and against a real ``nextflow`` (see conftest).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import WORKFLOWS, Validator

from cratebridge import pipeline
from cratebridge.config import Config
from cratebridge.engines.record import RunStatus
from cratebridge.testing import FileInput, RequestSpec, ValueInput, write_request_zip

pytestmark = pytest.mark.docker


def _request(tmp_path: Path, workflow: str, *inputs: FileInput | ValueInput) -> Path:
    spec = RequestSpec(workflow_dir=WORKFLOWS / workflow, main_workflow="main.nf",
                       inputs=tuple(inputs))
    return write_request_zip(spec, tmp_path / f"{workflow}-request.zip")


def _config(tmp_path: Path) -> Config:
    return Config(runs_dir=tmp_path / "runs")


def _graph(crate: Path) -> dict[str, dict[str, object]]:
    data = json.loads((crate / "ro-crate-metadata.json").read_text())
    return {e["@id"]: e for e in data["@graph"]}


def _crate_root(result: Path) -> Path:
    """The crate folder of a result (the payload of a BagIt result)."""
    return result / "data" if (result / "bagit.txt").is_file() else result


def _types(entity: dict[str, object]) -> list[str]:
    kind = entity.get("@type", [])
    return [kind] if isinstance(kind, str) else list(kind)  # type: ignore[arg-type]


def test_three_step_runs_and_records_every_task(nextflow: str, docker_up: bool,
                                                tmp_path: Path, validator: Validator) -> None:
    data = WORKFLOWS / "three-step" / "test" / "input.txt"
    crate = _request(tmp_path, "three-step", FileInput("data", data), ValueInput("repeat", 2))
    outcome = pipeline.run(crate, tmp_path / "result", engine="nextflow",
                           config=_config(tmp_path))
    record = outcome.record
    assert outcome.exit_code == 0, record.error
    report = next(o for o in record.outputs if o.path.name == "report.txt")
    assert report.path.read_text() == ("lines: 4\nwords: 10\nfirst lines:\n"
                                       "alpha beta gamma\ndelta epsilon\n")
    assert {o.path.name for o in record.outputs} == {"report.txt", "counts.txt"}
    assert sorted(s.step for s in record.steps) == ["COMBINE", "COUNT", "HEAD"]
    for step in record.steps:
        assert step.status is RunStatus.COMPLETED and step.exit_code == 0
        assert step.container is not None
        assert step.container.image == "cratebridge/python:3.11"
        assert step.container.image_id and step.container.image_id.startswith("sha256:")
        assert step.start_time is not None and step.end_time is not None
        assert step.tool == f"main.nf#{step.step}"
    combine = next(s for s in record.steps if s.step == "COMBINE")
    assert {i.parameter for i in combine.inputs} >= {"counts.txt", "head.txt"}
    assert [o.parameter for o in combine.outputs] == ["report.txt"]
    count = next(s for s in record.steps if s.step == "COUNT")
    assert [i.path.name for i in count.inputs] == ["input.txt"]

    result = _crate_root(outcome.result)
    inner = result / "provenance"
    graph = _graph(inner)
    runs = [e for e in graph.values() if "CreateAction" in _types(e)
            and str(e["@id"]).startswith("#step-run-")]
    assert len(runs) == 3
    assert all("containerImage" in r for r in runs)
    ok, output = validator(inner, "provenance-run-crate-0.5")
    assert ok, output
    ok, output = validator(result, "five-safes-crate")
    assert ok, output


def test_failed_task_fails_the_run_and_names_the_process(nextflow: str, docker_up: bool,
                                                         tmp_path: Path,
                                                         validator: Validator) -> None:
    data = WORKFLOWS / "step-fails" / "test" / "input.txt"
    crate = _request(tmp_path, "step-fails", FileInput("data", data), ValueInput("repeat", 2))
    outcome = pipeline.run(crate, tmp_path / "result", engine="nextflow",
                           config=_config(tmp_path))
    record = outcome.record
    assert outcome.exit_code == 1
    assert record.status is RunStatus.FAILED
    assert record.error and "HEAD" in record.error
    head = next(s for s in record.steps if s.step == "HEAD")
    assert head.status is RunStatus.FAILED and head.exit_code == 3
    err = next(log for log in head.logs if log.path.name == ".command.err")
    assert "CRATEBRIDGE_FIXTURE_FAILURE" in err.path.read_text()
    assert "CRATEBRIDGE_FIXTURE_FAILURE" in record.error
    assert not any(s.step == "COMBINE" and s.status is RunStatus.COMPLETED
                   for s in record.steps)
    ok, output = validator(_crate_root(outcome.result) / "provenance",
                           "provenance-run-crate-0.5")
    assert ok, output


def test_scalar_inputs_are_typed_by_the_schema(nextflow: str, docker_up: bool,
                                               tmp_path: Path) -> None:
    # count and ratio arrive as strings; nextflow_schema.json says integer and number
    crate = _request(tmp_path, "scalar-inputs", ValueInput("text", "hello crate"),
                     ValueInput("count", "42"), ValueInput("flag", True),
                     ValueInput("ratio", "0.25"))
    outcome = pipeline.run(crate, tmp_path / "result", engine="nextflow",
                           config=_config(tmp_path))
    assert outcome.exit_code == 0, outcome.record.error
    assert outcome.plan.parameters["count"] == 42
    assert outcome.plan.parameters["ratio"] == 0.25
    values = next(o for o in outcome.record.outputs if o.path.name == "values.txt")
    assert values.path.read_text() == "text=hello crate\ncount=42\nflag=true\nratio=0.25\n"

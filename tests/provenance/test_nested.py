"""Nested workflows and steps that did not run, from a synthetic record (no engine).

The engines' side is in plugins/cwl/tests/test_nested_provenance.py; this checks
what the builder makes of a record naming nested runs, whatever engine made it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from cratebridge.engines.record import PlannedStep, RunStatus, SubworkflowRecord

from .conftest import T0, Run, make_run
from .test_builder import _build, _graph, _ids, _types, _validate


def _nested(tmp_path: Path) -> Run:
    """``sort`` and ``count`` run inside ``sub.cwl`` at step ``first``; the same ``sub.cwl``
    at step ``again`` was skipped; ``report`` ran at the top."""
    run = make_run(tmp_path)
    sub = run.request.workflow.root / "sub.cwl"
    sub.write_text("cwlVersion: v1.2\nclass: Workflow\n")
    sort, count, report = run.record.steps
    steps = (replace(sort, step="first/sort"), replace(count, step="first/count"), report)
    planned = (
        PlannedStep("first", str(sub), 0, workflow=True),
        PlannedStep("first/sort", "tools/sort.cwl", 0),
        PlannedStep("first/count", "tools/count.cwl", 1),
        PlannedStep("again", str(sub), 1, workflow=True, condition="$(false)", skipped=True),
        PlannedStep("report", "report-tool", 2),
    )
    nested = SubworkflowRecord(
        step="first", name="first", tool=str(sub), status=RunStatus.COMPLETED,
        start_time=T0, end_time=sort.end_time, inputs=sort.inputs[:1],
        outputs=count.outputs)
    record = replace(run.record, steps=steps, planned=planned, subworkflows=(nested,))
    return replace(run, record=record)


def test_nested_workflow_described_once_for_the_step_that_ran(tmp_path: Path) -> None:
    graph = _graph(_build(_nested(tmp_path), tmp_path) / "provenance")
    main, sub = "workflow/main.cwl", "workflow/sub.cwl"
    assert _types(graph[sub]) == {"File", "SoftwareSourceCode", "ComputationalWorkflow", "HowTo"}
    assert _ids(graph[main]["step"]) == [f"{main}#step/first", f"{main}#step/again",
                                         f"{main}#step/report"]
    assert _ids(graph[main]["hasPart"]) == [sub, "#tool-report-tool"]
    assert _ids(graph[sub]["step"]) == [f"{sub}#step/sort", f"{sub}#step/count"]
    assert _ids(graph[f"{main}#step/again"]["workExample"]) == [sub]
    assert graph[f"{main}#step/again"]["description"] == "Runs only when $(false) is true"
    [control] = [e for e in graph.values() if e["@type"] == "ControlAction"
                 and _ids(e["instrument"]) == [f"{main}#step/first"]]
    [action] = _ids(control["object"])
    assert _ids(graph[action]["instrument"]) == [sub]
    assert not [e for e in graph.values() if _ids(e.get("instrument")) == [f"{main}#step/again"]]
    assert "step again was skipped" in graph["#workflow-run"]["description"]


def test_each_run_of_a_nested_workflow_says_which_of_its_steps_it_skipped(
        tmp_path: Path) -> None:
    """Two runs of ``first`` (scattered): ``count`` was skipped in the second only."""
    run = _nested(tmp_path)
    first = run.record.subworkflows[0]
    second = replace(first, name="first_2", skipped=("first/count",))
    graph = _graph(_build(replace(run, record=replace(
        run.record, subworkflows=(first, second))), tmp_path) / "provenance")
    actions = {e["name"]: e["description"] for e in graph.values()
               if str(e["@id"]).startswith("#subworkflow-run-")}
    note = "step first/count was skipped: its condition was false"
    assert note not in actions["Run of nested workflow first"]
    assert note in actions["Run of nested workflow first_2"]
    assert "first/count" not in graph["#workflow-run"]["description"]


@pytest.mark.validator
def test_nested_record_passes_the_provenance_profile(tmp_path: Path) -> None:
    crate = _build(_nested(tmp_path), tmp_path)
    done = _validate(crate / "provenance", "provenance-run-crate-0.5")
    assert done.returncode == 0, done.stdout + done.stderr


def test_nested_paths_without_the_workflows_shape_stay_steps_of_the_main(
        tmp_path: Path) -> None:
    run = _nested(tmp_path)
    run = replace(run, record=replace(run.record, planned=(), subworkflows=()))
    graph = _graph(_build(run, tmp_path) / "provenance")
    steps = [graph[i]["name"] for i in _ids(graph["workflow/main.cwl"]["step"])]
    assert steps == ["first/sort", "first/count", "report"]

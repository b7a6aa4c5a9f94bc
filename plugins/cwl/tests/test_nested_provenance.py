"""Nested CWL workflows and skipped steps, recorded alike by cwltool and Toil (issues 13, 14).

The ``nested`` fixture: step ``revsort`` runs a nested workflow (``revsort.cwl``:
``rev`` then ``sort``), step ``shout`` runs only ``when`` the input ``loud`` is
true; run with ``loud: false`` it is skipped. Each engine runs it through the
real pipeline (real Docker); the result crates are read entity by entity, must
be the same whatever the engine (times, the engine and its files aside), and
must pass provenance-run-crate-0.5 (nested crate) and five-safes-crate (outer
crate) with the real validator. The ``nested-values`` fixture checks the same of
a nested workflow whose outputs are values an ExpressionTool step made.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cratebridge.config import load_config
from cratebridge.engines.record import FileRecord, ParameterValue, RunRecord, RunStatus, StepRecord
from cratebridge.intake import IntakeLimits, open_crate
from cratebridge.pipeline import run
from cratebridge.testing.crates import (
    FileInput,
    RequestSpec,
    ReviewAction,
    ReviewKind,
    ValueInput,
    ZipLayout,
    write_request_zip,
)
from cratebridge.testing.kit import (
    FIVE_SAFES_PROFILE,
    KIT_PUBLISHER,
    PROVENANCE_PROFILE,
    KitResult,
    assert_recommended,
)
from cratebridge.testing.validator import ExternalValidator
from cratebridge_cwl.records import shape_path, with_nesting

REPO = Path(__file__).resolve().parents[3]
FIXTURE = REPO / "fixtures" / "workflows" / "cwl" / "nested"
ENGINES = ("cwltool", "toil")
DATA = "alpha\nbeta\ngamma\n"
SORTED = "ateb\nammag\nahpla\n"  # each line reversed, then sorted in reverse order

MAIN = "workflow/workflow.cwl"
SUB = "workflow/revsort.cwl"
REV, SORT, UPPER = "workflow/tools/rev.cwl", "workflow/tools/sort.cwl", "workflow/tools/upper.cwl"
COMPLETED = "http://schema.org/CompletedActionStatus"


def _run(engine: str, tmp: Path, fixture: Path, value: ValueInput) -> KitResult:
    (tmp / "data.txt").write_text(DATA)
    spec = RequestSpec(
        workflow_dir=fixture, main_workflow="workflow.cwl",
        inputs=(FileInput("data", tmp / "data.txt"), value),
        name=f"Nested workflow on {engine}",
        reviews=(ReviewAction(ReviewKind.CHECK_VALUE), ReviewAction(ReviewKind.VALIDATION_CHECK),
                 ReviewAction(ReviewKind.SIGN_OFF)),
    )
    crate = write_request_zip(spec, tmp / "request.zip", ZipLayout.FOLDER)
    config = tmp / "cratebridge.toml"
    config.write_text(f'[run]\nruns_dir = "{tmp / "runs"}"\ntimeout = "15m"\n\n'
                      + KIT_PUBLISHER)
    out = tmp / "result.zip"
    outcome = run(crate, out, engine=engine, config=load_config(config))
    opened = open_crate(out, tmp / "unpacked", IntakeLimits())
    metadata = json.loads((opened.root / "ro-crate-metadata.json").read_text())
    return KitResult(outcome, opened.root, metadata)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KitResult]:
    return {engine: _run(engine, tmp_path_factory.mktemp(f"nested-{engine}"), FIXTURE,
                         ValueInput("loud", False)) for engine in ENGINES}


@pytest.fixture(scope="module")
def validator() -> ExternalValidator:
    found = ExternalValidator.find()
    assert found is not None, "rocrate-validator and the shared profiles are part of the tests"
    return found


def _nested(result: KitResult) -> KitResult:
    """The result, whose engine recorded the workflow's nesting (both CWL engines do)."""
    assert result.outcome.record.planned, \
        f"{result.outcome.record.engine} handed no workflow shape to its record"
    return result


def _graph(result: KitResult) -> dict[str, dict[str, Any]]:
    _, metadata = result.provenance()
    return {str(e["@id"]): e for e in metadata["@graph"]}


def _ids(value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value] if value is not None else []
    return [str(item["@id"]) for item in items]


def _types(entity: dict[str, Any]) -> list[str]:
    kinds = entity.get("@type", [])
    return kinds if isinstance(kinds, list) else [kinds]


def _pointing(graph: dict[str, dict[str, Any]], prop: str, target: str) -> Iterator[
        dict[str, Any]]:
    return (e for e in graph.values() if target in _ids(e.get(prop)))


# -- the runs --------------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.parametrize("engine", ENGINES)
def test_completes_with_the_nested_workflows_output(results: dict[str, KitResult],
                                                    engine: str) -> None:
    result = results[engine]
    assert result.outcome.status is RunStatus.COMPLETED, result.outcome.record.error
    assert result.output("sorted.txt").read_text() == SORTED
    assert not list(result.crate.rglob("upper.txt"))


@pytest.mark.docker
@pytest.mark.parametrize("engine", ENGINES)
def test_record_names_steps_by_path_and_lists_what_did_not_run(
        results: dict[str, KitResult], engine: str) -> None:
    record = results[engine].outcome.record
    assert [s.step for s in record.steps] == ["revsort/rev", "revsort/sort"]
    record = _nested(results[engine]).outcome.record
    planned = {p.step: p for p in record.planned}
    assert list(planned) == ["revsort", "revsort/rev", "revsort/sort", "shout"]
    assert planned["revsort"].workflow and not planned["revsort/rev"].workflow
    assert [planned[p].position for p in planned] == [0, 0, 1, 1]
    assert planned["shout"].skipped and planned["shout"].condition == "$(inputs.loud)"
    assert not any(p.skipped for name, p in planned.items() if name != "shout")
    [nested] = record.subworkflows
    assert (nested.step, nested.status) == ("revsort", RunStatus.COMPLETED)
    assert nested.tool.endswith("/workflow/revsort.cwl")
    rev, sort = record.steps
    # it began when the engine began it (before its first job) and ended with its last job
    assert nested.start_time is not None and rev.start_time is not None
    assert rev.start_time - timedelta(seconds=30) < nested.start_time <= rev.start_time
    assert nested.end_time == sort.end_time
    assert [(v.parameter, Path(v.path).read_text()) for v in nested.inputs
            if isinstance(v, FileRecord)] == [("data", DATA)]
    assert [(v.parameter, Path(v.path).read_text()) for v in nested.outputs
            if isinstance(v, FileRecord)] == [("sorted", SORTED)]


# -- the result crate, entity by entity ------------------------------------------------


@pytest.mark.docker
@pytest.mark.parametrize("engine", ENGINES)
def test_nested_workflow_is_a_workflow_with_its_own_steps_and_tools(
        results: dict[str, KitResult], engine: str) -> None:
    graph = _graph(_nested(results[engine]))
    main, sub = graph[MAIN], graph[SUB]
    assert _ids(main["step"]) == [f"{MAIN}#step/revsort", f"{MAIN}#step/shout"]
    assert _ids(main["hasPart"]) == [SUB]  # shout's tool did not run
    assert _types(sub) == ["File", "SoftwareSourceCode", "ComputationalWorkflow", "HowTo"]
    assert sub["name"] == "revsort.cwl" and "sha512" in sub
    assert _ids(sub["step"]) == [f"{SUB}#step/rev", f"{SUB}#step/sort"]
    assert _ids(sub["hasPart"]) == [REV, SORT]
    assert _ids(sub["input"]) == [f"{SUB}#input/data"]
    assert _ids(sub["output"]) == [f"{SUB}#output/sorted"]
    for step_id, tool, position in ((f"{MAIN}#step/revsort", SUB, "0"),
                                    (f"{SUB}#step/rev", REV, "0"),
                                    (f"{SUB}#step/sort", SORT, "1")):
        step = graph[step_id]
        assert step["@type"] == "HowToStep" and step["position"] == position
        assert _ids(step["workExample"]) == [tool]
    assert SUB in _ids(graph["./"]["hasPart"])


@pytest.mark.docker
@pytest.mark.parametrize("engine", ENGINES)
def test_nested_run_is_an_action_orchestrated_by_the_outer_step(
        results: dict[str, KitResult], engine: str) -> None:
    graph = _graph(_nested(results[engine]))
    [action] = [e for e in _pointing(graph, "instrument", SUB) if e["@type"] == "CreateAction"]
    assert action["actionStatus"] == COMPLETED and action["startTime"] and action["endTime"]
    [data] = _ids(action["object"])
    [sorted_] = _ids(action["result"])
    assert f"{SUB}#input/data" in _ids(graph[data]["exampleOfWork"])
    assert f"{SUB}#output/sorted" in _ids(graph[sorted_]["exampleOfWork"])
    assert graph[sorted_]["sha512"] == graph["outputs/sorted.txt"]["sha512"]
    [control] = _pointing(graph, "object", action["@id"])
    assert control["@type"] == "ControlAction"
    assert _ids(control["instrument"]) == [f"{MAIN}#step/revsort"]
    assert control["@id"] in _ids(graph["#engine-run"]["object"])
    assert action["@id"] in _ids(graph["./"]["mentions"])


@pytest.mark.docker
@pytest.mark.parametrize("engine", ENGINES)
def test_inner_steps_run_the_nested_workflows_tools_under_its_steps(
        results: dict[str, KitResult], engine: str) -> None:
    graph = _graph(_nested(results[engine]))
    organized = _ids(graph["#engine-run"]["object"])
    for tool, step in ((REV, f"{SUB}#step/rev"), (SORT, f"{SUB}#step/sort")):
        [action] = _pointing(graph, "instrument", tool)
        assert action["@type"] == "CreateAction" and action["actionStatus"] == COMPLETED
        image = graph[_ids(action["containerImage"])[0]]
        assert image["name"] == "cratebridge/busybox" and image["tag"] == "1"
        [control] = _pointing(graph, "object", action["@id"])
        assert _ids(control["instrument"]) == [step] and control["@id"] in organized
    [rev] = _pointing(graph, "instrument", REV)
    [sort] = _pointing(graph, "instrument", SORT)
    assert _ids(rev["result"]) == _ids(sort["object"])  # rev's output is what sort read


@pytest.mark.docker
@pytest.mark.parametrize("engine", ENGINES)
def test_skipped_step_is_shown_with_no_action(results: dict[str, KitResult],
                                              engine: str) -> None:
    graph = _graph(_nested(results[engine]))
    step = graph[f"{MAIN}#step/shout"]
    assert step["@type"] == "HowToStep" and step["position"] == "1"
    assert _ids(step["workExample"]) == [UPPER]
    assert step["description"] == "Runs only when $(inputs.loud) is true"
    assert _types(graph[UPPER]) == ["File", "SoftwareSourceCode"]
    # Provenance Run Crate 0.5: the action of a skipped step is not included
    assert not list(_pointing(graph, "instrument", f"{MAIN}#step/shout"))
    assert not list(_pointing(graph, "instrument", UPPER))
    assert not [e for e in _pointing(graph, "hasPart", UPPER)
                if "ComputationalWorkflow" in _types(e)]
    run_action = graph["#workflow-run"]
    assert "step shout was skipped: its condition was false" in run_action["description"]


# -- the same crate whatever the engine -------------------------------------------------


#: What differs by engine and by run: times, the engine, and where each engine keeps files.
VOLATILE = {"startTime", "endTime", "datePublished", "softwareVersion", "url"}


def _canonical(graph: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The graph without times, logs and the engine; run files known by name and digest."""
    def run_file(entity_id: str) -> bool:
        entity = graph.get(entity_id, {})
        return entity_id.startswith(("work/", "broker/")) and "File" in _types(entity)

    def same(entity_id: str) -> str:
        if run_file(entity_id):
            return f"run file {graph[entity_id]['name']} {graph[entity_id]['sha512']}"
        return entity_id

    def value(item: Any) -> Any:
        if isinstance(item, list):
            return sorted((value(i) for i in item), key=json.dumps)
        if isinstance(item, dict) and set(item) == {"@id"}:
            return {"@id": same(item["@id"])}
        return item

    canonical = {}
    for entity_id, entity in graph.items():
        engine = entity.get("@type") == "SoftwareApplication" and entity_id.startswith("http")
        if "about" in entity or engine or entity_id in ("./", "ro-crate-metadata.json"):
            continue  # logs (Toil keeps more), the engine, the root listing them
        props = {k: value(v) for k, v in entity.items() if k not in VOLATILE | {"@id"}}
        if entity.get("@type") == "OrganizeAction":
            for key in ("name", "description", "instrument"):
                props.pop(key)
        canonical[same(entity_id)] = props
    return canonical


def _assert_same_on_both_engines(results: dict[str, KitResult]) -> None:
    """The nested run crates of both engines hold the same entities, ids and links."""
    cwltool, toil = (_canonical(_graph(_nested(results[e]))) for e in ENGINES)
    assert sorted(cwltool) == sorted(toil)
    for entity_id, entity in cwltool.items():
        assert entity == toil[entity_id], entity_id


@pytest.mark.docker
def test_same_entities_and_links_on_both_engines(results: dict[str, KitResult]) -> None:
    _assert_same_on_both_engines(results)


# -- the validator ---------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.validator
@pytest.mark.parametrize("engine", ENGINES)
def test_result_crates_pass_the_validator(results: dict[str, KitResult], engine: str,
                                          validator: ExternalValidator) -> None:
    result = _nested(results[engine])
    folder, _ = result.provenance()
    assert folder != result.crate
    assert_recommended(validator, folder, PROVENANCE_PROFILE)
    assert_recommended(validator, result.crate, FIVE_SAFES_PROFILE)


# -- a nested run whose outputs are values (issue 14) ----------------------------------

VALUES = REPO / "fixtures" / "workflows" / "cwl" / "nested-values"
COUNT, WC, PARSE = "workflow/count.cwl", "workflow/tools/wc.cwl", "workflow/tools/parse.cwl"
SUMMARY = "greek: 3 lines"


@pytest.fixture(scope="module")
def counted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KitResult]:
    return {engine: _run(engine, tmp_path_factory.mktemp(f"values-{engine}"), VALUES,
                         ValueInput("label", "greek")) for engine in ENGINES}


def _values(graph: dict[str, dict[str, Any]], action: dict[str, Any]) -> dict[str, Any]:
    """An action's results by the name of its instrument's parameter each is an example of."""
    [owner] = _ids(action["instrument"])
    found = {}
    for value_id in _ids(action.get("result")):
        value = graph[value_id]
        [param] = [p for p in _ids(value["exampleOfWork"]) if p.startswith(f"{owner}#")]
        found[graph[param]["name"]] = value.get("value", value_id)
    return found


@pytest.mark.docker
@pytest.mark.parametrize("engine", ENGINES)
def test_expression_step_and_nested_run_record_their_values(
        counted: dict[str, KitResult], engine: str) -> None:
    record = counted[engine].outcome.record
    assert record.status is RunStatus.COMPLETED, record.error
    assert [s.step for s in record.steps] == ["count/wc", "count/parse"]
    parse = record.steps[1]
    assert (parse.status, parse.container, parse.command) == (RunStatus.COMPLETED, None, ())
    assert set(parse.outputs) == {ParameterValue("lines", 3), ParameterValue("summary", SUMMARY)}
    [nested] = _nested(counted[engine]).outcome.record.subworkflows
    assert nested.status is RunStatus.COMPLETED
    # all values, no file: made by the ExpressionTool step, or its input passed through
    assert sorted(nested.outputs, key=str) == [
        ParameterValue("lines", 3), ParameterValue("named", "greek"),
        ParameterValue("summary", SUMMARY)]
    [wc_out] = record.steps[0].outputs
    assert isinstance(wc_out, FileRecord) and Path(wc_out.path).read_text().strip() == "3"


@pytest.mark.docker
@pytest.mark.parametrize("engine", ENGINES)
def test_nested_run_and_expression_step_have_results_in_the_crate(
        counted: dict[str, KitResult], engine: str) -> None:
    graph = _graph(_nested(counted[engine]))
    [run_] = [e for e in _pointing(graph, "instrument", COUNT) if e["@type"] == "CreateAction"]
    [parse] = _pointing(graph, "instrument", PARSE)
    [wc] = _pointing(graph, "instrument", WC)
    assert run_["actionStatus"] == parse["actionStatus"] == COMPLETED
    results = _values(graph, run_)
    assert results == {"lines": "3", "summary": SUMMARY, "named": "greek"}
    [counted_file] = _ids(wc["result"])
    assert "File" in _types(graph[counted_file])
    for name, kind in (("lines", "Integer"), ("summary", "Text"), ("named", "Text")):
        param = graph[f"{COUNT}#output/{name}"]
        assert (param["@type"], param["additionalType"]) == ("FormalParameter", kind)
        assert param["@id"] in _ids(graph[COUNT]["output"])
    # the ExpressionTool step: evaluated by the engine, in no container, read wc's file
    assert "containerImage" not in parse and _ids(parse["object"])[0] == counted_file
    assert _values(graph, parse) == {"lines": "3", "summary": SUMMARY}
    [control] = _pointing(graph, "object", parse["@id"])
    assert _ids(control["instrument"]) == [f"{COUNT}#step/parse"]
    assert _ids(graph[COUNT]["hasPart"]) == [WC, PARSE]
    assert _values(graph, graph["#workflow-run"]) == results


@pytest.mark.docker
def test_values_of_nested_runs_have_the_same_ids_on_both_engines(
        counted: dict[str, KitResult]) -> None:
    _assert_same_on_both_engines(counted)


@pytest.mark.docker
@pytest.mark.validator
@pytest.mark.parametrize("engine", ENGINES)
def test_completed_nested_run_with_values_has_a_result_for_the_validator(
        counted: dict[str, KitResult], engine: str, validator: ExternalValidator) -> None:
    folder, _ = _nested(counted[engine]).provenance()
    assert not [f for f in validator.findings(folder, PROVENANCE_PROFILE)
                if f.check == "process-run-crate-0.5_11.1"]
    assert_recommended(validator, folder, PROVENANCE_PROFILE)


# -- the record from a shape, without an engine (fast) -----------------------------------

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def _step(name: str, tool: str, inputs: dict[str, str] | None = None,
          when: str | None = None, workflow: dict[str, Any] | None = None) -> dict[str, Any]:
    shaped: dict[str, Any] = {
        "name": name, "tool": tool, "when": when,
        "in": {port: {"source": [src], "valueFrom": False}
               for port, src in (inputs or {}).items()}}
    if workflow is not None:
        shaped["workflow"] = workflow
    return shaped


#: top: ``late`` (listed first) needs ``outer``; ``outer`` runs ``mid.cwl``, whose
#: step ``inner`` runs ``leaf.cwl`` (``a`` then ``b``); ``maybe`` is conditional.
SHAPE = {
    "tool": "file:///w/main.cwl", "inputs": ["x", "flag"], "outputs": {"y": ["late/out"]},
    "steps": [
        _step("late", "file:///w/t/late.cwl", {"in": "outer/out"}),
        _step("outer", "file:///w/mid.cwl", {"x": "x"}, workflow={
            "tool": "file:///w/mid.cwl", "inputs": ["x"], "outputs": {"out": ["inner/out"]},
            "steps": [_step("inner", "file:///w/leaf.cwl", {"x": "x"}, workflow={
                "tool": "file:///w/leaf.cwl", "inputs": ["x"], "outputs": {"out": ["b/out"]},
                "steps": [_step("b", "file:///w/t/b.cwl", {"in": "a/out"}),
                          _step("a", "file:///w/t/a.cwl", {"in": "x"})]})]}),
        _step("maybe", "file:///w/t/maybe.cwl", {"flag": "flag"}, when="$(inputs.flag)"),
    ],
}


def _record(tmp_path: Path, steps: list[StepRecord], status: RunStatus,
            runs: dict[str, list[str]] | None = None,
            shape: dict[str, Any] = SHAPE, entered: tuple[dict[str, Any], ...] = ()
            ) -> RunRecord:
    """``steps`` through :func:`with_nesting`; ``runs``: the nested runs of each step's job;
    ``entered``: the driver's events for runs of nested workflows."""
    events = tmp_path / "events.jsonl"
    shape_path(events).write_text(json.dumps(shape))
    record = RunRecord(engine="fake", engine_version=None, status=status, start_time=T0,
                       end_time=T0 + timedelta(minutes=1), steps=tuple(steps))
    started = [{"event": "started", "token": token, "runs": keys}
               for token, keys in (runs or {}).items()]
    return with_nesting(record, events, [*started, *entered])


def test_nested_runs_that_ran_no_job_are_runs(tmp_path: Path) -> None:
    """``outer`` and its ``inner`` began (the driver says so) and every step of ``inner``
    was skipped: both are runs, timed from when they began, and ``inner`` skipped
    its steps; where the driver says nothing, nothing ran."""
    shape = copy.deepcopy(SHAPE)
    leaf = shape["steps"][1]["workflow"]["steps"][0]["workflow"]
    for step in leaf["steps"]:
        step["when"] = "$(false)"
    began = T0 + timedelta(seconds=3)
    entered = ({"event": "entered", "step": "outer", "runs": ["o"], "time": T0.isoformat()},
               {"event": "entered", "step": "outer/inner", "runs": ["o", "i"],
                "time": began.isoformat()})
    record = _record(tmp_path, [_ran("late", 8, token="late")], RunStatus.COMPLETED,
                     {"late": []}, shape, entered)
    outer, inner = record.subworkflows
    assert (outer.step, inner.step) == ("outer", "outer/inner")
    assert inner.skipped == ("outer/inner/b", "outer/inner/a")  # as the shape lists them
    assert (inner.start_time, inner.end_time) == (began, began)
    assert (outer.start_time, outer.end_time) == (T0, began)
    assert outer.status is inner.status is RunStatus.COMPLETED
    planned = {p.step: p.skipped for p in record.planned}
    assert planned["outer/inner/a"] and planned["outer/inner/b"] and not planned["outer"]
    # without the events: no run of either (nothing says they began)
    assert _record(tmp_path, [_ran("late", 8, token="late")], RunStatus.COMPLETED,
                   {"late": []}, shape).subworkflows == ()


def _ran(step: str, at: int, status: RunStatus = RunStatus.COMPLETED,
         inputs: tuple[Any, ...] = (), outputs: tuple[Any, ...] = (),
         token: str | None = None) -> StepRecord:
    return StepRecord(step=step, name=step.rsplit("/", 1)[-1], tool=f"file:///w/t/{step}.cwl",
                      status=status, start_time=T0 + timedelta(seconds=at),
                      end_time=T0 + timedelta(seconds=at + 1), exit_code=0, container=None,
                      inputs=inputs, outputs=outputs, native_id=token)


def test_a_scattered_nested_workflow_has_a_run_per_position(tmp_path: Path) -> None:
    """``outer`` ran twice (say, scattered): each run has its own steps, values and times."""
    def file(name: str, port: str) -> FileRecord:
        return FileRecord(tmp_path / name, port)

    steps = [  # the second run started first: runs are named in the order they started
        _ran("outer/inner/a", 10, inputs=(file("x1", "in"),), outputs=(file("a1", "out"),),
             token="a1"),
        _ran("outer/inner/a", 0, inputs=(file("x2", "in"),), outputs=(file("a2", "out"),),
             token="a2"),
        _ran("outer/inner/b", 3, RunStatus.FAILED, inputs=(file("a2", "in"),), token="b2"),
        _ran("outer/inner/b", 12, inputs=(file("a1", "in"),), outputs=(file("b1", "out"),),
             token="b1"),
        _ran("late", 20, token="late")]
    runs = {"a1": ["o1", "i1"], "b1": ["o1", "i1"], "a2": ["o2", "i2"], "b2": ["o2", "i2"],
            "late": []}
    record = _record(tmp_path, steps, RunStatus.FAILED, runs)
    seen = [(r.step, r.name, r.status.value, r.start_time, r.end_time, r.inputs, r.outputs)
            for r in record.subworkflows]
    at = [T0 + timedelta(seconds=s) for s in (0, 4, 10, 13)]
    failed, completed = RunStatus.FAILED.value, RunStatus.COMPLETED.value
    assert seen == [
        ("outer", "outer", failed, at[0], at[1], (file("x2", "x"),), ()),
        ("outer", "outer_2", completed, at[2], at[3], (file("x1", "x"),), (file("b1", "out"),)),
        ("outer/inner", "inner", failed, at[0], at[1], (file("x2", "x"),), ()),
        ("outer/inner", "inner_2", completed, at[2], at[3], (file("x1", "x"),),
         (file("b1", "out"),))]
    assert record.subworkflows[0].error == "Nested workflow outer failed: step(s) b failed"
    # without the engine's word on runs, one run of each, as before
    merged = _record(tmp_path, steps, RunStatus.FAILED)
    assert [(r.step, r.name, r.start_time, r.end_time) for r in merged.subworkflows] == [
        ("outer", "outer", at[0], at[3]), ("outer/inner", "inner", at[0], at[3])]


def test_runs_are_named_by_their_scatter_positions_when_the_engine_gives_them(
        tmp_path: Path) -> None:
    """The run at position 1 started first (a parallel engine): still ``outer_2``."""
    steps = [_ran("outer/inner/a", 0, token="a1"), _ran("outer/inner/b", 1, token="b1"),
             _ran("outer/inner/a", 5, token="a0"), _ran("outer/inner/b", 6, token="b0")]
    runs = {"a1": ["1:o", ":i1"], "b1": ["1:o", ":i1"], "a0": ["0:p", ":i0"],
            "b0": ["0:p", ":i0"]}
    record = _record(tmp_path, steps, RunStatus.COMPLETED, runs)
    assert [(r.name, r.start_time) for r in record.subworkflows] == [
        ("outer", T0 + timedelta(seconds=5)), ("outer_2", T0),
        ("inner", T0 + timedelta(seconds=5)), ("inner_2", T0)]
    # the jobs too, in the workflow's order: each run's steps by their positions (a
    # before b), the runs by theirs; the crate numbers its actions so
    assert [s.native_id for s in record.steps] == ["a0", "b0", "a1", "b1"]


def test_a_step_skipped_in_one_run_of_a_scattered_nested_workflow_is_skipped_there(
        tmp_path: Path) -> None:
    """``inner`` has a step ``c`` with a condition: it ran in the first run only."""
    shape = copy.deepcopy(SHAPE)
    leaf = shape["steps"][1]["workflow"]["steps"][0]["workflow"]
    leaf["steps"].append(_step("c", "file:///w/t/c.cwl", {"in": "x"}, when="$(inputs.in)"))
    steps = [_ran("outer/inner/a", 0, token="a1"), _ran("outer/inner/c", 1, token="c1"),
             _ran("outer/inner/b", 2, token="b1"), _ran("outer/inner/a", 4, token="a2"),
             _ran("outer/inner/b", 6, token="b2"), _ran("late", 8, token="late")]
    runs = {"a1": ["o1", "i1"], "c1": ["o1", "i1"], "b1": ["o1", "i1"],
            "a2": ["o2", "i2"], "b2": ["o2", "i2"], "late": []}
    record = _record(tmp_path, steps, RunStatus.COMPLETED, runs, shape)
    assert [(r.name, r.skipped) for r in record.subworkflows] == [
        ("outer", ()), ("outer_2", ()), ("inner", ()), ("inner_2", ("outer/inner/c",))]
    (c,) = [p for p in record.planned if p.step == "outer/inner/c"]
    assert c.condition == "$(inputs.in)" and not c.skipped  # it ran in one run
    # a run that failed may have stopped before the step: none says it was skipped
    failed = _record(tmp_path, steps[:-1], RunStatus.FAILED, runs, shape)
    assert all(r.skipped == () for r in failed.subworkflows)


def test_shape_gives_every_step_by_path_with_positions(tmp_path: Path) -> None:
    a_out, b_out = FileRecord(tmp_path / "a.txt", "out"), FileRecord(tmp_path / "b.txt", "out")
    steps = [_ran("outer/inner/a", 0, inputs=(FileRecord(tmp_path / "x.txt", "in"),
                                              ParameterValue("n", 3)), outputs=(a_out,)),
             _ran("outer/inner/b", 2, inputs=(FileRecord(a_out.path, "in"),), outputs=(b_out,)),
             _ran("late", 4)]
    record = _record(tmp_path, steps, RunStatus.COMPLETED)
    planned = [(p.step, p.position, p.workflow, p.skipped) for p in record.planned]
    # a step after those it needs, ties by name; a nested workflow's steps after its step
    assert planned == [("maybe", 0, False, True), ("outer", 1, True, False),
                       ("outer/inner", 0, True, False), ("outer/inner/a", 0, False, False),
                       ("outer/inner/b", 1, False, False), ("late", 2, False, False)]
    outer, inner = record.subworkflows
    assert (outer.step, inner.step) == ("outer", "outer/inner")
    assert inner.tool == "file:///w/leaf.cwl" and inner.status is RunStatus.COMPLETED
    assert (inner.start_time, inner.end_time) == (steps[0].start_time, steps[1].end_time)
    # what a read straight from leaf's input x, and what b wrote to leaf's output
    assert inner.inputs == (FileRecord(tmp_path / "x.txt", "x"),)
    assert inner.outputs == (FileRecord(b_out.path, "out"),)
    assert outer.inputs == inner.inputs and outer.outputs == inner.outputs


def test_failed_run_says_which_nested_run_failed_and_skips_nothing(tmp_path: Path) -> None:
    steps = [_ran("outer/inner/a", 0, RunStatus.FAILED)]
    record = _record(tmp_path, steps, RunStatus.FAILED)
    assert not any(p.skipped for p in record.planned)  # maybe was perhaps never reached
    assert "late" in {p.step for p in record.planned}
    outer, inner = record.subworkflows
    assert inner.status is outer.status is RunStatus.FAILED
    assert inner.error == "Nested workflow outer/inner failed: step(s) a failed"
    assert outer.error == "Nested workflow outer failed: step(s) a failed"


def test_nested_run_cut_short_by_a_failed_run_failed(tmp_path: Path) -> None:
    record = _record(tmp_path, [_ran("outer/inner/a", 0)], RunStatus.FAILED)
    outer, inner = record.subworkflows
    assert inner.status is outer.status is RunStatus.FAILED
    assert inner.error == "Nested workflow outer/inner did not finish: step(s) b did not run"
    assert outer.error == "Nested workflow outer failed: nested workflow(s) inner failed"


def test_steps_of_a_nested_workflow_that_did_not_run_are_not_listed(tmp_path: Path) -> None:
    record = _record(tmp_path, [], RunStatus.FAILED)
    assert [p.step for p in record.planned] == ["maybe", "outer", "late"]
    assert record.subworkflows == ()


def test_without_a_shape_that_reads_the_record_is_unchanged(tmp_path: Path) -> None:
    record = RunRecord(engine="fake", engine_version=None, status=RunStatus.COMPLETED,
                       start_time=T0, end_time=T0, steps=(_ran("a", 0),))
    events = tmp_path / "events.jsonl"
    assert with_nesting(record, events) is record
    for broken in ("{", '{"steps": [{"tool": "t"}]}', '{"steps": [1]}'):
        shape_path(events).write_text(broken)
        assert with_nesting(record, events) is record

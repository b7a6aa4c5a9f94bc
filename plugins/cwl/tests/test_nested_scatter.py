"""A scattered nested workflow: a run of it per word, its jobs named alike by both engines.

The ``nested-scatter`` fixture's step ``sayrev`` runs a nested workflow (``say``
then ``rev``, and ``shout`` only for the word ``beta``) once per word. cwltool
names the jobs of those runs ``say``, ``say_2``, ``say_3`` in the order of the
scatter's positions; Toil's job names carry no position for them, so the Toil
records are named from the positions the driver noted on each run, whichever
run Toil started first. Each run of the nested workflow is recorded apart, with
its own word and reversed file, and the steps it skipped (issue 13). The same
holds one level down (``deep.cwl``: a scatter of the scattered workflow). Each
engine runs the fixture through the real pipeline (real Docker).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from cratebridge.config import load_config
from cratebridge.containers.sandbox import STEP_LABEL
from cratebridge.engines.record import FileRecord, ParameterValue, RunStatus
from cratebridge.intake import IntakeLimits, open_crate
from cratebridge.pipeline import RunOutcome, run
from cratebridge.testing.crates import RequestSpec, ValueInput, ZipLayout, write_request_zip
from cratebridge.testing.kit import KIT_PUBLISHER
from cratebridge_cwl.toil_records import _unique_names

REPO = Path(__file__).resolve().parents[3]
FIXTURE = REPO / "fixtures" / "workflows" / "cwl" / "nested-scatter"
ENGINES = ("cwltool", "toil")
WORDS = ["alpha", "beta", "gamma"]


def _run(engine: str, tmp: Path, main: str = "workflow.cwl",
         value: ValueInput | None = None) -> tuple[RunOutcome, list[dict[str, Any]]]:
    folder = FIXTURE
    if main != "workflow.cwl":  # the same folder, another entry point as its mainEntity
        folder = tmp / "workflow"
        shutil.copytree(FIXTURE, folder)
        metadata = folder / "ro-crate-metadata.json"
        graph = json.loads(metadata.read_text())
        (root,) = [e for e in graph["@graph"] if e["@id"] == "./"]
        root["mainEntity"] = {"@id": main}
        metadata.write_text(json.dumps(graph))
    spec = RequestSpec(workflow_dir=folder, main_workflow=main,
                       inputs=(value or ValueInput("words", WORDS),),
                       name=f"Scattered nested workflow on {engine}")
    crate = write_request_zip(spec, tmp / "request.zip", ZipLayout.FOLDER)
    config = tmp / "cratebridge.toml"
    config.write_text(f'[run]\nruns_dir = "{tmp / "runs"}"\ntimeout = "15m"\n\n'
                      + KIT_PUBLISHER)
    outcome = run(crate, tmp / "result.zip", engine=engine, config=load_config(config))
    opened = open_crate(tmp / "result.zip", tmp / "unpacked", IntakeLimits())
    graph = json.loads((opened.root / "provenance" / "ro-crate-metadata.json").read_text())
    return outcome, graph["@graph"]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[
        str, tuple[RunOutcome, list[dict[str, Any]]]]:
    return {engine: _run(engine, tmp_path_factory.mktemp(f"nested-scatter-{engine}"))
            for engine in ENGINES}


@pytest.mark.docker
@pytest.mark.parametrize("engine", ENGINES)
def test_each_word_is_said_and_reversed(
        results: dict[str, tuple[RunOutcome, list[dict[str, Any]]]], engine: str) -> None:
    outcome, _ = results[engine]
    assert outcome.status is RunStatus.COMPLETED, outcome.record.error
    reversed_words = sorted(o.path.read_text().strip() for o in outcome.record.outputs
                            if isinstance(o, FileRecord))
    assert reversed_words == sorted(word[::-1] for word in WORDS)


@pytest.mark.docker
def test_the_jobs_of_the_nested_runs_are_named_alike_on_both_engines(
        results: dict[str, tuple[RunOutcome, list[dict[str, Any]]]]) -> None:
    expected = sorted([*((f"sayrev/{step}", step + suffix)
                         for step in ("say", "rev") for suffix in ("", "_2", "_3")),
                       ("sayrev/shout", "shout")])
    for engine in ENGINES:
        outcome, graph = results[engine]
        assert sorted((s.step, s.name) for s in outcome.record.steps) == expected, engine
        # named in the order of the scatter's positions, whichever ran first
        said = {s.name: v.value for s in outcome.record.steps if s.step == "sayrev/say"
                for v in s.inputs if isinstance(v, ParameterValue)}
        assert said == {"say": "alpha", "say_2": "beta", "say_3": "gamma"}, engine
        runs = {r.name: v.value for r in outcome.record.subworkflows
                for v in r.inputs if isinstance(v, ParameterValue)}
        assert runs == {"sayrev": "alpha", "sayrev_2": "beta", "sayrev_3": "gamma"}, engine
        # the crate's step actions carry those names, once each
        actions = [e["name"] for e in graph
                   if e["@type"] == "CreateAction" and str(e["@id"]).startswith("#step-run-")]
        assert sorted(actions) == sorted(f"Run of step {name}" for _, name in expected), engine
    # and the crate's actions have the same ids on both: numbered in the workflow's order
    ids = {engine: {e["@id"]: e["name"] for e in results[engine][1]
                    if str(e["@id"]).startswith(("#step-run-", "#subworkflow-run-"))}
           for engine in ENGINES}
    assert ids["cwltool"] == ids["toil"]
    assert ids["cwltool"]["#step-run-0"] == "Run of step say"
    assert ids["cwltool"]["#step-run-1"] == "Run of step rev"
    assert ids["cwltool"]["#subworkflow-run-1"] == "Run of nested workflow sayrev_2"


@pytest.mark.docker
@pytest.mark.parametrize("engine", ENGINES)
def test_each_run_of_the_nested_workflow_has_its_own_word_and_output(
        results: dict[str, tuple[RunOutcome, list[dict[str, Any]]]], engine: str) -> None:
    outcome, graph = results[engine]
    runs = outcome.record.subworkflows
    assert sorted(r.name for r in runs) == ["sayrev", "sayrev_2", "sayrev_3"]
    said = {}
    for nested in runs:
        (word,) = [v.value for v in nested.inputs if isinstance(v, ParameterValue)]
        (out,) = [v for v in nested.outputs if isinstance(v, FileRecord)]
        assert (nested.step, nested.status, out.parameter) == (
            "sayrev", RunStatus.COMPLETED, "reversed"), nested
        said[word] = out.path.read_text().strip()
        # it began before the rev job that wrote its output and ends with its last job:
        # that rev job, or (for beta) shout when it ended later
        (rev,) = [s for s in outcome.record.steps if s.step == "sayrev/rev"
                  and out.path in [o.path for o in s.outputs]]
        last = [rev, *(s for s in outcome.record.steps if s.step == "sayrev/shout")] \
            if word == "beta" else [rev]
        assert nested.end_time == max(s.end_time for s in last if s.end_time), (nested, rev)
        assert nested.start_time is not None and nested.start_time < rev.start_time
    assert said == {word: word[::-1] for word in WORDS}
    # in the crate: an action per run, each with its word and its reversed file
    by_id = {e["@id"]: e for e in graph}
    actions = [e for e in graph if str(e["@id"]).startswith("#subworkflow-run-")]
    crated = {}
    for action in actions:
        (word,) = [by_id[o["@id"]]["value"] for o in _listed(action["object"])]
        (result,) = [by_id[r["@id"]] for r in _listed(action["result"])]
        crated[action["name"].removeprefix("Run of nested workflow ")] = (word, result["@type"])
    assert sorted(crated) == ["sayrev", "sayrev_2", "sayrev_3"]
    assert sorted(word for word, _ in crated.values()) == sorted(WORDS)
    assert {kind for _, kind in crated.values()} == {"File"}


@pytest.mark.docker
@pytest.mark.parametrize("engine", ENGINES)
def test_a_step_skipped_in_some_runs_is_skipped_in_those_runs_only(
        results: dict[str, tuple[RunOutcome, list[dict[str, Any]]]], engine: str) -> None:
    """``shout`` runs only for ``beta``: each run of the nested workflow says whether it
    was skipped there, in the record and on that run's action in the crate."""
    outcome, graph = results[engine]
    skipped = {}
    for nested in outcome.record.subworkflows:
        (word,) = [v.value for v in nested.inputs if isinstance(v, ParameterValue)]
        skipped[word] = nested.skipped
    assert skipped == {"alpha": ("sayrev/shout",), "beta": (), "gamma": ("sayrev/shout",)}
    (shout,) = [s for s in outcome.record.steps if s.step == "sayrev/shout"]
    assert [v.value for v in shout.inputs if isinstance(v, ParameterValue)] == ["beta"]
    # it ran in one run: the workflow's step is not skipped as a whole
    (planned,) = [p for p in outcome.record.planned if p.step == "sayrev/shout"]
    assert not planned.skipped and planned.condition == '$(inputs.word == "beta")'
    by_id = {e["@id"]: e for e in graph}
    noted = {}
    for action in graph:
        if str(action["@id"]).startswith("#subworkflow-run-"):
            (word,) = [by_id[o["@id"]]["value"] for o in _listed(action["object"])]
            noted[word] = "step sayrev/shout was skipped: its condition was false" \
                in action["description"]
    assert noted == {"alpha": True, "beta": False, "gamma": True}
    assert "skipped" not in by_id["#workflow-run"]["description"]


@pytest.fixture(scope="module")
def deep_results(tmp_path_factory: pytest.TempPathFactory) -> dict[
        str, tuple[RunOutcome, list[dict[str, Any]]]]:
    groups = ValueInput("groups", [["alpha", "beta"], ["gamma"]])
    return {engine: _run(engine, tmp_path_factory.mktemp(f"deep-scatter-{engine}"),
                         "deep.cwl", groups)
            for engine in ENGINES}


@pytest.mark.docker
def test_a_scatter_inside_a_scattered_nested_workflow_is_named_alike_on_both_engines(
        deep_results: dict[str, tuple[RunOutcome, list[dict[str, Any]]]]) -> None:
    """``deep.cwl`` scatters ``workflow.cwl`` (which scatters ``sayrev.cwl``) over two
    groups of words: the runs of both levels, and their jobs, are named by position
    in the scatters, and the crate's ids are the same on both engines."""
    for engine in ENGINES:
        outcome, _ = deep_results[engine]
        assert outcome.status is RunStatus.COMPLETED, (engine, outcome.record.error)
        said = {s.name: [v.value for v in s.inputs if isinstance(v, ParameterValue)]
                for s in outcome.record.steps if s.step == "group/sayrev/say"}
        assert said == {"say": ["alpha"], "say_2": ["beta"], "say_3": ["gamma"]}, engine
        runs = {(r.step, r.name): [v.value for v in r.inputs if isinstance(v, ParameterValue)]
                for r in outcome.record.subworkflows}
        assert runs == {("group", "group"): ["alpha", "beta"], ("group", "group_2"): ["gamma"],
                        ("group/sayrev", "sayrev"): ["alpha"],
                        ("group/sayrev", "sayrev_2"): ["beta"],
                        ("group/sayrev", "sayrev_3"): ["gamma"]}, engine
    ids = {engine: {e["@id"]: e["name"] for e in deep_results[engine][1]
                    if str(e["@id"]).startswith(("#step-run-", "#subworkflow-run-"))}
           for engine in ENGINES}
    assert ids["cwltool"] == ids["toil"]
    actions = [i for i in ids["cwltool"] if not i.endswith("-exit-code")]
    assert len(actions) == 7 + 5  # seven jobs, five nested runs


@pytest.fixture(scope="module")
def quiet_results(tmp_path_factory: pytest.TempPathFactory) -> dict[
        str, tuple[RunOutcome, list[dict[str, Any]]]]:
    return {engine: _run(engine, tmp_path_factory.mktemp(f"quiet-{engine}"), "quiet.cwl")
            for engine in ENGINES}


@pytest.mark.docker
@pytest.mark.parametrize("engine", ENGINES)
def test_a_nested_run_whose_every_step_was_skipped_is_a_run(
        quiet_results: dict[str, tuple[RunOutcome, list[dict[str, Any]]]],
        engine: str) -> None:
    """``quiet.cwl`` scatters ``shouting.cwl``, whose one step runs only for ``beta``:
    the runs for alpha and gamma ran no job, and are still runs of the nested
    workflow, each with its action, saying its step was skipped there."""
    outcome, graph = quiet_results[engine]
    assert outcome.status is RunStatus.COMPLETED, outcome.record.error
    assert [(s.step, s.name) for s in outcome.record.steps] == [("shouting/shout", "shout")]
    runs = [(r.name, r.status, r.skipped) for r in outcome.record.subworkflows]
    assert runs == [("shouting", RunStatus.COMPLETED, ("shouting/shout",)),
                    ("shouting_2", RunStatus.COMPLETED, ()),
                    ("shouting_3", RunStatus.COMPLETED, ("shouting/shout",))], engine
    for nested in outcome.record.subworkflows:  # the engine said when each began
        assert nested.start_time is not None and nested.end_time is not None, nested
    (planned,) = [p for p in outcome.record.planned if p.step == "shouting/shout"]
    assert not planned.skipped  # it ran in one run
    by_id = {e["@id"]: e for e in graph}
    actions = {e["name"]: e for e in graph if str(e["@id"]).startswith("#subworkflow-run-")}
    assert sorted(actions) == [f"Run of nested workflow shouting{n}"
                               for n in ("", "_2", "_3")]
    quiet = actions["Run of nested workflow shouting"]
    assert "step shouting/shout was skipped: its condition was false" in quiet["description"]
    assert quiet["actionStatus"] == "http://schema.org/CompletedActionStatus"
    workflow = by_id[quiet["instrument"]["@id"]]
    assert "ComputationalWorkflow" in workflow["@type"]
    # each run is orchestrated by a control action of the step that ran it
    controls = [e for e in graph if e["@type"] == "ControlAction"
                and str(e["@id"]).startswith("#subworkflow-control-")]
    assert sorted(by_id[c["object"]["@id"]]["name"] for c in controls) == sorted(actions)


@pytest.mark.docker
def test_the_quiet_runs_have_the_same_ids_on_both_engines(
        quiet_results: dict[str, tuple[RunOutcome, list[dict[str, Any]]]]) -> None:
    ids = {engine: {e["@id"]: e["name"] for e in quiet_results[engine][1]
                    if str(e["@id"]).startswith(("#step-run-", "#subworkflow-run-"))}
           for engine in ENGINES}
    assert ids["cwltool"] == ids["toil"]


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


@pytest.mark.docker
def test_each_toil_job_has_the_worker_log_that_ran_it(
        results: dict[str, tuple[RunOutcome, list[dict[str, Any]]]]) -> None:
    """Toil numbers the logs of same-named jobs: a log is told by the token it shows."""
    outcome, _ = results["toil"]
    for step in outcome.record.steps:
        [log] = [log.path for log in step.logs if "Toil worker log" in log.name]
        assert f"{STEP_LABEL}={step.native_id}" in log.read_text(), (step.name, log)
        # Toil names a log workflow.cwl.STEP.tool.cwl_N.log (shout runs say.cwl)
        assert f".cwl.{step.step.rpartition('/')[2]}." in log.name, (step.name, log)
    assert len({log.path for s in outcome.record.steps for log in s.logs}) == len(
        [log for s in outcome.record.steps for log in s.logs]), "a log given to two jobs"


def test_names_are_made_unique_in_the_order_the_jobs_started() -> None:
    def started(token: str, name: str, second: int) -> dict[str, Any]:
        return {"event": "started", "token": token, "name": name,
                "time": f"2026-12-03T10:00:{second:02d}+00:00"}

    events = [started("b", "say", 2), started("a", "say", 1), started("c", "say_2", 3),
              started("d", "square_2", 4), started("e", "say", 5),
              {"event": "finished", "token": "b", "name": "say"}]
    named = {(e["event"], e["token"]): e["name"] for e in _unique_names(events)}
    assert named == {("started", "a"): "say", ("started", "b"): "say_2",
                     ("started", "c"): "say_2_2", ("started", "d"): "square_2",
                     ("started", "e"): "say_3", ("finished", "b"): "say_2"}
    # in the runs of a scattered nested workflow: by the runs' positions, as cwltool
    in_runs = [{**started("x", "say", 1), "runs": ["2:r"]},
               {**started("y", "say", 2), "runs": ["0:p"]},
               {**started("z", "say", 3), "runs": ["1:q"]}]
    assert [(e["token"], e["name"]) for e in _unique_names(in_runs)] == [
        ("x", "say_3"), ("y", "say"), ("z", "say_2")]

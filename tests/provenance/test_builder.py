"""The result crate: structure, files on disk, and the real validator."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from cratebridge.engines.record import ContainerRecord, FileRecord, RunStatus, StepRecord
from cratebridge.intake.request import CrateKind
from cratebridge.provenance import build_result_crate
from cratebridge.testing.validator import find_shared_dir

from .conftest import AGENT, SHA_A, T0, Run, make_run

VALIDATOR = Path(sys.executable).parent / "rocrate-validator"
PROFILES = (find_shared_dir() or Path("/nonexistent")) / "validator-profiles"


def _build(run: Run, tmp_path: Path, name: str = "result") -> Path:
    return build_result_crate(
        run.request, run.record, run_dir=run.run_dir, dest=tmp_path / name, plan=run.plan
    )


def _graph(crate: Path) -> dict[str, dict[str, Any]]:
    document = json.loads((crate / "ro-crate-metadata.json").read_text())
    return {node["@id"]: node for node in document["@graph"]}


def _ids(value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value] if value else []
    return [item["@id"] for item in items]


def _types(node: dict[str, Any]) -> set[str]:
    value = node.get("@type", [])
    return {value} if isinstance(value, str) else set(value)


def _validate(crate: Path, profile: str) -> subprocess.CompletedProcess[str]:
    command = [
        str(VALIDATOR),
        "-y",
        "validate",
        "--offline",
        "-p",
        profile,
        "--requirement-severity",
        "REQUIRED",
        "--no-paging",
        str(crate),
    ]
    if profile == "five-safes-crate":
        command[4:4] = ["--extra-profiles-path", str(PROFILES)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.mark.validator
@pytest.mark.parametrize("failed", [False, True], ids=["completed", "failed"])
def test_five_safes_result_passes_both_profiles(tmp_path: Path, failed: bool) -> None:
    crate = _build(make_run(tmp_path, failed=failed), tmp_path)
    outer = _validate(crate, "five-safes-crate")
    assert outer.returncode == 0, outer.stdout[-4000:]
    inner = _validate(crate / "provenance", "provenance-run-crate-0.5")
    assert inner.returncode == 0, inner.stdout[-4000:]


@pytest.mark.validator
def test_workflow_request_result_is_a_run_crate(tmp_path: Path) -> None:
    crate = _build(make_run(tmp_path, kind=CrateKind.WORKFLOW), tmp_path)
    result = _validate(crate, "provenance-run-crate-0.5")
    assert result.returncode == 0, result.stdout[-4000:]


def test_outer_action_updated(failed_run: Run, tmp_path: Path) -> None:
    crate = _build(failed_run, tmp_path)
    graph = _graph(crate)
    action = graph["#query-1"]
    assert action["actionStatus"] == "http://schema.org/FailedActionStatus"
    assert action["error"] == "step report failed: exit code 1"
    assert action["startTime"].endswith("+00:00") and action["endTime"]
    assert _ids(action["result"]) == ["provenance/outputs/summary.csv"]
    assert _ids(action["subjectOf"]) == ["provenance/"]
    summary = graph["provenance/outputs/summary.csv"]
    assert summary["encodingFormat"] == "text/csv" and len(summary["sha512"]) == 128
    assert _ids(graph["provenance/logs/engine.log"]["about"]) == ["#query-1"]


def test_every_step_action_has_a_container_image(five_safes_run: Run, tmp_path: Path) -> None:
    graph = _graph(_build(five_safes_run, tmp_path) / "provenance")
    steps = [
        n for n in graph.values() if n["@type"] == "CreateAction" and n["@id"] != "#workflow-run"
    ]
    assert len(steps) == 3
    for action in steps:
        image = graph[action["containerImage"]["@id"]]
        assert image["@type"] == "ContainerImage" and image["name"] == "busybox"
        assert image["sha256"] in {"a" * 64, "b" * 64} and image["tag"].startswith("1.3")
    assert len({a["containerImage"]["@id"] for a in steps}) == 3


def test_failed_step_has_error_exit_code_and_stderr(failed_run: Run, tmp_path: Path) -> None:
    graph = _graph(_build(failed_run, tmp_path) / "provenance")
    action = graph["#step-run-2"]
    assert action["actionStatus"] == "http://schema.org/FailedActionStatus"
    assert "exit code 1" in action["error"]
    assert graph[action["additionalProperty"]["@id"]]["value"] == 1
    assert _ids(graph["logs/report.stderr"]["about"]) == ["#step-run-2"]


def test_local_ids_exist_and_are_in_has_part(five_safes_run: Run, tmp_path: Path) -> None:
    crate = _build(five_safes_run, tmp_path)
    for root_dir in (crate, crate / "provenance"):
        graph = _graph(root_dir)
        parts = set(_ids(graph["./"]["hasPart"]))
        for entity_id, node in graph.items():
            if _types(node) & {"File", "Dataset"} and entity_id != "./":
                if "://" in entity_id or entity_id.startswith("#"):
                    continue
                assert (root_dir / entity_id.split("#")[0]).exists(), entity_id
                assert entity_id in parts, entity_id


def test_same_path_recorded_twice_is_one_entity(five_safes_run: Run, tmp_path: Path) -> None:
    graph = _graph(_build(five_safes_run, tmp_path) / "provenance")
    sorted_ids = [i for i in graph if i.endswith("sorted.txt")]
    assert sorted_ids == ["work/s1/sorted.txt"]
    assert graph["#step-run-0"]["result"]["@id"] == graph["#step-run-1"]["object"][0]["@id"]


def test_workflow_structure(five_safes_run: Run, tmp_path: Path) -> None:
    graph = _graph(_build(five_safes_run, tmp_path) / "provenance")
    main = graph[graph["./"]["mainEntity"]["@id"]]
    assert {"ComputationalWorkflow", "HowTo", "File"} <= _types(main)
    steps = [graph[i] for i in _ids(main["step"])]
    assert [s["name"] for s in steps] == ["sort", "count", "report"]
    assert [s["position"] for s in steps] == ["0", "1", "2"]
    organize = graph["#engine-run"]
    assert len(_ids(organize["object"])) == 3 and organize["result"]["@id"] == "#workflow-run"
    threshold = [
        n for n in graph.values() if n.get("name") == "threshold" and n["@type"] == "PropertyValue"
    ]
    assert threshold and all(n["value"] == "3" for n in threshold)  # as runcrate writes it


def test_path_outside_run_dir_is_refused(five_safes_run: Run, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("secret")
    record = replace(
        five_safes_run.record, outputs=(*five_safes_run.record.outputs, FileRecord(outside, "x"))
    )
    with pytest.raises(ValueError, match="outside the run folder"):
        build_result_crate(
            five_safes_run.request, record, run_dir=five_safes_run.run_dir, dest=tmp_path / "result"
        )
    assert not (tmp_path / "result").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".result")]


def test_dest_must_not_exist(five_safes_run: Run, tmp_path: Path) -> None:
    (tmp_path / "result").mkdir()
    with pytest.raises(FileExistsError):
        _build(five_safes_run, tmp_path)


def test_ten_thousand_steps(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    work = run.run_dir / "work" / "many"
    work.mkdir(parents=True)
    steps = []
    outputs = []
    for i in range(10_000):
        produced = work / f"f{i}.txt"
        produced.write_text(str(i))
        final = run.run_dir / "outputs" / "many" / f"o{i}.txt"
        final.parent.mkdir(parents=True, exist_ok=True)
        final.write_text(str(i))
        outputs.append(FileRecord(final, "many"))
        steps.append(
            StepRecord(
                step=f"step{i % 50}",
                name=f"step{i % 50}_{i}",
                tool=f"tool{i % 50}",
                status=RunStatus.COMPLETED,
                start_time=T0,
                end_time=T0 + timedelta(seconds=1),
                exit_code=0,
                container=ContainerRecord("busybox:1.36", SHA_A),
                inputs=(FileRecord(work / f"f{max(i - 1, 0)}.txt", "in"),),
                outputs=(FileRecord(produced, "out"),),
            )
        )
    record = replace(run.record, steps=tuple(steps), outputs=tuple(outputs))
    # its speed is benchmarks/provenance_scale.py's to measure, not a test's
    crate = build_result_crate(run.request, record, run_dir=run.run_dir, dest=tmp_path / "r")
    graph = _graph(crate / "provenance")
    assert len(_ids(graph["#engine-run"]["object"])) == 10_000
    # each step's file holds the bytes of the output it became: stored once, as the output
    assert not (crate / "provenance" / "work").exists()
    assert _ids(graph["#step-run-7"]["result"]) == ["outputs/many/o7.txt"]


@pytest.mark.validator
def test_what_cratebridge_did_and_leaves_to_do_is_recorded(tmp_path: Path) -> None:
    """A BagIt request with no check of its own gets cratebridge's CheckValue; a mirrored
    workflow its DownloadAction; every result a pending DisclosureCheck; the operator's
    publisher and the requester as author. The outer crate then has no finding at
    RECOMMENDED but the accepted ones."""
    from cratebridge.provenance.entities import Publisher
    from cratebridge.testing.validator import ACCEPTED_FINDINGS, ExternalValidator

    run = make_run(tmp_path)
    url = "https://workflowhub.example.org/workflows/7?version=2"
    workflow = replace(run.request.workflow, source="mirror:wf7.zip", id=url)
    request = replace(run.request, bagit=True, workflow=workflow)
    publisher = Publisher("TRE 7", "https://tre7.example.org/", "https://ror.org/00example")
    crate = build_result_crate(request, run.record, run_dir=run.run_dir,
                               dest=tmp_path / "r", publisher=publisher)
    graph = _graph(crate)
    root = graph["./"]
    mentioned = _ids(root["mentions"])
    check = graph["#cratebridge-checkvalue"]
    assert "#cratebridge-checkvalue" in mentioned and check["agent"] == {"@id": "#cratebridge"}
    download = graph["#cratebridge-workflow-download"]
    assert download["object"] == {"@id": url} and "wf7.zip" in download["description"]
    disclosure = graph["#cratebridge-disclosure"]
    assert disclosure["actionStatus"] == "http://schema.org/PotentialActionStatus"
    assert root["publisher"] == {"@id": "https://ror.org/00example"}
    assert graph["https://ror.org/00example"]["url"] == "https://tre7.example.org/"
    assert root["author"] == {"@id": AGENT}  # the requester
    validator = ExternalValidator.find()
    assert validator is not None
    unstated = {"five-safes-crate-0.4_38.0", "five-safes-crate-0.4_50.0"}  # no reviews here
    left = [f for f in validator.findings(crate, "five-safes-crate")
            if f.check not in ACCEPTED_FINDINGS and f.check not in unstated]
    assert not left, "\n".join(map(str, left))


def test_the_crate_writers_are_imported_only_when_a_run_needs_them() -> None:
    """A run imports the builder and packaging while its engine runs, not at start-up."""
    import cratebridge.provenance as provenance

    for name in provenance.__all__:
        assert callable(getattr(provenance, name)), name
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        provenance.nothing  # noqa: B018
    code = ("import sys, cratebridge.cli, cratebridge.api, cratebridge.pipeline; "
            "print(sorted(m for m in sys.modules if m.startswith("
            "('cratebridge.provenance.builder', 'cratebridge.provenance.package', "
            "'cratebridge.provenance.runcrate', 'cratebridge.verify'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]"

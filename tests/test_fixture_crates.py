"""The crate builder writes bags that verify and requests the external validator accepts."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import bagit
import pytest

from cratebridge.testing import (
    FileInput,
    RequestSpec,
    ReviewAction,
    ReviewKind,
    ValueInput,
    ZipLayout,
    request_metadata,
    write_request_bag,
    write_request_dir,
    write_request_zip,
)

REPO = Path(__file__).resolve().parent.parent
CWL = REPO / "fixtures" / "workflows" / "cwl"
Validator = Callable[..., tuple[bool, str]]


def _three_step(**changes: object) -> RequestSpec:
    fields: dict[str, object] = {
        "workflow_dir": CWL / "three-step",
        "main_workflow": "workflow.cwl",
        "inputs": (
            FileInput("data", CWL / "three-step" / "test" / "input.txt"),
            ValueInput("repeat", 2),
        ),
        "reviews": (
            ReviewAction(ReviewKind.CHECK_VALUE),
            ReviewAction(ReviewKind.VALIDATION_CHECK, completed=False),
            ReviewAction(ReviewKind.SIGN_OFF),
        ),
    }
    fields.update(changes)
    return RequestSpec(**fields)  # type: ignore[arg-type]


def _graph(crate_dir: Path) -> dict[str, dict[str, object]]:
    data = json.loads((crate_dir / "ro-crate-metadata.json").read_text())
    return {entity["@id"]: entity for entity in data["@graph"]}


def _unzip(zip_path: Path, dest: Path) -> Path:
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(dest)
    return dest


def test_metadata_shape_follows_five_safes_04(tmp_path: Path) -> None:
    crate = write_request_dir(_three_step(), tmp_path / "crate")
    graph = _graph(crate)
    root = graph["./"]
    assert root["mainEntity"] == {"@id": "workflow/"}
    assert root["conformsTo"] == {"@id": "https://w3id.org/5s-crate/0.4"}
    workflow = graph["workflow/"]
    assert workflow["conformsTo"] == {"@id": "https://w3id.org/workflowhub/workflow-ro-crate/1.0"}
    [action] = [e for e in graph.values() if e["@type"] == "CreateAction"]
    assert action["actionStatus"] == "http://schema.org/PotentialActionStatus"
    assert action["instrument"] == {"@id": "workflow/"}
    bound = {
        graph[graph[ref["@id"]]["exampleOfWork"]["@id"]]["name"]: graph[ref["@id"]]
        for ref in action["object"]
    }
    assert set(bound) == {"data", "repeat"}
    assert bound["repeat"]["value"] == 2
    assert (crate / "input.txt").is_file()
    assert (crate / "workflow" / "workflow.cwl").is_file()


def test_scalar_values_keep_their_json_types() -> None:
    spec = RequestSpec(
        workflow_dir=CWL / "scalar-inputs",
        inputs=(
            ValueInput("text", "hi"),
            ValueInput("count", 3),
            ValueInput("flag", False),
            ValueInput("ratio", 0.5),
        ),
    )
    values = {
        e["name"]: e["value"]
        for e in request_metadata(spec)["@graph"]
        if e["@type"] == "PropertyValue" and e["@id"].startswith("#input-")
    }
    assert values == {"text": "hi", "count": 3, "flag": False, "ratio": 0.5}


def test_bag_verifies_and_names_the_request(tmp_path: Path) -> None:
    spec = _three_step()
    bag_dir = write_request_bag(spec, tmp_path / "bag")
    bag = bagit.Bag(str(bag_dir))
    bag.validate()
    assert bag.info["External-Identifier"] == f"urn:uuid:{spec.request_id}"
    assert "sha512" in bag.algorithms


@pytest.mark.parametrize("layout", list(ZipLayout))
def test_zip_layouts(tmp_path: Path, layout: ZipLayout) -> None:
    zip_path = write_request_zip(_three_step(), tmp_path / "request.zip", layout)
    top = {name.split("/")[0] for name in zipfile.ZipFile(zip_path).namelist()}
    unpacked = _unzip(zip_path, tmp_path / "unpacked")
    if layout is ZipLayout.FOLDER:
        assert top == {"request"}
        bagit.Bag(str(unpacked / "request")).validate()
    elif layout is ZipLayout.ROOT:
        assert "bagit.txt" in top and "data" in top
        bagit.Bag(str(unpacked)).validate()
    else:
        assert "bagit.txt" not in top
        assert (unpacked / "ro-crate-metadata.json").is_file()


def test_zip_is_reproducible(tmp_path: Path) -> None:
    spec = _three_step(request_id=uuid.UUID(int=7), date_published=datetime(2025, 1, 1, tzinfo=UTC))
    first = write_request_zip(spec, tmp_path / "a.zip").read_bytes()
    second = write_request_zip(spec, tmp_path / "b" / "a.zip").read_bytes()
    assert first == second


def test_bad_specs_are_refused() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        RequestSpec(main_workflow="workflow.cwl")
    with pytest.raises(ValueError, match="does not exist"):
        RequestSpec(workflow_dir=CWL / "three-step", main_workflow="missing.cwl")
    with pytest.raises(ValueError, match="plain relative path"):
        _three_step(inputs=(FileInput("data", CWL / "three-step" / "README.md", "../x"),))


@pytest.mark.parametrize("file_name", ["demo-request.zip", "step-fails-request.zip"])
def test_committed_crates_are_current(tmp_path: Path, file_name: str) -> None:
    """fixtures/crates/ holds exactly what scripts/make-fixture-crates writes today."""
    script = runpy.run_path(str(REPO / "scripts" / "make-fixture-crates"))
    spec, layout = script["CRATES"][file_name]
    fresh = write_request_zip(spec, tmp_path / file_name, layout)
    committed = REPO / "fixtures" / "crates" / file_name
    assert committed.is_file(), "run `make fixture-crates`"
    assert committed.read_bytes() == fresh.read_bytes(), "stale: run `make fixture-crates`"
    bagit.Bag(str(_unzip(committed, tmp_path / "unpacked") / committed.stem)).validate()


@pytest.mark.validator
@pytest.mark.parametrize(
    "spec_name",
    ["nested-all-reviews", "nested-no-reviews", "scalar-inputs", "step-fails", "by-url"],
)
def test_request_passes_five_safes_profile(
    tmp_path: Path, validator: Validator, spec_name: str
) -> None:
    specs = {
        "nested-all-reviews": _three_step(),
        "nested-no-reviews": _three_step(reviews=()),
        "scalar-inputs": RequestSpec(
            workflow_dir=CWL / "scalar-inputs",
            inputs=(
                ValueInput("text", "hi"),
                ValueInput("count", 3),
                ValueInput("flag", True),
                ValueInput("ratio", 0.5),
            ),
        ),
        "step-fails": _three_step(workflow_dir=CWL / "step-fails"),
        "by-url": _three_step(
            workflow_dir=None,
            workflow_url="https://workflowhub.eu/workflows/289?version=1",
            workflow_download_url="https://workflowhub.eu/workflows/289/ro_crate?version=1",
        ),
    }
    crate = write_request_dir(specs[spec_name], tmp_path / "crate")
    ok, output = validator(crate, "five-safes-crate")
    assert ok, output


@pytest.mark.validator
@pytest.mark.parametrize("layout", [ZipLayout.FOLDER, ZipLayout.ROOT, ZipLayout.PLAIN])
def test_zipped_request_payload_passes_five_safes_profile(
    tmp_path: Path, validator: Validator, layout: ZipLayout
) -> None:
    zip_path = write_request_zip(_three_step(), tmp_path / "request.zip", layout)
    unpacked = _unzip(zip_path, tmp_path / "unpacked")
    crate = {
        ZipLayout.FOLDER: unpacked / "request" / "data",
        ZipLayout.ROOT: unpacked / "data",
        ZipLayout.PLAIN: unpacked,
    }[layout]
    ok, output = validator(crate, "five-safes-crate")
    assert ok, output


@pytest.mark.validator
@pytest.mark.parametrize("workflow", ["three-step", "step-fails", "scalar-inputs", "nested",
                                      "nested-values", "nested-scatter"])
def test_fixture_workflows_are_workflow_ro_crates(validator: Validator, workflow: str) -> None:
    ok, output = validator(CWL / workflow, "workflow-ro-crate-1.0")
    assert ok, output


@pytest.mark.validator
def test_validator_helper_reports_a_broken_request(tmp_path: Path, validator: Validator) -> None:
    """Guards the helper itself: a request without mainEntity must not pass."""
    crate = write_request_dir(_three_step(), tmp_path / "crate")
    metadata_file = crate / "ro-crate-metadata.json"
    data = json.loads(metadata_file.read_text())
    for entity in data["@graph"]:
        if entity["@id"] == "./":
            del entity["mainEntity"]
    metadata_file.write_text(json.dumps(data))
    ok, output = validator(crate, "five-safes-crate")
    assert not ok
    assert "mainEntity" in output


IMAGES = ("cratebridge/busybox:1", "cratebridge/python:3.11", "cratebridge/bash:1")


@pytest.mark.docker
@pytest.mark.parametrize("image", IMAGES)
def test_fixture_image_runs_as_non_root(docker_available: bool, image: str) -> None:
    """The local images work offline for uid 1000, which needs a sticky, world-writable /tmp."""
    done = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "--user", "1000:1000", image,
         "sh", "-c", "echo ok > /tmp/probe && cat /tmp/probe && stat -c %a /tmp"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"{image} is missing: run `make images`\n{done.stderr}"
    assert done.stdout.split() == ["ok", "1777"]


@pytest.mark.docker
@pytest.mark.parametrize(
    ("workflow", "expect_ok", "outputs"),
    [
        ("three-step", True, {"report.txt", "counts.txt"}),
        ("scalar-inputs", True, {"values.txt"}),
        ("step-fails", False, {"counts.txt"}),  # at most
    ],
)
def test_fixture_workflows_run_with_cwltool(
    tmp_path: Path, docker_available: bool, workflow: str, expect_ok: bool, outputs: set[str]
) -> None:
    folder = CWL / workflow
    cwltool = Path(sys.executable).parent / "cwltool"
    done = subprocess.run(
        [str(cwltool), "--disable-pull", "--outdir", str(tmp_path / "out"),
         str(folder / "workflow.cwl"), str(folder / "test" / "job.yml")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert (done.returncode == 0) is expect_ok, done.stderr
    out = tmp_path / "out"
    written = {p.name for p in out.iterdir()} if out.is_dir() else set()
    if expect_ok:
        assert written == outputs
    else:
        # cwltool may run either independent step first, so partial outputs vary.
        assert written <= outputs
    if workflow == "three-step":
        report = (tmp_path / "out" / "report.txt").read_text()
        assert report.startswith("lines: 4\nwords: 10\n")
    if workflow == "scalar-inputs":
        values = (tmp_path / "out" / "values.txt").read_text()
        assert values == "text=hello crate\ncount=42\nflag=true\nratio=0.25\n"
    if workflow == "step-fails":
        assert "CRATEBRIDGE_FIXTURE_FAILURE" in done.stderr

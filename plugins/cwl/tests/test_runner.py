"""cratebridge-cwl-runner: every kind of CWL input and output, through a real request crate.

These guard, without the CWL conformance suite, what the suite checks: inputs bound
exactly as cwltool binds them, outputs collected and printed as cwltool prints them,
the result crate beside them, and the CWL exit codes (33: unsupported requirement).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import TOOLS, need_image, run_runner

from cratebridge.errors import CrateRejected
from cratebridge.intake import parse_request
from cratebridge.testing.validator import ExternalValidator
from cratebridge_cwl.runner import (
    EXIT_UNSUPPORTED,
    RESULT_FOLDER,
    UnsupportedRequirement,
    load_job,
    load_tool,
    write_request,
)
from cratebridge_cwl.workflow import JSON_ENCODING, bind_inputs, load_workflow

IMAGE = "cratebridge/python:3.11"

EXPECTED_REPORT = "".join(line + "\n" for line in [
    "hello.txt: hello", "folder/: one.txt two.txt ", "a.txt: a", "b.txt: b", "the pair",
    "a.txt: a", "reads.dat: reads", "--count", "7", "--ratio", "2", "--flag",
    "literal.txt: made in the job", "indexed.idx: index of reads"])


def _sha1(path: str) -> str:
    return "sha1$" + hashlib.sha1(Path(path).read_bytes()).hexdigest()  # CWL's checksum


# -- the request crate, no Docker ----------------------------------------------------------


def test_request_crate_describes_every_input(tmp_path: Path) -> None:
    tool = load_tool(str(TOOLS / "inputs.cwl"))
    job = load_job(str(TOOLS / "inputs-job.yml"), tool)
    written = write_request(tool, job, tmp_path / "crate")
    crate = written.folder
    graph = {e["@id"]: e for e in json.loads(
        (crate / "ro-crate-metadata.json").read_text())["@graph"]}

    assert written.main == "workflow/inputs.cwl"
    assert (crate / "workflow" / "report.sh").is_file()  # a default File the tool names
    assert graph["inputs/hello.txt"]["@type"] == "File"
    assert graph["inputs/folder/"]["@type"] == "Dataset"
    # the secondary file cwltool discovers beside its primary travels with it
    assert (crate / "inputs" / "reads.dat.idx").read_text() == "index of reads\n"
    pair = graph["#input-pair"]
    assert pair["encodingFormat"] == JSON_ENCODING
    assert json.loads(pair["value"]) == {
        "label": "the pair", "data": {"class": "File", "location": "inputs/sub/a.txt"}}
    assert json.loads(graph["#input-absent"]["value"]) is None
    assert json.loads(graph["#input-ratio"]["value"]) == 2  # an int stays an int
    literal = json.loads(graph["#input-literal"]["value"])
    assert literal == {"class": "File", "basename": "literal.txt",
                       "contents": "made in the job\n"}

    request = parse_request(crate)
    bound = bind_inputs(request, load_workflow(request.workflow.main_file))
    inside = crate.resolve().as_uri() + "/"
    assert bound["pair"]["data"]["location"] == inside + "inputs/sub/a.txt"
    assert [f["location"] for f in bound["files"]] == [inside + "inputs/sub/a.txt",
                                                       inside + "inputs/sub/b.txt"]
    assert bound["absent"] is None and "count" not in bound  # the default is cwltool's


@pytest.mark.parametrize("location", ["../outside.txt", "/etc/passwd", "file:///etc/passwd",
                                      "http://example.org/data.txt", "inputs/../../x"])
def test_binder_refuses_locations_outside_the_crate(tmp_path: Path, location: str) -> None:
    tool = load_tool(str(TOOLS / "inputs.cwl"))
    job = load_job(str(TOOLS / "inputs-job.yml"), tool)
    crate = write_request(tool, job, tmp_path / "crate").folder
    (tmp_path / "outside.txt").write_text("secret\n")
    metadata = json.loads((crate / "ro-crate-metadata.json").read_text())
    for entity in metadata["@graph"]:
        if entity["@id"] == "#input-pair":
            entity["value"] = json.dumps(
                {"label": "x", "data": {"class": "File", "location": location}})
    (crate / "ro-crate-metadata.json").write_text(json.dumps(metadata))

    request = parse_request(crate)
    with pytest.raises(CrateRejected):
        bind_inputs(request, load_workflow(request.workflow.main_file))


def test_network_access_is_an_unsupported_requirement(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedRequirement):
        load_tool(str(TOOLS / "network.cwl"))
    done = run_runner("--outdir", tmp_path, "network.cwl")
    assert done.returncode == EXIT_UNSUPPORTED, done.stderr
    assert "NetworkAccess" in done.stderr and done.stdout == ""


def test_an_image_built_at_run_time_is_an_unsupported_requirement(tmp_path: Path) -> None:
    tool = tmp_path / "build.cwl"
    tool.write_text("cwlVersion: v1.2\nclass: CommandLineTool\nrequirements:\n"
                    "  DockerRequirement: {dockerFile: 'FROM scratch', dockerImageId: x}\n"
                    "inputs: []\noutputs: []\nbaseCommand: 'true'\n")
    done = run_runner("--outdir", tmp_path / "out", tool)
    assert done.returncode == EXIT_UNSUPPORTED, done.stderr


# -- real runs in Docker -------------------------------------------------------------------


@pytest.mark.docker
def test_every_kind_of_input_is_bound_as_cwltool_binds_it(tmp_path: Path) -> None:
    need_image(IMAGE)
    done = run_runner("--outdir", tmp_path, "inputs.cwl", "inputs-job.yml")
    assert done.returncode == 0, done.stderr
    output = json.loads(done.stdout)
    report = output["report"]
    assert Path(report["path"]).parent == tmp_path
    assert Path(report["path"]).read_text() == EXPECTED_REPORT
    assert report["checksum"] == _sha1(report["path"])


@pytest.mark.docker
def test_every_kind_of_output_is_collected_and_kept_in_the_result_crate(
        tmp_path: Path) -> None:
    need_image(IMAGE)
    done = run_runner("--outdir", tmp_path, "outputs.cwl")
    assert done.returncode == 0, done.stderr
    out: dict[str, Any] = json.loads(done.stdout)

    assert Path(out["log"]["path"]).read_text() == "done\n"
    results = out["results"]
    assert results["class"] == "Directory" and results["path"] == str(tmp_path / "results")
    assert sorted(e["basename"] for e in results["listing"]) == ["deep", "second.txt"]
    assert [f["basename"] for f in out["texts"]] == ["second.txt"]
    assert out["indexed"]["basename"] == "sample.dat"
    assert [s["basename"] for s in out["indexed"]["secondaryFiles"]] == ["sample.dat.idx"]
    assert Path(out["indexed"]["secondaryFiles"][0]["path"]).read_text() == "index\n"
    first = out["summary"]["first"]
    assert Path(first["path"]).read_text() == "first\n" and first["checksum"] == _sha1(
        first["path"])
    assert out["summary"]["label"] == "sample"
    assert out["number"] == 42 and out["nothing"] is None

    crate = tmp_path / RESULT_FOLDER
    graph = {e["@id"]: e for e in json.loads(
        (crate / "ro-crate-metadata.json").read_text())["@graph"]}
    for name in ("outputs/log.txt", "outputs/sample.dat", "outputs/sample.dat.idx",
                 "outputs/results/"):
        assert name in graph, f"{name} is not in the result crate"
    assert (crate / "outputs" / "results" / "deep" / "first.txt").read_text() == "first\n"
    validator = ExternalValidator.find()
    if validator is not None:
        checked = validator.validate(crate, "provenance-run-crate-0.5")
        assert checked.ok, checked.output


@pytest.mark.docker
def test_a_tool_without_docker_requirement_runs_in_the_default_container(
        tmp_path: Path) -> None:
    need_image("cratebridge/busybox:1")
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"message": "hello from busybox"}))
    done = run_runner("--outdir", tmp_path / "out", "--default-container",
                   "cratebridge/busybox:1", "no-docker.cwl", job)
    assert done.returncode == 0, done.stderr
    assert Path(json.loads(done.stdout)["out"]["path"]).read_text() == "hello from busybox\n"


def test_a_tool_without_docker_requirement_and_no_default_container_is_refused(
        tmp_path: Path) -> None:
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"message": "x"}))
    done = run_runner("--outdir", tmp_path / "out", "no-docker.cwl", job)
    assert done.returncode not in (0, EXIT_UNSUPPORTED)
    assert "default_container" in done.stderr


@pytest.mark.docker
def test_a_failing_tool_exits_non_zero_and_leaves_a_failed_result_crate(
        tmp_path: Path) -> None:
    need_image(IMAGE)
    done = run_runner("--outdir", tmp_path, "fails.cwl")
    assert done.returncode not in (0, EXIT_UNSUPPORTED), done.stderr
    assert done.stdout == ""
    graph = json.loads((tmp_path / RESULT_FOLDER / "ro-crate-metadata.json").read_text())
    statuses = [json.dumps(e.get("actionStatus")) for e in graph["@graph"]
                if e.get("@type") == "CreateAction"]
    assert any("FailedActionStatus" in status for status in statuses), statuses


def test_a_file_given_for_an_any_input_is_bound_as_a_file(tmp_path: Path) -> None:
    tool_file = tmp_path / "any.cwl"
    tool_file.write_text("cwlVersion: v1.2\nclass: ExpressionTool\n"
                         "requirements: {InlineJavascriptRequirement: {}}\n"
                         "inputs: {thing: Any}\noutputs: {kind: Any}\n"
                         "expression: '$({kind: inputs.thing.class})'\n")
    (tmp_path / "data.txt").write_text("x\n")
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps({"thing": {"class": "File", "location": "data.txt"}}))
    tool = load_tool(str(tool_file))
    crate = write_request(tool, load_job(str(job_file), tool), tmp_path / "crate").folder
    request = parse_request(crate)
    bound = bind_inputs(request, load_workflow(request.workflow.main_file))
    assert bound["thing"] == {"class": "File",
                              "location": (crate / "inputs" / "data.txt").resolve().as_uri()}

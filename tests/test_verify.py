"""``cratebridge verify``: a result crate re-run through the real pipeline, outputs compared.

Real cwltool runs in real containers: the demo result verifies identical, a
workflow writing the time does not, a tampered result says what was tampered
with, and what is not an intact result crate is refused (exit 3) without a run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from cratebridge import api
from cratebridge.errors import OutputsDiffer
from cratebridge.testing import RequestSpec, ValueInput, ZipLayout, write_request_zip
from cratebridge.verify import OutputStatus, VerifyStatus

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "fixtures" / "crates" / "demo-request.zip"
CLOCK = REPO / "fixtures" / "workflows" / "cwl" / "clock"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cratebridge", *args], capture_output=True,
                          text=True, timeout=600, check=False)


def config(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cratebridge.toml"
    path.write_text(f'[run]\nruns_dir = "{folder / "runs"}"\n')
    return path


def verify_folders(folder: Path) -> list[Path]:
    return sorted((folder / "runs").glob("verify-*"))


@pytest.fixture(scope="module")
def demo_result(tmp_path_factory: pytest.TempPathFactory, docker_available: bool) -> Path:
    """The demo request's result crate (a BagIt folder), written once by a real run."""
    folder = tmp_path_factory.mktemp("demo")
    outcome = api.run(DEMO, folder / "result", config=config(folder))
    assert outcome.exit_code == 0, outcome.record.error
    # the run's result folder became the crate: moved, every file a name of its own
    assert not (outcome.run_dir / "result").exists()
    assert all(p.stat().st_nlink == 1 for p in outcome.result.rglob("*") if p.is_file())
    return outcome.result


def plain_copy(result: Path, dest: Path) -> Path:
    """The result's payload as a crate folder without BagIt, free to tamper with."""
    shutil.copytree(result / "data", dest)
    return dest


def edit_metadata(crate: Path, change: Any, inner: bool = False) -> None:
    path = crate / ("provenance/ro-crate-metadata.json" if inner else "ro-crate-metadata.json")
    document = json.loads(path.read_text())
    change({e["@id"]: e for e in document["@graph"]}, document)
    path.write_text(json.dumps(document))


def sha512(data: bytes) -> str:
    return hashlib.sha512(data).hexdigest()


# -- (1) identical ------------------------------------------------------------------------


@pytest.mark.docker
def test_the_demo_result_verifies_identical(demo_result: Path, tmp_path: Path,
                                            docker_available: bool) -> None:
    recorded = {e["@id"]: e for e in json.loads(
        (demo_result / "data" / "ro-crate-metadata.json").read_text())["@graph"]}
    done = cli("verify", str(demo_result), "--json", "--config", str(config(tmp_path)))
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["status"] == "identical" and doc["exit_code"] == 0
    assert [(o["path"], o["status"]) for o in doc["outputs"]] == [
        ("provenance/outputs/counts.txt", "identical"),
        ("provenance/outputs/report.txt", "identical")]
    for output in doc["outputs"]:
        assert output["recorded_sha512"] == recorded[output["path"]]["sha512"]
        assert output["new_sha512"] == output["recorded_sha512"]
    assert doc["images"] == [] and doc["rerun"]["status"] == "completed"
    # nothing to look at: the verify folder and the default re-run crate are gone
    assert doc["kept"] is None and doc["rerun"]["result"] is None
    assert verify_folders(tmp_path) == []


# -- (2) a time-dependent output ----------------------------------------------------------


@pytest.mark.docker
def test_an_output_written_from_the_clock_is_different_its_neighbour_identical(
        tmp_path: Path, docker_available: bool) -> None:
    spec = RequestSpec(workflow_dir=CLOCK, main_workflow="workflow.cwl",
                       inputs=(ValueInput("message", "same every time"),), name="Clock")
    request = write_request_zip(spec, tmp_path / "clock.zip", ZipLayout.FOLDER)
    cfg = config(tmp_path)
    first = api.run(request, tmp_path / "clock-result.zip", config=cfg)
    assert first.exit_code == 0, first.record.error
    rerun = tmp_path / "rerun.zip"
    done = cli("verify", str(first.result), "--out", str(rerun), "--config", str(cfg))
    assert done.returncode == 7, done.stderr
    lines = done.stdout.splitlines()
    assert "different  provenance/outputs/now.txt" in lines
    assert "identical  provenance/outputs/message.txt" in lines
    assert "different: 1 identical, 1 different" in lines
    assert f"re-run result crate: {rerun}" in lines
    # the re-run's own result crate is where --out said, a result crate like any other
    assert api.validate(rerun).ok and api.validate(rerun).kind == "result"
    with zipfile.ZipFile(rerun) as z:
        assert z.read("rerun/data/provenance/outputs/message.txt") == b"same every time\n"
    kept = verify_folders(tmp_path)
    assert len(kept) == 1 and f"verify folder kept: {kept[0]}" in lines
    bag_info = (kept[0] / "request" / "bag-info.txt").read_text()  # rebuilt as a bag
    assert f"External-Identifier: urn:uuid:{spec.request_id}" in bag_info


# -- (3) a tampered result ----------------------------------------------------------------


@pytest.mark.docker
def test_a_tampered_record_reports_different_missing_extra_and_a_changed_image(
        demo_result: Path, tmp_path: Path, docker_available: bool) -> None:
    crate = plain_copy(demo_result, tmp_path / "tampered")
    (crate / "provenance" / "outputs" / "counts.txt").write_bytes(b"forged\n")
    (crate / "provenance" / "outputs" / "report.txt").unlink()
    (crate / "provenance" / "outputs" / "ghost.txt").write_bytes(b"boo\n")

    def outer(graph: dict[str, Any], document: dict[str, Any]) -> None:
        graph["provenance/outputs/counts.txt"]["sha512"] = sha512(b"forged\n")
        document["@graph"].remove(graph["provenance/outputs/report.txt"])
        document["@graph"].append({"@id": "provenance/outputs/ghost.txt", "@type": "File",
                                   "sha512": sha512(b"boo\n")})
        action = next(e for e in graph.values() if e.get("@type") == "CreateAction")
        action["result"] = [{"@id": "provenance/outputs/counts.txt"},
                            {"@id": "provenance/outputs/ghost.txt"}]

    def inner(graph: dict[str, Any], document: dict[str, Any]) -> None:
        image = next(e for e in graph.values() if e.get("@type") == "ContainerImage"
                     and e["name"] == "cratebridge/python")
        image["sha256"] = "0" * 64

    edit_metadata(crate, outer)
    edit_metadata(crate, inner, inner=True)
    outcome = api.verify(crate, config=config(tmp_path))
    assert outcome.status is VerifyStatus.DIFFERENT and outcome.exit_code == 7
    assert {o.path: o.status for o in outcome.outputs} == {
        "provenance/outputs/counts.txt": OutputStatus.DIFFERENT,
        "provenance/outputs/ghost.txt": OutputStatus.MISSING,
        "provenance/outputs/report.txt": OutputStatus.EXTRA}
    [change] = outcome.images
    assert (change.step, change.image, change.recorded_id) == (
        "combine", "cratebridge/python:3.11", "sha256:" + "0" * 64)
    assert change.new_id.startswith("sha256:")
    assert change.new_id != change.recorded_id
    with pytest.raises(OutputsDiffer, match="image of step combine") as raised:
        outcome.check()
    assert raised.value.exit_code == 7 and "provenance/outputs/ghost.txt" in str(raised.value)


def test_an_output_changed_in_a_bag_is_rejected_naming_it(demo_result: Path,
                                                          tmp_path: Path) -> None:
    crate = tmp_path / "bag"
    shutil.copytree(demo_result, crate)
    (crate / "data" / "provenance" / "outputs" / "report.txt").write_text("forged\n")
    done = cli("verify", str(crate), "--json", "--config", str(config(tmp_path)))
    assert done.returncode == 3, done.stderr
    doc = json.loads(done.stdout)
    assert doc["error"] == "BagItError"
    assert "data/provenance/outputs/report.txt" in doc["message"]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("tamper", ["file", "checksum", "removed"])
def test_an_output_that_does_not_match_its_record_is_rejected(
        demo_result: Path, tmp_path: Path, tamper: str) -> None:
    crate = plain_copy(demo_result, tmp_path / "crate")
    target = crate / "provenance" / "outputs" / "counts.txt"
    if tamper == "file":
        target.write_text("forged\n")
    elif tamper == "removed":
        target.unlink()
    else:
        edit_metadata(crate, lambda graph, _: graph["provenance/outputs/counts.txt"].update(
            sha512=sha512(b"forged\n")))
    done = cli("verify", str(crate), "--config", str(config(tmp_path)))
    assert done.returncode == 3, done.stderr
    assert "'provenance/outputs/counts.txt'" in done.stderr
    wanted = "is not in the crate" if tamper == "removed" else "sha512 is not the one recorded"
    assert wanted in done.stderr and "Traceback" not in done.stderr
    assert verify_folders(tmp_path) == []  # nothing ran, nothing is left


# -- (4) not a result crate ---------------------------------------------------------------


def test_a_request_crate_is_refused_it_records_no_outputs(tmp_path: Path) -> None:
    done = cli("verify", str(DEMO), "--json", "--config", str(config(tmp_path)))
    assert done.returncode == 3, done.stderr
    doc = json.loads(done.stdout)
    assert doc["error"] == "UnsupportedCrate"
    assert "request crate, not a result crate" in doc["message"]
    assert "records no outputs" in doc["message"]
    assert verify_folders(tmp_path) == []


def test_something_that_is_no_crate_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.zip"
    with zipfile.ZipFile(junk, "w") as z:
        z.writestr("notes.txt", "hello")
    done = cli("verify", str(junk), "--config", str(config(tmp_path)))
    assert done.returncode == 3 and "no ro-crate-metadata.json" in done.stderr


def test_a_result_whose_run_recorded_no_outputs_is_refused(demo_result: Path,
                                                           tmp_path: Path) -> None:
    crate = plain_copy(demo_result, tmp_path / "crate")

    def no_result(graph: dict[str, Any], _: dict[str, Any]) -> None:
        next(e for e in graph.values() if e.get("@type") == "CreateAction").pop("result")

    edit_metadata(crate, no_result)
    done = cli("verify", str(crate), "--config", str(config(tmp_path)))
    assert done.returncode == 3 and "recorded run has no outputs" in done.stderr


@pytest.mark.parametrize("path", ["../../../../etc/passwd", "/etc/passwd", "outputs/../../../x",
                                  "%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd"])
def test_an_output_path_leaving_the_crate_is_refused(demo_result: Path, tmp_path: Path,
                                                     path: str) -> None:
    crate = plain_copy(demo_result, tmp_path / "crate")

    def escape(graph: dict[str, Any], document: dict[str, Any]) -> None:
        document["@graph"].append({"@id": path, "@type": "File", "sha512": "0" * 128})
        next(e for e in graph.values() if e.get("@type") == "CreateAction")["result"] = [
            {"@id": path}]

    edit_metadata(crate, escape)
    done = cli("verify", str(crate), "--json", "--config", str(config(tmp_path)))
    assert done.returncode == 3, done.stderr
    doc = json.loads(done.stdout)
    assert doc["error"] == "UnsafeCrate" and path in doc["where"]
    assert "root:" not in done.stdout + done.stderr  # no line of the host's file echoed


def test_usage_errors_exit_2(demo_result: Path, tmp_path: Path) -> None:
    assert cli("verify", str(tmp_path / "missing.zip"), "--config",
               str(config(tmp_path))).returncode == 2
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    done = cli("verify", str(demo_result), "--out", str(full), "--json", "--config",
               str(config(tmp_path)))
    assert done.returncode == 2 and json.loads(done.stdout)["error"] == "UsageError"
    done = cli("verify", str(demo_result), "--out", str(demo_result / "again"), "--config",
               str(config(tmp_path)))
    assert done.returncode == 2 and "would overwrite the result crate" in done.stderr


def test_help_documents_exit_code_7() -> None:
    done = cli("verify", "--help")
    assert done.returncode == 0 and "7 an output is different" in " ".join(done.stdout.split())

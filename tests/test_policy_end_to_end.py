"""Operator policy through the whole pipeline: the workflow mirror and TRE dataset mappings."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cratebridge.testing import FileInput, RequestSpec, ValueInput, ZipLayout, write_request_zip
from cratebridge.testing.crates import request_metadata

REPO = Path(__file__).resolve().parent.parent
THREE_STEP = REPO / "fixtures" / "workflows" / "cwl" / "three-step"
URL = "https://workflowhub.eu/workflows/9999?version=1"

pytestmark = pytest.mark.docker


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cratebridge.cli", *args], capture_output=True,
                          text=True, check=False)


def mirror(tmp_path: Path, *, tamper: bool = False) -> Path:
    folder = tmp_path / "mirror"
    folder.mkdir()
    archive = folder / "three-step.crate.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(THREE_STEP.rglob("*")):
            if path.is_file():
                z.write(path, path.relative_to(THREE_STEP).as_posix())
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if tamper:
        digest = "0" * 64
    (folder / "index.toml").write_text(
        f'[workflows."{URL}"]\nfile = "{archive.name}"\nsha256 = "{digest}"\n')
    return folder


def url_request(tmp_path: Path) -> Path:
    spec = RequestSpec(workflow_url=URL, main_workflow="workflow.cwl",
                       inputs=(FileInput("data", THREE_STEP / "test" / "input.txt"),
                               ValueInput("repeat", 2)), name="Request for a mirrored workflow")
    return write_request_zip(spec, tmp_path / "url.zip", ZipLayout.FOLDER)


def config(tmp_path: Path, text: str = "") -> Path:
    path = tmp_path / "c.toml"
    path.write_text(f'[run]\nruns_dir = "{tmp_path / "runs"}"\n' + text)
    return path


def test_url_workflow_runs_from_the_operator_mirror(tmp_path: Path,
                                                    docker_available: bool) -> None:
    cfg = config(tmp_path, f'[workflows]\nmirror = "{mirror(tmp_path)}"\n')
    done = cli("run", str(url_request(tmp_path)), "--out", str(tmp_path / "out"), "--json",
               "--config", str(cfg))
    assert done.returncode == 0, done.stderr
    report = next((tmp_path / "out").rglob("outputs/report.txt")).read_text()
    assert report.startswith("lines: 4\n")


def test_url_workflow_without_mirror_is_refused_never_downloaded(tmp_path: Path) -> None:
    done = cli("plan", str(url_request(tmp_path)), "--json", "--config", str(config(tmp_path)))
    assert done.returncode == 3
    assert URL in done.stdout and "mirror" in done.stdout


def test_mirror_checksum_mismatch_is_refused(tmp_path: Path) -> None:
    cfg = config(tmp_path, f'[workflows]\nmirror = "{mirror(tmp_path, tamper=True)}"\n')
    done = cli("plan", str(url_request(tmp_path)), "--json", "--config", str(cfg))
    assert done.returncode == 3 and "sha256" in done.stdout.lower()


def dataset_request(tmp_path: Path) -> Path:
    """A request whose data input is a TRE-local dataset id, not a file in the crate."""
    spec = RequestSpec(workflow_dir=THREE_STEP, main_workflow="workflow.cwl",
                       inputs=(FileInput("data", THREE_STEP / "test" / "input.txt"),
                               ValueInput("repeat", 1)), name="Request for a TRE dataset")
    crate = tmp_path / "dataset-request"
    from cratebridge.testing import write_request_dir

    write_request_dir(spec, crate)
    metadata = request_metadata(spec)
    graph = metadata["@graph"]
    assert isinstance(graph, list)
    local_id = "_:localid:tre72:cohort-2024"
    text = json.dumps(metadata).replace('"input.txt"', json.dumps(local_id))
    (crate / "ro-crate-metadata.json").write_text(text)
    (crate / "input.txt").unlink()
    return crate


def test_tre_dataset_ids_map_to_operator_paths(tmp_path: Path, docker_available: bool) -> None:
    data = tmp_path / "tre-data" / "cohort.txt"
    data.parent.mkdir()
    shutil.copy(THREE_STEP / "test" / "input.txt", data)
    crate = dataset_request(tmp_path)
    unmapped = cli("plan", str(crate), "--json", "--config", str(config(tmp_path)))
    assert unmapped.returncode == 4, unmapped.stdout
    assert json.loads(unmapped.stdout)["rule"] == "datasets.map"
    cfg = config(tmp_path, f'[datasets]\n"_:localid:tre72:cohort-2024" = "{data}"\n')
    done = cli("run", str(crate), "--out", str(tmp_path / "out"), "--json", "--config", str(cfg))
    assert done.returncode == 0, done.stderr
    assert data.read_text() == (THREE_STEP / "test" / "input.txt").read_text()
    assert not list((tmp_path / "out").rglob("cohort.txt")), "mapped TRE data must not leave"

"""Result crates at the validator's RECOMMENDED level: single tools, expression tools,
file names with ``#``, spaces, ``%`` and non-ASCII letters, and no host path in any id.

The engines' three-step and failing runs are checked by the conformance kit
(``cratebridge.testing.kit.assert_recommended``); nested workflows by
test_nested_provenance.py. The findings left are documented in docs/result-crate.md.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from urllib.parse import unquote

import pytest

from cratebridge.testing.kit import KIT_PUBLISHER, PROVENANCE_PROFILE, assert_recommended
from cratebridge.testing.validator import (
    ACCEPTED_FINDINGS,
    FAILED_ACTION_FINDINGS,
    UNSTATED_FINDINGS,
    ExternalValidator,
)
from cratebridge_cwl.runner_tool import RESULT_FOLDER

REPO = Path(__file__).resolve().parents[3]
RUNNER = Path(sys.executable).parent / "cratebridge-cwl-runner"
ODD_NAME = "item #1 é%20 (copy).txt"
ODD_OUTPUT = "out #1 é%.txt"

CAT = """\
cwlVersion: v1.2
class: CommandLineTool
requirements:
  DockerRequirement: {dockerPull: "cratebridge/busybox:1"}
baseCommand: cat
inputs:
  f: {type: File, inputBinding: {position: 1}}
stdout: "ODD_OUTPUT"
outputs:
  o: {type: stdout}
""".replace("ODD_OUTPUT", ODD_OUTPUT)

EXPRESSION = """\
cwlVersion: v1.2
class: ExpressionTool
requirements:
  InlineJavascriptRequirement: {}
inputs:
  n: int
outputs:
  out: int
expression: "$({'out': inputs.n + 1})"
"""


def test_docs_list_exactly_the_findings_the_tests_accept() -> None:
    text = (REPO / "docs" / "result-crate.md").read_text()
    section = text.split("## What the validator still says at RECOMMENDED", 1)[1]
    documented = set(re.findall(r"^\| `([a-z0-9.-]+_[0-9.]+)` \|", section, re.M))
    accepted = {*ACCEPTED_FINDINGS, *FAILED_ACTION_FINDINGS, *UNSTATED_FINDINGS}
    assert documented == accepted


@pytest.fixture(scope="module")
def validator() -> ExternalValidator:
    found = ExternalValidator.find()
    assert found is not None, "rocrate-validator and the shared profiles are part of the tests"
    return found


def _run(tmp: Path, tool: str, job: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    (tmp / "tool.cwl").write_text(tool)
    (tmp / "job.yml").write_text(job)
    config = tmp / "cratebridge.toml"
    config.write_text(KIT_PUBLISHER)
    done = subprocess.run([str(RUNNER), "--config", str(config), "--keep-run", "--outdir",
                           str(tmp / "out"), str(tmp / "tool.cwl"), str(tmp / "job.yml")],
                          capture_output=True, text=True, timeout=600, check=False)
    kept = re.search(r"run folder kept in (\S+)", done.stderr)
    assert kept, done.stderr
    shutil.move(kept[1], tmp / "kept")  # pytest removes it with tmp
    result = tmp / "out" / RESULT_FOLDER  # the run's result folder, moved there
    assert (result / "ro-crate-metadata.json").is_file(), done.stderr
    _no_host_paths(result, tmp, Path(kept[1]))
    return done, result


def _no_host_paths(crate: Path, *hosts: Path) -> None:
    text = (crate / "ro-crate-metadata.json").read_text()
    assert "file:" not in text
    for host in hosts:
        assert str(host) not in text and str(host.resolve()) not in text


@pytest.mark.docker
@pytest.mark.validator
def test_odd_file_names_run_end_to_end_with_escaped_ids(tmp_path: Path,
                                                        validator: ExternalValidator) -> None:
    (tmp_path / ODD_NAME).write_text("hello\n")
    done, crate = _run(tmp_path, CAT, json.dumps({"f": {"class": "File", "path": ODD_NAME}}))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / ODD_OUTPUT).read_text() == "hello\n"
    graph = json.loads((crate / "ro-crate-metadata.json").read_text())["@graph"]
    ids = {entity["@id"] for entity in graph}
    assert "outputs/out%20%231%20%C3%A9%25.txt" in ids
    files = [i for i in ids if not i.startswith(("#", "http", "./", "ro-crate"))]
    for entity_id in files:  # every id is a relative URI naming a file of the crate
        path = entity_id.split("#")[0]
        assert " " not in path and "é" not in path, entity_id
        assert (crate / unquote(path)).exists(), entity_id
    assert_recommended(validator, crate, PROVENANCE_PROFILE,
                       unstated={"process-run-crate-0.5_7.1", "process-run-crate-0.5_4.1"})


@pytest.mark.validator
def test_a_lone_expression_tool_is_a_provenance_run_crate(tmp_path: Path,
                                                          validator: ExternalValidator) -> None:
    done, crate = _run(tmp_path, EXPRESSION, "n: 4\n")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"out": 5}
    graph = {e["@id"]: e for e in json.loads((crate / "ro-crate-metadata.json").read_text())
             ["@graph"]}
    step = graph["#step-run-0"]
    assert step["instrument"] == {"@id": "#tool-tool.cwl"} and "containerImage" not in step
    assert_recommended(validator, crate, PROVENANCE_PROFILE,
                       unstated={"process-run-crate-0.5_7.1", "process-run-crate-0.5_4.1"})


@pytest.mark.docker
def test_each_file_is_stored_once_and_the_run_crate_names_nothing_outside_it(
        tmp_path: Path) -> None:
    request = REPO / "fixtures" / "crates" / "demo-request.zip"
    config = tmp_path / "cratebridge.toml"
    config.write_text(f'[run]\nruns_dir = "{tmp_path / "runs"}"\n\n' + KIT_PUBLISHER)
    out = tmp_path / "result"
    done = subprocess.run([str(RUNNER.parent / "cratebridge"), "run", str(request), "--out",
                           str(out), "--config", str(config)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    crate = out / "data"
    with zipfile.ZipFile(request) as shipped:  # the request's own files, as it sent them
        sent = {hashlib.sha512(shipped.read(i)).hexdigest() for i in shipped.infolist()
                if not i.is_dir() and "/data/" in f"/{i.filename}"}
    made: dict[str, list[str]] = {}
    for path in sorted(p for p in crate.rglob("*") if p.is_file() and p.stat().st_size):
        digest = hashlib.sha512(path.read_bytes()).hexdigest()
        made.setdefault(digest, []).append(path.relative_to(crate).as_posix())
    twice = {d: paths for d, paths in made.items() if len(paths) > 1 and d not in sent}
    assert not twice, twice
    nested = json.loads((crate / "provenance" / "ro-crate-metadata.json").read_text())
    assert not [e["@id"] for e in nested["@graph"] if e["@id"].startswith("../")]
    outer = json.loads((crate / "ro-crate-metadata.json").read_text())
    files = [e["@id"] for e in outer["@graph"] if "File" in json.dumps(e.get("@type"))]
    assert files and all(f == "ro-crate-metadata.json" or f.startswith("provenance/")
                         for f in files), files

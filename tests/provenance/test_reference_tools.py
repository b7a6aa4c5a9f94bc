"""The reference tools on our result crates: runcrate 0.6.2 and ro-crate-py 0.16.

``runcrate report`` reads every engine's run crate; ``runcrate run`` re-runs a CWL
one and must give the same outputs byte for byte without writing outside its own
folder; ro-crate-py reads every result crate, outer and nested, and writes it back
with its ``@context`` and ``conformsTo`` intact. Each crate comes from a real run
(real engines, real containers), made once per session. runcrate pins cwl-utils
0.40, which the main venv's cwltool cannot use, so it has a venv of its own,
``.venv-runcrate`` (``make runcrate-venv``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from rocrate.rocrate import ROCrate

from cratebridge.engines.record import ParameterValue
from cratebridge.provenance import build_result_crate
from cratebridge.testing import FileInput, RequestSpec, ValueInput, write_request_zip

from .conftest import make_run

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
RUNCRATE_VENV = REPO / ".venv-runcrate"
WORKFLOWS = REPO / "fixtures" / "workflows"
NEXTFLOW_STANDIN = REPO / "fixtures" / "nextflow-standin"
BIN = Path(sys.executable).parent
RUN_CRATE_PROFILE = "provenance-run-crate-0.5"
METADATA = "ro-crate-metadata.json"

Graph = dict[str, dict[str, Any]]
Validator = Callable[..., tuple[bool, str]]


@dataclass(frozen=True)
class Result:
    """A result crate: its crate folder (a bag's ``data/``) and its run crate's folder
    (``provenance/`` for a Five Safes request, else the crate itself)."""

    crate: Path
    run_crate: Path


@dataclass
class Results:
    """The result crates of real runs, each made the first time a test asks for it."""

    root: Path
    made: dict[str, Result] = field(default_factory=dict)

    def get(self, name: str) -> Result:
        if name not in self.made:
            self.made[name] = self._make(name)
        return self.made[name]

    def _make(self, name: str) -> Result:
        if name == "cwltool":
            return self._run(REPO / "fixtures" / "crates" / "demo-request.zip", name)
        if name == "toil":
            return self._run(REPO / "fixtures" / "crates" / "demo-request.zip", name,
                             "--engine", "toil")
        if name == "cwltool-scalars":  # a false and a zero: values runcrate once refused
            values: dict[str, str | int | float | bool] = {
                "text": "hello crate", "count": 0, "flag": False, "ratio": 0.25}
            spec = RequestSpec(workflow_dir=WORKFLOWS / "cwl" / "scalar-inputs",
                               inputs=tuple(ValueInput(k, v) for k, v in values.items()))
            return self._run(write_request_zip(spec, self.root / f"{name}.zip"), name)
        if name == "snakemake":
            return self._run(self._three_step("snakemake", "Snakefile"), name)
        if name == "nextflow-standin":  # the stand-in, not Nextflow (docs/nextflow.md)
            path = f"{NEXTFLOW_STANDIN}{os.pathsep}{os.environ.get('PATH', '')}"
            return self._run(self._three_step("nextflow", "main.nf"), name, path=path)
        if name == "cwl-runner-arrays":  # arrays held as JSON text in the request crate
            return self._cwl_runner(name, "arrays.cwl", "arrays-job.yml")
        raise ValueError(name)

    def _three_step(self, language: str, main: str) -> Path:
        folder = WORKFLOWS / language / "three-step"
        spec = RequestSpec(workflow_dir=folder, main_workflow=main,
                           inputs=(FileInput("data", folder / "test" / "input.txt"),
                                   ValueInput("repeat", 2)))
        return write_request_zip(spec, self.root / f"{language}-request.zip")

    def _config(self) -> Path:
        config = self.root / "cratebridge.toml"
        if not config.exists():
            config.write_text(f'[run]\nruns_dir = "{self.root / "runs"}"\ntimeout = "10m"\n')
        return config

    def _run(self, request: Path, name: str, *args: str, path: str | None = None) -> Result:
        out = self.root / name
        _check(subprocess.run(
            [str(BIN / "cratebridge"), "run", str(request), "--out", str(out), "--config",
             str(self._config()), *args], capture_output=True, text=True, check=False,
            timeout=900, env=_env(PATH=path or os.environ.get("PATH", ""))))
        crate = out / "data" if (out / "bagit.txt").is_file() else out
        return Result(crate, crate / "provenance")

    def _cwl_runner(self, name: str, tool: str, job: str) -> Result:
        out = self.root / name
        folder = WORKFLOWS / "cwl-runner"
        _check(subprocess.run(
            [str(BIN / "cratebridge-cwl-runner"), "--quiet", "--config", str(self._config()),
             "--outdir", str(out), tool, job], capture_output=True, text=True, check=False,
            timeout=900, cwd=folder, env=_env()))
        crate = out / ".cratebridge-result"  # a Workflow RO-Crate request: the run crate
        return Result(crate, crate)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CRATEBRIDGE_CONFIG"}
    env.update(extra)
    return env


def _check(done: subprocess.CompletedProcess[str]) -> None:
    if done.returncode != 0:
        pytest.fail(f"{shlex.join(map(str, done.args))} exited {done.returncode}:\n"
                    f"{done.stdout}\n{done.stderr}")


@pytest.fixture(scope="session")
def results(tmp_path_factory: pytest.TempPathFactory, docker_available: bool) -> Results:
    return Results(tmp_path_factory.mktemp("reference-tools"))


@pytest.fixture(scope="session")
def runcrate() -> Path:
    """``runcrate`` in ``.venv-runcrate``; missing, it fails the test in CI, else skips it."""
    executable = RUNCRATE_VENV / "bin" / "runcrate"
    if not (executable.is_file() and (RUNCRATE_VENV / "bin" / "cwltool").is_file()):
        message = f"no runcrate and cwltool in {RUNCRATE_VENV}: run `make runcrate-venv`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return executable


def _graph(folder: Path) -> Graph:
    return {e["@id"]: e for e in json.loads((folder / METADATA).read_text())["@graph"]}


def _ids(value: object) -> list[str]:
    items = value if isinstance(value, list) else [] if value is None else [value]
    return [str(item["@id"]) for item in items if isinstance(item, dict)]


def _types(entity: dict[str, Any]) -> list[str]:
    kind = entity.get("@type", [])
    return [kind] if isinstance(kind, str) else list(kind)


ENGINES = ["cwltool", "toil", "snakemake", "nextflow-standin", "cwltool-scalars",
           "cwl-runner-arrays"]
CWL = ["cwltool", "toil", "cwltool-scalars", "cwl-runner-arrays"]
FIVE_SAFES = [name for name in ENGINES if name != "cwl-runner-arrays"]


# -- runcrate report ---------------------------------------------------------------------


@dataclass
class Reported:
    instrument: str = ""
    inputs: int = 0
    outputs: int = 0


def _report(text: str) -> dict[str, Reported]:
    """``runcrate report``'s actions: instrument id and the number of inputs and outputs."""
    actions: dict[str, Reported] = {}
    current, section = Reported(), ""
    for line in text.splitlines():
        if line.startswith("action: "):
            current = actions[line.removeprefix("action: ")] = Reported()
        elif line.startswith("  instrument: "):
            current.instrument = line.removeprefix("  instrument: ").rsplit(" (", 1)[0]
        elif line.startswith("  ") and not line.startswith("   "):
            section = line.strip()
        elif line.startswith("    ") and section in ("inputs:", "outputs:"):
            if section == "inputs:":
                current.inputs += 1
            else:
                current.outputs += 1
    return actions


@pytest.mark.parametrize("name", ENGINES)
def test_runcrate_report_reads_every_engines_run_crate(
        results: Results, runcrate: Path, name: str) -> None:
    run_crate = results.get(name).run_crate
    done = subprocess.run([str(runcrate), "report", str(run_crate)], capture_output=True,
                          text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr
    reported = _report(done.stdout)
    graph = _graph(run_crate)
    actions = {i: e for i, e in graph.items() if "CreateAction" in _types(e)}
    assert next(iter(reported)) == "#workflow-run"  # the main workflow's run comes first
    assert set(reported) == set(actions)
    for action_id, action in actions.items():
        seen = reported[action_id]
        assert seen.instrument == action["instrument"]["@id"], action_id
        assert seen.inputs == len(_ids(action.get("object"))), action_id
        assert seen.outputs == len(_ids(action.get("result"))), action_id


# -- runcrate run ------------------------------------------------------------------------


def _cwl_runner(sandbox: Path) -> Path:
    """The ``--executable`` for ``runcrate run``, which calls it as ``EXECUTABLE WORKFLOW
    PARAMS``: cwltool with local images only, its scratch folders in the sandbox."""
    scratch = sandbox / "cwltool"
    scratch.mkdir()
    cwltool = shlex.quote(str(RUNCRATE_VENV / "bin" / "cwltool"))
    prefix = shlex.quote(f"{scratch}/")
    script = sandbox / "cwl-runner"
    script.write_text(f"#!/bin/sh\nexec {cwltool} --disable-pull --tmpdir-prefix {prefix} "
                      f'--tmp-outdir-prefix {prefix} "$@"\n')
    script.chmod(0o755)
    return script


@pytest.mark.parametrize("name", CWL)
def test_runcrate_run_reproduces_the_outputs_inside_its_own_folder(
        results: Results, runcrate: Path, name: str, tmp_path: Path) -> None:
    result = results.get(name)
    executable = _cwl_runner(tmp_path)
    tmp, out = tmp_path / "tmp", tmp_path / "out"
    tmp.mkdir()
    out.mkdir()
    done = subprocess.run(
        [str(runcrate), "run", "--keep-wd", "--executable", str(executable),
         str(result.run_crate)], capture_output=True, text=True, check=False, timeout=600,
        cwd=out, env=_env(TMPDIR=str(tmp)))
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"

    # runcrate copies the crate to a folder of its own under TMPDIR; nothing goes beside it
    beside = sorted(p.name for p in tmp.iterdir())
    assert len(beside) == 1 and beside[0].startswith("runcrate_"), \
        f"runcrate run wrote beside its folder in TMPDIR: {beside}"
    workdir = tmp / beside[0]
    allowed = (workdir, out, tmp_path / "cwltool", executable)
    stray = [p for p in tmp_path.rglob("*")
             if p != tmp and not any(p == a or p.is_relative_to(a) for a in allowed)]
    assert not stray, f"runcrate run wrote outside its folder: {stray}"

    graph = _graph(result.run_crate)
    produced = _ids(graph["#workflow-run"]["result"])
    assert produced and all("File" in _types(graph[i]) for i in produced)
    paths = [result.run_crate / unquote(i) for i in produced]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)
    for path in paths:
        assert (out / path.name).read_bytes() == path.read_bytes(), path


# -- what we write for them --------------------------------------------------------------


@pytest.mark.parametrize("name", FIVE_SAFES)
def test_the_nested_run_crate_holds_every_file_it_describes(results: Results,
                                                            name: str) -> None:
    result = results.get(name)
    graph = _graph(result.run_crate)
    parts = set(_ids(graph["./"]["hasPart"]))
    assert not [i for i in graph if i.startswith("../")]
    for entity_id, entity in graph.items():
        if {"File", "Dataset"} & set(_types(entity)) and entity_id != "./" \
                and "://" not in entity_id and not entity_id.startswith("#"):
            assert (result.run_crate / unquote(entity_id.split("#")[0])).exists(), entity_id
            assert entity_id in parts, entity_id
    # the files the run read and wrote are those of the outer crate's action
    outer = _graph(result.crate)
    [request] = [e for e in outer.values() if "CreateAction" in _types(e)]
    for key in ("object", "result"):
        inner = _digests(result.run_crate, graph, graph["#workflow-run"].get(key))
        assert inner == _digests(result.crate, outer, request.get(key)), key
        assert inner or key == "object", key


def _digests(folder: Path, graph: Graph, value: object) -> list[str]:
    """The sha-512 of each File among the referenced entities, read from the folder."""
    return sorted(hashlib.sha512((folder / unquote(i)).read_bytes()).hexdigest()
                  for i in _ids(value) if "File" in _types(graph[i]))


def test_values_are_written_as_runcrates_converter_writes_them(
        results: Results, validator: Validator) -> None:
    """Scalars as text, arrays as lists, files and folders in arrays as data entities."""
    for name in ("cwl-runner-arrays", "cwltool-scalars"):
        run_crate = results.get(name).run_crate
        graph = _graph(run_crate)
        main = graph["./"]["mainEntity"]["@id"]
        values = {}
        for entity_id in _ids(graph["#workflow-run"]["object"]):
            entity = graph[entity_id]
            [parameter] = [graph[i] for i in _ids(entity["exampleOfWork"])
                           if i.startswith(f"{main}#input/")]
            values[parameter["name"]] = (parameter["additionalType"], entity)
        if name == "cwltool-scalars":
            assert {k: (t, e["value"]) for k, (t, e) in values.items()} == {
                "text": ("Text", "hello crate"), "count": ("Integer", "0"),
                "flag": ("Boolean", "False"), "ratio": ("Float", "0.25")}
        else:
            kind, folders = values["folders"]
            assert kind == "Dataset" and folders["@type"] == "PropertyValue"
            assert [graph[i]["@type"] for i in _ids(folders["value"])] == ["Dataset"] * 2
            kind, files = values["files"]
            assert kind == "File" and [graph[i]["@type"] for i in _ids(files["value"])] == [
                "File"] * 2
            assert values["words"][0] == "Text" and values["words"][1]["value"] == ["x", "y z"]
            assert {k: values[k][1]["value"] for k in ("flag", "off", "zero", "ratio")} == {
                "flag": "True", "off": "False", "zero": "0", "ratio": "0.5"}
        ok, output = validator(run_crate, profile=RUN_CRATE_PROFILE)
        assert ok, output


def test_a_one_item_array_stays_a_list(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    record = replace(run.record, outputs=(*run.record.outputs, ParameterValue("words", ["x"])))
    crate = build_result_crate(run.request, record, run_dir=run.run_dir, dest=tmp_path / "r")
    [words] = [e for e in _graph(crate / "provenance").values()
               if e["@type"] == "PropertyValue" and e.get("name") == "words"]
    assert words["value"] == ["x"]


# -- ro-crate-py -------------------------------------------------------------------------


CRATES = [(name, "outer") for name in FIVE_SAFES] + [(name, "run crate") for name in ENGINES]


@pytest.mark.parametrize(("name", "which"), CRATES)
def test_ro_crate_py_reads_and_writes_back_context_and_profiles(
        results: Results, name: str, which: str, tmp_path: Path) -> None:
    result = results.get(name)
    source = result.crate if which == "outer" else result.run_crate
    original = json.loads((source / METADATA).read_text())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        crate = ROCrate(source)
        # ro-crate-py writes the RO-Crate context of the crate's version and drops the
        # rest it read (ro-crate-py#61); extra_contexts / extra_terms are its means to add
        # them back (ro-crate-py#160, #53)
        context = original["@context"]
        for extra in context[1:] if isinstance(context, list) else []:
            if isinstance(extra, str):
                crate.metadata.extra_contexts.append(extra)
            else:
                crate.metadata.extra_terms.update(extra)
        out = tmp_path / "copy"
        crate.write(out)
    assert not [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert [p.name for p in tmp_path.iterdir()] == ["copy"]  # nothing written beside it

    written = json.loads((out / METADATA).read_text())
    assert written["@context"] == context
    assert _graph(out) == _graph(source)  # conformsTo of root and descriptor included
    assert _ids(_graph(out)["./"]["conformsTo"]) == _ids(_graph(source)["./"]["conformsTo"])
    for entity_id in _ids(_graph(out)["./"].get("hasPart")):
        if "://" not in entity_id:
            assert (out / unquote(entity_id)).exists(), entity_id

"""``plan`` for Nextflow: the exact command, environment and config; nothing goes online."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import WORKFLOWS

from cratebridge import pipeline
from cratebridge.config import Config
from cratebridge.errors import MetadataError, UnsupportedCrate, UsageError
from cratebridge.testing import FileInput, RequestSpec, ValueInput, write_request_zip
from cratebridge_nextflow.engine import _VERSION, run_name
from cratebridge_nextflow.params import convert
from cratebridge_nextflow.scan import scan_workflow
from cratebridge_nextflow.settings import NextflowSettings, generated_config
from cratebridge_nextflow.trace import read_trace

URL = re.compile(r"[a-z][a-z0-9+.-]*://", re.IGNORECASE)


def _three_step(tmp_path: Path) -> Path:
    spec = RequestSpec(workflow_dir=WORKFLOWS / "three-step", main_workflow="main.nf",
                       inputs=(FileInput("data", WORKFLOWS / "three-step" / "test" / "input.txt"),
                               ValueInput("repeat", "2")))
    return write_request_zip(spec, tmp_path / "request.zip")


def _without_comments(text: str) -> str:
    return "\n".join(line.split("//", 1)[0] if line.lstrip().startswith("//") else line
                     for line in text.splitlines())


@pytest.mark.docker
def test_plan_is_offline_by_construction(nextflow: str, docker_up: bool,
                                         tmp_path: Path) -> None:
    plan = pipeline.plan(_three_step(tmp_path), engine="nextflow",
                         config=Config(runs_dir=tmp_path / "runs")).plan
    command = list(plan.command)
    assert Path(command[0]).name == "nextflow"
    assert command[command.index("run") + 1].endswith("main.nf")
    for flag in ("-offline", "-params-file", "-c", "-work-dir", "-with-trace", "-name",
                 "-log"):
        assert flag in command
    assert command[command.index("-ansi-log") + 1] == "false"
    assert "-resume" not in command and "-latest" not in command
    assert plan.env["NXF_OFFLINE"] == "true"
    assert plan.env["NXF_DISABLE_CHECK_LATEST"] == "true"
    assert plan.env["NXF_PLUGINS_DEFAULT"] == "false"
    assert plan.env["NXF_PLUGINS_ALLOWED"] == ""
    assert plan.env["NXF_ANSI_LOG"] == "false"
    assert "NXF_PLUGINS_REGISTRY_URL" not in plan.env and "TOWER_ACCESS_TOKEN" not in plan.env
    assert not any(k.lower().endswith("_proxy") for k in plan.env)
    # the broker's client comes first, so every `docker` Nextflow runs goes to the broker
    assert plan.env["PATH"].split(os.pathsep)[0] == "/run/cratebridge/bin"
    assert plan.env["CRATEBRIDGE_BROKER"] == "/run/cratebridge/docker.sock"
    config = plan.files["cratebridge.config"]
    for line in ("enabled = true", "raw = true", "wave.enabled = false",
                 "fusion.enabled = false", "tower.enabled = false", "conda.enabled = false",
                 "writableInputMounts = false", "executor = 'local'"):
        assert line in config
    fields = re.search(r"fields = '([^']+)'", config)
    assert fields and {"task_id", "hash", "process", "status", "exit", "container", "submit",
                       "start", "complete", "workdir"} <= set(fields.group(1).split(","))
    everything = " ".join(command) + " " + " ".join(plan.env.values()) + " " + \
        _without_comments(config) + " " + plan.files["params.json"]
    assert not URL.search(everything)
    assert plan.parameters["repeat"] == 2  # a string in the crate, an int for Nextflow
    assert [(i.image, i.present) for i in plan.images] == [("cratebridge/python:3.11", True)]
    assert set(plan.steps) == {"COUNT", "HEAD", "COMBINE"}
    assert any("static scan" in note for note in plan.notes)


@pytest.mark.docker
def test_cli_plan_prints_command_env_and_config(nextflow: str, docker_up: bool,
                                                tmp_path: Path) -> None:
    env = {**os.environ, "CRATEBRIDGE_RUNS_DIR": str(tmp_path / "runs")}
    done = subprocess.run([str(Path(sys.executable).parent / "cratebridge"), "plan",
                           str(_three_step(tmp_path)), "--engine", "nextflow", "--json"],
                          capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    json.loads(text)
    for shown in ("-offline", "-params-file", "NXF_OFFLINE", "wave.enabled = false",
                  "cratebridge/python:3.11"):
        assert shown in text


def test_scan_finds_processes_and_containers() -> None:
    root = WORKFLOWS / "three-step"
    scan = scan_workflow(root, root / "main.nf")
    assert set(scan.processes) == {"COUNT", "HEAD", "COMBINE"}
    assert {scan.image_of(p) for p in scan.processes} == {"cratebridge/python:3.11"}
    assert {"data", "repeat", "outdir"} <= scan.params


def test_scan_reads_config_selectors_plugins_and_dynamic_containers(tmp_path: Path) -> None:
    (tmp_path / "main.nf").write_text(
        "process A {\n  container \"${ workflow.containerEngine == 'singularity' ? "
        "'https://depot.example/a.img' : 'biocontainers/a:1.0' }\"\n  script:\n  '''\n"
        "  echo }\n  '''\n}\nprocess B {\n  script:\n  \"echo\"\n}\nworkflow { A(); B() }\n")
    (tmp_path / "nextflow.config").write_text(
        "plugins {\n  id 'nf-schema@2.4.2'\n}\nprocess {\n  container = 'base:1'\n"
        "  withName: 'B' {\n    container = 'b:2'\n  }\n}\n")
    scan = scan_workflow(tmp_path, tmp_path / "main.nf")
    assert scan.image_of("A") == "biocontainers/a:1.0"
    assert scan.image_of("B") == "b:2"
    assert scan.plugins == ("nf-schema@2.4.2",)
    assert any("expression" in n for n in scan.notes)


def test_plugins_in_workflow_config_are_refused(tmp_path: Path) -> None:
    from cratebridge_nextflow.engine import NextflowEngine

    (tmp_path / "nextflow.config").write_text("plugins {\n  id 'nf-schema@2.4.2'\n}\n")
    (tmp_path / "main.nf").write_text("workflow { }\n")
    scan = scan_workflow(tmp_path, tmp_path / "main.nf")
    with pytest.raises(UnsupportedCrate, match="nf-schema"):
        NextflowEngine()._check_plugins(scan, NextflowSettings())
    NextflowEngine()._check_plugins(scan, NextflowSettings(plugins=("nf-schema@2.4.2",)))


@pytest.mark.parametrize(("value", "declared", "expected"), [
    ("42", "integer", 42), ("0.25", "number", 0.25), ("true", "boolean", True),
    ("42", "string", "42"), (42, "string", "42"), ("42", None, 42), ("1e3", None, 1000.0),
    ("false", None, False), ("hello", None, "hello"), (3.0, "integer", 3), (7, None, 7),
])
def test_values_are_converted(value: object, declared: str | None, expected: object) -> None:
    got = convert("x", value, declared, "here")
    assert got == expected and type(got) is type(expected)


def test_a_value_that_does_not_fit_is_rejected() -> None:
    with pytest.raises(MetadataError, match="not an integer"):
        convert("count", "many", "integer", "input #count")


def test_settings_are_checked() -> None:
    with pytest.raises(UsageError, match="executor"):
        NextflowSettings.from_mapping({"executor": "awsbatch"})
    with pytest.raises(UsageError, match="unknown"):
        NextflowSettings.from_mapping({"execut0r": "slurm"})
    slurm = NextflowSettings.from_mapping({"executor": "slurm", "queue": "tre",
                                           "max_cpus": 4, "max_memory": "8 GB"})
    config = generated_config(slurm, Path("/run/trace.tsv"))
    assert "executor = 'slurm'" in config and "queue = 'tre'" in config
    assert "resourceLimits = [cpus: 4, memory: '8 GB']" in config


@pytest.mark.parametrize(("output", "version"), [
    ("\n      N E X T F L O W\n      version 25.10.0 build 10289\n      created 15-10-2025\n",
     "25.10.0"),
    ("nextflow version 24.10.4.5934\n", "24.10.4"),
    ("nextflow version 26.08.0-edge.6000\n", "26.08.0-edge"),
])
def test_version_is_parsed(output: str, version: str) -> None:
    match = _VERSION.search(output)
    assert match and match.group(1) == version


def test_run_names_follow_nextflows_pattern() -> None:
    pattern = re.compile(r"^[a-z](?:[a-z\d]|[-_](?=[a-z\d])){0,79}$", re.IGNORECASE)
    for run_id in ("20250101T120000Z-abcd1234", "plan", "x" * 200):
        assert pattern.match(run_name(run_id))


def test_trace_in_default_and_raw_formats(tmp_path: Path) -> None:
    trace = tmp_path / "trace.txt"
    trace.write_text(
        "task_id\thash\tnative_id\tprocess\tname\tstatus\texit\tcontainer\tsubmit\tstart\t"
        "complete\tworkdir\n"
        "1\tab/cdef12\t4242\tCOUNT\tCOUNT (1)\tCOMPLETED\t0\timg:1\t2025-01-02 03:04:05.678\t"
        "-\t-\t/w/ab/cdef\n"
        "2\t12/345678\t-\tHEAD\tHEAD\tFAILED\t3\t-\t1735787045678\t1735787046000\t"
        "1735787047000\t-\n"
        "3\tcut\n")
    rows = read_trace(trace)
    assert [r.process for r in rows] == ["COUNT", "HEAD"]
    assert rows[0].submit is not None and rows[0].start is None and rows[0].exit == 0
    assert rows[1].failed and rows[1].exit == 3 and rows[1].container is None
    assert rows[1].submit and rows[1].submit.timestamp() == 1735787045.678
    assert rows[1].native_id is None and rows[1].workdir is None

"""What a TRE agent scripts against: events, its own run id and labels, cancel, versions, errors.

Through the real CLI and the Python API, with a real engine (cwltool) and
real containers: the event stream is checked against the result crate it
ends with, and a run cancelled from another thread still writes a failed
result crate naming the cancelled step.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from cratebridge import api
from cratebridge.config import Config
from cratebridge.containers import client
from cratebridge.events import KINDS, RunEvent
from cratebridge.testing import RequestSpec, ValueInput, ZipLayout, write_request_zip
from cratebridge.testing.validator import ExternalValidator

REPO = Path(__file__).resolve().parent.parent
SHELL = REPO / "fixtures" / "workflows" / "cwl" / "shell"


def shell_crate(folder: Path, command: str) -> Path:
    spec = RequestSpec(workflow_dir=SHELL, main_workflow="workflow.cwl",
                       inputs=(ValueInput("command", command),), name="Shell request")
    return write_request_zip(spec, folder / "shell.zip", ZipLayout.FOLDER)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cratebridge", *args], capture_output=True,
                          text=True, timeout=300, check=False)


def config(tmp_path: Path) -> Path:
    path = tmp_path / "cratebridge.toml"
    path.write_text(f'[run]\nruns_dir = "{tmp_path / "runs"}"\n')
    return path


def outer_graph(result: Path) -> dict[str, dict[str, Any]]:
    data = json.loads((result / "data" / "ro-crate-metadata.json").read_text())
    return {e["@id"]: e for e in data["@graph"]}


@pytest.mark.docker
def test_events_run_id_and_labels_through_the_cli(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    done = cli("run", str(shell_crate(tmp_path, "echo hello")), "--out", str(tmp_path / "r"),
               "--json", "--config", str(config(tmp_path)), "--events", str(events),
               "--run-id", "agent-job-42", "--label", "ticket=TRE-7", "--label", "team=a")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["run_id"] == "agent-job-42"
    assert (tmp_path / "runs" / "agent-job-42").is_dir()
    said = [json.loads(line) for line in events.read_text().splitlines()]
    assert {e["run_id"] for e in said} == {"agent-job-42"}
    assert all(e["kind"] in KINDS for e in said)
    assert said[0]["kind"] == "accepted" and said[0]["labels"] == {"ticket": "TRE-7", "team": "a"}
    assert [e["stage"] for e in said if e["kind"] == "stage"] == \
        ["intake", "plan", "execute", "package"]
    live = [e["state"] for e in said if e["kind"] == "step" and e["state"] == "started"]
    assert live, "the engine's steps are heard as they start"
    (recorded,) = [e for e in said if e["kind"] == "step" and e["state"] == "completed"]
    assert recorded["image"] == "cratebridge/busybox:1" and recorded["exit_code"] == 0
    assert [e["parameter"] for e in said if e["kind"] == "output"] == ["out"]
    assert said[-1]["kind"] == "finished" and said[-1]["status"] == "completed"
    assert said[-1]["path"] == doc["result"]
    # the labels are in the result crate, on the request's CreateAction
    graph = outer_graph(tmp_path / "r")
    action = next(e for e in graph.values() if e.get("@type") == "CreateAction")
    labels = {graph[p["@id"]]["name"]: graph[p["@id"]]["value"]
              for p in action["additionalProperty"]}
    assert labels == {"ticket": "TRE-7", "team": "a"}
    validator = ExternalValidator.find()
    assert validator is not None, "rocrate-validator is part of the test set-up"
    validator.seed()
    checked = validator.validate(tmp_path / "r" / "data", "five-safes-crate")
    assert checked.ok, checked.output


@pytest.mark.docker
def test_events_on_standard_output(tmp_path: Path) -> None:
    done = cli("run", str(shell_crate(tmp_path, "true")), "--out", str(tmp_path / "r"),
               "--config", str(config(tmp_path)), "--events", "-")
    assert done.returncode == 0, done.stderr
    kinds = [json.loads(line)["kind"] for line in done.stdout.splitlines()]
    assert kinds[0] == "accepted" and kinds[-1] == "finished"


@pytest.mark.docker
def test_a_refused_run_ends_its_events_with_refused(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    done = cli("run", str(bad), "--out", str(tmp_path / "r"), "--config", str(config(tmp_path)),
               "--events", str(events))
    assert done.returncode == 3
    said = [json.loads(line) for line in events.read_text().splitlines()]
    assert said[0]["kind"] == "accepted" and said[-1]["kind"] == "refused"
    assert said[-1]["exit_code"] == 3


@pytest.mark.docker
def test_cancel_from_another_thread_still_writes_a_failed_result(tmp_path: Path) -> None:
    heard: list[RunEvent] = []
    began = threading.Event()

    def listen(event: RunEvent) -> None:
        heard.append(event)
        if event.kind == "step" and event.state == "started":
            began.set()

    handle = api.start(shell_crate(tmp_path, "echo STEP-BEGAN >&2; sleep 120"),
                       tmp_path / "r.zip", config=Config(runs_dir=tmp_path / "runs"),
                       events=listen, labels={"why": "cancel test"})
    assert handle.run_id
    assert began.wait(120), "the step never started"
    assert handle.cancel("the agent's cancel")
    outcome = handle.wait(120)
    assert outcome.run_id == handle.run_id and outcome.exit_code == 1
    assert "the agent's cancel" in (outcome.record.error or "")
    (step,) = outcome.record.steps
    assert step.error and "was stopped before it finished" in step.error
    assert outcome.result.is_file()
    assert heard[-1].kind == "finished" and heard[-1].status == "failed"


@pytest.mark.docker
def test_an_engine_for_another_language_is_a_usage_error(tmp_path: Path) -> None:
    done = cli("plan", str(shell_crate(tmp_path, "true")), "--engine", "snakemake", "--json",
               "--config", str(config(tmp_path)))
    assert done.returncode == 2, done.stderr
    assert json.loads(done.stdout)["where"] == "--engine"


@pytest.mark.parametrize("args", [
    ["run", "--json"],                      # the crate and --out missing
    ["run", "x.zip", "--out", "r", "--json", "--no-such-flag"],
    ["no-such-command", "--json"],
    ["run", "x.zip", "--out", "r", "--json", "--run-id", "../escape"],
    ["run", "x.zip", "--out", "r", "--json", "--label", "no-equals-sign"],
])
def test_every_usage_error_is_one_json_document(args: list[str], tmp_path: Path) -> None:
    done = cli(*args, "--config", str(config(tmp_path)))
    assert done.returncode == 2, done.stderr
    doc = json.loads(done.stdout)
    assert doc["error"] == "UsageError" and doc["exit_code"] == 2
    assert "Traceback" not in done.stderr


def test_versions() -> None:
    short = cli("--version")
    assert short.returncode == 0 and short.stdout.startswith("cratebridge ")
    done = cli("version", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["cratebridge"] and doc["interface"] and doc["python"]
    assert {"cwltool", "toil", "snakemake", "nextflow"} <= {e["name"] for e in doc["engines"]}
    built = client.compiled()  # make setup builds it
    assert doc["docker_client"] == (str(built) if built else None)
    assert "docker client in the rooms: " in cli("version").stdout


@pytest.mark.docker
def test_a_run_id_cannot_be_taken_twice(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    crate = shell_crate(tmp_path, "true")
    first = cli("run", str(crate), "--out", str(tmp_path / "r1"),
                "--config", str(cfg), "--run-id", "once")
    assert first.returncode == 0, first.stderr
    again = cli("run", str(crate), "--out", str(tmp_path / "r2"),
                "--config", str(cfg), "--run-id", "once", "--json")
    assert again.returncode == 2 and json.loads(again.stdout)["where"] == "--run-id"

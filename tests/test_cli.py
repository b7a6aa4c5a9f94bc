"""The CLI contract TRE agents script against: exit codes, one JSON document, no leftovers."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cratebridge.testing import FileInput, RequestSpec, ValueInput, ZipLayout, write_request_zip

REPO = Path(__file__).resolve().parent.parent
THREE_STEP = REPO / "fixtures" / "workflows" / "cwl" / "three-step"


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cratebridge.cli", *args], capture_output=True,
                          text=True, check=False, cwd=cwd)


def crate(tmp_path: Path, *, repeat: object = 2, extra: tuple[object, ...] = ()) -> Path:
    spec = RequestSpec(workflow_dir=THREE_STEP, main_workflow="workflow.cwl",
                       inputs=(FileInput("data", THREE_STEP / "test" / "input.txt"),
                               ValueInput("repeat", repeat), *extra),  # type: ignore[arg-type]
                       name="CLI test request")
    return write_request_zip(spec, tmp_path / "req.zip", ZipLayout.FOLDER)


def config(tmp_path: Path, text: str = "") -> Path:
    path = tmp_path / "c.toml"
    path.write_text(f'[run]\nruns_dir = "{tmp_path / "runs"}"\n' + text)
    return path


def runs(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "runs"
    return list(folder.iterdir()) if folder.exists() else []


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert cli().returncode == 2
    assert cli("run", "x.zip").returncode == 2  # --out missing
    done = cli("run", str(tmp_path / "missing.zip"), "--out", str(tmp_path / "o.zip"),
               "--json", "--config", str(config(tmp_path)))
    assert done.returncode == 2
    assert json.loads(done.stdout)["error"] == "UsageError"


def test_malformed_crate_exits_3_with_one_json_document_and_no_run_left(tmp_path: Path) -> None:
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("ro-crate-metadata.json", "{not json")
    done = cli("run", str(bad), "--out", str(tmp_path / "o.zip"), "--json",
               "--config", str(config(tmp_path)))
    assert done.returncode == 3
    doc = json.loads(done.stdout)
    assert doc["exit_code"] == 3 and "ro-crate-metadata.json" in (doc["where"] or doc["message"])
    assert "Traceback" not in done.stderr
    assert runs(tmp_path) == [] and not (tmp_path / "o.zip").exists()


@pytest.mark.docker
def test_bad_scalar_value_is_rejected_naming_the_parameter(tmp_path: Path,
                                                           docker_available: bool) -> None:
    done = cli("plan", str(crate(tmp_path, repeat="lots")), "--config", str(config(tmp_path)))
    assert done.returncode == 3
    assert "repeat" in done.stderr and "'lots'" in done.stderr


@pytest.mark.docker
def test_unknown_parameter_is_rejected(tmp_path: Path, docker_available: bool) -> None:
    done = cli("plan", str(crate(tmp_path, extra=(ValueInput("colour", "red"),))),
               "--config", str(config(tmp_path)))
    assert done.returncode == 3 and "no input named 'colour'" in done.stderr


@pytest.mark.docker
def test_unapproved_image_exits_4_naming_the_rule(tmp_path: Path, docker_available: bool) -> None:
    cfg = config(tmp_path, '[images]\napproved = ["tre/approved/*"]\n')
    done = cli("run", str(crate(tmp_path)), "--out", str(tmp_path / "o.zip"), "--json",
               "--config", str(cfg))
    assert done.returncode == 4, done.stderr
    doc = json.loads(done.stdout)
    assert doc["rule"] == "images.approved" and "cratebridge/" in doc["message"]
    assert runs(tmp_path) == []


@pytest.mark.docker
def test_missing_sign_off_exits_4(tmp_path: Path, docker_available: bool) -> None:
    cfg = config(tmp_path, "[policy]\nrequire_sign_off = true\n")
    done = cli("plan", str(crate(tmp_path)), "--json", "--config", str(cfg))
    assert done.returncode == 4 and json.loads(done.stdout)["rule"] == "policy.require_sign_off"


def test_unavailable_engine_exits_5(tmp_path: Path) -> None:
    done = cli("plan", str(crate(tmp_path)), "--engine", "no-such-engine", "--json",
               "--config", str(config(tmp_path)))
    assert done.returncode == 5 and "no-such-engine" in json.loads(done.stdout)["message"]


def test_engines_json_lists_cwltool() -> None:
    done = cli("engines", "--json")
    assert done.returncode == 0
    engines = {e["name"]: e for e in json.loads(done.stdout)["engines"]}
    assert engines["cwltool"]["language"] == "cwl" and engines["cwltool"]["available"]
    assert engines["cwltool"]["distribution"] == "cratebridge-cwl"



def test_a_process_that_leaves_flushes_its_output_and_runs_its_exit_handlers(
        tmp_path: Path) -> None:
    """``leave`` (how the command and the engines' processes end) skips only the last
    collection: buffered output, exit handlers and the exit code all come through."""
    marker = tmp_path / "handled"
    script = ("import atexit, sys\n"
              f"atexit.register(lambda: open({str(marker)!r}, 'w').write('ran'))\n"
              "from cratebridge.leaving import leave\n"
              "sys.stdout.write('buffered, no newline')\n"
              "sys.stderr.write('said on stderr')\n"
              "leave(7)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=False)
    assert (done.returncode, done.stdout, done.stderr) == (7, "buffered, no newline",
                                                           "said on stderr")
    assert marker.read_text() == "ran"

@pytest.mark.docker
def test_plan_json_names_engine_images_command(tmp_path: Path, docker_available: bool) -> None:
    done = cli("plan", str(crate(tmp_path)), "--json", "--config", str(config(tmp_path)))
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["engine"] == "cwltool" and doc["inputs"]["repeat"] == 2
    assert {i["image"] for i in doc["images"]} == {"cratebridge/busybox:1",
                                                   "cratebridge/python:3.11"}
    assert all(i["image_id"].startswith("sha256:") for i in doc["images"])
    assert "--disable-pull" in doc["command"]
    assert runs(tmp_path) == []


@pytest.mark.docker
def test_validate_accepts_a_result_and_spots_a_tampered_output(tmp_path: Path,
                                                               docker_available: bool) -> None:
    out = tmp_path / "result"
    done = cli("run", str(crate(tmp_path)), "--out", str(out), "--config", str(config(tmp_path)))
    assert done.returncode == 0, done.stderr
    ok = cli("validate", str(out), "--json")
    assert ok.returncode == 0, ok.stdout
    assert json.loads(ok.stdout)["kind"] == "result"
    report = next(out.rglob("outputs/report.txt"))
    report.write_text("tampered\n")
    bad = cli("validate", str(out), "--json")
    assert bad.returncode == 3
    assert any("report.txt" in p for p in json.loads(bad.stdout)["problems"])


@pytest.mark.docker
def test_run_on_a_terminal_shows_steps_starting_and_finishing(tmp_path: Path,
                                                               docker_available: bool) -> None:
    command = " ".join([sys.executable, "-m", "cratebridge.cli", "run", str(crate(tmp_path)),
                        "--out", str(tmp_path / "o.zip"), "--config", str(config(tmp_path))])
    done = subprocess.run(["script", "-qec", command, "/dev/null"], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stdout
    for step in ("count", "head", "combine"):
        assert f"{step} started" in done.stdout and f"{step} finished" in done.stdout


@pytest.mark.docker
def test_plan_for_humans_shows_command_environment_and_generated_files(
        tmp_path: Path, docker_available: bool) -> None:
    done = cli("plan", str(crate(tmp_path)), "--config", str(config(tmp_path)))
    assert done.returncode == 0, done.stderr
    for heading in ("engine: cwltool", "images:", "command:", "environment:", "file job.json:"):
        assert heading in done.stdout
    assert "--disable-pull" in done.stdout and '"repeat": 2' in done.stdout

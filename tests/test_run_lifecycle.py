"""Time limits, signals and kills: a run always ends with a result crate and no stray container."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cratebridge import api, pipeline
from cratebridge.containers.sandbox import OWNER_LABEL, RUN_LABEL, labelled_containers, owner_id
from cratebridge.testing import RequestSpec, ValueInput, ZipLayout, write_request_zip

REPO = Path(__file__).resolve().parent.parent
SLEEP = REPO / "fixtures" / "workflows" / "cwl" / "sleep"

pytestmark = pytest.mark.docker


def sleep_crate(tmp_path: Path, seconds: int) -> Path:
    spec = RequestSpec(workflow_dir=SLEEP, main_workflow="workflow.cwl",
                       inputs=(ValueInput("seconds", seconds),), name="Sleep request")
    return write_request_zip(spec, tmp_path / "sleep.zip", ZipLayout.FOLDER)


def config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "cratebridge.toml"
    path.write_text(f'[run]\nruns_dir = "{tmp_path / "runs"}"\n{extra}')
    return path


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cratebridge.cli", *args]


def run_containers(pid: int) -> list[str]:
    """Containers started by the cratebridge process ``pid`` (other runs may share the host)."""
    return labelled_containers("docker", RUN_LABEL, f"{OWNER_LABEL}={owner_id(pid)}",
                               check=True)


def wait_for_container(pid: int, timeout: float = 60) -> list[str]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = run_containers(pid)
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError("no step container started")


def unpacked_action(result: Path, tmp_path: Path) -> dict[str, object]:
    from cratebridge.intake import open_crate

    opened = open_crate(result, tmp_path / "unpacked")
    graph = json.loads((opened.root / "ro-crate-metadata.json").read_text())["@graph"]
    return next(e for e in graph if e.get("@type") == "CreateAction")


@pytest.fixture(autouse=True)
def no_leftovers(docker_available: bool) -> None:
    subprocess.run(cli("cleanup"), check=True, capture_output=True)


def test_time_limit_stops_the_run_and_still_writes_a_result(tmp_path: Path) -> None:
    started = time.monotonic()
    proc = subprocess.Popen(cli("run", str(sleep_crate(tmp_path, 120)), "--out",
                                str(tmp_path / "r.zip"), "--json", "--config",
                                str(config(tmp_path, 'timeout = "4s"\n'))),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert time.monotonic() - started < 60
    doc = json.loads(out)
    assert doc["status"] == "failed" and "time limit" in doc["error"]
    action = unpacked_action(tmp_path / "r.zip", tmp_path)
    assert action["actionStatus"] == "http://schema.org/FailedActionStatus"
    assert "time limit" in str(action["error"])
    assert run_containers(proc.pid) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_engine_and_containers_with_a_failed_result(tmp_path: Path,
                                                                 sig: signal.Signals) -> None:
    proc = subprocess.Popen(cli("run", str(sleep_crate(tmp_path, 120)), "--out",
                                str(tmp_path / "r.zip"), "--json", "--config",
                                str(config(tmp_path))),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_container(proc.pid)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 1, err
    doc = json.loads(out)
    assert doc["status"] == "failed"
    assert "stopped" in doc["error"] or "interrupted" in doc["error"]
    action = unpacked_action(tmp_path / "r.zip", tmp_path)
    assert action["actionStatus"] == "http://schema.org/FailedActionStatus"
    assert run_containers(proc.pid) == []


def test_a_burst_of_hangups_is_one_stop_not_an_interruption(tmp_path: Path) -> None:
    """A dead server's PR_SET_PDEATHSIG comes once for each of its threads as they exit."""
    proc = subprocess.Popen(cli("run", str(sleep_crate(tmp_path, 120)), "--out",
                                str(tmp_path / "r.zip"), "--json", "--config",
                                str(config(tmp_path))),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_container(proc.pid)
    for _ in range(5):
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.01)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 1, err
    doc = json.loads(out)
    assert doc["error"].startswith("the run was stopped by SIGHUP"), doc["error"]
    assert "second signal" not in out + err
    action = unpacked_action(tmp_path / "r.zip", tmp_path)
    assert "stopped by SIGHUP" in str(action["error"])
    assert run_containers(proc.pid) == []


def test_a_second_signal_while_the_crate_is_written_does_not_lose_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers are the main thread's")
    real = pipeline.write_result_crate

    def signalled(*args: Any, **kwargs: Any) -> Any:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "write_result_crate", signalled)
    outcome = api.run(sleep_crate(tmp_path, 0), tmp_path / "r.zip", config=config(tmp_path))
    assert outcome.result == tmp_path / "r.zip" and outcome.result.is_file()
    assert "SIGINT: already stopping, writing the result crate" in capfd.readouterr().err


def test_after_sigkill_the_reaper_removes_containers_and_the_crate_runs_again(
        tmp_path: Path) -> None:
    crate = sleep_crate(tmp_path, 120)
    proc = subprocess.Popen(cli("run", str(crate), "--out", str(tmp_path / "r.zip"),
                                "--config", str(config(tmp_path))),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    wait_for_container(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole CLI process tree, as an OOM killer would
    proc.wait()
    deadline = time.monotonic() + 10  # the run's reaper (a session of its own) removes them
    while run_containers(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert run_containers(proc.pid) == []
    done = subprocess.run(cli("cleanup", "--json", "--config", str(config(tmp_path))),
                          capture_output=True, text=True, check=True)
    assert json.loads(done.stdout)["removed"] == []  # nothing left for it
    (tmp_path / "again").mkdir()
    again = subprocess.run(cli("run", str(sleep_crate(tmp_path / "again", 0)), "--out",
                               str(tmp_path / "r2.zip"), "--config", str(config(tmp_path))),
                           capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr


def test_next_run_removes_containers_of_a_killed_run(tmp_path: Path) -> None:
    proc = subprocess.Popen(cli("run", str(sleep_crate(tmp_path, 120)), "--out",
                                str(tmp_path / "r.zip"), "--config", str(config(tmp_path))),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    left = wait_for_container(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (tmp_path / "next").mkdir()
    nxt = subprocess.run(cli("run", str(sleep_crate(tmp_path / "next", 0)), "--out",
                             str(tmp_path / "r2.zip"), "--config", str(config(tmp_path))),
                         capture_output=True, text=True, check=False)
    assert nxt.returncode == 0, nxt.stderr
    assert run_containers(proc.pid) == [] and left

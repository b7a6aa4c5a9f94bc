"""Every way a run can end keeps the contract: a result crate, bounded disk and logs, no traceback.

Each test goes through the real CLI, a real engine (cwltool) and real
containers: a step that fills a small runs folder, one that passes the disk
budget, one that floods its standard error, and runs stopped by their time
limit, SIGTERM and SIGINT, whose interrupted step must be in the result crate.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cratebridge.containers.sandbox import OWNER_LABEL, RUN_LABEL, labelled_containers, owner_id
from cratebridge.testing import RequestSpec, ValueInput, ZipLayout, write_request_zip

REPO = Path(__file__).resolve().parent.parent
SHELL = REPO / "fixtures" / "workflows" / "cwl" / "shell"

pytestmark = pytest.mark.docker


def shell_crate(tmp_path: Path, command: str, name: str = "shell.zip") -> Path:
    """A request whose one step runs ``command`` with sh, then writes out.txt."""
    spec = RequestSpec(workflow_dir=SHELL, main_workflow="workflow.cwl",
                       inputs=(ValueInput("command", command),), name="Shell request")
    return write_request_zip(spec, tmp_path / name, ZipLayout.FOLDER)


def config(tmp_path: Path, runs: Path, run: str = "", limits: str = "") -> Path:
    path = tmp_path / "cratebridge.toml"
    path.write_text(f'[run]\nruns_dir = "{runs}"\n{run}\n[limits]\n{limits}\n')
    return path


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cratebridge", *args]


def run_cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli(*args), capture_output=True, text=True, timeout=timeout,
                          check=False)


def graph(crate: Path) -> dict[str, dict[str, Any]]:
    data = json.loads((crate / "ro-crate-metadata.json").read_text())
    return {e["@id"]: e for e in data["@graph"]}


def step_actions(result: Path) -> list[dict[str, Any]]:
    """The step CreateActions of the run crate nested in a Five Safes result folder."""
    inner = graph(result / "data" / "provenance")
    return [e for e in inner.values() if e.get("@type") == "CreateAction"
            and str(e["@id"]).startswith("#step-run-")]


def folder_bytes(folder: Path) -> int:
    return sum(p.lstat().st_size for p in folder.rglob("*") if p.is_file())


def only_run(runs: Path) -> Path:
    found = [p for p in runs.iterdir() if p.is_dir()]
    assert len(found) == 1, found
    return found[0]


def assert_no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout, done.stderr


# -- disk -------------------------------------------------------------------------------------

def slow_writer(folder: str) -> str:
    """A step writing 400 files of 1 MB into ``folder``, slowly enough for the watch to see."""
    return (f"i=0; while [ $i -lt 400 ]; do head -c 1000000 /dev/zero > {folder}/f$i; "
            "i=$((i+1)); sleep 0.02; done")


def run_over_budget(tmp_path: Path, command: str) -> tuple[Path, dict[str, Any]]:
    """Run ``command`` with a 40 MiB disk budget: exit 1, no traceback; the runs folder and doc."""
    runs = tmp_path / "runs"
    done = run_cli("run", str(shell_crate(tmp_path, command)), "--out", str(tmp_path / "r"),
                   "--json", "--config", str(config(tmp_path, runs, limits='disk = "40M"')))
    assert done.returncode == 1, done.stderr
    assert_no_traceback(done)
    doc: dict[str, Any] = json.loads(done.stdout)
    assert "[limits] disk = 40.0 MiB" in doc["error"], doc["error"]
    return runs, doc


def test_a_step_over_the_disk_budget_stops_the_run_and_names_the_limit(tmp_path: Path) -> None:
    runs, _ = run_over_budget(tmp_path, slow_writer("."))
    assert folder_bytes(only_run(runs)) < 120 * 1024**2  # stopped long before 400 MB
    (step,) = step_actions(tmp_path / "r")
    assert step["actionStatus"] == "http://schema.org/FailedActionStatus"
    assert "was stopped before it finished" in step["error"] and "disk" in step["error"]


def test_the_steps_tmp_is_inside_the_run_folder_and_counts(tmp_path: Path) -> None:
    host_tmp_before = set(Path("/tmp").iterdir())
    run_over_budget(tmp_path, slow_writer("/tmp"))
    new = [p for p in set(Path("/tmp").iterdir()) - host_tmp_before
           if p.is_dir() and any(p.glob("f1*"))]
    assert new == [], f"the step wrote into the host's /tmp: {new}"


def test_a_budget_passed_by_a_step_that_ends_at_once_still_fails_the_run(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    # the output itself passes the budget, written at once: the last look sees it
    done = run_cli("run", str(shell_crate(tmp_path, "head -c 60000000 /dev/zero > out.txt; "
                                                    "exit 0")),
                   "--out", str(tmp_path / "r"), "--json",
                   "--config", str(config(tmp_path, runs, limits='disk = "20M"')))
    assert done.returncode == 1, done.stderr
    assert "[limits] disk = 20.0 MiB" in json.loads(done.stdout)["error"]


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A 24 MiB tmpfs to hold a runs folder (needs root, as the TRE's executor has)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_step_filling_the_runs_disk_still_yields_a_result_and_the_next_run_works(
        tmp_path: Path, small_disk: Path) -> None:
    runs = small_disk / "runs"
    cfg = config(tmp_path, runs)
    done = run_cli("run", str(shell_crate(tmp_path, "head -c 100000000 /dev/zero > big")),
                   "--out", str(tmp_path / "r"), "--json", "--config", str(cfg))
    assert done.returncode == 1, done.stderr
    assert_no_traceback(done)
    doc = json.loads(done.stdout)
    assert doc["status"] == "failed"
    outer = graph(tmp_path / "r" / "data")
    action = next(e for e in outer.values() if e.get("@type") == "CreateAction")
    assert action["actionStatus"] == "http://schema.org/FailedActionStatus" and action["error"]
    logs = [i for i in outer if str(i).endswith(".log")]
    assert logs, "the logs are in the crate"
    said = "".join((tmp_path / "r" / "data" / i).read_text(errors="replace") for i in logs)
    assert "No space left on device" in said or "disk" in action["error"]
    # the disk is usable again: the next run in the same runs folder works
    again = run_cli("run", str(shell_crate(tmp_path, "true", "ok.zip")), "--out",
                    str(tmp_path / "r2"), "--config", str(cfg))
    assert again.returncode == 0, again.stderr


def test_a_stderr_flood_on_a_small_disk_ends_in_time_with_a_failed_result(
        tmp_path: Path, small_disk: Path) -> None:
    """The flood is drained (and capped) even when the disk is full: the run never hangs."""
    started = time.monotonic()
    done = run_cli("run", str(shell_crate(tmp_path, "yes flooding-the-disk >&2")), "--out",
                   str(tmp_path / "r"), "--json",
                   "--config", str(config(tmp_path, small_disk / "runs", run='timeout = "30s"')),
                   timeout=180)
    assert time.monotonic() - started < 120
    assert done.returncode == 1, done.stderr
    assert_no_traceback(done)
    doc = json.loads(done.stdout)
    assert "time limit" in doc["error"] or "disk" in doc["error"], doc["error"]
    (step,) = step_actions(tmp_path / "r")
    assert step["actionStatus"] == "http://schema.org/FailedActionStatus"


def test_a_result_that_cannot_be_written_leaves_a_marked_run_and_exit_6(
        tmp_path: Path, small_disk: Path) -> None:
    """The result goes to the full disk too: nothing half-written, the run marked INCOMPLETE."""
    runs = small_disk / "runs"
    out = small_disk / "result.zip"
    filler = small_disk / "filler"
    events = tmp_path / "events.jsonl"
    # fill the disk from outside while the step sleeps, so nothing can be written after
    proc = subprocess.Popen(cli("run", str(shell_crate(tmp_path, "sleep 4")), "--out", str(out),
                                "--json", "--events", str(events),
                                "--config", str(config(tmp_path, runs))),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120  # the plan must be over: a machine under load is slow
    while proc.poll() is None and time.monotonic() < deadline and not (
            events.exists() and '"step"' in events.read_text()):
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before its step started"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M"], capture_output=True,
                   check=False)
    out_text, err = proc.communicate(timeout=240)
    assert proc.returncode in (1, 6), err
    assert "Traceback" not in err
    if proc.returncode == 6:
        assert not out.exists() and not list(small_disk.glob(".result.zip.tmp-*"))
        assert (only_run(runs) / "INCOMPLETE").exists() or "INCOMPLETE" in err
        assert "no result crate could be written" in json.loads(out_text)["message"]
    else:  # a crate without outputs fitted after the run's scratch was emptied
        assert out.is_file()


# -- logs -------------------------------------------------------------------------------------

def test_a_step_flooding_its_stderr_is_capped_head_and_tail_kept(tmp_path: Path) -> None:
    command = "echo FIRST-LINE >&2; head -c 30000000 /dev/zero | tr '\\\\0' x >&2; " \
              "echo; echo LAST-LINE >&2"
    runs = tmp_path / "runs"
    done = run_cli("run", str(shell_crate(tmp_path, command)), "--out", str(tmp_path / "r"),
                   "--json", "--config",
                   str(config(tmp_path, runs, run="keep_runs = true", limits='log_size = "1M"')))
    assert done.returncode == 0, done.stderr
    inner = graph(tmp_path / "r" / "data" / "provenance")
    logs = [e for e in inner.values() if "stderr" in str(e.get("name", ""))
            and e.get("@type") == "File"]
    assert logs, "the step's stderr log is in the crate"
    for log in logs:
        assert "bytes were cut" in log["description"]
        content = (tmp_path / "r" / "data" / "provenance" / log["@id"]).read_bytes()
        assert len(content) < 1024**2 + 1024
        assert b"FIRST-LINE" in content and b"LAST-LINE" in content
        assert b"bytes cut here" in content
    # stored once: the run folder holds about two capped copies, not 2 x 30 MB
    assert folder_bytes(only_run(runs)) < 10 * 1024**2


# -- stops ------------------------------------------------------------------------------------

def run_containers(pid: int) -> list[str]:
    return labelled_containers("docker", RUN_LABEL, f"{OWNER_LABEL}={owner_id(pid)}",
                               check=True)


def wait_for_container(pid: int, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if run_containers(pid):
            time.sleep(1)  # let the step print its first line
            return
        time.sleep(0.2)
    raise AssertionError("no step container started")


def assert_interrupted_step(result: Path, reason: str) -> None:
    (step,) = step_actions(result)
    assert step["actionStatus"] == "http://schema.org/FailedActionStatus"
    assert "was stopped before it finished" in step["error"] and reason in step["error"], step
    inner = graph(result / "data" / "provenance")
    logs = [e for e in inner.values() if e.get("about", {}).get("@id") == step["@id"]]
    assert logs, "the interrupted step's partial log is in the crate"
    text = (result / "data" / "provenance" / logs[0]["@id"]).read_text()
    assert "STEP-BEGAN" in text


@pytest.mark.parametrize("how", ["timeout", "SIGTERM", "SIGINT"])
def test_an_interrupted_step_is_in_the_result_crate(tmp_path: Path, how: str) -> None:
    runs = tmp_path / "runs"
    run = 'timeout = "6s"' if how == "timeout" else ""
    proc = subprocess.Popen(cli("run", str(shell_crate(tmp_path, "echo STEP-BEGAN >&2; sleep 120")),
                                "--out", str(tmp_path / "r"), "--json",
                                "--config", str(config(tmp_path, runs, run=run))),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if how != "timeout":
        wait_for_container(proc.pid)
        proc.send_signal(getattr(signal, how))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    doc = json.loads(out)
    reason = "time limit" if how == "timeout" else how
    assert reason in doc["error"], doc["error"]
    assert [reason in (s["error"] or "") for s in doc["steps"]] == [True]
    assert_interrupted_step(tmp_path / "r", reason)
    assert run_containers(proc.pid) == []


# -- the unforeseen ---------------------------------------------------------------------------

def test_an_unforeseen_error_is_exit_6_one_line_and_a_log(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cratebridge import api
    from cratebridge import cli as cli_module

    def broken(**_: object) -> None:
        raise RuntimeError("a bug nobody foresaw")

    monkeypatch.setattr(api, "engines", broken)
    monkeypatch.setenv("CRATEBRIDGE_ERROR_LOGS", str(tmp_path / "errors"))
    code = cli_module.main(["engines", "--json"])
    captured = capsys.readouterr()
    assert code == 6
    assert "Traceback" not in captured.err and len(captured.err.strip().splitlines()) == 1
    doc = json.loads(captured.out)
    assert doc["error"] == "InternalError" and doc["exit_code"] == 6
    log = Path(doc["log"])
    assert log.parent == tmp_path / "errors" and str(log) in captured.err
    text = log.read_text()
    assert "Traceback" in text and "a bug nobody foresaw" in text

"""WES 1.1 through a real HTTP client against the real server, with real runs, on both databases.

Each outcome of ``cratebridge run`` (completed, failed, rejected crate, policy
refusal, cancelled) is a WES state with its reason in the run log; the
result crate is downloaded and judged by the real validator.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
import requests

from cratebridge.intake import open_crate
from cratebridge.testing import FileInput, RequestSpec, ValueInput, write_request_dir
from cratebridge.testing.crates import request_metadata

from .conftest import (
    DEMO,
    REPO,
    STEP_FAILS,
    Server,
    auth,
    sleep_crate,
    unsafe_crate,
)

THREE_STEP = REPO / "fixtures" / "workflows" / "cwl" / "three-step"
FAILED = "http://schema.org/FailedActionStatus"
COMPLETED = "http://schema.org/CompletedActionStatus"

pytestmark = pytest.mark.docker


def create_action(result: Path, dest: Path) -> dict[str, Any]:
    root = open_crate(result, dest).root
    graph = json.loads((root / "ro-crate-metadata.json").read_text())["@graph"]
    action: dict[str, Any] = next(e for e in graph if e.get("@type") == "CreateAction")
    return action


def unmapped_dataset_crate(folder: Path) -> Path:
    """A request naming a TRE dataset the operator has not mapped: refused (exit 4)."""
    spec = RequestSpec(workflow_dir=THREE_STEP, main_workflow="workflow.cwl",
                       inputs=(FileInput("data", THREE_STEP / "test" / "input.txt"),
                               ValueInput("repeat", 1)), name="Request for a TRE dataset")
    crate = folder / "dataset-request"
    write_request_dir(spec, crate)
    text = json.dumps(request_metadata(spec)).replace(
        '"input.txt"', json.dumps("_:localid:tre72:cohort-2024"))
    (crate / "ro-crate-metadata.json").write_text(text)
    (crate / "input.txt").unlink()
    path = folder / "dataset-request.zip"
    with zipfile.ZipFile(path, "w") as z:
        for item in sorted(crate.rglob("*")):
            if item.is_file():
                z.write(item, item.relative_to(crate).as_posix())
    return path


def test_demo_run_completes_and_its_result_crate_validates(
        make_server: Any, tmp_path: Path, validator: Any) -> None:
    server: Server = make_server(max_concurrent_runs=2).start()
    info = server.get("/service-info").json()
    assert info["type"] == {"group": "org.ga4gh", "artifact": "wes", "version": "1.1.0"}
    assert "CWL" in info["workflow_type_versions"] and "cwltool" in info[
        "workflow_engine_versions"]
    assert info["tags"]["max_concurrent_runs"] == "2"
    assert set(info["system_state_counts"]) >= {"QUEUED", "COMPLETE", "CANCELED"}

    run_id = server.run_id(DEMO)
    log = server.wait(run_id)
    assert log["state"] == "COMPLETE", log
    assert log["run_log"]["exit_code"] == 0 and log["cratebridge"]["outcome"] == "completed"
    assert log["run_log"]["start_time"] and log["run_log"]["end_time"]
    steps = log["task_logs"]
    assert sorted(s["name"] for s in steps) == ["combine", "count", "head"]
    for step in steps:
        assert step["exit_code"] == 0 and step["start_time"] and step["end_time"]
        assert step["tags"]["image"].startswith("cratebridge/")
    assert log["outputs"]["result_crate"].endswith(f"/runs/{run_id}/result-crate")
    # the tasks endpoint pages
    first = server.get(f"/runs/{run_id}/tasks?page_size=2").json()
    rest = server.get(f"/runs/{run_id}/tasks?page_size=2&page_token="
                      f"{first['next_page_token']}").json()
    assert first["task_logs"] + rest["task_logs"] == steps
    assert rest["next_page_token"] == ""
    listed = server.get("/runs").json()["runs"]
    assert [(r["run_id"], r["state"]) for r in listed] == [(run_id, "COMPLETE")]

    result = server.download(run_id, tmp_path / "result.zip")
    root = open_crate(result, tmp_path / "unpacked").root
    assert create_action(result, tmp_path / "again")["actionStatus"] == COMPLETED
    ok, output = validator(root, "five-safes-crate")
    assert ok, output
    ok, output = validator(root / "provenance", "provenance-run-crate-0.5")
    assert ok, output


def test_each_outcome_is_a_wes_state_with_its_reason(make_server: Any, tmp_path: Path) -> None:
    server: Server = make_server(max_concurrent_runs=2).start()
    rejected = server.run_id(unsafe_crate(tmp_path))
    refused = server.run_id(unmapped_dataset_crate(tmp_path))
    failed = server.run_id(STEP_FAILS)

    log = server.wait(rejected)
    assert (log["state"], log["cratebridge"]["outcome"], log["run_log"]["exit_code"]) == (
        "EXECUTOR_ERROR", "rejected", 3)
    assert "rejected" in log["run_log"]["system_logs"][0]
    assert "escaped.txt" in log["cratebridge"]["reason"], log
    assert server.get(f"/runs/{rejected}/result-crate").status_code == 404

    log = server.wait(refused)
    assert (log["state"], log["cratebridge"]["outcome"], log["run_log"]["exit_code"]) == (
        "EXECUTOR_ERROR", "refused", 4)
    assert "rule datasets.map" in log["cratebridge"]["reason"], log
    assert server.get(f"/runs/{refused}/result-crate").status_code == 404

    log = server.wait(failed)
    assert (log["state"], log["cratebridge"]["outcome"], log["run_log"]["exit_code"]) == (
        "EXECUTOR_ERROR", "failed", 1)
    assert log["cratebridge"]["reason"] and log["run_log"]["system_logs"]
    assert any(t["exit_code"] not in (0, None) for t in log["task_logs"]), log["task_logs"]
    action = create_action(server.download(failed, tmp_path / "failed.zip"), tmp_path / "f")
    assert action["actionStatus"] == FAILED and action["error"]


def test_cancel_a_running_and_a_queued_run_and_a_full_queue_is_429(
        make_server: Any, tmp_path: Path) -> None:
    server: Server = make_server(max_concurrent_runs=1, max_queued_runs=1).start()
    running = server.run_id(sleep_crate(tmp_path, 120))
    server.wait(running, until=lambda s: s == "RUNNING", timeout=120)
    queued = server.run_id(sleep_crate(tmp_path, 1))
    assert server.state_of(queued) == "QUEUED"
    refused = server.submit(DEMO)
    assert refused.status_code == 429, refused.text
    assert "queue is full" in refused.json()["msg"]

    answer = requests.post(f"{server.url}/runs/{queued}/cancel", headers=auth("alice"),
                           timeout=30)
    assert answer.status_code == 200 and answer.json() == {"run_id": queued}
    log = server.wait(queued)
    assert log["state"] == "CANCELED" and "before it started" in log["cratebridge"]["reason"]
    assert server.get(f"/runs/{queued}/result-crate").status_code == 404

    started = time.monotonic()
    answer = requests.post(f"{server.url}/runs/{running}/cancel", headers=auth("alice"),
                           timeout=30)
    assert answer.status_code == 200
    log = server.wait(running, timeout=60)
    assert time.monotonic() - started < 60
    assert log["state"] == "CANCELED" and log["cratebridge"]["outcome"] == "cancelled"
    assert "cancelled by alice" in log["cratebridge"]["reason"]
    action = create_action(server.download(running, tmp_path / "c.zip"), tmp_path / "c")
    assert action["actionStatus"] == FAILED and "SIGTERM" in action["error"], action
    # the queue has room again
    assert server.submit(unsafe_crate(tmp_path)).status_code == 200


def test_tokens_keep_each_caller_to_their_own_runs(make_server: Any, tmp_path: Path) -> None:
    server: Server = make_server().start()
    for headers in ({}, {"Authorization": "Bearer not-a-token"},
                    {"Authorization": "Basic YWxpY2U6c2VjcmV0"}):
        for path in ("/service-info", "/runs"):
            answer = requests.get(f"{server.url}{path}", headers=headers, timeout=30)
            assert answer.status_code == 401, (path, headers)
            assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        with DEMO.open("rb") as handle:
            answer = requests.post(f"{server.url}/runs", headers=headers, timeout=30,
                                   files={"workflow_attachment": handle})
        assert answer.status_code == 401
    assert server.get("/runs", "ops").json()["runs"] == []  # nothing was queued

    mine = server.run_id(unsafe_crate(tmp_path), "alice")
    server.wait(mine)
    for path in (f"/runs/{mine}", f"/runs/{mine}/status", f"/runs/{mine}/tasks",
                 f"/runs/{mine}/result-crate"):
        assert server.get(path, "bob").status_code == 404, path
        assert server.get(path, "ops").status_code in (200, 404)
    assert server.get(f"/runs/{mine}", "ops").json()["cratebridge"]["owner"] == "alice"
    answer = requests.post(f"{server.url}/runs/{mine}/cancel", headers=auth("bob"), timeout=30)
    assert answer.status_code == 404
    assert server.get("/runs", "bob").json()["runs"] == []
    assert [r["run_id"] for r in server.get("/runs", "ops").json()["runs"]] == [mine]
    assert [r["run_id"] for r in server.get("/runs", "alice").json()["runs"]] == [mine]


def test_submissions_are_checked_before_anything_runs(make_server: Any, tmp_path: Path) -> None:
    server: Server = make_server(max_request_bytes=6000).start()
    big = server.submit(DEMO)  # 8 KiB
    assert big.status_code == 413 and "at most 6000" in big.json()["msg"]

    def chunks() -> Any:
        yield b"--x\r\n"

    chunked = requests.post(f"{server.url}/runs", headers={**auth("alice"),
                            "Content-Type": "multipart/form-data; boundary=x"},
                            data=chunks(), timeout=30)
    assert chunked.status_code == 411
    plain = requests.post(f"{server.url}/runs", headers=auth("alice"), data=b"{}",
                          timeout=30)
    assert plain.status_code == 400 and "multipart/form-data" in plain.json()["msg"]
    small = unsafe_crate(tmp_path)
    for fields, expected in (({"workflow_params": '{"x": 1}'}, "workflow_params"),
                             ({"workflow_engine": "no-such"}, "workflow_engine"),
                             ({"tags": "[1]"}, "tags")):
        answer = server.submit(small, **fields)
        assert answer.status_code == 400 and expected in answer.json()["msg"], answer.text
    with small.open("rb") as a, small.open("rb") as b:
        two = requests.post(f"{server.url}/runs", headers=auth("alice"), timeout=30,
                            files=[("workflow_attachment", a), ("workflow_attachment", b)])
    assert two.status_code == 400 and "exactly one file" in two.json()["msg"]
    for path in ("/runs/..%2F..%2Fetc%2Fpasswd/result-crate", "/runs/../../etc/passwd",
                 "/runs/%2e%2e/result-crate"):
        assert server.get(path, "ops").status_code == 404, path
    assert server.get("/runs", "ops").json()["runs"] == []
    assert not any((server.state / "runs").iterdir()), "a refused submission left files"


def test_without_tokens_the_server_listens_on_loopback_only(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[run]\nruns_dir = "{tmp_path / "runs"}"\n[service]\n'
                      f'state_dir = "{tmp_path / "state"}"\n')
    done = subprocess.run([sys.executable, "-m", "cratebridge", "serve", "--config",
                           str(config), "--host", "0.0.0.0", "--port", "0"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert "no tokens are configured" in done.stderr and "loopback" in done.stderr
    assert "Traceback" not in done.stderr

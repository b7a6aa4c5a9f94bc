"""Restarts: ``kill -9`` of the server mid-queue, a clean SIGTERM (load: test_many_*).

Every run is accounted for afterwards: queued runs still run, runs that were
running end failed (SYSTEM_ERROR) with a result crate that says so, and no
run starts twice (each run's events hold one ``accepted``, its runs folder one
folder per run).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cratebridge.containers.mounts import release_stale
from cratebridge.containers.sandbox import RUN_LABEL, labelled_containers
from cratebridge.intake import open_crate

from .conftest import DEMO, Server, sleep_crate
from .many import accepted_once

FAILED = "http://schema.org/FailedActionStatus"
pytestmark = pytest.mark.docker


def test_kill_9_mid_queue_then_restart_accounts_for_every_run(
        make_server: Any, tmp_path: Path) -> None:
    server: Server = make_server(max_concurrent_runs=2).start()
    running = [server.run_id(sleep_crate(tmp_path, 300)) for _ in range(2)]
    queued = [server.run_id(DEMO) for _ in range(3)]
    for run_id in running:
        server.wait(run_id, until=lambda s: s == "RUNNING", timeout=120)
    assert [server.state_of(q) for q in queued] == ["QUEUED"] * 3

    assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    server.start()
    for run_id in running:
        log = server.wait(run_id, timeout=180)
        assert (log["state"], log["cratebridge"]["outcome"]) == (
            "SYSTEM_ERROR", "interrupted"), log
        assert "the server stopped while this run was running" in log["cratebridge"]["reason"]
        result = server.download(run_id, tmp_path / f"{run_id}.zip")
        root = open_crate(result, tmp_path / run_id).root
        graph = json.loads((root / "ro-crate-metadata.json").read_text())["@graph"]
        action = next(e for e in graph if e.get("@type") == "CreateAction")
        # PR_SET_PDEATHSIG: the server's death reached the run as SIGHUP (a cancel is SIGTERM)
        assert action["actionStatus"] == FAILED and "SIGHUP" in action["error"], action
    for run_id in queued:
        assert server.wait(run_id, timeout=180)["state"] == "COMPLETE"
    for run_id in running + queued:
        accepted_once(server, run_id)
    assert len(list(server.runs.iterdir())) == 5
    assert "settled: SYSTEM_ERROR" in server.log()


def test_sigterm_stops_running_runs_and_keeps_the_queue(make_server: Any,
                                                        tmp_path: Path) -> None:
    server: Server = make_server(max_concurrent_runs=1).start()
    running = server.run_id(sleep_crate(tmp_path, 300))
    server.wait(running, until=lambda s: s == "RUNNING", timeout=120)
    queued = server.run_id(DEMO)
    started = time.monotonic()
    assert server.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 30
    assert "the server was shut down (SIGTERM)" in server.log()
    server.start()
    log = server.wait(running, timeout=30)
    assert log["state"] == "SYSTEM_ERROR" and "shut down (SIGTERM)" in log["cratebridge"][
        "reason"]
    result = server.download(running, tmp_path / "stopped.zip")
    root = open_crate(result, tmp_path / "stopped").root
    graph = json.loads((root / "ro-crate-metadata.json").read_text())["@graph"]
    action = next(e for e in graph if e.get("@type") == "CreateAction")
    assert action["actionStatus"] == FAILED and "SIGHUP" in action["error"], action
    assert server.wait(queued)["state"] == "COMPLETE"


def run_tree(run_id: str) -> list[int]:
    """The run's ``cratebridge run`` process and every process below it (its reaper too)."""
    table: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rpartition(")")[2].split()
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            table[int(entry.name)] = (int(stat[1]), cmd)
    roots = [p for p, (_, cmd) in table.items()
             if f"--run-id {run_id}" in cmd and " run " in cmd]
    found, parents = list(roots), set(roots)
    while parents:
        parents = {p for p, (ppid, _) in table.items() if ppid in parents}
        found += sorted(parents)
    return found


def guarded_tree(run_id: str, timeout: float = 60.0) -> list[int]:
    """:func:`run_tree` once the run's reaper is in it.

    A run is RUNNING before its pipeline starts the reaper (when the engine
    starts); a tree taken earlier misses the reaper, which then outlives the
    kills and writes the run's crate itself, racing what the test checks.
    """
    deadline = time.monotonic() + timeout
    while True:
        tree = run_tree(run_id)
        for pid in tree:
            with contextlib.suppress(OSError):
                if b"cratebridge.containers.reaper_watch" in Path(f"/proc/{pid}/cmdline") \
                        .read_bytes():
                    return tree
        assert time.monotonic() < deadline, f"no reaper in the run's tree: {tree}"
        time.sleep(0.1)


def signal_if_alive(pid: int, signum: int) -> None:
    """Signal ``pid`` unless it is already gone.

    A room's first process is its PID namespace's init: killing it makes the
    kernel kill and reap the rest of the room, so a later pid of the tree may
    be gone by the time the loop reaches it (which is what the loop wants).
    """
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def test_a_run_killed_before_it_wrote_a_crate_gets_one_at_restart(
        make_server: Any, tmp_path: Path) -> None:
    """Server and run killed at once (no SIGTERM reaches the run): the restart writes its crate."""
    server: Server = make_server(max_concurrent_runs=1).start()
    run_id = server.run_id(sleep_crate(tmp_path, 300))
    server.wait(run_id, until=lambda s: s == "RUNNING", timeout=120)
    tree = guarded_tree(run_id)
    try:
        for pid in tree:  # frozen first, so that the server's death cannot reach it
            signal_if_alive(pid, signal.SIGSTOP)
        assert server.stop(signal.SIGKILL) == -signal.SIGKILL
        for pid in tree:
            signal_if_alive(pid, signal.SIGKILL)
        assert not (server.state / "runs" / run_id / "result.zip").exists()
        server.start()
        log = server.wait(run_id, timeout=180)
        assert (log["state"], log["cratebridge"]["outcome"]) == ("SYSTEM_ERROR", "interrupted")
        assert "wrote no result crate" in log["cratebridge"]["reason"], log
        result = server.download(run_id, tmp_path / "settled.zip")
        root = open_crate(result, tmp_path / "settled").root
        graph = json.loads((root / "ro-crate-metadata.json").read_text())["@graph"]
        action = next(e for e in graph if e.get("@type") == "CreateAction")
        assert action["actionStatus"] == FAILED
        assert "the server stopped while this run was running" in action["error"]
    finally:
        left = labelled_containers("docker", f"{RUN_LABEL}={run_id}")
        if left:
            subprocess.run(["docker", "rm", "-f", *left], capture_output=True, check=False)
        if os.geteuid() == 0:
            release_stale(server.runs)


def test_a_run_killed_while_the_server_runs_ends_with_its_reapers_crate(
        make_server: Any, tmp_path: Path) -> None:
    """kill -9 of the run's own process (as the OOM killer would), the server still up:
    its reaper removes its containers and writes its crate, and the run ends with it."""
    server: Server = make_server(max_concurrent_runs=1).start()
    run_id = server.run_id(sleep_crate(tmp_path, 300))
    server.wait(run_id, until=lambda s: s == "RUNNING", timeout=120)
    tree = guarded_tree(run_id)
    os.kill(tree[0], signal.SIGKILL)  # the cratebridge process only
    log = server.wait(run_id, timeout=120)
    assert (log["state"], log["cratebridge"]["outcome"]) == ("SYSTEM_ERROR", "error"), log
    assert "killed by signal 9" in log["cratebridge"]["reason"]
    result = server.download(run_id, tmp_path / "reaped.zip")
    root = open_crate(result, tmp_path / "reaped").root
    graph = json.loads((root / "ro-crate-metadata.json").read_text())["@graph"]
    action = next(e for e in graph if e.get("@type") == "CreateAction")
    assert action["actionStatus"] == FAILED
    assert "cratebridge was killed while the run went on" in action["error"], action
    assert labelled_containers("docker", f"{RUN_LABEL}={run_id}") == []


def test_settle_writes_a_failed_result_crate_through_the_pipeline(
        tmp_path: Path, docker_available: bool) -> None:
    """What the server does at restart for a running run that wrote no result crate."""
    config = tmp_path / "c.toml"
    config.write_text(f'[run]\nruns_dir = "{tmp_path / "runs"}"\n')
    out = tmp_path / "result.zip"
    done = subprocess.run([sys.executable, "-m", "cratebridge.service.settle", str(DEMO),
                           str(out), "the server stopped while this run was running",
                           "--config", str(config)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["status"] == "failed"
    root = open_crate(out, tmp_path / "unpacked").root
    graph = json.loads((root / "ro-crate-metadata.json").read_text())["@graph"]
    action = next(e for e in graph if e.get("@type") == "CreateAction")
    assert action["actionStatus"] == FAILED
    assert action["error"] == (
        "the server stopped while this run was running (this crate was written when the "
        "server restarted: the run's steps are not in it)")

"""The 50-submission check, shared by one test file per backend.

One file per backend, so that the two pytest workers (``--dist loadfile``) run
them at the same time: each takes minutes.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

from .conftest import DEMO, Server


def accepted_once(server: Server, run_id: str) -> None:
    """The run's process started once: one ``accepted`` event, one runs folder."""
    events = (server.state / "runs" / run_id / "events.jsonl").read_text().splitlines()
    kinds = [json.loads(line)["kind"] for line in events if line.strip()]
    assert kinds.count("accepted") == 1, (run_id, kinds)
    assert (server.runs / run_id).is_dir()


def most_at_once(logs: list[dict[str, Any]]) -> int:
    edges = []
    for log in logs:
        edges.append((datetime.fromisoformat(log["run_log"]["start_time"]), 1))
        edges.append((datetime.fromisoformat(log["run_log"]["end_time"]), -1))
    peak = now = 0
    for _, change in sorted(edges, key=lambda e: (e[0], e[1])):
        now += change
        peak = max(peak, now)
    return peak


def many_submissions_two_at_a_time_all_complete(make_server: Any, backend: str,
                                                count: int) -> None:
    """Submit the demo crate ``count`` times to a server running 2 at a time; check each."""
    server: Server = make_server(max_concurrent_runs=2, max_queued_runs=100).start()
    started = time.monotonic()
    ids = [server.run_id(DEMO, "alice" if n % 2 else "bob") for n in range(count)]
    submitted = time.monotonic() - started
    logs = [server.wait(i, "ops", timeout=60 * count) for i in ids]
    took = time.monotonic() - started
    print(f"{count} runs on {backend}: submitted in {submitted:.1f}s, all ended in {took:.1f}s")
    assert [log["state"] for log in logs] == ["COMPLETE"] * count, [
        (log["run_id"], log["state"], log["cratebridge"]["reason"]) for log in logs]
    assert len(set(ids)) == count
    listed = server.get(f"/runs?page_size={count // 3}", "ops").json()
    seen = [r["run_id"] for r in listed["runs"]]
    while listed["next_page_token"]:
        listed = server.get(f"/runs?page_size={count // 3}&page_token="
                            f"{listed['next_page_token']}", "ops").json()
        seen += [r["run_id"] for r in listed["runs"]]
    assert seen == ids[::-1]
    assert most_at_once(logs) <= 2
    for run_id in ids:
        accepted_once(server, run_id)
    assert len(list(server.runs.iterdir())) == count

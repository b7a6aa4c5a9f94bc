"""WES 1.1 as cratebridge speaks it: states from run outcomes, and the documents served.

A run is a ``cratebridge run`` child process; how it ended (its exit code, its
``--json`` document, whether a cancel was asked, whether the server stopped
meanwhile) becomes one :class:`Outcome`: a WES state, cratebridge's own word
for the outcome, and the reason, shown in the run log. The mapping is the
table in ``docs/service.md``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cratebridge.service.store import RunRow

__all__ = ["API", "FINAL", "STATES", "Outcome", "live_tasks", "outcome_of", "run_log",
           "run_status", "run_summary", "task_logs"]

API = "/ga4gh/wes/v1"
#: The WES 1.1 State enum.
STATES = ("UNKNOWN", "QUEUED", "INITIALIZING", "RUNNING", "PAUSED", "COMPLETE",
          "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED", "CANCELING", "PREEMPTED")
FINAL = frozenset({"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED"})

#: Said of every run that was running when the server stopped.
SERVER_STOPPED = "the server stopped while this run was running"


@dataclass(frozen=True)
class Outcome:
    """How a run ended: the WES ``state``, cratebridge's ``outcome`` word, and why."""

    state: str
    outcome: str
    reason: str | None


def outcome_of(exit_code: int | None, doc: dict[str, Any] | None, *,
               cancel_by: str | None = None, server_stopped: str | None = None) -> Outcome:
    """The outcome of a run's process from its exit code and its ``--json`` document.

    ``exit_code`` is None when the process was not the server's child (it
    outlived a killed server) and a negative signal number when a signal
    ended it. ``server_stopped``: why the server stopped while it ran.
    """
    doc = doc or {}
    if exit_code is None and doc:
        exit_code = doc.get("exit_code")
    message = doc.get("error") if exit_code in (0, 1) else doc.get("message")
    text = str(message) if message else None
    if exit_code == 0:
        return Outcome("COMPLETE", "completed", None)
    if server_stopped and cancel_by is None:
        return Outcome("SYSTEM_ERROR", "interrupted", _join(server_stopped, text))
    if cancel_by is not None and exit_code in (1, 130, -15, None):
        return Outcome("CANCELED", "cancelled", _join(f"cancelled by {cancel_by}", text))
    if exit_code == 1:
        return Outcome("EXECUTOR_ERROR", "failed", text or "the workflow failed")
    if exit_code == 3:
        return Outcome("EXECUTOR_ERROR", "rejected",
                       _join("the request crate was rejected", _where(doc, text)))
    if exit_code == 4:
        rule = doc.get("rule")
        return Outcome("EXECUTOR_ERROR", "refused",
                       _join(f"refused by the operator's policy (rule {rule})"
                             if rule else "refused by the operator's policy",
                             _where(doc, text)))
    if exit_code == 5:
        return Outcome("SYSTEM_ERROR", "engine-unavailable", _where(doc, text))
    what = (f"killed by signal {-exit_code}" if isinstance(exit_code, int) and exit_code < 0
            else f"exit code {exit_code}" if exit_code is not None else "an unknown end")
    return Outcome("SYSTEM_ERROR", "error", _join(f"cratebridge run ended with {what}",
                                                  _where(doc, text)))


def _where(doc: dict[str, Any], text: str | None) -> str | None:
    where = doc.get("where")
    if text and where and not text.startswith(str(where)):
        return f"{where}: {text}"
    return text


def _join(head: str, tail: str | None) -> str:
    return f"{head}: {tail}" if tail else head


def run_status(row: RunRow, state: str | None = None) -> dict[str, Any]:
    return {"run_id": row.id, "state": state or row.state}


def run_summary(row: RunRow, state: str | None = None) -> dict[str, Any]:
    return {**run_status(row, state), "start_time": row.started, "end_time": row.ended,
            "tags": row.request.get("tags") or {}}


def run_log(row: RunRow, doc: dict[str, Any] | None, tasks: list[dict[str, Any]],
            base: str, state: str | None = None) -> dict[str, Any]:
    """The RunLog of ``row``; ``doc`` is the run's ``--json`` document once it ended."""
    result_url = f"{base}{API}/runs/{row.id}/result-crate" if row.has_result else None
    outputs: dict[str, Any] = {}
    if doc and row.exit_code in (0, 1):
        for item in doc.get("outputs") or []:
            outputs[item["parameter"]] = (Path(item["path"]).name if "path" in item
                                          else item.get("value"))
    if result_url:
        outputs["result_crate"] = result_url
    return {
        "run_id": row.id,
        "request": row.request,
        "state": state or row.state,
        "run_log": {
            "name": row.request.get("workflow_url") or "request crate",
            "cmd": ["cratebridge", "run", "request.zip", "--out", "result.zip", "--json",
                    *(["--engine", row.engine] if row.engine else [])],
            "start_time": row.started, "end_time": row.ended,
            "stdout": None, "stderr": None, "exit_code": row.exit_code,
            "system_logs": [row.reason] if row.reason else [],
        },
        "task_logs_url": f"{base}{API}/runs/{row.id}/tasks",
        "task_logs": tasks,
        "outputs": outputs,
        "cratebridge": {
            "outcome": row.outcome, "reason": row.reason, "exit_code": row.exit_code,
            "owner": row.owner, "engine": (doc or {}).get("engine") or row.engine,
            "result_crate": result_url,
        },
    }


def task_logs(doc: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One TaskLog per step the run's record holds: times, image, exit code, error."""
    tasks = []
    for number, step in enumerate((doc or {}).get("steps") or [], start=1):
        tasks.append({
            "id": f"{number}-{step.get('step')}", "name": step.get("name"),
            "cmd": [], "start_time": step.get("start_time"), "end_time": step.get("end_time"),
            "stdout": None, "stderr": None, "exit_code": step.get("exit_code"),
            "system_logs": [step["error"]] if step.get("error") else [],
            "tags": {"status": step.get("status") or "", "image": step.get("image") or "",
                     "image_id": step.get("image_id") or ""},
        })
    return tasks


def live_tasks(events: Path) -> tuple[bool, list[dict[str, Any]]]:
    """From a running run's events: whether it is executing yet, and its steps so far."""
    executing = False
    steps: dict[str, dict[str, Any]] = {}
    try:
        lines = events.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return False, []
    for line in lines:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue  # the line being written
        if event.get("kind") == "stage" and event.get("stage") in ("execute", "package"):
            executing = True
        if event.get("kind") == "step" and event.get("step"):
            task = steps.setdefault(event["step"], {
                "id": f"{len(steps) + 1}-{event['step']}", "name": event["step"], "cmd": [],
                "start_time": None, "end_time": None, "stdout": None, "stderr": None,
                "exit_code": None, "system_logs": [], "tags": {"status": "running"}})
            if event.get("state") == "started":
                task["start_time"] = event.get("time")
            elif event.get("state") in ("finished", "failed", "completed"):
                task["end_time"] = task["end_time"] or event.get("time")
                task["tags"] = {"status": event["state"]}
    return executing, list(steps.values())

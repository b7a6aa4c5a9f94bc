"""Turning the driver's job events and the sandbox ledger into engine-neutral step records."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from cratebridge.containers.ledger import Ledger
from cratebridge.engines.record import (
    FileRecord,
    LogRecord,
    ParameterValue,
    RunStatus,
    StepRecord,
)

__all__ = ["read_events", "step_records", "values_to_records"]


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def values_to_records(values: dict[str, Any]) -> tuple[FileRecord | ParameterValue, ...]:
    """CWL input/output objects as file and parameter records (arrays flattened)."""
    out: list[FileRecord | ParameterValue] = []
    for name, value in values.items():
        out.extend(_value(name, value))
    return tuple(out)


def _value(name: str, value: Any) -> Iterable[FileRecord | ParameterValue]:
    """Every File and Directory in a value, wherever it is nested (arrays, records).

    A value holding no file is one parameter value; a record that mixes files
    with other fields also keeps those fields as a parameter value.
    """
    files = list(_files(name, value))
    if not files:
        yield ParameterValue(name, value)
        return
    yield from files
    if isinstance(value, dict) and value.get("class") not in ("File", "Directory"):
        rest = {k: v for k, v in value.items() if not list(_files(k, v))}
        if rest:
            yield ParameterValue(name, rest)


def _files(name: str, value: Any) -> Iterable[FileRecord]:
    if isinstance(value, list):
        for item in value:
            yield from _files(name, item)
    elif isinstance(value, dict):
        if value.get("class") in ("File", "Directory"):
            path = value.get("path")
            # a kept link whose relative target stayed behind points nowhere: not a file
            if path and os.path.exists(path):
                yield FileRecord(Path(path), name, value["class"] == "Directory")
            for secondary in value.get("secondaryFiles", []) or []:
                yield from _files(name, secondary)
        else:
            for item in value.values():
                yield from _files(name, item)


def _status(cwl_status: str) -> RunStatus:
    return RunStatus.COMPLETED if cwl_status == "success" else RunStatus.FAILED


def step_records(events: list[dict[str, Any]], ledger: Ledger) -> tuple[StepRecord, ...]:
    """One record per job: finished jobs, and jobs cut off by a failure or a stop."""
    containers = ledger.by_token()
    finished = {e["token"]: e for e in events if e.get("event") == "finished"}
    records = []
    for event in events:
        if event.get("event") != "started":
            continue
        token = event["token"]
        done = finished.get(token)
        ran = containers.get(token)
        logs: tuple[LogRecord, ...] = ()
        if ran and ran.stderr and ran.stderr.exists():
            logs = (LogRecord(ran.stderr, f"{event['name']} stderr", about=token),)
        start = datetime.fromisoformat(done["start"] if done else event["time"])
        end = datetime.fromisoformat(done["end"]) if done else (ran.end if ran else None)
        status = _status(done["status"]) if done else RunStatus.FAILED
        records.append(StepRecord(
            step=event["step"], name=event["name"], tool=event["tool"], status=status,
            start_time=ran.start if ran else start, end_time=ran.end if ran else end,
            exit_code=ran.exit_code if ran else None,
            container=ran.container if ran else None,
            inputs=values_to_records(done["inputs"]) if done else (),
            outputs=values_to_records(done["outputs"]) if done else (),
            logs=logs, command=tuple(done["command"]) if done else (), native_id=token,
        ))
    return tuple(records)

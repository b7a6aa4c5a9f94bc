"""Turning the executor's job events and the sandbox ledger into engine-neutral step records."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cratebridge.containers.ledger import Ledger
from cratebridge.engines.record import (
    ContainerRecord,
    FileRecord,
    LogRecord,
    ParameterValue,
    RunStatus,
    StepRecord,
)

__all__ = ["Events", "read_events", "step_records"]

_TOKEN = re.compile(r"[0-9a-f]{32}")  # the executor's step tokens (uuid4 hex)


@dataclass(frozen=True)
class Events:
    """What the executor wrote: the workflow's targets and every job's events.

    ``targets`` are the last the executor wrote: those of its shutdown, once
    checkpoints have updated the DAG, when it got that far.
    """

    targets: tuple[Path, ...]
    workdir: Path | None
    started: tuple[dict[str, Any], ...]
    finished: dict[str, dict[str, Any]]


def read_events(path: Path) -> Events:
    """Parse the events file; lines cut short by a kill are skipped."""
    targets: list[Path] = []
    workdir = None
    started: list[dict[str, Any]] = []
    finished: dict[str, dict[str, Any]] = {}
    lines = path.read_text().splitlines() if path.exists() else []
    for line in lines:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        kind = event.get("event")
        if kind == "workflow":
            targets = [Path(p) for p in event.get("targets", [])]
            workdir = Path(event["workdir"]) if event.get("workdir") else None
        elif kind == "started":
            started.append(event)
        elif kind == "finished":
            finished[event["token"]] = event
    return Events(tuple(targets), workdir, tuple(started), finished)


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _files(named: list[list[str]]) -> tuple[FileRecord | ParameterValue, ...]:
    return tuple(FileRecord(Path(path), name, Path(path).is_dir())
                 for name, path in named if Path(path).exists())


def step_records(events: Events, ledger: Ledger, tool_prefix: str = "",
                 jobs_dir: Path | None = None) -> tuple[StepRecord, ...]:
    """One record per job the executor started, joined to its container by the step token.

    ``jobs_dir`` holds the executor's ``<token>.stdout.log`` files: a job's
    standard output, when it wrote any, is one of its logs.
    """
    containers = ledger.by_token()
    records = []
    for event in events.started:
        token = event["token"]
        done = events.finished.get(token, {})
        ran = containers.get(token)
        logs: list[LogRecord] = []
        if ran and ran.stderr and ran.stderr.exists():
            logs.append(LogRecord(ran.stderr, f"{event['name']} stderr", about=token))
        for rule_log in event.get("logs", []):
            if Path(rule_log).is_file():
                logs.append(LogRecord(Path(rule_log), f"{event['name']} log: {Path(rule_log).name}",
                                      about=token))
        stdout = jobs_dir / f"{token}.stdout.log" if jobs_dir and _TOKEN.fullmatch(token) \
            else None
        if stdout and stdout.is_file() and not stdout.is_symlink() and stdout.stat().st_size:
            logs.append(LogRecord(stdout, f"{event['name']} stdout", about=token))
        exit_code = ran.exit_code if ran else done.get("exit_code")
        # a job with no image ran no command: Snakemake itself made its files
        norun = event.get("image") is None and ran is None
        # a service never ends by itself: stopped once its readers had ended, it is done
        # (its exit code is that of the stop)
        status = RunStatus.COMPLETED if done.get("status") == "success" and (
            exit_code == 0 or (norun and exit_code is None) or done.get("service_stopped")) \
            else RunStatus.FAILED
        wildcards = tuple(ParameterValue(f"wildcard {k}", v)
                          for k, v in event.get("wildcards", {}).items())
        records.append(StepRecord(
            step=event["rule"], name=event["name"], tool=f"{tool_prefix}{event['rule']}",
            status=status,
            start_time=ran.start if ran else _time(done.get("start") or event.get("start")),
            end_time=ran.end if ran else _time(done.get("end")),
            exit_code=exit_code,
            container=ran.container if ran else
            None if norun else ContainerRecord(image=event["image"]),
            inputs=(*_files(event.get("inputs", [])), *wildcards),
            outputs=_files(event.get("outputs", [])) if status is RunStatus.COMPLETED
            else (),
            logs=tuple(logs), command=tuple(event.get("command", [])),
            native_id=done.get("native_id") or token,
            error=str(done["error"])[:1000] if done.get("error") else None,
        ))
    return tuple(records)

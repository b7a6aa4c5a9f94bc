"""Turning the driver's job events and the sandbox ledger into engine-neutral step records.

Beside the events, the driver writes the workflow's shape (:data:`SHAPE_FILE`):
its steps, nested workflows and conditions, as written. With it a record also
lists the steps that did not run (a ``when`` that was false) and the runs of
nested workflows, named by step paths (``revsort/rev``) whatever the engine.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from cratebridge.containers.ledger import Ledger
from cratebridge.engines.record import (
    FileRecord,
    LogRecord,
    ParameterValue,
    PlannedStep,
    RunRecord,
    RunStatus,
    StepRecord,
    SubworkflowRecord,
)

__all__ = ["SHAPE_FILE", "read_events", "run_key", "run_order", "shape_path", "step_records",
           "values_to_records", "with_nesting"]

#: The workflow's shape, written by the driver beside its events file.
SHAPE_FILE = "workflow-shape.json"


def run_key(position: int | None) -> str:
    """A new key for a run of a nested workflow: ``position:random`` (``:random`` when
    the run is no position of a scatter, or the engine does not say which)."""
    return f"{'' if position is None else position}:{uuid.uuid4().hex}"


def run_order(keys: Iterable[str]) -> tuple[int, ...]:
    """Where the runs named by ``keys`` (outermost first) stand among their kind: the
    scatter position of each (0 when unknown). Runs, and the jobs in them, are named
    in this order, the same whatever order the engine ran them in."""
    order = []
    for key in keys:
        position, _, _ = str(key).partition(":")
        order.append(int(position) if position.isdigit() else 0)
    return tuple(order)


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


# -- nested workflows and steps that did not run ---------------------------------------


def shape_path(events: Path) -> Path:
    """Where the driver writing ``events`` writes the workflow's shape."""
    return events.with_name(SHAPE_FILE)


def _read_shape(events: Path) -> dict[str, Any] | None:
    try:
        shape = json.loads(shape_path(events).read_text())
    except (OSError, ValueError):
        return None
    return shape if isinstance(shape, dict) and isinstance(shape.get("steps"), list) else None


def with_nesting(record: RunRecord, events_path: Path,
                 events: Iterable[dict[str, Any]] = ()) -> RunRecord:
    """``record`` with every step as written and the runs of its nested workflows.

    Needs the shape the driver wrote beside ``events_path``; without it (or with
    one that does not read) the record is returned as it is. ``events`` (those
    of ``events_path``) say which run of a nested workflow each job was part of:
    a scattered nested workflow has a run per scatter position. Each run of a
    nested workflow is an event too (``entered``), so that a run whose steps
    were all skipped is a run.
    """
    shape = _read_shape(events_path)
    if shape is None:
        return record
    try:
        events = list(events)
        within = {str(e["token"]): tuple(str(r) for r in e.get("runs") or ())
                  for e in events if e.get("event") == "started"}
        entered = [Entered(str(e["step"]), tuple(str(r) for r in e.get("runs") or ()),
                           datetime.fromisoformat(str(e["time"])))
                   for e in events if e.get("event") == "entered"]
        return _nested(record, shape, within, entered)
    except (KeyError, TypeError, AttributeError, ValueError):
        return record  # written in the engine's room: a record without nesting beats none


class Entered(NamedTuple):
    """A run of a nested workflow began: that of step ``step`` (a path), its keys
    those of the runs it is within and its own (as a job's ``runs``)."""

    step: str
    runs: tuple[str, ...]
    time: datetime


def _nested(record: RunRecord, shape: dict[str, Any], within: dict[str, tuple[str, ...]],
            entered: list[Entered]) -> RunRecord:
    steps = list(_walk(shape, ""))
    tools = {path: str(step["tool"]) for path, step, _ in steps}
    # a tool written inside its step has a random id; the shape names it after the step
    named = [replace(s, tool=tools[s.step]) if s.tool.startswith("_:") and s.step in tools
             else s for s in record.steps]
    record = replace(record, steps=_in_workflow_order(named, steps, within))
    ran = _with_parents(s.step for s in record.steps) | _with_parents(e.step for e in entered)
    planned = tuple(_planned(steps, ran, record.status))
    return replace(record, planned=planned,
                   subworkflows=_subworkflow_runs(steps, ran, record, within, entered))


Shaped = tuple[str, dict[str, Any], int]


def _in_workflow_order(records: list[StepRecord], steps: list[Shaped],
                       within: dict[str, tuple[str, ...]]) -> tuple[StepRecord, ...]:
    """The jobs in the workflow's order, not the engine's: by the position of each step
    on their path, each nested run by its scatter position (:func:`run_order`), then
    a scattered step's jobs by their number (``say``, ``say_2``); as they started
    where that does not tell. The crate numbers its actions in this order, so that
    they have the same ids whichever engine ran the workflow, in whatever order.
    """
    position = {path: place for path, _, place in steps}

    def key(record: StepRecord) -> tuple[Any, ...]:
        parts = record.step.split("/")
        paths = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if any(p not in position for p in paths):
            return (1, (), 0, record.start_time.isoformat() if record.start_time else "")
        runs = run_order(within.get(record.native_id or "", ()))
        # each nested workflow step's position, then that of the run of it the job was in
        order = [n for i, p in enumerate(paths)
                 for n in (position[p], *(runs[i:i + 1] if i < len(paths) - 1 else ()))]
        stem, _, number = record.name.rpartition("_")
        return (0, tuple(order), int(number) if stem and number.isdigit() else 1,
                record.start_time.isoformat() if record.start_time else "")

    return tuple(sorted(records, key=key))


def _walk(shape: dict[str, Any], prefix: str) -> Iterator[Shaped]:
    """Every step of a workflow shape, nested ones after theirs: (path, step, position).

    A workflow's steps come in the order of their positions, whatever order the engine
    gave them in.
    """
    positions = _positions(shape)
    for step in sorted(shape.get("steps", []), key=lambda s: positions[str(s["name"])]):
        path = f"{prefix}/{step['name']}" if prefix else str(step["name"])
        yield path, step, positions[str(step["name"])]
        if isinstance(step.get("workflow"), dict):
            yield from _walk(step["workflow"], path)


def _with_parents(steps: Iterable[str]) -> set[str]:
    """The step paths given (steps that ran), and every workflow step above them."""
    paths: set[str] = set()
    for step in steps:
        parts = step.split("/")
        paths.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    return paths


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


def _positions(workflow: dict[str, Any]) -> dict[str, int]:
    """Each step's place in an order that runs a step after those it takes outputs from."""
    steps = [str(s["name"]) for s in workflow.get("steps", [])]
    needs = {str(s["name"]): {src.split("/")[0] for port in s.get("in", {}).values()
                              for src in port.get("source", []) if "/" in src} & set(steps)
             for s in workflow.get("steps", [])}
    order: list[str] = []
    # ties go by name, not by the order the engine lists steps in (Toil's is not cwltool's)
    for _ in steps:
        ready = sorted(n for n in steps if n not in order and needs[n] <= set(order))
        # a cycle is not valid CWL: take what is left by name
        order.append((ready or sorted(n for n in steps if n not in order))[0])
    return {name: index for index, name in enumerate(order)}


def _planned(steps: list[Shaped], ran: set[str], status: RunStatus) -> Iterator[PlannedStep]:
    """The steps of the workflow and of the nested workflows that ran."""
    for path, step, position in steps:
        parent = _parent(path)
        if parent and parent not in ran:
            continue  # inside a nested workflow that did not run: only that step is shown
        condition = step.get("when")
        yield PlannedStep(
            step=path, tool=str(step["tool"]), position=position,
            workflow=isinstance(step.get("workflow"), dict),
            condition=str(condition) if condition is not None else None,
            # a run that failed may have stopped before it: only a finished run says so
            skipped=condition is not None and path not in ran and status is RunStatus.COMPLETED)


#: A run of a nested workflow: the path of its step, and the engine's keys of the runs
#: it is within, its own last (none known: one run of each path).
RunKey = tuple[str, tuple[str, ...]]


def _subworkflow_runs(steps: list[Shaped], ran: set[str], record: RunRecord,
                      within: dict[str, tuple[str, ...]], entered: list[Entered]
                      ) -> tuple[SubworkflowRecord, ...]:
    """One record per run of a nested workflow (a scattered one runs once per position),
    outer ones first; the runs of one step named ``step``, ``step_2``... in the order of
    their scatter positions (:func:`run_order`), as they started where that is unknown."""
    nested = [(path, step) for path, step, _ in steps
              if isinstance(step.get("workflow"), dict) and path in ran]
    runs: dict[RunKey, SubworkflowRecord] = {}
    # innermost first: an outer run is made of its inner ones
    for path, step in sorted(nested, key=lambda item: -item[0].count("/")):
        depth = path.count("/") + 1
        instances: dict[tuple[str, ...], list[StepRecord]] = {}
        for s in record.steps:
            if s.step.startswith(path + "/"):
                instances.setdefault(within.get(s.native_id or "", ())[:depth], []).append(s)
        began: dict[tuple[str, ...], datetime] = {}
        for run in entered:  # a run none of whose steps ran is a run too
            if run.step == path:
                instances.setdefault(run.runs[:depth], [])
                began[run.runs[:depth]] = run.time
        for key, inner in instances.items():
            inside = {(p, k): r for (p, k), r in runs.items() if k[:len(key)] == key}
            runs[(path, key)] = _subworkflow_run(path, step, inner, record.status, inside,
                                                 began.get(key))
    ordered: list[SubworkflowRecord] = []
    for path, _ in nested:
        # by scatter position where the engine says it, else as they started
        mine = [r for _, _, r in sorted(
            ((run_order(k), r.start_time or record.start_time, r)
             for (p, k), r in runs.items() if p == path), key=lambda t: t[:2])]
        name = path.rsplit("/", 1)[-1]
        ordered.extend(replace(r, name=name + (f"_{n}" if n > 1 else ""))
                       for n, r in enumerate(mine, 1))
    return tuple(ordered)


def _subworkflow_run(path: str, step: dict[str, Any], inner: list[StepRecord],
                     status: RunStatus, runs: dict[RunKey, SubworkflowRecord],
                     began: datetime | None = None) -> SubworkflowRecord:
    """A run of the nested workflow at ``path``, from the runs of its steps (``inner``, and
    the nested runs ``runs`` within it); ``began``: when the engine says it began.

    Its inputs are what its steps read straight from its inputs; its outputs
    what its output sources wrote (files and values: an ExpressionTool step's
    values are in its record), or an input it passes through.
    """
    workflow: dict[str, Any] = step["workflow"]
    inner_runs: dict[str, list[SubworkflowRecord]] = {}  # a scattered one ran more than once
    for (inner_path, _key), run in runs.items():
        if _parent(inner_path) == path:
            inner_runs.setdefault(inner_path, []).append(run)
    timed: list[StepRecord | SubworkflowRecord] = [
        *inner, *(r for rs in inner_runs.values() for r in rs)]
    starts = [t for t in (began, *(s.start_time for s in timed)) if t is not None]
    ends = [s.end_time for s in timed if s.end_time is not None]
    if not timed and began is not None:
        ends = [began]  # every step skipped: it ended as it began
    failed = sorted({s.name for s in inner if s.status is RunStatus.FAILED})
    failed_runs = sorted({p.rpartition("/")[2] for p, rs in inner_runs.items() for r in rs
                          if r.status is RunStatus.FAILED})
    # what ran in this run: a step of a scattered nested workflow may run in one and not
    # in another (its condition reads the scattered value)
    here = _with_parents(s.step for s in inner) | set(inner_runs)
    unrun = [(s["name"], s.get("when")) for s in workflow.get("steps", [])
             if f"{path}/{s['name']}" not in here]
    missing = [name for name, when in unrun if when is None]
    error = None
    if failed:
        error = f"Nested workflow {path} failed: step(s) {', '.join(failed)} failed"
    elif failed_runs:
        error = f"Nested workflow {path} failed: nested workflow(s) {', '.join(failed_runs)} " \
                "failed"
    elif missing and status is RunStatus.FAILED:
        error = f"Nested workflow {path} did not finish: step(s) {', '.join(missing)} did not run"

    def values(direction: str, inner_path: str, port: str, name: str
               ) -> list[FileRecord | ParameterValue]:
        """The values of ``port`` of the step at ``inner_path``, named ``name``."""
        found: Iterable[FileRecord | ParameterValue]
        if inner_path in inner_runs:
            found = (v for r in inner_runs[inner_path] for v in getattr(r, direction))
        else:
            found = (v for s in inner if s.step == inner_path for v in getattr(s, direction))
        return [replace(v, parameter=name) for v in found if v.parameter == port]

    # in an order of their own, not the engine's
    positions = _positions(workflow)
    inner_steps = sorted(workflow.get("steps", []), key=lambda s: positions[str(s["name"])])
    inputs: list[FileRecord | ParameterValue] = []
    for name in sorted(workflow.get("inputs", [])):
        for inner_step in inner_steps:
            ports = [p for p, link in inner_step.get("in", {}).items()
                     if link.get("source") == [name] and not link.get("valueFrom")]
            found = values("inputs", f"{path}/{inner_step['name']}", ports[0], name) \
                if ports else []
            if found:
                inputs.extend(found)
                break
    outputs: list[FileRecord | ParameterValue] = []
    for name, sources in sorted(workflow.get("outputs", {}).items()):
        for source in sources:
            inner_step, _, port = source.partition("/")
            if not port:  # the workflow's own input, passed through
                outputs.extend(replace(v, parameter=name) for v in inputs
                               if v.parameter == source)
                continue
            outputs.extend(values("outputs", f"{path}/{inner_step}", port, name))
    return SubworkflowRecord(
        step=path, name=path.rsplit("/", 1)[-1], tool=str(step["tool"]),
        status=RunStatus.FAILED if error else RunStatus.COMPLETED,
        start_time=min(starts) if starts else None, end_time=max(ends) if ends else None,
        inputs=tuple(inputs), outputs=tuple(outputs), error=error,
        # as for the planned steps: only a finished run says a step was skipped
        skipped=tuple(f"{path}/{name}" for name, when in unrun if when is not None)
        if status is RunStatus.COMPLETED else ())

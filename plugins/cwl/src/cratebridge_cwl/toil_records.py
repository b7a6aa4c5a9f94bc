"""Step records for a Toil run: the driver's job events, the sandbox ledger and Toil's own logs.

The events come from the Toil workers (see :mod:`cratebridge_cwl.toil_driver`).
A worker sees its input files as copies staged from Toil's job store, so an
input is linked back to the file it is: the kept output of an earlier step,
or the workflow's own input, matched by checksum (and name when several match).
Toil's worker log (``--writeLogs``) is attached to each step it ran.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from cratebridge.containers.ledger import Ledger
from cratebridge.containers.sandbox import STEP_LABEL
from cratebridge.engines.record import LogRecord, StepRecord
from cratebridge_cwl.records import run_order, step_records

__all__ = ["slurm_jobs", "toil_step_records"]


def _sha1(path: Path) -> str | None:
    digest = hashlib.sha1()
    try:
        with path.open("rb") as data:
            for chunk in iter(lambda: data.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        return None
    return f"sha1${digest.hexdigest()}"


def _files(value: Any) -> Iterable[dict[str, Any]]:
    if isinstance(value, list):
        for item in value:
            yield from _files(item)
    elif isinstance(value, dict):
        if value.get("class") == "File":
            yield value
            yield from _files(value.get("secondaryFiles", []))
        else:
            for item in value.values():
                yield from _files(item)


def _job_order_files(job: Mapping[str, Any]) -> dict[str, list[str]]:
    """The workflow's input files by checksum (paths from ``file:`` locations)."""
    known: dict[str, list[str]] = {}
    for entry in _files(dict(job)):
        location = str(entry.get("location") or entry.get("path") or "")
        path = unquote(urlsplit(location).path) if location.startswith("file:") else location
        checksum = _sha1(Path(path)) if path.startswith("/") else None
        if checksum:
            known.setdefault(checksum, []).append(path)
    return known


def _relink(value: Any, sources: dict[str, list[str]]) -> Any:
    """Point each input file at the kept output or workflow input it is a copy of."""
    if isinstance(value, list):
        return [_relink(v, sources) for v in value]
    if not isinstance(value, dict):
        return value
    if value.get("class") == "File":
        out = dict(value)
        candidates = sources.get(str(value.get("checksum")), [])
        if candidates:
            name = os.path.basename(str(value.get("path") or value.get("location") or ""))
            same_name = [c for c in candidates if os.path.basename(c) == name]
            out["path"] = (same_name or candidates)[0]
        if "secondaryFiles" in value:
            out["secondaryFiles"] = _relink(value["secondaryFiles"], sources)
        return out
    return {k: _relink(v, sources) for k, v in value.items()}


def _relinked(events: list[dict[str, Any]], job: Mapping[str, Any]) -> list[dict[str, Any]]:
    sources = _job_order_files(job)
    finished = sorted((e for e in events if e.get("event") == "finished"),
                      key=lambda e: str(e.get("end")))
    for event in finished:
        for entry in _files(event.get("outputs", {})):
            if entry.get("checksum") and entry.get("path"):
                sources.setdefault(str(entry["checksum"]), []).append(str(entry["path"]))
    return [{**e, "inputs": _relink(e["inputs"], sources)} if e.get("event") == "finished"
            else e for e in events]


_TOKEN = re.compile(re.escape(STEP_LABEL).encode() + rb"=([0-9a-f]{32})")


def _worker_logs(logs_dir: Path | None, toil_jobs: Mapping[str, str]) -> dict[str, Path]:
    """Toil's ``--writeLogs`` files (``[failed_]CWLJob_<name>_<n>.log``) by step token.

    A log belongs to the jobs whose token it shows (the step label on their
    ``docker run``): Toil numbers the logs of jobs of one name (the runs of a
    scattered nested workflow are all ``say``) and a worker that ran jobs
    chained logs them all, so neither the name nor the number alone tells
    whose a log is. A log named after the token's own Toil job (``toil_jobs``)
    comes first. A job whose token no log shows (one stopped before its
    container) gets the last log of its name.
    """
    if logs_dir is None or not logs_dir.is_dir():
        return {}
    showing: dict[str, list[tuple[str, Path]]] = {}  # token -> (job name, log), in order
    by_name: dict[str, Path] = {}
    for path in sorted(logs_dir.glob("*.log")):
        kind, _, rest = path.stem.removeprefix("failed_").partition("_")
        name = rest.rpartition("_")[0]
        if kind != "CWLJob" or not name:
            continue
        by_name[name] = path
        try:
            shown = dict.fromkeys(t.decode() for t in _TOKEN.findall(path.read_bytes()))
        except OSError:
            continue
        for token in shown:
            showing.setdefault(token, []).append((name, path))
    found: dict[str, Path] = {}
    for token, job in toil_jobs.items():
        logs = showing.get(token, [])
        ranked = [path for name, path in logs if name == job] + [path for _, path in logs]
        if ranked or job in by_name:
            found[token] = ranked[0] if ranked else by_name[job]
    return found


def _unique_names(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each job's name made unique as cwltool makes them.

    A scattered step's jobs are named from the scatter position in Toil's job
    name (``square``, ``square_2``); the steps of a scattered nested workflow
    carry no position there, so each of its runs is ``say``. cwltool names
    its jobs ``say``, ``say_2``, ``say_3`` as it makes them, in the order of
    the scatter's positions; so do these records, from the positions of the
    nested runs each job is part of (:func:`~cratebridge_cwl.records.run_order`),
    then in the order the jobs started.
    """
    started = sorted((e for e in events if e.get("event") == "started"),
                     key=lambda e: (run_order(e.get("runs") or ()), str(e.get("time"))))
    taken: set[str] = set()
    names: dict[str, str] = {}
    for event in started:
        stem = name = str(event["name"])
        number = 1
        while name in taken:
            number += 1
            name = f"{stem}_{number}"
        taken.add(name)
        names[str(event["token"])] = name
    return [{**e, "name": names[str(e["token"])]} if str(e.get("token")) in names else e
            for e in events]


def toil_step_records(events: list[dict[str, Any]], ledger: Ledger, job: Mapping[str, Any],
                      worker_logs: Path | None = None) -> tuple[StepRecord, ...]:
    """One record per CWL job Toil ran, as :func:`~cratebridge_cwl.records.step_records` gives."""
    events = _unique_names(events)
    records = step_records(_relinked(events, job), ledger)
    by_token = {e["token"]: e for e in events if e.get("event") == "started"}
    logs = _worker_logs(worker_logs, {token: str(e.get("toil_job"))
                                      for token, e in by_token.items()})
    out = []
    for record in records:
        started = by_token.get(record.native_id or "", {})
        log = logs.get(record.native_id or "")
        if log is not None:
            where = f" (Slurm job {started['slurm_job']})" if started.get("slurm_job") else ""
            record = replace(record, logs=(*record.logs, LogRecord(
                log, f"{record.name} Toil worker log{where}", about=record.native_id)))
        out.append(record)
    return tuple(out)


def slurm_jobs(events: list[dict[str, Any]]) -> dict[str, str]:
    """Slurm job id per step token, for steps that ran as Slurm jobs."""
    return {e["token"]: str(e["slurm_job"]) for e in events
            if e.get("event") == "started" and e.get("slurm_job")}

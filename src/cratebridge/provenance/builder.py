"""Turns a RunRequest and the RunRecord of its run into the result crate folder.

A Five Safes request gives its own crate back, updated, with the run's
Provenance Run Crate nested in a folder of it (one flat crate cannot pass both
the Five Safes and the run-crate profiles); any other request gives the run
crate itself, with the request's files.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from cratebridge.engines.interface import EnginePlan
from cratebridge.engines.record import FileRecord, LogRecord, ParameterValue, RunRecord
from cratebridge.intake.request import CrateKind, RunRequest
from cratebridge.provenance.digests import DigestCache
from cratebridge.provenance.entities import RO_CRATE_1_2_CONTEXT, WFRUN_CONTEXT
from cratebridge.provenance.fivesafes import FiveSafesResult, request_license
from cratebridge.provenance.graph import Graph
from cratebridge.provenance.locations import Placed, Placer
from cratebridge.provenance.runcrate import RunCrateBuilder, RunCrateSpec

__all__ = ["build_result_crate"]

METADATA = "ro-crate-metadata.json"
RUN_CRATE_CONTEXT = [RO_CRATE_1_2_CONTEXT, WFRUN_CONTEXT]


def build_result_crate(
    request: RunRequest,
    record: RunRecord,
    *,
    run_dir: Path,
    dest: Path,
    plan: EnginePlan | None = None,
    workflow_dir: Path | None = None,
) -> Path:
    """Write the result crate folder at ``dest`` (which must not exist) and return it.

    Files the record names must lie inside ``run_dir``; one outside it raises
    :class:`ValueError` and nothing is left at ``dest``. Every file copied is
    hashed once (sha-512); the digests are kept next to ``dest`` for
    :func:`~cratebridge.provenance.package.write_result`.
    """
    if dest.exists():
        raise FileExistsError(f"{dest}: the result folder already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
    try:
        cache = DigestCache(work)
        placer = Placer(run_dir, work, cache)
        if request.kind is CrateKind.FIVE_SAFES:
            _five_safes(request, record, placer, plan, workflow_dir)
        else:
            _run_crate_only(request, record, placer, plan, workflow_dir)
        os.rename(work, dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    cache.root = dest
    cache.save()
    return dest


def _five_safes(
    request: RunRequest,
    record: RunRecord,
    placer: Placer,
    plan: EnginePlan | None,
    workflow_dir: Path | None,
) -> None:
    placer.copy_folder(request.crate_dir, "", skip=frozenset({METADATA}), trusted=True)
    outputs = _place_outputs(record, placer)
    logs = _place_run_logs(record, placer)
    prefix = _free_folder(placer.dest, "provenance")
    spec = _workflow_spec(request, placer, prefix, f"{prefix}workflow/", workflow_dir, plan)
    run_crate = RunCrateBuilder(request, record, placer, spec, plan).build()
    _write(run_crate, placer, prefix + METADATA, RUN_CRATE_CONTEXT)
    outer = FiveSafesResult(request, record)
    _write(outer.build(outputs, logs, prefix), placer, METADATA, outer.context())


def _run_crate_only(
    request: RunRequest,
    record: RunRecord,
    placer: Placer,
    plan: EnginePlan | None,
    workflow_dir: Path | None,
) -> None:
    placer.copy_folder(request.crate_dir, "", skip=frozenset({METADATA}), trusted=True)
    _place_outputs(record, placer)
    logs = _place_run_logs(record, placer)
    source = (workflow_dir or request.workflow.root).resolve()
    crate_dir = request.crate_dir.resolve()
    if workflow_dir is None and source.is_relative_to(crate_dir):
        rel = source.relative_to(crate_dir).as_posix()
        location = "" if rel == "." else rel + "/"
    else:
        location = _free_folder(placer.dest, "workflow")
        placer.copy_folder(source, location, trusted=True)
    spec = _workflow_spec(request, placer, "", location, workflow_dir, plan)
    graph = RunCrateBuilder(request, record, placer, spec, plan).build(logs)
    _write(graph, placer, METADATA, RUN_CRATE_CONTEXT)


def _workflow_spec(
    request: RunRequest,
    placer: Placer,
    prefix: str,
    location: str,
    workflow_dir: Path | None,
    plan: EnginePlan | None,
) -> RunCrateSpec:
    """Describe the workflow folder copied at ``location``; copy it first in a nested crate."""
    source = (workflow_dir or request.workflow.root).resolve()
    if prefix:
        placer.copy_folder(source, location, trusted=True)
    main = _main_file(request, source, plan)
    return RunCrateSpec(
        prefix=prefix,
        workflow_src=source,
        workflow_location=location,
        main_location=location + main,
        license=request_license(request),
    )


def _main_file(request: RunRequest, source: Path, plan: EnginePlan | None) -> str:
    """The main workflow file, relative to the workflow folder."""
    candidates = []
    if plan is not None:
        candidates.append(plan.workflow)
    main = request.workflow.main_file
    if main.is_absolute() and main.resolve().is_relative_to(request.workflow.root.resolve()):
        main = main.resolve().relative_to(request.workflow.root.resolve())
    candidates.append(main if main.is_absolute() else source / main)
    for candidate in candidates:
        resolved = candidate.resolve()
        if resolved.is_file() and resolved.is_relative_to(source):
            return resolved.relative_to(source).as_posix()
    raise ValueError(f"{request.workflow.main_file}: main workflow file not found in {source}")


def _place_outputs(
    record: RunRecord, placer: Placer
) -> list[tuple[FileRecord | ParameterValue, Placed | None]]:
    outputs_dir = placer.run_dir / "outputs"

    def default(resolved: Path) -> str:
        if resolved.is_relative_to(outputs_dir):
            return "outputs/" + resolved.relative_to(outputs_dir).as_posix()
        return "outputs/" + resolved.name

    placed: list[tuple[FileRecord | ParameterValue, Placed | None]] = []
    for value in record.outputs:
        if isinstance(value, ParameterValue):
            placed.append((value, None))
        else:
            placed.append((value, placer.place(value.path, value.is_dir, default)))
    return placed


def _place_run_logs(record: RunRecord, placer: Placer) -> list[tuple[LogRecord, Placed]]:
    logs_dir = placer.run_dir / "logs"

    def default(resolved: Path) -> str:
        if resolved.is_relative_to(logs_dir):
            return "logs/" + resolved.relative_to(logs_dir).as_posix()
        return "logs/" + resolved.name

    return [(log, placer.place(log.path, False, default)) for log in record.logs]


def _free_folder(dest: Path, name: str) -> str:
    candidate, number = name, 1
    while (dest / candidate).exists():
        number += 1
        candidate = f"{name}-{number}"
    return candidate + "/"


def _write(graph: Graph, placer: Placer, location: str, context: object) -> None:
    digest = graph.write(placer.dest / location, context)
    placer.cache.record(location, digest)

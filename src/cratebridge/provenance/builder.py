"""Turns a RunRequest and the RunRecord of its run into the result crate folder.

A Five Safes request gives its own crate's metadata back, updated, with the
run's Provenance Run Crate nested in ``provenance/`` holding every file (one flat
crate cannot pass both the Five Safes and the run-crate profiles); any other
request gives the run crate itself, with the request's files.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import suppress
from pathlib import Path

from cratebridge.engines.interface import EnginePlan
from cratebridge.engines.record import FileRecord, LogRecord, ParameterValue, RunRecord
from cratebridge.intake.request import CrateKind, RunRequest
from cratebridge.provenance.digests import DigestCache
from cratebridge.provenance.entities import RO_CRATE_1_2_CONTEXT, WFRUN_CONTEXT, Publisher
from cratebridge.provenance.files import hash_file
from cratebridge.provenance.fivesafes import FiveSafesResult, request_license
from cratebridge.provenance.graph import Graph
from cratebridge.provenance.locations import Placed, Placer
from cratebridge.provenance.preview import PREVIEW, write_preview
from cratebridge.provenance.runcrate import RunCrateBuilder, RunCrateSpec

__all__ = ["build_result_crate"]

METADATA = "ro-crate-metadata.json"
#: the run crate's folder in a Five Safes result
RUN_CRATE_FOLDER = "provenance/"
_Output = tuple[FileRecord | ParameterValue, Placed | None]
RUN_CRATE_CONTEXT = [RO_CRATE_1_2_CONTEXT, WFRUN_CONTEXT]


def build_result_crate(
    request: RunRequest,
    record: RunRecord,
    *,
    run_dir: Path,
    dest: Path,
    plan: EnginePlan | None = None,
    workflow_dir: Path | None = None,
    publisher: Publisher | None = None,
    link: bool = True,
) -> Path:
    """Write the result crate folder at ``dest`` (which must not exist) and return it.

    Files the record names must lie inside ``run_dir``; one outside it raises
    :class:`ValueError` and nothing is left at ``dest``. Every file copied is
    hashed once (sha-512); the digests are kept next to ``dest`` for
    :func:`~cratebridge.provenance.package.write_result`. ``publisher`` (the
    operator's TRE) is named as the crates' publisher.

    With ``link`` a file is a hard link to the run's file where the filesystem
    allows: the cheapest when the crate is then copied again (into a ZIP).
    Without it every file is a copy of its own, which ``write_result(...,
    move=True)`` can move into a folder instead of copying a second time.
    """
    if dest.exists():
        raise FileExistsError(f"{dest}: the result folder already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
    try:
        cache = DigestCache(work)
        placer = Placer(run_dir, work, cache, link=link)
        written = _build(request, record, placer, plan, workflow_dir, publisher)
        with suppress(OSError):  # a preview is a courtesy: a full disk must not cost the crate
            write_preview(work, written)
        for page in (PREVIEW, RUN_CRATE_FOLDER + PREVIEW):  # hashed once, as every file
            if (work / page).is_file():
                cache.record(page, hash_file(work / page))
        os.rename(work, dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    cache.root = dest
    cache.save()
    return dest


def _build(
    request: RunRequest,
    record: RunRecord,
    placer: Placer,
    plan: EnginePlan | None,
    workflow_dir: Path | None,
    publisher: Publisher | None,
) -> dict[Path, object]:
    """Copy the request's files, the outputs and the logs, once, into the run crate's
    folder; write its metadata; for a Five Safes request, the outer crate's too.
    Returns each metadata document written, by its path.

    A Five Safes result keeps every file in ``provenance/`` and the outer crate
    names them there (the request's own files too), so the run crate refers to
    nothing outside its folder. The workflow is the request's own folder when it
    came in the crate, else a copy beside it.
    """
    five_safes = request.kind is CrateKind.FIVE_SAFES
    prefix = RUN_CRATE_FOLDER if five_safes else ""
    placer.copy_folder(request.crate_dir, prefix, skip=frozenset({METADATA}), trusted=True)
    outputs = _place_outputs(record, placer, prefix)
    logs = _place_run_logs(record, placer, prefix)
    source = (workflow_dir or request.workflow.root).resolve()
    crate_dir = request.crate_dir.resolve()
    if workflow_dir is None and source.is_relative_to(crate_dir):
        rel = source.relative_to(crate_dir).as_posix()
        location = prefix + ("" if rel == "." else rel + "/")
    else:
        location = prefix + _free_folder(placer.dest / prefix, "workflow")
        placer.copy_folder(source, location, trusted=True)
    spec = _workflow_spec(request, source, prefix, location, plan, publisher)
    run_crate = RunCrateBuilder(request, record, placer, spec, plan).build(logs)
    written: dict[Path, object] = {}
    _write(run_crate, placer, prefix + METADATA, RUN_CRATE_CONTEXT, written)
    if five_safes:
        outer = FiveSafesResult(request, record, publisher, payload=prefix)
        _write(outer.build(outputs, logs, prefix), placer, METADATA, outer.context(), written)
    return written


def _workflow_spec(
    request: RunRequest,
    source: Path,
    prefix: str,
    location: str,
    plan: EnginePlan | None,
    publisher: Publisher | None,
) -> RunCrateSpec:
    """Describe the workflow folder ``source``, found in the result at ``location``."""
    main = _main_file(request, source, plan)
    return RunCrateSpec(
        prefix=prefix,
        workflow_src=source,
        workflow_location=location,
        main_location=location + main,
        license=request_license(request),
        publisher=publisher,
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


def _place_outputs(record: RunRecord, placer: Placer, prefix: str) -> list[_Output]:
    outputs_dir = placer.run_dir / "outputs"

    def default(resolved: Path) -> str:
        if resolved.is_relative_to(outputs_dir):
            return f"{prefix}outputs/" + resolved.relative_to(outputs_dir).as_posix()
        return f"{prefix}outputs/" + resolved.name

    placed: list[_Output] = []
    for value in record.outputs:
        if isinstance(value, ParameterValue):
            placed.append((value, None))
        else:
            placed.append((value, placer.place(value.path, value.is_dir, default)))
    return placed


def _place_run_logs(record: RunRecord, placer: Placer,
                    prefix: str) -> list[tuple[LogRecord, Placed]]:
    logs_dir = placer.run_dir / "logs"

    def default(resolved: Path) -> str:
        if resolved.is_relative_to(logs_dir):
            return f"{prefix}logs/" + resolved.relative_to(logs_dir).as_posix()
        return f"{prefix}logs/" + resolved.name

    return [(log, placer.place(log.path, False, default)) for log in record.logs]


def _free_folder(dest: Path, name: str) -> str:
    candidate, number = name, 1
    while (dest / candidate).exists():
        number += 1
        candidate = f"{name}-{number}"
    return candidate + "/"


def _write(graph: Graph, placer: Placer, location: str, context: object,
           written: dict[Path, object]) -> None:
    path = placer.dest / location
    digest, written[path] = graph.write(path, context)
    placer.cache.record(location, digest)

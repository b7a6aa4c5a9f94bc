"""Nextflow tasks as step records: the trace, each task's work folder and the sandbox ledger.

The trace says which tasks ran, with status, exit and times. The work folder
holds what a task saw and made: staged inputs are symlinks, outputs are the
other files, ``.command.*`` and ``.exitcode`` are Nextflow's own. The ledger
says which image (by id) each container really ran; a container is matched to
its task by the task folder given to ``docker run -w``.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from cratebridge.containers.ledger import Ledger, LedgerEntry, ledger_lines
from cratebridge.engines.record import (
    ContainerRecord,
    FileRecord,
    LogRecord,
    ParameterValue,
    RunStatus,
    StepRecord,
)
from cratebridge_nextflow.trace import TraceRow

__all__ = ["LOG_FILES", "containers_by_workdir", "step_records", "task_files"]

#: Per-task logs Nextflow writes, and what each holds.
LOG_FILES = {".command.err": "stderr", ".command.out": "stdout", ".command.log": "wrapper log"}
_CONTROL = ".command."
_EXIT = ".exitcode"


def containers_by_workdir(ledger_path: Path, ledger: Ledger) -> dict[str, LedgerEntry]:
    """Ledger entries keyed by the real path of the folder their ``docker run -w`` named."""
    by_token = ledger.by_token()
    found: dict[str, LedgerEntry] = {}
    for data in ledger_lines(ledger_path):
        entry = by_token.get(str(data.get("token")))
        workdir = _workdir_flag(data.get("argv") or [])
        if entry is not None and workdir:
            found[os.path.realpath(workdir)] = entry
    return found


def _workdir_flag(argv: list[str]) -> str | None:
    for index, arg in enumerate(argv):
        for flag in ("-w", "--workdir"):
            if arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
            if arg == flag and index + 1 < len(argv):
                return argv[index + 1]
    return None


def task_files(workdir: Path, run_dir: Path) -> tuple[list[FileRecord], list[FileRecord]]:
    """(inputs, outputs) of one task folder.

    Inputs are the staged symlinks, resolved; targets outside the run folder
    (operator-mapped data) are left out, since the result crate never copies them.
    Outputs are the files and folders the task made, minus Nextflow's own.
    """
    inputs: list[FileRecord] = []
    outputs: list[FileRecord] = []
    root = run_dir.resolve()
    if not workdir.is_dir():
        return inputs, outputs
    for entry in sorted(workdir.iterdir()):
        name = entry.name
        if name.startswith(_CONTROL) or name == _EXIT:
            continue
        if entry.is_symlink():
            target = entry.resolve()
            if target.exists() and target.is_relative_to(root):
                inputs.append(FileRecord(target, name, target.is_dir()))
            continue
        outputs.append(FileRecord(entry, name, entry.is_dir()))
    return inputs, outputs


def _logs(row: TraceRow) -> tuple[LogRecord, ...]:
    if row.workdir is None:
        return ()
    return tuple(LogRecord(row.workdir / name, f"{row.name} {what}", about=row.hash)
                 for name, what in LOG_FILES.items() if (row.workdir / name).is_file())


def step_records(rows: list[TraceRow], containers: dict[str, LedgerEntry], run_dir: Path,
                 tools: dict[str, str], image_ids: dict[str, str | None]
                 ) -> tuple[StepRecord, ...]:
    """One record per trace row (per task), in task order.

    ``tools`` maps a process name to the tool id to record (``file.nf#PROCESS``);
    ``image_ids`` gives the local id of images whose container the ledger lacks.
    """
    records = []
    root = run_dir.resolve()
    for row in sorted(rows, key=lambda r: int(r.task_id) if r.task_id.isdigit() else 0):
        if row.workdir is not None and \
                not Path(os.path.realpath(row.workdir)).is_relative_to(root):
            # the trace is written in the room: a task folder elsewhere is not read
            row = replace(row, workdir=None)
        ran = containers.get(os.path.realpath(row.workdir)) if row.workdir else None
        container = ran.container if ran else None
        if container is None and row.container:
            container = ContainerRecord(row.container, image_ids.get(row.container))
        inputs: list[FileRecord | ParameterValue] = []
        outputs: list[FileRecord | ParameterValue] = []
        if row.workdir is not None:
            found_in, found_out = task_files(row.workdir, run_dir)
            inputs += found_in
            if not row.failed:
                outputs += found_out
        simple = row.process.rsplit(":", 1)[-1]
        command = ("/bin/bash", "-ue", str(row.workdir / ".command.sh")) if row.workdir else ()
        records.append(StepRecord(
            step=row.process, name=row.name, tool=tools.get(simple, simple),
            status=RunStatus.FAILED if row.failed else RunStatus.COMPLETED,
            start_time=row.start or row.submit, end_time=row.complete,
            exit_code=row.exit, container=container, inputs=tuple(inputs),
            outputs=tuple(outputs), logs=_logs(row), command=command,
            native_id=row.native_id or row.hash,
        ))
    return tuple(records)

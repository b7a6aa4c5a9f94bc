"""What an engine reports after a run: a typed RunRecord the provenance stage turns into a crate."""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

__all__ = [
    "ContainerRecord",
    "FileRecord",
    "LogRecord",
    "ParameterValue",
    "PlannedStep",
    "RunRecord",
    "RunStatus",
    "StepRecord",
    "SubworkflowRecord",
    "within",
]


class RunStatus(enum.Enum):
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def action_status(self) -> str:
        if self is RunStatus.COMPLETED:
            return "http://schema.org/CompletedActionStatus"
        return "http://schema.org/FailedActionStatus"


@dataclass(frozen=True)
class FileRecord:
    """A file (or folder) a run read or wrote, as a path on disk.

    ``parameter`` names the workflow or step parameter it was bound to.
    """

    path: Path
    parameter: str | None = None
    is_dir: bool = False


@dataclass(frozen=True)
class ParameterValue:
    """A non-file value a run read or wrote (int, string, boolean...)."""

    parameter: str
    value: object


@dataclass(frozen=True)
class ContainerRecord:
    """The container a step ran in, as the sandbox saw it."""

    image: str
    image_id: str | None = None
    container_id: str | None = None


@dataclass(frozen=True)
class LogRecord:
    """A log file and what it is a log of (``about`` is a step id or ``None`` for the run).

    ``cut``: bytes cut from its middle by the log cap (``[limits] log_size``).
    """

    path: Path
    name: str
    about: str | None = None
    cut: int = 0


@dataclass(frozen=True)
class StepRecord:
    """One execution of one tool: a CWL job, a Snakemake job, a Nextflow task.

    ``step`` names the workflow step (the CWL step id, the rule, the process);
    ``name`` names this execution (``step_2`` for a scatter, ``rule[wildcards]``);
    ``tool`` names the tool the step ran (a CWL file, the rule, the process);
    ``error`` says why it failed when more is known than its exit code (it
    was stopped with its run, by a signal or a limit).
    """

    step: str
    name: str
    tool: str
    status: RunStatus
    start_time: datetime | None
    end_time: datetime | None
    exit_code: int | None
    container: ContainerRecord | None
    inputs: tuple[FileRecord | ParameterValue, ...] = ()
    outputs: tuple[FileRecord | ParameterValue, ...] = ()
    logs: tuple[LogRecord, ...] = ()
    command: tuple[str, ...] = ()
    native_id: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class PlannedStep:
    """A step as the workflow (or a nested workflow) defines it, whether it ran or not.

    ``step`` is its path from the top workflow, as :attr:`StepRecord.step` gives
    it: step ``rev`` of the nested workflow that step ``revsort`` runs is
    ``revsort/rev``. ``tool`` is what it runs (as :attr:`StepRecord.tool`);
    ``workflow`` says that is itself a workflow, whose steps are those under
    ``step/``. ``position`` orders the steps of one workflow so that a step
    comes after every step it takes outputs from. ``condition`` is the
    condition it runs under (CWL ``when``), if any; ``skipped`` says it did
    not run because that condition was false.
    """

    step: str
    tool: str
    position: int
    workflow: bool = False
    condition: str | None = None
    skipped: bool = False


@dataclass(frozen=True)
class SubworkflowRecord:
    """One run of a nested workflow: the step ``step`` (a path, as in :class:`PlannedStep`)
    ran the workflow ``tool``; ``name`` names this run (``step_2`` for the second run of
    a scattered one, as :attr:`StepRecord.name`).

    The executions it orchestrated are the step records (and nested runs)
    whose ``step`` lies under ``step/``. ``inputs`` and ``outputs`` are the
    nested workflow's, named by its own parameters; their files are files its
    steps read or wrote. ``skipped``: the paths of its steps that did not run
    in this run because their condition was false (a step of a scattered
    nested workflow may be skipped in one run and run in another).
    """

    step: str
    name: str
    tool: str
    status: RunStatus
    start_time: datetime | None
    end_time: datetime | None
    inputs: tuple[FileRecord | ParameterValue, ...] = ()
    outputs: tuple[FileRecord | ParameterValue, ...] = ()
    error: str | None = None
    skipped: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunRecord:
    """The whole run, engine-neutral.

    ``outputs`` are the workflow's outputs, already copied under the run
    folder's ``outputs/``; ``error`` is set when ``status`` is FAILED;
    ``labels`` are the caller's (``--label``), set by the core, not the engine.
    """

    engine: str
    engine_version: str | None
    status: RunStatus
    start_time: datetime
    end_time: datetime
    outputs: tuple[FileRecord | ParameterValue, ...] = ()
    steps: tuple[StepRecord, ...] = ()
    logs: tuple[LogRecord, ...] = ()
    error: str | None = None
    command: tuple[str, ...] = ()
    extra_workflow_files: tuple[Path, ...] = field(default=())
    planned: tuple[PlannedStep, ...] = ()
    subworkflows: tuple[SubworkflowRecord, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)


def within(record: RunRecord, roots: tuple[Path, ...]) -> tuple[RunRecord, list[Path]]:
    """``record`` without the files that lie (links resolved) outside ``roots``; and those.

    A record is built from what a confined engine wrote: a path in it may point
    anywhere. The result crate takes files from the run's folder (and refers to
    operator-mapped data) only.
    """
    real_roots = [Path(os.path.realpath(r)) for r in roots]
    dropped: list[Path] = []

    def inside(path: Path) -> bool:
        real = Path(os.path.realpath(path))
        return any(real == r or r in real.parents for r in real_roots)

    def keep(path: Path) -> bool:
        if inside(path):
            return True
        dropped.append(path)
        return False

    def values(items: tuple[FileRecord | ParameterValue, ...]
               ) -> tuple[FileRecord | ParameterValue, ...]:
        return tuple(i for i in items if not isinstance(i, FileRecord) or keep(i.path))

    def quietly(items: tuple[FileRecord | ParameterValue, ...]
                ) -> tuple[FileRecord | ParameterValue, ...]:
        # a nested run's files are its steps' files: those already said what was dropped
        return tuple(i for i in items if not isinstance(i, FileRecord) or inside(i.path))

    def logs(items: tuple[LogRecord, ...]) -> tuple[LogRecord, ...]:
        return tuple(log for log in items if keep(log.path))

    steps = tuple(replace(s, inputs=values(s.inputs), outputs=values(s.outputs),
                          logs=logs(s.logs)) for s in record.steps)
    nested = tuple(replace(s, inputs=quietly(s.inputs), outputs=quietly(s.outputs))
                   for s in record.subworkflows)
    kept = replace(record, outputs=values(record.outputs), steps=steps, logs=logs(record.logs),
                   subworkflows=nested)
    return kept, dropped

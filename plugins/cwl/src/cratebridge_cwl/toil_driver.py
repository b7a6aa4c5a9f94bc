"""toil-cwl-runner, instrumented: runs a workflow on Toil and writes one JSON line per job event.

Started by the toil engine as ``python -m cratebridge_cwl.toil_driver --events
FILE --keep DIR -- <toil-cwl-runner arguments>``. Toil has no provenance of
its own, so the driver hands Toil a CommandLineTool class of ours: the tool
objects travel (pickled) to the Toil workers, on this machine or on Slurm
nodes, and there each CWL job gets a step token (a Docker label the sandbox
ledger records) and, when it ends, writes its inputs, outputs and status to
the events file. The run folder must be on a filesystem every worker sees.
Output files are hard-linked under ``--keep`` as soon as a job ends, because
Toil deletes the worker's copies when the job returns.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from argparse import Namespace
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

from cwltool.context import LoadingContext, RuntimeContext
from cwltool.job import JobBase
from cwltool.workflow import Workflow
from toil.cwl import cwltoil

from cratebridge_cwl.driver import EventLog, JobReport, recording_job
from cratebridge_cwl.offline import OfflineFetcher

__all__ = ["RecordingToilCommandLineTool", "main"]


def _short(identifier: str) -> str:
    return identifier.split("#")[-1].split("/")[-1]


def _sha1(path: str) -> str | None:
    digest = hashlib.sha1()  # CWL's own checksum algorithm, to match cwltool's outputs
    try:
        with open(path, "rb") as data:
            for chunk in iter(lambda: data.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        return None
    return f"sha1${digest.hexdigest()}"


def _host_inputs(value: Any, mapper: Any) -> Any:
    """A job's input object with each file as the host path the worker staged it at.

    Inside Toil a file's ``location`` is a ``toilfile:`` id and its ``path`` the
    container path, so the host path comes from the job's path mapper. The
    checksum lets the engine match the file to the step output (or workflow
    input) it came from.
    """
    if isinstance(value, list):
        return [_host_inputs(v, mapper) for v in value]
    if not isinstance(value, dict):
        return value
    if value.get("class") in ("File", "Directory"):
        location = str(value.get("location", ""))
        path: str | None = None
        try:
            path = mapper.mapper(location).resolved if mapper is not None else None
        except KeyError:
            path = None
        if path is not None and not path.startswith("/"):
            path = None
        out: dict[str, Any] = {"class": value["class"], "path": path, "location": location}
        if value["class"] == "File":
            out["checksum"] = value.get("checksum") or (_sha1(path) if path else None)
        if value.get("secondaryFiles"):
            out["secondaryFiles"] = _host_inputs(value["secondaryFiles"], mapper)
        return out
    return {k: _host_inputs(v, mapper) for k, v in value.items()}


def _with_checksums(kept: Any) -> Any:
    """Output records (already kept) with a sha1 of each file, for the engine's joins."""
    if isinstance(kept, list):
        return [_with_checksums(v) for v in kept]
    if not isinstance(kept, dict):
        return kept
    if kept.get("class") == "File" and kept.get("path"):
        return {**kept, "checksum": _sha1(str(kept["path"])),
                **({"secondaryFiles": _with_checksums(kept["secondaryFiles"])}
                   if "secondaryFiles" in kept else {})}
    if kept.get("class") == "Directory":
        return kept
    return {k: _with_checksums(v) for k, v in kept.items()}


def _toil_report(step: str) -> JobReport:
    """Toil's job names, host inputs, checksummed outputs and the Slurm job, for the events."""

    def name(toil_name: str) -> str:
        index = _scatter_index(toil_name)
        return step.split("/")[-1] + (f"_{index + 1}" if index else "")

    return JobReport(
        name=name,
        inputs=lambda log, job: _host_inputs(job.joborder or {},
                                             getattr(job, "pathmapper", None)),
        outputs=_with_checksums,
        keep_key=lambda job: str(job.cb_token),
        extra=lambda toil_name: {"toil_job": toil_name, "host": os.uname().nodename,
                                 "slurm_job": os.environ.get("SLURM_JOB_ID")},
    )


def _scatter_index(toil_name: str) -> int | None:
    """The scatter position in a Toil job name (``workflow.cwl.7.square.cwl``), if any."""
    positions = [part for part in toil_name.split(".") if part.isdigit()]
    return int(positions[-1]) if positions else None


class RecordingToilCommandLineTool(cwltoil.ToilCommandLineTool):  # type: ignore[misc]
    """Toil's CommandLineTool, whose jobs record themselves (see :func:`_recording_job`).

    The event file, the keep folder and the workflow step are instance
    attributes so that they travel with the pickled tool to every worker.
    """

    cb_events: str
    cb_keep: str
    cb_step: str | None = None

    def make_job_runner(self, runtimeContext: RuntimeContext) -> type[JobBase]:
        base = super().make_job_runner(runtimeContext)
        step = self.cb_step or _short(str(self.tool.get("id", "tool")))
        log = EventLog(Path(self.cb_events), Path(self.cb_keep))
        return recording_job(base, log, step, str(self.tool.get("id", "")), _toil_report(step))


def _name_steps(workflow: Workflow, prefix: str = "") -> None:
    """Give each tool the workflow step path it runs as (``sub/step`` when nested)."""
    for step in workflow.steps:
        name = f"{prefix}/{_short(step.id)}" if prefix else _short(step.id)
        inner = step.embedded_tool
        if isinstance(inner, Workflow):
            _name_steps(inner, name)
        elif isinstance(inner, RecordingToilCommandLineTool):
            inner.cb_step = name


def _make_tool_factory(events: Path, keep: Path,
                       toil_make_tool: Callable[..., Any]) -> Callable[..., Any]:
    def make_tool(toolpath_object: Any, loading_context: LoadingContext) -> Any:
        if isinstance(toolpath_object, MutableMapping) and \
                toolpath_object.get("class") == "CommandLineTool":
            tool = RecordingToilCommandLineTool(toolpath_object, loading_context)
            tool.cb_events, tool.cb_keep = str(events), str(keep)
            return tool
        made = toil_make_tool(toolpath_object, loading_context)
        if isinstance(made, Workflow):
            # Outer workflows are made after their steps, so the last call names
            # every step with its full path.
            _name_steps(made)
        return made

    return make_tool


def _offline_options(get_options: Callable[[list[str]], Namespace]) -> Callable[..., Namespace]:
    """toil-cwl-runner has no --disable-pull: set cwltool's options for it."""

    def options(args: list[str]) -> Namespace:
        parsed = get_options(args)
        parsed.pull_image = False
        parsed.fetcher_constructor = OfflineFetcher
        return parsed

    return options


def main(argv: list[str] | None = None) -> int:
    own = argparse.ArgumentParser(prog="cratebridge-toil-driver")
    own.add_argument("--events", type=Path, required=True)
    own.add_argument("--keep", type=Path, required=True)
    own.add_argument("toil_args", nargs=argparse.REMAINDER)
    opts = own.parse_args(argv)
    rest = opts.toil_args[1:] if opts.toil_args[:1] == ["--"] else opts.toil_args
    # toil-cwl-runner reads both hooks from its module when main() runs.
    cwltoil.toil_make_tool = _make_tool_factory(
        opts.events.absolute(), opts.keep.absolute(), cwltoil.toil_make_tool)
    cwltoil.get_options = _offline_options(cwltoil.get_options)
    return int(cwltoil.main(rest))


if __name__ == "__main__":
    # Run from the imported module, not __main__: the tool class must pickle by
    # its importable name for the workers to load it.
    from cratebridge_cwl.toil_driver import main as _main

    sys.exit(_main())

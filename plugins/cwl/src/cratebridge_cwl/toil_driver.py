"""toil-cwl-runner, instrumented: runs a workflow on Toil and writes one JSON line per job event.

Started by the toil engine as ``python -m cratebridge_cwl.toil_driver --events
FILE --keep DIR -- <toil-cwl-runner arguments>``. Toil has no provenance of
its own, so the driver hands Toil a CommandLineTool class of ours: the tool
objects travel (pickled) to the Toil workers, on this machine or on Slurm
nodes, and there each CWL job gets a step token (a Docker label the sandbox
ledger records) and, when it ends, writes its inputs, outputs and status to
the events file; an ExpressionTool run as a step (on the leader) writes the
same. The run folder must be on a filesystem every worker sees.
Output files are hard-linked under ``--keep`` as soon as a job ends, because
Toil deletes the worker's copies when the job returns. Before its container
starts, each job makes sure the step user (``--step-user``) can read every
input Toil staged for it, and fails, saying which, when it cannot.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import stat
from argparse import Namespace
from collections.abc import Callable, Generator, Iterable, Iterator, MutableMapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import cwltool.main
from cwltool.command_line_tool import ExpressionJob
from cwltool.context import LoadingContext, RuntimeContext
from cwltool.job import JobBase
from cwltool.loghandler import _logger
from cwltool.utils import OutputCallbackType
from cwltool.workflow import Workflow
from toil.cwl import cwltoil

from cratebridge.leaving import leave
from cratebridge_cwl.driver import (
    JobReport,
    entering_run,
    name_steps,
    nested_runs,
    note_entered,
    record_expression,
    recording_job,
    short_id,
    standard_schemas,
    write_shape,
)
from cratebridge_cwl.eventlog import EventLog
from cratebridge_cwl.offline import OfflineFetcher

__all__ = ["UNREADABLE", "RecordingCWLWorkflow", "RecordingToilCommandLineTool",
           "RecordingToilExpressionTool", "main", "open_to_step_user"]

#: What a job logs when its container could not read an input (the engine quotes the
#: line in the run's error; ``toil_engine.UNREADABLE`` is the same text, kept there so
#: that every Toil worker need not import the engine).
UNREADABLE = "cannot be read by the step user"

#: The staged entries a step reads (``Create*`` entries are written from literals).
_READ_TYPES = ("File", "Directory", "WritableFile", "WritableDirectory")


def _sha1(path: str) -> str | None:
    digest = hashlib.sha1()  # CWL's own checksum algorithm, to match cwltool's outputs
    try:
        with open(path, "rb") as data:
            for chunk in iter(lambda: data.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        return None
    return f"sha1${digest.hexdigest()}"


def _host_inputs(value: Any, resolve: Callable[[str], str | None]) -> Any:
    """A job's input object with each file as the host path the worker staged it at.

    Inside Toil a file's ``location`` is a ``toilfile:`` id and its ``path`` the
    container path, so ``resolve`` gives the host path of a location (from the
    job's path mapper). The checksum lets the engine match the file to the step
    output (or workflow input) it came from.
    """
    if isinstance(value, list):
        return [_host_inputs(v, resolve) for v in value]
    if not isinstance(value, dict):
        return value
    if value.get("class") in ("File", "Directory"):
        location = str(value.get("location", ""))
        path = resolve(location)
        if path is not None and not path.startswith("/"):
            path = None
        out: dict[str, Any] = {"class": value["class"], "path": path, "location": location}
        if value["class"] == "File":
            out["checksum"] = value.get("checksum") or (_sha1(path) if path else None)
        if value.get("secondaryFiles"):
            out["secondaryFiles"] = _host_inputs(value["secondaryFiles"], resolve)
        return out
    return {k: _host_inputs(v, resolve) for k, v in value.items()}


def _mapped(mapper: Any) -> Callable[[str], str | None]:
    """Where a job's path mapper staged a location (``None``: not staged)."""

    def resolve(location: str) -> str | None:
        try:
            return str(mapper.mapper(location).resolved) if mapper is not None else None
        except KeyError:
            return None

    return resolve


def _fetched(fs_access: Any) -> Callable[[str], str | None]:
    """A local copy of a file's location, as an ExpressionTool's builder reads it (it has
    no path mapper); a folder (``toildir:``) is not fetched."""

    def resolve(location: str) -> str | None:
        if fs_access is None or not location.startswith(("toilfile:", "file:")):
            return None
        try:
            return str(fs_access._abs(location))
        except Exception:  # Toil's file store raises its own kinds: then no copy, no match
            return None

    return resolve


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
                                             _mapped(getattr(job, "pathmapper", None))),
        outputs=_with_checksums,
        keep_key=lambda job: str(job.cb_token),
        # the room's own hostname is "cratebridge": a Slurm job's node is the one slurmd
        # names (the job's room passes the job's SLURM* variables in)
        extra=lambda toil_name: {"toil_job": toil_name,
                                 "host": os.environ.get("SLURMD_NODENAME") or os.uname().nodename,
                                 "slurm_job": os.environ.get("SLURM_JOB_ID")},
    )


def _scatter_index(toil_name: str, last: bool = False) -> int | None:
    """The scatter position in a Toil job name (``workflow.cwl.7.square.cwl``), if any.

    ``last``: only when the name ends with it, as the ``parent_name`` Toil's
    scatter gives each job it makes does (``workflow.cwl.sayrev.2``).
    """
    parts = toil_name.split(".")
    positions = [part for part in (parts[-1:] if last else parts) if part.isdigit()]
    return int(positions[-1]) if positions else None


# -- the step user reads what Toil staged ----------------------------------------------


def _step_may(st: os.stat_result, uid: int, gid: int, bits: int) -> bool:
    """Whether ``uid:gid`` has ``bits`` (4 read, 1 search) on a file with this stat.

    By the mode alone, as the kernel decides for a process with no
    capabilities: the owner's bits for the owner, the group's for the group.
    """
    if st.st_uid == uid:
        have = st.st_mode >> 6
    elif st.st_gid == gid:
        have = st.st_mode >> 3
    else:
        have = st.st_mode
    return have & bits == bits


def _tree(top: str) -> Iterator[tuple[str, os.stat_result]]:
    """``top`` (links followed, as its bind mount will be) and, for a folder, all below it.

    Below the top, links are not followed: the container sees them as links.
    """
    try:
        yield top, os.stat(top)
    except OSError:
        return  # missing: cwltool reports a missing input itself
    if not os.path.isdir(top):
        return
    for folder, dirs, files in os.walk(top):
        for name in (*dirs, *files):
            path = os.path.join(folder, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if not stat.S_ISLNK(st.st_mode):
                yield path, st


def open_to_step_user(paths: Iterable[str], user: tuple[int, int],
                      within: Path | None) -> list[str]:
    """Make staged inputs readable by the step user; return those that stay unreadable.

    Toil stages a Directory (a workflow input, or a folder an earlier step
    made) as a fresh folder of its own with mode 0711: anyone may pass it,
    only its owner may list it. The step's container runs as the operator's
    step user, which need not be the uid the engine runs as, so a step could
    find its input folder unlistable, fail to read it, and still exit 0.
    Folders and files the engine owns inside ``within`` (the run's work
    folder, itself in a 0700 run folder) get read (and search, for folders)
    for all; anything else the step user cannot read is returned, and the
    job fails before its container starts.
    """
    uid, gid = user
    engine = os.geteuid()
    unreadable: list[str] = []
    for top in dict.fromkeys(paths):
        # links below the top are never followed, so all of it is where the top is
        ours = within is not None and Path(os.path.realpath(top)).is_relative_to(within)
        for path, st in _tree(top):
            folder = stat.S_ISDIR(st.st_mode)
            if _step_may(st, uid, gid, 5 if folder else 4):
                continue
            if ours and st.st_uid == engine:
                try:
                    os.chmod(path, stat.S_IMODE(st.st_mode) | (0o555 if folder else 0o444))
                    continue
                except OSError:
                    pass
            unreadable.append(path)
    return unreadable


def _staged_paths(job: Any) -> list[str]:
    """The host paths of the inputs a job's container will read, from its path mappers."""
    found: list[str] = []
    for mapper in (getattr(job, "pathmapper", None), getattr(job, "generatemapper", None)):
        if mapper is None:
            continue
        for _location, entry in mapper.items_exclude_children():
            resolved = str(entry.resolved)
            if entry.staged and entry.type in _READ_TYPES and resolved.startswith("/"):
                found.append(resolved)
    return found


def readable_inputs_job(base: type[JobBase], user: tuple[int, int],
                        within: Path | None) -> type[JobBase]:
    """A subclass of ``base`` whose container starts only if the step user can read its inputs.

    A job that cannot read one fails (``permanentFail``, so the run fails)
    and logs, with :data:`UNREADABLE`, the paths it could not read.
    """

    class ReadableInputsJob(base):  # type: ignore[valid-type,misc]
        def _execute(self, runtime: list[str], env: MutableMapping[str, str],
                     runtimeContext: RuntimeContext,
                     monitor_function: Callable[..., None] | None = None) -> None:
            unreadable = open_to_step_user(_staged_paths(self), user, within)
            if unreadable:
                shown = ", ".join(unreadable[:5]) + (
                    f" (and {len(unreadable) - 5} more)" if len(unreadable) > 5 else "")
                _logger.error("[job %s] cratebridge: input %s %s (uid %d, gid %d)",
                              self.name, shown, UNREADABLE, *user)
                self.output_callback({}, "permanentFail")
                return
            super()._execute(runtime, env, runtimeContext, monitor_function)

    ReadableInputsJob.__name__ = base.__name__
    return ReadableInputsJob


class RecordingToilCommandLineTool(cwltoil.ToilCommandLineTool):  # type: ignore[misc]
    """Toil's CommandLineTool, whose jobs record themselves (see :func:`_recording_job`).

    The event file, the keep folder, the workflow step and the step user are
    instance attributes so that they travel with the pickled tool to every worker.
    """

    cb_events: str
    cb_keep: str
    cb_step: str | None = None
    cb_step_user: tuple[int, int] | None = None
    cb_open_within: str | None = None

    def make_job_runner(self, runtimeContext: RuntimeContext) -> type[JobBase]:
        base = super().make_job_runner(runtimeContext)
        step = self.cb_step or short_id(str(self.tool.get("id", "tool")))
        log = EventLog(Path(self.cb_events), Path(self.cb_keep))
        job = recording_job(base, log, step, str(self.tool.get("id", "")), _toil_report(step),
                            runs=nested_runs(runtimeContext))
        if self.cb_step_user is None:
            return job
        within = Path(self.cb_open_within) if self.cb_open_within else None
        return readable_inputs_job(job, self.cb_step_user, within)


class RecordingToilExpressionTool(cwltoil.ToilExpressionTool):  # type: ignore[misc]
    """Toil's ExpressionTool, whose jobs record themselves when run as a workflow step.

    Like :class:`RecordingToilCommandLineTool`, it carries the event file and
    keep folder with it; Toil evaluates it on the leader.
    """

    cb_events: str
    cb_keep: str
    cb_step: str | None = None

    def job(self, job_order: Any, output_callbacks: OutputCallbackType | None,
            runtimeContext: RuntimeContext) -> Generator[ExpressionJob, None, None]:
        for job in super().job(job_order, output_callbacks, runtimeContext):
            if self.cb_step is not None:
                step = self.cb_step
                report = replace(_toil_report(step), inputs=lambda log, run: _host_inputs(
                    run.builder.job, _fetched(run.builder.fs_access)))
                log = EventLog(Path(self.cb_events), Path(self.cb_keep))
                record_expression(job, log, step, str(self.tool.get("id", "")),
                                  str(runtimeContext.name or short_id(step)), report,
                                  nested_runs(runtimeContext))
            yield job


class RecordingCWLWorkflow(cwltoil.CWLWorkflow):  # type: ignore[misc]
    """Toil's job for a run of a workflow, noted in the context its jobs are made with
    (:func:`~cratebridge_cwl.driver.entering_run`): the jobs of a scattered nested
    workflow say which run of it they belong to, and the position of each in its
    scatter. Toil runs it on the leader."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cb_position = _scatter_index(str(kwargs.get("parent_name") or ""), last=True)

    def run(self, file_store: Any) -> Any:
        self.runtime_context: RuntimeContext = entering_run(
            self.runtime_context, getattr(self, "cb_position", None))
        # Toil decides here whether the step's condition holds: a run is noted only if so
        decide = self.conditional.is_false

        def is_false(job: Any) -> bool:
            skipped = bool(decide(job))
            events = getattr(self.cwlwf, "cb_events", None)
            if not skipped and events is not None:
                note_entered(EventLog(Path(events), Path(self.cwlwf.cb_keep)),
                             getattr(self.cwlwf, "cb_step", None), self.runtime_context)
            return skipped

        self.conditional.is_false = is_false
        try:
            return super().run(file_store)
        finally:
            del self.conditional.is_false  # the class's again: the job may be pickled


# Toil's makeJob makes a workflow's job by this name, in the leader and in the worker
# that runs a scatter: every process that loads this module (the workers do, to unpickle
# the tools above) makes ours.
cwltoil.CWLWorkflow = RecordingCWLWorkflow


def _make_tool_factory(events: Path, keep: Path, toil_make_tool: Callable[..., Any],
                       step_user: tuple[int, int] | None = None,
                       open_within: Path | None = None) -> Callable[..., Any]:
    def make_tool(toolpath_object: Any, loading_context: LoadingContext) -> Any:
        kind = toolpath_object.get("class") if isinstance(toolpath_object, MutableMapping) \
            else None
        if kind == "CommandLineTool":
            tool = RecordingToilCommandLineTool(toolpath_object, loading_context)
            tool.cb_events, tool.cb_keep = str(events), str(keep)
            tool.cb_step_user = step_user
            tool.cb_open_within = str(open_within) if open_within else None
            return tool
        if kind == "ExpressionTool":
            expression = RecordingToilExpressionTool(toolpath_object, loading_context)
            expression.cb_events, expression.cb_keep = str(events), str(keep)
            return expression
        made = toil_make_tool(toolpath_object, loading_context)
        if isinstance(made, Workflow):
            # for the events of its runs
            made.cb_events, made.cb_keep = str(events), str(keep)  # type: ignore[attr-defined]
            # Outer workflows are made after their steps, so the last call names
            # every step with its full path.
            name_steps(made, (RecordingToilCommandLineTool, RecordingToilExpressionTool))
            write_shape(events, made)  # the nesting, for the record (the last is the whole)
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


def _user(text: str) -> tuple[int, int]:
    uid, _, gid = text.partition(":")
    try:
        return int(uid), int(gid or uid)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a numeric UID[:GID]: {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    own = argparse.ArgumentParser(prog="cratebridge-toil-driver")
    own.add_argument("--events", type=Path, required=True)
    own.add_argument("--keep", type=Path, required=True)
    own.add_argument("--step-user", type=_user, default=None, metavar="UID:GID",
                     help="the user every step container runs as: each job checks that it "
                          "can read the inputs Toil staged")
    own.add_argument("--open-within", type=Path, default=None, metavar="DIR",
                     help="staged inputs the engine made under DIR are opened to the step user")
    own.add_argument("toil_args", nargs=argparse.REMAINDER)
    opts = own.parse_args(argv)
    rest = opts.toil_args[1:] if opts.toil_args[:1] == ["--"] else opts.toil_args
    within = Path(os.path.realpath(opts.open_within)) if opts.open_within else None
    # toil-cwl-runner reads both hooks from its module when main() runs.
    cwltoil.toil_make_tool = _make_tool_factory(
        opts.events.absolute(), opts.keep.absolute(), cwltoil.toil_make_tool,
        opts.step_user, within)
    cwltoil.get_options = _offline_options(cwltoil.get_options)
    cwltool.main.setup_schema = _keeping_schemas(cwltool.main.setup_schema)
    return int(cwltoil.main(rest))


def _keeping_schemas(setup: Callable[..., None]) -> Callable[..., None]:
    """cwltool's schema set-up as Toil calls it, keeping the schemas the plan loaded."""
    def setup_schema(args: Namespace, custom_schema_callback: Callable[[], None] | None) -> None:
        if custom_schema_callback is None and not args.enable_ext:
            custom_schema_callback = standard_schemas
        setup(args, custom_schema_callback)

    return setup_schema


if __name__ == "__main__":
    # Run from the imported module, not __main__: the tool class must pickle by
    # its importable name for the workers to load it.
    from cratebridge_cwl.toil_driver import main as _main

    leave(_main())

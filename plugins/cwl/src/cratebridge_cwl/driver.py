"""cwltool, instrumented: runs a workflow and writes one JSON line per job event.

Started by the cwltool engine as ``python -m cratebridge_cwl.driver --events
FILE -- <cwltool arguments>``. Every CommandLineTool job is given a step token
(passed to Docker as a label, so the sandbox ledger can be joined to it) and,
when it finishes, its inputs, outputs and status are written to the events
file. Output files are hard-linked under ``--keep`` as soon as a job ends,
because cwltool deletes intermediate outputs at the end of a workflow.
An ExpressionTool run as a workflow step records itself
the same way (no container, no command), so that the values it makes are
in the record. Each job names its step by its path from the top workflow (``revsort/rev``
for step ``rev`` of the nested workflow step ``revsort`` runs), and the
workflow's shape is written beside the events (:func:`write_shape`), so that
the record can show nested workflows and the steps that did not run; each
job's events list the runs of nested workflows it was part of
(:func:`entering_run`), so that a scattered nested workflow has a run per
position in the record.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
import threading
import uuid
from collections.abc import Callable, Generator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from cwltool.argparser import arg_parser
from cwltool.command_line_tool import CommandLineTool, ExpressionJob, ExpressionTool
from cwltool.context import LoadingContext, RuntimeContext
from cwltool.job import JobBase
from cwltool.main import main as cwltool_main
from cwltool.process import custom_schemas, use_standard_schema
from cwltool.utils import JobsGeneratorType, OutputCallbackType
from cwltool.workflow import Workflow, default_make_tool

from cratebridge.containers.sandbox import STEP_LABEL
from cratebridge.leaving import leave
from cratebridge_cwl.eventlog import EventLog, now
from cratebridge_cwl.offline import OfflineFetcher, crate_fetcher
from cratebridge_cwl.records import run_key, shape_path

__all__ = ["JobReport", "entering_run", "main", "name_steps", "nested_runs", "note_entered",
           "record_expression", "recording_job", "short_id", "workflow_shape", "write_shape"]

#: The attribute of a RuntimeContext that lists the nested workflow runs it is within.
_RUNS = "cb_runs"


def entering_run(context: RuntimeContext, position: int | None = None) -> RuntimeContext:
    """The context for a run of a workflow, given the context it was started with.

    The top workflow's run notes nothing; each run of a nested workflow adds a
    key of its own, so that a job can say which run of each nested workflow it
    is part of (:func:`nested_runs`). Engines copy their contexts attribute by
    attribute, so the list reaches every job below. ``position``: the run's
    place in its step's scatter, when the engine says (see
    :func:`~cratebridge_cwl.records.run_key`).
    """
    inner = context.copy()
    if hasattr(context, _RUNS):
        setattr(inner, _RUNS, (*getattr(context, _RUNS), run_key(position)))
    else:
        setattr(inner, _RUNS, ())
    return inner


def note_entered(log: EventLog, step: str | None, context: RuntimeContext) -> None:
    """Write that a run of the nested workflow of step ``step`` (a path) began, in
    ``context`` (that of the run, from :func:`entering_run`); the top workflow's
    run (no step) is the run itself.

    Engines call the nested workflow only when its step's condition held, so
    the event tells a run whose steps were all skipped from a step that was.
    """
    if step is not None:
        log.write({"event": "entered", "step": step, "runs": nested_runs(context),
                   "time": now()})


def nested_runs(context: RuntimeContext) -> list[str]:
    """The keys of the nested workflow runs a job of ``context`` is part of, outermost first."""
    return [str(key) for key in getattr(context, _RUNS, None) or ()]


@dataclass(frozen=True)
class JobReport:
    """How a recording job describes itself; engines that run jobs elsewhere adjust it.

    ``name`` gives the job's name from the engine's own; ``inputs`` the host
    view of its job order; ``outputs`` post-processes the kept outputs;
    ``keep_key`` names the folder its outputs are kept in; ``extra`` adds
    fields (the engine's own job name, host, scheduler job id) to both events.
    """

    name: Callable[[str], str] = lambda name: name
    inputs: Callable[[EventLog, Any], Any] = lambda log, job: log.describe_inputs(
        job.joborder or {})
    outputs: Callable[[Any], Any] = lambda kept: kept
    keep_key: Callable[[Any], str] = lambda job: str(job.name)
    extra: Callable[[str], dict[str, Any]] = lambda engine_name: {}


def recording_job(base: type[JobBase], log: EventLog, step: str, tool: str,
                  report: JobReport = JobReport(), runs: list[str] | None = None
                  ) -> type[JobBase]:
    """A subclass of ``base`` (a cwltool or Toil job class) that reports itself to ``log``.

    Each job gets a token, passed to Docker as the ``org.cratebridge.step``
    label so that the sandbox ledger's entry joins to it, and writes a
    ``started`` and a ``finished`` event (inputs, kept outputs, status, command;
    ``runs``: the nested workflow runs it is part of, see :func:`nested_runs`).
    """

    class RecordingJob(base):  # type: ignore[valid-type,misc]
        def create_runtime(self, env: MutableMapping[str, str],
                           runtime_context: RuntimeContext) -> tuple[list[str], str | None]:
            runtime, cidfile = super().create_runtime(env, runtime_context)
            runtime.append(f"--label={STEP_LABEL}={self.cb_token}")
            return runtime, cidfile

        def run(self, runtimeContext: RuntimeContext,
                tmpdir_lock: threading.Lock | None = None) -> None:
            self.cb_token = uuid.uuid4().hex
            engine_name = str(self.name)  # type: ignore[has-type]
            self.name = report.name(engine_name)
            started = now()
            # read before the engine wraps the command (Toil adds a monitoring script)
            command = [str(c) for c in self.command_line]
            inputs = report.inputs(log, self)
            common = {"token": self.cb_token, "name": self.name, "step": step, "tool": tool,
                      "runs": runs or [], **report.extra(engine_name)}
            log.write({"event": "started", **common, "time": started})
            callback: Callable[..., None] = self.output_callback  # type: ignore[has-type]

            def record(outputs: Any, status: str) -> None:
                kept = report.outputs(log.keep_outputs(report.keep_key(self), outputs or {}))
                log.write({"event": "finished", **common, "start": started, "end": now(),
                           "status": status, "inputs": inputs, "outputs": kept,
                           "command": command})
                callback(outputs, status)

            self.output_callback = record
            super().run(runtimeContext, tmpdir_lock)

    RecordingJob.__name__ = f"Recording{base.__name__}"
    return RecordingJob


def record_expression(job: ExpressionJob, log: EventLog, step: str, tool: str,
                      engine_name: str, report: JobReport, runs: list[str]) -> ExpressionJob:
    """Make ``job`` (an ExpressionTool's job run as step ``step``) report itself to ``log``.

    It writes the ``started`` and ``finished`` events a :func:`recording_job`
    writes, with no command and no container (the engine evaluates it), so
    that the values it makes are in the record like any step's outputs.
    ``report.inputs`` is given ``job``; its outputs are kept under their token.
    """
    token = uuid.uuid4().hex
    started = now()
    common = {"token": token, "name": report.name(engine_name), "step": step, "tool": tool,
              "runs": runs, **report.extra(engine_name)}
    inputs = report.inputs(log, job)
    log.write({"event": "started", **common, "time": started})
    callback = job.output_callback

    def record(outputs: Any, status: str) -> None:
        kept = report.outputs(log.keep_outputs(token, outputs or {}))
        log.write({"event": "finished", **common, "start": started, "end": now(),
                   "status": status, "inputs": inputs, "outputs": kept, "command": []})
        if callback is not None:
            callback(outputs, status)

    job.output_callback = record
    return job


def short_id(identifier: str) -> str:
    """The last part of a CWL identifier (``file.cwl#step/rev`` -> ``rev``)."""
    return identifier.split("#")[-1].split("/")[-1]


def _local(owner: str, identifier: str) -> str:
    """``identifier`` relative to the process ``owner`` (``rev/reversed``, ``data``)."""
    own = owner.partition("#")[2]
    name = identifier.partition("#")[2] or identifier
    return name[len(own) + 1:] if own and name.startswith(own + "/") else name


def _sources(owner: str, source: Any) -> list[str]:
    if source is None:
        return []
    return [_local(owner, str(s)) for s in (source if isinstance(source, list) else [source])]


def _process_id(process: Any, step_id: str) -> str:
    """The id of the process a step runs; one written inside the step is named ``<step>/run``.

    cwltool gives such a process a random blank id (``_:<uuid>``), and its
    parameters ids under ``<step>/run``: the same, whichever engine loads it.
    """
    own = str(process.tool.get("id", ""))
    return f"{step_id}/run" if not own or own.startswith("_:") else own


def workflow_shape(workflow: Workflow, own: str | None = None) -> dict[str, Any]:
    """The workflow as written: its inputs, its outputs' sources and its steps, nested ones too.

    Each step gives its name, the tool it runs, its condition (``when``) and
    where each of its inputs comes from (an input of its workflow, or
    ``step/output``); a step that runs a workflow gives that workflow's shape.
    ``own`` is the workflow's id when it is not its own (see :func:`_process_id`).
    """
    own = own or str(workflow.tool.get("id", ""))
    steps = []
    for step in workflow.steps:
        inner = step.embedded_tool
        tool = _process_id(inner, str(step.id))
        shaped: dict[str, Any] = {
            "name": short_id(step.id), "tool": tool,
            "when": step.tool.get("when"),
            "in": {short_id(str(port["id"])): {"source": _sources(own, port.get("source")),
                                              "valueFrom": "valueFrom" in port}
                   for port in step.tool.get("inputs", [])},
        }
        if isinstance(inner, Workflow):
            shaped["workflow"] = workflow_shape(inner, tool)
        steps.append(shaped)
    return {
        "tool": own,
        "inputs": [_local(own, str(p["id"])) for p in workflow.tool.get("inputs", [])],
        "outputs": {_local(own, str(p["id"])): _sources(own, p.get("outputSource"))
                    for p in workflow.tool.get("outputs", [])},
        "steps": steps,
    }


def write_shape(events: Path, workflow: Workflow) -> None:
    """Write ``workflow``'s shape beside the events file (replacing any written before).

    Call it for each workflow the engine makes: outer workflows are made after
    the workflows their steps run, so the last one written is the whole workflow.
    """
    target = shape_path(events)
    partial = target.with_name(target.name + ".part")
    try:
        partial.write_text(json.dumps(workflow_shape(workflow)))
        os.replace(partial, target)
    except OSError:
        pass  # the record then shows the steps that ran, not nested: never fail the run for it


def name_steps(workflow: Workflow, recording: type[Any] | tuple[type[Any], ...],
               prefix: str = "") -> None:
    """Give each ``recording`` tool the path of the step it runs as (``revsort/rev`` nested).

    Both CWL engines name steps so, each with its own recording tool classes.
    """
    for step in workflow.steps:
        name = f"{prefix}/{short_id(step.id)}" if prefix else short_id(step.id)
        inner = step.embedded_tool
        if isinstance(inner, Workflow):
            inner.cb_step = name  # type: ignore[attr-defined]  # its runs say whose they are
            name_steps(inner, recording, name)
        elif isinstance(inner, recording):
            inner.cb_step = name


class _RecordingTool(CommandLineTool):
    """cwltool's CommandLineTool, whose jobs record themselves (see :func:`recording_job`)."""

    cb_log: EventLog
    cb_step: str | None = None

    def make_job_runner(self, runtimeContext: RuntimeContext) -> type[JobBase]:
        base = super().make_job_runner(runtimeContext)
        part_of = str(getattr(runtimeContext, "part_of", "") or "")
        step = self.cb_step or part_of.removeprefix("step ") or \
            self.tool.get("id", "tool").split("#")[-1]
        return recording_job(base, self.cb_log, step, str(self.tool.get("id", "")),
                             runs=nested_runs(runtimeContext))


#: How an ExpressionTool's job describes itself under cwltool (its inputs: its builder's).
_EXPRESSION_REPORT = JobReport(inputs=lambda log, job: log.describe_inputs(job.builder.job))


class _RecordingExpressionTool(ExpressionTool):
    """cwltool's ExpressionTool, whose jobs record themselves when run as a workflow step.

    A lone ExpressionTool (no step) is recorded by the provenance stage as the run's one step.
    """

    cb_log: EventLog
    cb_step: str | None = None

    def job(self, job_order: Any, output_callbacks: OutputCallbackType | None,
            runtimeContext: RuntimeContext) -> Generator[ExpressionJob, None, None]:
        for job in super().job(job_order, output_callbacks, runtimeContext):
            if self.cb_step is not None:
                # named as Toil's are (``parse``, ``parse_2`` scattered), not by cwltool's
                # names, unique in the whole run: a step of another nested workflow may
                # have the same name
                nth = self.cb_log.nth_run(self.cb_step)
                name = short_id(self.cb_step) + (f"_{nth}" if nth > 1 else "")
                record_expression(job, self.cb_log, self.cb_step, str(self.tool.get("id", "")),
                                  name, _EXPRESSION_REPORT, nested_runs(runtimeContext))
            yield job


class _RecordingWorkflow(Workflow):
    """cwltool's Workflow, each run of which is noted in the context of its jobs
    (:func:`entering_run`): the jobs of a scattered nested workflow say which run
    of it they belong to. A run of a nested one is an event of its own
    (:func:`note_entered`): all its steps may be skipped."""

    cb_log: EventLog
    cb_step: str | None = None

    def job(self, job_order: Any, output_callbacks: OutputCallbackType,
            runtimeContext: RuntimeContext) -> JobsGeneratorType:
        inner = entering_run(runtimeContext, _scatter_position(output_callbacks))
        note_entered(self.cb_log, self.cb_step, inner)
        return super().job(job_order, output_callbacks, inner)


def _scatter_position(callback: Any) -> int | None:
    """The scatter position a run of a nested workflow reports its outputs to, if any.

    cwltool gives each position of a scatter the callback
    ``ReceiveScatterOutput.receive_scatter_output`` bound to that position; a
    workflow step wraps it (``functools.partial``) before the nested workflow's
    ``job`` sees it. The nearest such callback is this run's scatter.
    """
    for _ in range(8):  # a few wrappers deep, never a loop
        if not isinstance(callback, functools.partial):
            return None
        if getattr(callback.func, "__name__", "") == "receive_scatter_output" and callback.args:
            position = callback.args[0]
            return position if isinstance(position, int) else None
        callback = next((a for a in (*callback.args, callback.func) if callable(a)), None)
    return None


def _make_tool_factory(log: EventLog) -> Callable[..., Any]:
    def make_tool(toolpath_object: Any, loading_context: LoadingContext) -> Any:
        kind = toolpath_object.get("class") if isinstance(toolpath_object, dict) else None
        if kind in ("CommandLineTool", "ExpressionTool"):
            made_class = _RecordingTool if kind == "CommandLineTool" else _RecordingExpressionTool
            # cwltool hands a CommentedMap (a dict); keep the checker from narrowing it
            tool = made_class(cast(Any, toolpath_object), loading_context)
            tool.cb_log = log
            return tool
        made = _RecordingWorkflow(cast(Any, toolpath_object), loading_context) \
            if kind == "Workflow" else default_make_tool(toolpath_object, loading_context)
        if isinstance(made, _RecordingWorkflow):
            made.cb_log = log
        if isinstance(made, Workflow):
            name_steps(made, (_RecordingTool, _RecordingExpressionTool))
            write_shape(log.events, made)
        return made

    return make_tool


def main(argv: list[str] | None = None) -> int:
    own = argparse.ArgumentParser(prog="cratebridge-cwltool-driver")
    own.add_argument("--root", type=Path, action="append", default=[],
                     help="a folder the workflow's documents may be loaded from")
    own.add_argument("--events", type=Path, required=True)
    own.add_argument("--keep", type=Path, required=True)
    own.add_argument("cwltool_args", nargs=argparse.REMAINDER)
    opts = own.parse_args(argv)
    rest = opts.cwltool_args[1:] if opts.cwltool_args[:1] == ["--"] else opts.cwltool_args
    log = EventLog(opts.events, opts.keep)
    args = arg_parser().parse_args(rest)
    loading = LoadingContext(vars(args))
    loading.construct_tool_object = _make_tool_factory(log)
    loading.fetcher_constructor = crate_fetcher(opts.root) if opts.root else OfflineFetcher
    # when it follows the plan's reading of the workflow (cratebridge.engines.held), the
    # logger keeps the quieter level that reading used
    logging.getLogger("cwltool").setLevel(logging.INFO)
    return int(cwltool_main(args=args, loadingContext=loading, stdout=sys.stdout,
                            stderr=sys.stderr,
                            custom_schema_callback=None if args.enable_ext else standard_schemas))


def standard_schemas() -> None:
    """cwltool's choice of the standard CWL schemas, keeping those already loaded.

    cwltool's own set-up drops every cached schema before it loads the
    document; when the driver follows the plan's reading in the same process
    (:mod:`cratebridge.engines.held`), that would parse the CWL metaschema a
    second time (most of a second). Only a schema replaced by a custom one
    (``--enable-ext``, which does not come here) needs dropping.
    """
    for version in list(custom_schemas):
        use_standard_schema(version)


if __name__ == "__main__":
    leave(main())

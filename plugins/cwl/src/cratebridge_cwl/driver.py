"""cwltool, instrumented: runs a workflow and writes one JSON line per job event.

Started by the cwltool engine as ``python -m cratebridge_cwl.driver --events
FILE -- <cwltool arguments>``. Every CommandLineTool job is given a step token
(passed to Docker as a label, so the sandbox ledger can be joined to it) and,
when it finishes, its inputs, outputs and status are written to the events
file. Output files are hard-linked under ``--keep`` as soon as a job ends,
because cwltool deletes intermediate outputs at the end of a workflow.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import threading
import uuid
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote, urlsplit

from cwltool.argparser import arg_parser
from cwltool.command_line_tool import CommandLineTool
from cwltool.context import LoadingContext, RuntimeContext
from cwltool.job import JobBase
from cwltool.main import main as cwltool_main
from cwltool.workflow import default_make_tool

from cratebridge.containers.sandbox import STEP_LABEL
from cratebridge_cwl.offline import OfflineFetcher, crate_fetcher

__all__ = ["EventLog", "JobReport", "main", "now", "recording_job"]


class EventLog:
    """Appends job events as JSON lines; keeps a copy of every file a job made."""

    def __init__(self, events: Path, keep: Path) -> None:
        self.events = events
        self.keep = keep
        self.lock = threading.Lock()
        self.kept: dict[tuple[int, int], str] = {}

    def write(self, entry: dict[str, Any]) -> None:
        with self.lock, self.events.open("a") as out:
            out.write(json.dumps(entry) + "\n")

    def keep_outputs(self, job: str, value: Any) -> Any:
        """Hard-link output files under keep/<job name>/ and point the record there."""
        if isinstance(value, list):
            return [self.keep_outputs(job, v) for v in value]
        if not isinstance(value, dict):
            return value
        if value.get("class") in ("File", "Directory"):
            path = _path_of(value)
            if path is None or not os.path.exists(path):
                return value
            target = self.keep / job / os.path.basename(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            _link_tree(Path(path), target)
            self._remember(Path(path), target)
            out = {"class": value["class"], "path": str(target), "origin": path}
            if "secondaryFiles" in value:
                out["secondaryFiles"] = self.keep_outputs(job, value["secondaryFiles"])
            return out
        return {k: self.keep_outputs(job, v) for k, v in value.items()}

    def _remember(self, source: Path, kept: Path) -> None:
        for src, dst in ((source, kept),) if source.is_file() else (
                (p, kept / p.relative_to(source)) for p in source.rglob("*") if p.is_file()):
            st = src.stat()
            self.kept[(st.st_dev, st.st_ino)] = str(dst)

    def describe_inputs(self, value: Any) -> Any:
        """Input values with files given as host paths (a kept copy when one exists)."""
        if isinstance(value, list):
            return [self.describe_inputs(v) for v in value]
        if not isinstance(value, dict):
            return value
        if value.get("class") in ("File", "Directory"):
            path = _path_of(value)
            if path and os.path.isfile(path):
                st = os.stat(path)
                path = self.kept.get((st.st_dev, st.st_ino), path)
            return {"class": value["class"], "path": path}
        return {k: self.describe_inputs(v) for k, v in value.items()}


def _path_of(value: dict[str, Any]) -> str | None:
    location = value.get("location") or value.get("path")
    if not isinstance(location, str):
        return None
    if location.startswith("file://"):
        return unquote(urlsplit(location).path)
    return location if location.startswith("/") else None


def _link_tree(source: Path, target: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, target, copy_function=_link_or_copy, dirs_exist_ok=True)
    else:
        _link_or_copy(str(source), str(target))


def _link_or_copy(src: str, dst: str) -> None:
    src = os.path.realpath(src)  # a step output may be a (relative) symlink: keep its target
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def now() -> str:
    return datetime.now(UTC).isoformat()


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
                  report: JobReport = JobReport()) -> type[JobBase]:
    """A subclass of ``base`` (a cwltool or Toil job class) that reports itself to ``log``.

    Each job gets a token, passed to Docker as the ``org.cratebridge.step``
    label so that the sandbox ledger's entry joins to it, and writes a
    ``started`` and a ``finished`` event (inputs, kept outputs, status, command).
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
                      **report.extra(engine_name)}
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


def _make_tool_factory(log: EventLog) -> Callable[..., Any]:
    class RecordingCommandLineTool(CommandLineTool):
        def make_job_runner(self, runtimeContext: RuntimeContext) -> type[JobBase]:
            base = super().make_job_runner(runtimeContext)
            part_of = str(getattr(runtimeContext, "part_of", "") or "")
            step = part_of.removeprefix("step ") or self.tool.get("id", "tool").split("#")[-1]
            return recording_job(base, log, step, str(self.tool.get("id", "")))

    def make_tool(toolpath_object: Any, loading_context: LoadingContext) -> Any:
        if isinstance(toolpath_object, dict) and toolpath_object.get("class") == \
                "CommandLineTool":
            # cwltool hands a CommentedMap (a dict); keep the checker from narrowing it
            return RecordingCommandLineTool(cast(Any, toolpath_object), loading_context)
        return default_make_tool(toolpath_object, loading_context)

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
                            stderr=sys.stderr))


if __name__ == "__main__":
    sys.exit(main())

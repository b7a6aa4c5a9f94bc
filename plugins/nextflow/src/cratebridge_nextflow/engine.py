"""The ``nextflow`` engine: ``nextflow run`` offline, every task in the cratebridge sandbox.

Targets Nextflow 24.10 and later (see docs/nextflow.md). Nextflow is driven
over its command line only; what happened is read back from the files it
writes: the trace (one row per task), each task's work folder and the
sandbox's ledger of containers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import sh

from cratebridge.containers.ledger import read_ledger, refusal_note
from cratebridge.containers.sandbox import image_id
from cratebridge.engines.interface import (
    Capabilities,
    Engine,
    EngineInfo,
    EnginePlan,
    ImageUse,
    ProgressEvent,
    RunContext,
)
from cratebridge.engines.process import run_engine
from cratebridge.engines.record import FileRecord, LogRecord, RunRecord, RunStatus, StepRecord
from cratebridge.errors import EngineUnavailable, PolicyRefused, UnsupportedCrate
from cratebridge.intake.request import Language, RunRequest
from cratebridge_nextflow.params import bind_params
from cratebridge_nextflow.records import containers_by_workdir, step_records
from cratebridge_nextflow.references import check_references
from cratebridge_nextflow.scan import WorkflowScan, scan_workflow
from cratebridge_nextflow.settings import NextflowSettings, generated_config
from cratebridge_nextflow.trace import read_trace

__all__ = ["NextflowEngine"]

CONFIG_FILE = "cratebridge.config"
PARAMS_FILE = "params.json"
TRACE_FILE = "nextflow-trace.tsv"
_VERSION = re.compile(r"version\s+(\d[\w.+-]*?)(?:\s+build\s+\d+|\.\d{4,})?\s*$", re.MULTILINE)


class NextflowEngine(Engine):
    """Runs Nextflow (DSL2) workflows with the ``nextflow`` command."""

    name: ClassVar[str] = "nextflow"
    language: ClassVar[Language] = Language.NEXTFLOW
    capabilities: ClassVar[Capabilities] = Capabilities(
        step_provenance=True, containers=("docker",), schedulers=("local", "slurm"),
        offline=True)

    def __init__(self, settings: Mapping[str, object] | None = None) -> None:
        super().__init__(settings)
        self.program = NextflowSettings.from_mapping(self.settings).program

    # -- the program ---------------------------------------------------------------------

    def _resolve(self, program: str | None) -> str:
        wanted = program or self.program or "nextflow"
        try:
            return str(sh.Command(wanted))
        except sh.CommandNotFound:
            raise EngineUnavailable(
                f"the nextflow program {wanted!r} was not found; install Nextflow (24.10 or "
                "later, with its framework already downloaded) or set [engines.nextflow] "
                "program", where="engine nextflow") from None

    def info(self) -> EngineInfo:
        return self._info(self._resolve(None))

    def _info(self, path: str) -> EngineInfo:
        # -version only prints; offline variables keep the launcher from checking for updates.
        env = {**os.environ, "NXF_OFFLINE": "true", "NXF_DISABLE_CHECK_LATEST": "true",
               "NXF_ANSI_LOG": "false"}
        try:
            out = str(sh.Command(path)("-version", _env=env, _timeout=120, _err_to_out=True))
        except (sh.ErrorReturnCode, sh.TimeoutException, OSError) as exc:
            raise EngineUnavailable(f"`{path} -version` failed: {exc}",
                                    where="engine nextflow") from None
        match = _VERSION.search(out)
        return EngineInfo(program="nextflow", version=match.group(1) if match else None,
                          path=path)

    # -- plan ----------------------------------------------------------------------------

    def plan(self, request: RunRequest, context: RunContext) -> EnginePlan:
        settings = NextflowSettings.from_mapping(context.settings)
        main = request.workflow.main_file
        if main.suffix != ".nf":
            raise UnsupportedCrate(f"the Nextflow engine runs a .nf script, not {main.name}",
                                   where=str(request.workflow.id))
        # before the scan reads any file: nothing outside the crate is opened
        check_references(request.workflow.root, main,
                         (request.crate_dir,
                          *(b.path for b in request.inputs if b.path is not None)))
        scan = scan_workflow(request.workflow.root, main)
        self._check_plugins(scan, settings)
        params, param_notes = bind_params(request, scan.schema_types, context.outputs_dir)
        images = self._images(scan, settings, context)
        work = context.work_dir
        trace = context.logs_dir / TRACE_FILE
        files = {CONFIG_FILE: generated_config(settings, trace),
                 PARAMS_FILE: json.dumps(params, indent=2)}
        program = self._resolve(settings.program)
        if settings.executor == "slurm":
            context.use_scheduler("slurm")  # sbatch & co. through the broker
        env = self._env(context, settings)
        # Nextflow runs in the room: its program, framework, Java and plugins read-only.
        context.room = context.room.with_programs(*(
            Path(p) for p in (os.path.dirname(os.path.realpath(program)), env.get("NXF_DIST"),
                              env.get("NXF_JAVA_HOME"), env.get("NXF_PLUGINS_DIR")) if p))
        command = (
            program, "-log", str(context.logs_dir / "nextflow.log"),
            "-c", str(work / CONFIG_FILE),
            "run", str(main),
            "-offline",
            "-params-file", str(work / PARAMS_FILE),
            "-work-dir", str(work / "work"),
            "-with-trace", str(trace),
            "-output-dir", str(context.outputs_dir),
            "-name", run_name(context.run_id),
            "-ansi-log", "false",
        )
        notes = [f"language: {request.workflow.language_source}",
                 "images found by a static scan of the .nf files and nextflow.config "
                 "(not by Nextflow); the sandbox checks every image again at run time",
                 "params.outdir is the run's outputs folder: publishDir there to return "
                 "results", *scan.notes, *param_notes]
        unknown = sorted(set(params) - scan.params - set(scan.schema_types) - {"outdir"})
        if unknown:
            notes.append(f"inputs not seen as params.* in the workflow: {', '.join(unknown)}")
        return EnginePlan(engine=self.name, language=Language.NEXTFLOW, workflow=main,
                          command=command, env=env, images=images,
                          parameters=params, files=files, notes=tuple(notes),
                          steps=tuple(sorted(scan.processes)))

    def _check_plugins(self, scan: WorkflowScan, settings: NextflowSettings) -> None:
        allowed = {p.split("@")[0] for p in settings.plugins}
        refused = [p for p in scan.plugins if p.split("@")[0] not in allowed]
        if refused:
            raise UnsupportedCrate(
                f"the workflow's nextflow.config asks for Nextflow plugin(s) {refused}; plugins "
                "are not downloaded in a TRE. The operator may allow pre-installed ones with "
                "[engines.nextflow] plugins and plugins_dir", where="nextflow.config")

    def _images(self, scan: WorkflowScan, settings: NextflowSettings,
                context: RunContext) -> tuple[ImageUse, ...]:
        by_image: dict[str, list[str]] = {}
        for name in sorted(scan.processes):
            image = scan.image_of(name) or settings.default_container
            if image is None:
                raise PolicyRefused(
                    f"process {name} has no container and every task must run in one; add a "
                    "`container` directive or set [engines.nextflow] default_container",
                    rule="containers.required",
                    where=str(scan.processes[name].file.name))
            by_image.setdefault(image, []).append(name)
        uses = []
        for image, steps in sorted(by_image.items()):
            found = image_id(context.sandbox.docker, image)
            uses.append(ImageUse(image, tuple(steps), found is not None, found))
        return tuple(uses)

    def _env(self, context: RunContext, settings: NextflowSettings) -> dict[str, str]:
        """An allow-list environment: offline, no plugins, Nextflow's state inside the run."""
        work = context.work_dir
        env = {**context.env, **context.docker_env(),
               "HOME": str(work / "home"),
               "TMPDIR": str(work / "tmp"),
               "NXF_HOME": str(work / "nxf-home"),
               "NXF_TEMP": str(work / "tmp"),
               "NXF_OFFLINE": "true",
               "NXF_DISABLE_CHECK_LATEST": "true",
               "NXF_ANSI_LOG": "false",
               "NXF_PLUGINS_DEFAULT": "false",
               # 25.04+: an empty list refuses every plugin, so none is ever fetched.
               "NXF_PLUGINS_ALLOWED": ",".join(p.split("@")[0] for p in settings.plugins),
               "LANG": context.env.get("LANG", "C.UTF-8")}
        # The launcher looks for its framework jar in NXF_DIST (default $NXF_HOME/framework);
        # with NXF_HOME inside the run, point it at the operator's installed framework.
        framework = settings.framework_dir or _default_framework()
        if framework:
            env["NXF_DIST"] = framework
        java = settings.java_home or os.environ.get("NXF_JAVA_HOME") or \
            os.environ.get("JAVA_HOME")
        if java:
            env["NXF_JAVA_HOME"] = java
        if settings.plugins_dir:
            env["NXF_PLUGINS_DIR"] = settings.plugins_dir
        return env

    # -- run -----------------------------------------------------------------------------

    def run(self, plan: EnginePlan, context: RunContext) -> RunRecord:
        work = context.work_dir
        for name, content in plan.files.items():
            (work / name).write_text(content)
        for var in ("HOME", "TMPDIR", "NXF_HOME"):
            Path(plan.env[var]).mkdir(parents=True, exist_ok=True)
        trace_path = context.logs_dir / TRACE_FILE
        stdout = context.logs_dir / "nextflow.stdout.log"
        stderr = context.logs_dir / "nextflow.stderr.log"
        seen: set[str] = set()

        def progress() -> None:
            for row in read_trace(trace_path):
                if row.task_id not in seen:
                    seen.add(row.task_id)
                    context.progress(ProgressEvent("failed" if row.failed else "finished",
                                                   row.name, row.status))

        started = datetime.now(UTC)
        # The long-running call goes through run_engine, not sh: it puts Nextflow in its own
        # session so a timeout, SIGTERM or Ctrl-C stops Nextflow, its task wrappers and their
        # `docker run`s as one process group; sh would stop only the nextflow process.
        try:
            ended = run_engine(plan.command, room=context.room, env=plan.env, cwd=work,
                               stdout=stdout, stderr=stderr, timeout=context.timeout,
                               on_tick=progress)
        except OSError as exc:
            raise EngineUnavailable(f"could not start {plan.command[0]}: {exc}",
                                    where="engine nextflow") from None
        finished = datetime.now(UTC)
        rows = read_trace(trace_path)
        ledger = read_ledger(context.sandbox.ledger)
        tools = {name: _tool_id(info.file, plan.workflow, name)
                 for name, info in scan_workflow(plan.workflow.parent, plan.workflow)
                 .processes.items()}
        ids = {row.container: image_id(context.sandbox.docker, row.container)
               for row in rows if row.container}
        steps = step_records(rows, containers_by_workdir(context.sandbox.ledger, ledger),
                             context.run_dir, tools, ids)
        outputs = collect_outputs(context.outputs_dir, context.run_dir)
        ok = ended.exit_code == 0 and not ended.reason
        error = None
        if not ok:
            error = ended.reason or _error_summary(ended.exit_code, steps, stdout, stderr,
                                                   ledger.refusals)
        logs = [LogRecord(p, n) for p, n in (
            (context.logs_dir / "nextflow.log", "Nextflow log"),
            (stdout, "Nextflow console output"), (stderr, "Nextflow error output"),
            (trace_path, "Nextflow trace (one row per task)"),
            (work / CONFIG_FILE, "Nextflow config generated by cratebridge")) if p.is_file()]
        return RunRecord(
            engine=self.name, engine_version=self._info(plan.command[0]).version,
            status=RunStatus.COMPLETED if ok else RunStatus.FAILED, start_time=started,
            end_time=finished, outputs=outputs, steps=steps, logs=tuple(logs), error=error,
            command=tuple(plan.command),
        )


def run_name(run_id: str) -> str:
    """A Nextflow run name (a letter first; letters, digits, single ``-``/``_``; 80 at most)."""
    name = re.sub(r"[^a-z0-9]+", "-", f"cratebridge-{run_id}".lower()).strip("-")
    return name[:80].rstrip("-_")


def _default_framework() -> str | None:
    home = os.environ.get("NXF_HOME") or str(Path.home() / ".nextflow")
    framework = Path(home) / "framework"
    return str(framework) if framework.is_dir() else None


def _tool_id(defined_in: Path, main: Path, process: str) -> str:
    """``file.nf#PROCESS`` relative to the workflow folder, which the crate links to its file."""
    try:
        rel = defined_in.resolve().relative_to(main.parent.resolve()).as_posix()
    except ValueError:
        return process
    return f"{rel}#{process}"


def collect_outputs(outputs_dir: Path, run_dir: Path) -> tuple[FileRecord, ...]:
    """What the workflow published, as real files: symlinks into the run are replaced by copies."""
    root = run_dir.resolve()
    records = []
    for path in sorted(outputs_dir.rglob("*")):
        if path.is_symlink():
            target = path.resolve()
            path.unlink()
            if not target.is_relative_to(root) or not target.exists():
                continue  # a link out of the run is never followed
            if target.is_dir():
                shutil.copytree(target, path, symlinks=True)
            else:
                shutil.copy2(target, path)
    for path in sorted(outputs_dir.rglob("*")):
        if path.is_file() and not path.is_symlink():
            rel = path.relative_to(outputs_dir).as_posix()
            records.append(FileRecord(path, rel))
    return tuple(records)


def _error_summary(code: int, steps: tuple[StepRecord, ...], stdout: Path, stderr: Path,
                   refusals: tuple[str, ...]) -> str:
    failed = [s for s in steps if s.status is RunStatus.FAILED]
    parts = [f"nextflow exited {code}"]
    if failed:
        parts.append("failed task(s): " + ", ".join(
            f"process {s.step} ({s.name}, exit {s.exit_code})" for s in failed))
        err = _first_line(failed[0].logs)
        if err:
            parts.append(err)
    if refusals:
        parts.append(refusal_note(refusals))
    if not failed and not refusals:
        lines = [line for p in (stderr, stdout) if p.is_file()
                 for line in p.read_text(errors="replace").splitlines()
                 if line.startswith("ERROR ~") or "Exception" in line]
        if lines:
            parts.append(lines[0])
    return ": ".join(parts[:2]) + ("; " + "; ".join(parts[2:]) if len(parts) > 2 else "")


def _first_line(logs: tuple[LogRecord, ...]) -> str | None:
    for log in logs:
        if log.path.name == ".command.err" and log.path.is_file():
            for line in log.path.read_text(errors="replace").splitlines():
                if line.strip():
                    return line.strip()[:300]
    return None

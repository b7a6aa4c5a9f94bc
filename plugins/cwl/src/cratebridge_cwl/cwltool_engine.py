"""The ``cwltool`` engine: CWL on one machine, every step in the cratebridge sandbox."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from cratebridge.containers.ledger import read_ledger
from cratebridge.containers.sandbox import image_id
from cratebridge.engines.held import HeldReader
from cratebridge.engines.held import hold as hold_reader
from cratebridge.engines.installed import version as installed_version
from cratebridge.engines.interface import (
    Capabilities,
    Engine,
    EngineInfo,
    EnginePlan,
    ImageUse,
    RunContext,
)
from cratebridge.engines.process import EngineExit, confined_report, run_engine
from cratebridge.engines.record import LogRecord, RunRecord, RunStatus
from cratebridge.errors import EngineUnavailable, PolicyRefused, UnsupportedCrate
from cratebridge.intake.request import Language, RunRequest
from cratebridge_cwl.progress import JobProgress
from cratebridge_cwl.records import read_events, step_records, values_to_records, with_nesting
from cratebridge_cwl.workflow import CwlStep, CwlWorkflow, bind_inputs

__all__ = ["CwltoolEngine"]

JOB_FILE = "job.json"
#: Seconds a plan may spend loading the workflow (in the room).
LOAD_TIMEOUT = 300.0


class CwltoolEngine(Engine):
    """Runs CWL with cwltool; steps run through the sandbox's ``docker``."""

    name: ClassVar[str] = "cwltool"
    language: ClassVar[Language] = Language.CWL
    capabilities: ClassVar[Capabilities] = Capabilities(
        step_provenance=True, containers=("docker",), schedulers=("local",), offline=True)

    def info(self) -> EngineInfo:
        version = installed_version("cwltool")
        if version is None:
            raise EngineUnavailable("cwltool is not installed in cratebridge's environment; "
                                    "pip install cratebridge-cwl", where="engine cwltool")
        return EngineInfo(program="cwltool", version=version, path=sys.executable)

    def engine_args(self, context: RunContext) -> list[str]:
        """cwltool flags: offline, local images only, everything inside the run folder."""
        work = context.work_dir
        args = [
            # $schemas are loaded (format checks need them); the offline fetcher
            # turns a remote one into a warning, never a download.
            "--disable-pull", "--disable-color", "--timestamps",
            # data file names may hold spaces, '#', '%' or non-ASCII letters
            "--relax-path-checks",
            "--outdir", str(context.outputs_dir),
            "--tmpdir-prefix", f"{work}/tmp/", "--tmp-outdir-prefix", f"{work}/out/",
        ]
        if context.settings.get("cache"):
            args += ["--cachedir", f"{work}/cache/"]
        default = context.settings.get("default_container")
        if default:
            args += ["--default-container", str(default)]
        if context.settings.get("parallel"):
            args.append("--parallel")
        return args

    def __init__(self, settings: Mapping[str, object] | None = None) -> None:
        super().__init__(settings)
        self._held: HeldReader | None = None  # the plan's reader, to become the driver

    def load(self, request: RunRequest, context: RunContext, hold: bool = False) -> CwlWorkflow:
        """The workflow as cwltool reads it, read inside the run's room.

        Its references may point into the crate and the workflow's own folder only.
        ``hold``: keep the reader waiting in the room, to become the run's driver
        (cwltool and the workflow are then loaded once; see :meth:`release`).
        """
        main = request.workflow.main_file
        roots = dict.fromkeys([request.crate_dir, request.workflow.root])
        command = [sys.executable, "-m", "cratebridge_cwl.inspect",
                   *(f"--root={root}" for root in roots), str(main)]
        what, where = "loading the CWL workflow", str(main)
        env = self.environment(context)
        if hold:
            self.release()
            self._held = held = hold_reader(
                [*command[:3], "--hold", *command[3:]], room=context.room, env=env,
                cwd=context.work_dir, log=context.logs_dir / "plan.stderr.log",
                timeout=LOAD_TIMEOUT, what=what, where=where)
            found = held.report
        else:
            found = confined_report(command, room=context.room, env=env, cwd=context.work_dir,
                                    timeout=LOAD_TIMEOUT, what=what, where=where)
        return CwlWorkflow(
            path=main, cls=str(found["cls"]), cwl_version=str(found["cwl_version"]),
            inputs=tuple(dict(i) for i in _items(found["inputs"])),
            steps=tuple(CwlStep(**s) for s in _items(found["steps"])))

    def plan(self, request: RunRequest, context: RunContext) -> EnginePlan:
        workflow = self.load(request, context, hold=self.settings.get("hold") is not False)
        job = bind_inputs(request, workflow)
        images = self.images(workflow, context)
        job_path = context.work_dir / JOB_FILE
        files = {JOB_FILE: json.dumps(job, indent=2)}
        env = self.environment(context)
        # the job order (ours) is read from the work folder, through the same fetcher
        roots = dict.fromkeys([request.crate_dir, request.workflow.root, context.work_dir])
        command = (sys.executable, "-m", "cratebridge_cwl.driver",
                   *(f"--root={root}" for root in roots),
                   "--events", str(context.work_dir / "events.jsonl"),
                   "--keep", str(context.work_dir / "steps"), "--",
                   *self.engine_args(context), str(request.workflow.main_file), str(job_path))
        notes = [f"language: {request.workflow.language_source}",
                 f"CWL {workflow.cwl_version} {workflow.cls}"]
        return EnginePlan(engine=self.name, language=Language.CWL,
                          workflow=request.workflow.main_file, command=command, env=env,
                          images=images, parameters=job, files=files, notes=tuple(notes),
                          steps=tuple(s.name for s in workflow.steps))

    def environment(self, context: RunContext) -> dict[str, str]:
        """The engine's environment: the allow-listed caller variables and the sandbox's."""
        home = context.work_dir / "home"
        return {**context.env, **context.docker_env(), "HOME": str(home),
                "TMPDIR": str(context.work_dir),
                "LANG": context.env.get("LANG", "C.UTF-8")}

    def images(self, workflow: Any, context: RunContext) -> tuple[ImageUse, ...]:
        """Every step's image, present or not; refuses steps that would build or have none."""
        by_image: dict[str, list[str]] = {}
        default = context.settings.get("default_container")
        for step in workflow.steps:
            if step.image_source in ("dockerLoad", "dockerFile", "dockerImport"):
                raise UnsupportedCrate(
                    f"step {step.name} builds or loads its image ({step.image_source}); "
                    "cratebridge runs only images already approved and present",
                    where=step.tool)
            image = step.image or (str(default) if default else None)
            if image is None:
                raise PolicyRefused(
                    f"step {step.name} has no DockerRequirement and every step must run in "
                    f"a container; add one, or set [engines.{self.name}] default_container",
                    rule="containers.required", where=step.tool)
            by_image.setdefault(image, []).append(step.name)
        docker = context.sandbox.docker
        uses = []
        for image, steps in sorted(by_image.items()):
            found = image_id(docker, image)
            uses.append(ImageUse(image, tuple(steps), found is not None, found))
        return tuple(uses)

    def release(self) -> None:
        if self._held is not None:
            self._held.release()
            self._held = None

    def run(self, plan: EnginePlan, context: RunContext) -> RunRecord:
        for name, content in plan.files.items():
            (context.work_dir / name).write_text(content)
        Path(plan.env["HOME"]).mkdir(parents=True, exist_ok=True)
        events_path = context.work_dir / "events.jsonl"
        stdout = context.logs_dir / "cwltool.stdout.json"
        stderr = context.logs_dir / "cwltool.stderr.log"
        started = datetime.now(UTC)
        ended = run_held_or_new(self, plan, context, stdout, stderr,
                                JobProgress(events_path, context))
        finished = datetime.now(UTC)
        events = read_events(events_path)
        steps = step_records(events, read_ledger(context.sandbox.ledger))
        outputs = _outputs(stdout)
        status = RunStatus.COMPLETED if ended.exit_code == 0 and not ended.reason \
            else RunStatus.FAILED
        error = None
        if status is RunStatus.FAILED:
            error = ended.reason or _error_summary(stderr, steps, ended.exit_code)
        return with_nesting(RunRecord(
            engine=self.name, engine_version=self.info().version, status=status,
            start_time=started, end_time=finished, outputs=outputs, steps=steps,
            logs=(LogRecord(stderr, "cwltool log"), LogRecord(stdout, "cwltool output object")),
            error=error, command=tuple(plan.command),
        ), events_path, events)


def run_held_or_new(engine: CwltoolEngine, plan: EnginePlan, context: RunContext,
                    stdout: Path, stderr: Path, on_tick: Callable[[], None]) -> EngineExit:
    """Run the plan's command: in the reader the plan held, or in a new room."""
    held, engine._held = engine._held, None
    ended = held.run(plan.command, env=plan.env, stdout=stdout, stderr=stderr,
                     timeout=context.timeout, on_tick=on_tick) if held else None
    return ended or run_engine(plan.command, room=context.room, env=plan.env,
                               cwd=context.work_dir, stdout=stdout, stderr=stderr,
                               timeout=context.timeout, on_tick=on_tick)


def _items(value: object) -> list[dict[str, Any]]:
    return [dict(v) for v in value] if isinstance(value, list) else []


def _outputs(stdout: Path) -> tuple[Any, ...]:
    try:
        data = json.loads(stdout.read_text() or "{}")
    except json.JSONDecodeError:
        return ()
    return values_to_records(data if isinstance(data, dict) else {})


def _error_summary(stderr: Path, steps: tuple[Any, ...], code: int) -> str:
    failed = [s for s in steps if s.status is RunStatus.FAILED]
    if failed:
        names = ", ".join(f"{s.name} (exit {s.exit_code})" for s in failed)
        return f"cwltool exited {code}: step(s) failed: {names}"
    tail = [line for line in stderr.read_text(errors="replace").splitlines()
            if "ERROR" in line or "error" in line.lower()][-3:]
    return f"cwltool exited {code}" + (": " + " | ".join(tail) if tail else "")



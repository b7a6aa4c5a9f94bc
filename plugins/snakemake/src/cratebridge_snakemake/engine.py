"""The ``snakemake`` engine: Snakefiles with every job in the cratebridge sandbox, here or on Slurm.

Snakemake schedules; our executor plugin (``cratebridge``, or
``cratebridge-slurm`` when the operator sets ``[engines.snakemake] executor =
"slurm"``) runs each job's shell command in its rule's image through the
sandbox's ``docker`` (a ``run:`` / ``script:`` job: Snakemake's own job command,
in an image with the same Snakemake) and writes one event per job. Snakemake runs in a working
copy of the workflow's folder, as its author runs it. See docs/snakemake.md.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

from cratebridge.containers.ledger import read_ledger
from cratebridge.containers.sandbox import image_id
from cratebridge.engines.installed import version as installed_version
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
from cratebridge.engines.record import LogRecord, RunRecord, RunStatus
from cratebridge.errors import EngineUnavailable, PolicyRefused, UnsupportedCrate, UsageError
from cratebridge.intake.request import Language, RunRequest
from cratebridge_snakemake.failures import failure_summary
from cratebridge_snakemake.images import find_program, find_snakemake
from cratebridge_snakemake.jobs import DEFAULT_SHELL, image_of
from cratebridge_snakemake.outputs import copy_outputs, exported
from cratebridge_snakemake.records import read_events, step_records
from cratebridge_snakemake.workflow import (
    SNAKEMAKE_KINDS,
    SnakeWorkflow,
    bind_config,
    check_references,
    check_rules,
    load_workflow,
)
from cratebridge_snakemake.worktree import make_working_copy

__all__ = ["SnakemakeEngine"]

CONFIG_FILE = "config.json"
EVENTS_FILE = "events.jsonl"
# Snakemake's --directory: a working copy of the workflow's folder, the only folder
# containers may write
SNAKEMAKE_DIR = "snakemake"
EXECUTORS = {"local": "cratebridge", "slurm": "cratebridge-slurm"}
_PROGRAM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


class SnakemakeEngine(Engine):
    """Runs Snakemake workflows; each job runs through the sandbox's ``docker``."""

    name: ClassVar[str] = "snakemake"
    language: ClassVar[Language] = Language.SNAKEMAKE
    capabilities: ClassVar[Capabilities] = Capabilities(
        step_provenance=True, containers=("docker",), schedulers=("local", "slurm"),
        offline=True)

    def info(self) -> EngineInfo:
        version = installed_version("snakemake")
        if version is None:
            raise EngineUnavailable("snakemake is not installed in cratebridge's environment; "
                                    "pip install cratebridge-snakemake",
                                    where="engine snakemake")
        return EngineInfo(program="snakemake", version=version, path=sys.executable)

    # -- plan -----------------------------------------------------------------

    def plan(self, request: RunRequest, context: RunContext) -> EnginePlan:
        settings = _Settings.read(context.settings)
        tree = context.work_dir / SNAKEMAKE_DIR
        source, relative = _tree_source(request)
        context.work_dir.mkdir(parents=True, exist_ok=True)
        make_working_copy(source, tree, _owner(context))
        snakefile = tree / relative
        config = bind_config(request)
        files: dict[str, str] = {}
        config_path = None
        if config:  # only then: a missing configfile: stays Snakemake's own error
            config_path = context.work_dir / CONFIG_FILE
            files[CONFIG_FILE] = json.dumps(config, indent=2)
            config_path.write_text(files[CONFIG_FILE])
        if settings.executor == "slurm":
            context.use_scheduler("slurm")  # sbatch & co. through the broker
        env = self._env(context)
        workflow = load_workflow(snakefile, tree, config_path, env, room=context.room)
        check_references(workflow, roots=(*_roots(request), tree), workdir=tree)
        check_rules(workflow, settings.default_container, cluster=settings.executor != "local",
                    python_image=settings.python_image)
        _check_snakemake_images(workflow, settings.python_image, context)
        shell, bash_images = _check_shell(workflow, settings.default_container, context)
        command = self._command(snakefile, context, settings, config_path, shell, bash_images)
        notes = [f"language: {request.workflow.language_source}",
                 f"Snakemake {workflow.snakemake_version}, executor {settings.executor} "
                 f"(snakemake --executor {EXECUTORS[settings.executor]})",
                 f"working folder: a copy of the workflow's folder {source.name!r} "
                 f"(work/{SNAKEMAKE_DIR}), main file {relative.as_posix()}",
                 f"config keys from the request: {', '.join(sorted(config)) or 'none'}"
                 + (" (--configfile, over the workflow's own configfile)" if config else "")]
        if shell:
            notes.append(f"jobs run under {shell} (shell.executable), found in every image")
        elif bash_images:
            notes.append("jobs run under bash (as Snakemake's default) in "
                         f"{', '.join(bash_images)}, under sh in any other image")
        else:
            notes.append("jobs run under sh: no image of a shell rule has bash "
                         "(Snakemake's default where there is one)")
        notes += _image_notes(workflow, settings.default_container, settings.python_image)
        return EnginePlan(
            engine=self.name, language=Language.SNAKEMAKE, workflow=request.workflow.main_file,
            command=command, env=env, images=self._images(workflow, settings, context),
            parameters=config, files=files, notes=tuple(notes),
            steps=tuple(_job_label(j.rule, j.wildcards) for j in workflow.jobs
                        if workflow.rule(j.rule).kind != "norun" or j.outputs),
        )

    def _command(self, snakefile: Path, context: RunContext, settings: _Settings,
                 configfile: Path | None, shell: str | None,
                 bash_images: tuple[str, ...] = ()) -> tuple[str, ...]:
        executor = EXECUTORS[settings.executor]
        work = context.work_dir
        args = [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile),
                "--directory", str(work / SNAKEMAKE_DIR)]
        if configfile is not None:
            args += ["--configfile", str(configfile)]
        args += ["--cores", str(settings.cores), "--executor", executor,
                 f"--{executor}-events", str(work / EVENTS_FILE),
                 # no --software-deployment-method: no conda, no apptainer; our executor
                 # runs the containers
                 "--nocolor", "--show-failed-logs", "--printshellcmds"]
        if settings.default_container:
            args += [f"--{executor}-default-image", settings.default_container]
        if settings.python_image:
            args += [f"--{executor}-python-image", settings.python_image]
        if shell:
            args += [f"--{executor}-shell", shell]
        if bash_images:
            args += [f"--{executor}-bash-images", ",".join(bash_images)]
        if settings.executor == "slurm":
            args += ["--jobs", str(settings.jobs)]
            if settings.status_interval is not None:
                args += [f"--{executor}-init-seconds-before-status-checks",
                         str(settings.status_interval)]
            if settings.default_resources:
                args += ["--default-resources", *settings.default_resources]
        return tuple(args)

    def _env(self, context: RunContext) -> dict[str, str]:
        home = _home(context)
        # PYTHONDONTWRITEBYTECODE: no __pycache__ of the Snakefile's own modules among
        # the files the run leaves in the working copy (outputs/)
        return {**context.env, **context.docker_env(), "HOME": str(home),
                "TMPDIR": str(context.work_dir), "PYTHONDONTWRITEBYTECODE": "1",
                "XDG_CACHE_HOME": str(home / ".cache"),
                "LANG": context.env.get("LANG", "C.UTF-8")}

    def _images(self, workflow: SnakeWorkflow, settings: _Settings,
                context: RunContext) -> tuple[ImageUse, ...]:
        by_image = _by_image(
            (rule.name, image_of(rule.image) or (settings.python_image
                                                 if rule.kind in SNAKEMAKE_KINDS
                                                 else settings.default_container))
            for rule in workflow.used_rules() if rule.kind != "norun")
        uses = []
        for image, rules in by_image.items():
            found = image_id(context.sandbox.docker, image)
            uses.append(ImageUse(image, tuple(rules), found is not None, found))
        return tuple(uses)

    # -- run ------------------------------------------------------------------

    def run(self, plan: EnginePlan, context: RunContext) -> RunRecord:
        for name, content in plan.files.items():
            (context.work_dir / name).write_text(content)
        Path(plan.env["HOME"]).mkdir(parents=True, exist_ok=True)
        # a fresh copy: whatever the plan's reading of the Snakefile wrote there is gone
        tree = context.work_dir / SNAKEMAKE_DIR
        make_working_copy(_copied_from(plan, tree), tree, _owner(context))
        events_path = context.work_dir / EVENTS_FILE
        stdout = context.logs_dir / "snakemake.stdout.log"
        stderr = context.logs_dir / "snakemake.stderr.log"
        seen: set[str] = set()

        def progress() -> None:
            events = read_events(events_path)
            for event in events.started:
                done = events.finished.get(event["token"])
                for kind, happened in (("started", True), ("finished", done is not None)):
                    key = f"{kind}:{event['token']}"
                    if not happened or key in seen:
                        continue
                    seen.add(key)
                    if kind == "finished" and done and done.get("status") != "success":
                        kind = "failed"
                    context.progress(ProgressEvent(kind, event["name"]))

        started = datetime.now(UTC)
        ended = run_engine(plan.command, room=context.room, env=plan.env,
                           cwd=context.work_dir, stdout=stdout, stderr=stderr,
                           timeout=context.timeout, on_tick=progress)
        finished = datetime.now(UTC)
        events = read_events(events_path)
        ledger = read_ledger(context.sandbox.ledger)
        steps = step_records(events, ledger, jobs_dir=context.work_dir / "jobs")
        ok = ended.exit_code == 0 and not ended.reason
        kept = _Settings.read(context.settings).outputs == "all"
        outputs = copy_outputs(exported(events, tree, _copied_from(plan, tree), kept), tree,
                               context.outputs_dir) if ok else ()
        error = None
        if not ok:
            # a failed job's logs are read only where the room or the broker wrote them
            readable = (context.work_dir, context.sandbox.ledger.parent / "stderr")
            error = ended.reason or failure_summary(stderr, steps, ended.exit_code, readable,
                                                    ledger.refusals)
        logs = [LogRecord(stderr, "snakemake log"), LogRecord(stdout, "snakemake output")]
        logs += [LogRecord(p, f"snakemake run log {p.name}") for p in
                 sorted((context.work_dir / SNAKEMAKE_DIR / ".snakemake" / "log").glob("*.log"))]
        return RunRecord(
            engine=self.name, engine_version=self.info().version,
            status=RunStatus.COMPLETED if ok else RunStatus.FAILED,
            start_time=started, end_time=finished, outputs=outputs, steps=steps,
            logs=tuple(logs), error=error, command=tuple(plan.command),
        )


class _Settings:
    """The operator's ``[engines.snakemake]`` table, checked."""

    def __init__(self, executor: str, default_container: str | None, cores: int, jobs: int,
                 default_resources: tuple[str, ...], status_interval: int | None,
                 python_image: str | None = None, outputs: str = "all") -> None:
        self.executor = executor
        self.outputs = outputs
        self.python_image = python_image
        self.status_interval = status_interval
        self.default_container = default_container
        self.cores = cores
        self.jobs = jobs
        self.default_resources = default_resources

    @classmethod
    def read(cls, settings: Mapping[str, object]) -> _Settings:
        where = "[engines.snakemake]"
        executor = str(settings.get("executor", "local"))
        if executor not in EXECUTORS:
            raise UsageError(f"executor must be one of {', '.join(EXECUTORS)}, not "
                             f"{executor!r}", where=where)
        default = settings.get("default_container")
        python_image = settings.get("python_image")
        if python_image is None:  # unset; "" is the operator's "none"
            python_image = default_python_image()
        if not isinstance(python_image, str):
            raise UsageError("python_image must be an image name (or \"\" for none)",
                             where=where)
        raw = settings.get("default_resources", ())
        resources = (raw,) if isinstance(raw, str) else \
            tuple(raw) if isinstance(raw, (list, tuple)) else ()
        try:
            cores = int(str(settings.get("cores", os.cpu_count() or 1)))
            jobs = int(str(settings.get("jobs", 4)))
            interval = settings.get("status_interval")
            status_interval = None if interval is None else max(int(str(interval)), 1)
        except ValueError:
            raise UsageError("cores, jobs and status_interval must be whole numbers",
                             where=where) from None
        outputs = str(settings.get("outputs", "all"))
        if outputs not in ("all", "targets"):
            raise UsageError(f"outputs must be \"all\" or \"targets\", not {outputs!r}",
                             where=where)
        return cls(executor, str(default) if default else None, max(cores, 1), max(jobs, 1),
                   tuple(str(r) for r in resources),
                   status_interval, python_image or None, outputs)


def default_python_image() -> str:
    """``cratebridge/snakemake:<the installed Snakemake's version>`` ("" without Snakemake).

    The image ``cratebridge images build`` makes: a job's Snakemake must be the engine's.
    """
    version = installed_version("snakemake")
    return f"cratebridge/snakemake:{version}" if version else ""


def _tree_source(request: RunRequest) -> tuple[Path, Path]:
    """The folder Snakemake's working copy is made of, and the main file's path in it.

    The Workflow RO-Crate's folder, as its author runs ``snakemake`` there
    (``workflow/Snakefile`` and ``config/`` beside it included).
    """
    root, main = request.workflow.root, request.workflow.main_file
    if not main.is_relative_to(root):
        root = main.parent
    return root, main.relative_to(root)


def _copied_from(plan: EnginePlan, tree: Path) -> Path:
    """The folder the plan's working copy was made of (the main file's folders up)."""
    command = list(plan.command)
    relative = Path(command[command.index("--snakefile") + 1]).relative_to(tree)
    return plan.workflow.parents[len(relative.parts) - 1]


def _owner(context: RunContext) -> tuple[int, int] | None:
    """The engine's user, who must write in its working copy (when we may give it away)."""
    return (context.room.uid, context.room.gid) if os.geteuid() == 0 else None


def _check_shell(workflow: SnakeWorkflow, default_image: str | None,
                 context: RunContext) -> tuple[str | None, tuple[str, ...]]:
    """The shell jobs run under: the Snakefile's choice, or bash where the image has it.

    With ``shell.executable(...)``: that program, once every image of a shell
    rule is known to have it (UnsupportedCrate naming the image and its rules
    when one has not), and no images. Without: None and the images of shell
    rules that have bash on their ``PATH``, where jobs then run under bash
    (with Snakemake's ``set -euo pipefail;``), as bare Snakemake runs every job
    under bash when there is one; under ``sh`` in any other image.
    """
    name = workflow.shell
    where = workflow.snakefile.name
    if name is not None and not _PROGRAM.fullmatch(name):
        raise UnsupportedCrate(f"shell.executable({name!r}) is not a program name",
                               where=where)
    # every rule: a rule whose jobs only a checkpoint brings in has no job in the plan yet
    by_image = _by_image((rule.name, image_of(rule.image) or default_image)
                         for rule in workflow.rules if rule.kind == "shell")
    docker = context.sandbox.docker
    labels = [arg for arg in context.sandbox.docker_args() if arg.startswith("--label=")]
    present = {image: rules for image, rules in by_image.items()
               # an absent image is refused with every other absent one once the plan is made
               if image_id(docker, image) is not None}
    if name is None:
        return None, tuple(image for image in present
                           if find_program(docker, image, "bash", labels) is not None)
    if name == DEFAULT_SHELL:
        return name, ()
    for image, rules in present.items():
        if find_program(docker, image, name, labels) is None:
            raise UnsupportedCrate(
                f"the workflow sets shell.executable({name!r}), and every job's command runs "
                f"under it in its rule's image, but image {image} (rules: "
                f"{', '.join(rules)}) has no {name} on its PATH; use an image that has "
                f"{name}, or drop shell.executable to run the commands under bash or sh",
                where=where)
    return name, ()


def _by_image(uses: Iterable[tuple[str, str | None]]) -> dict[str, list[str]]:
    """Rule names (each once, in order) by the image they run in, sorted by image.

    ``uses`` pairs a rule's name with its image (None: no image, left out).
    """
    by_image: dict[str, list[str]] = {}
    for rule, image in uses:
        if image and rule not in by_image.setdefault(image, []):
            by_image[image].append(rule)
    return dict(sorted(by_image.items()))


def _check_snakemake_images(workflow: SnakeWorkflow, python_image: str | None,
                            context: RunContext) -> None:
    """Refuse a ``run:`` / ``script:`` rule whose image lacks the engine's Snakemake.

    Each such job runs Snakemake's own command in its rule's image (or the
    operator's ``python_image``), which must have ``python3`` and the same
    Snakemake version. An absent ``python_image`` is refused naming the setting;
    other absent images are refused with every image once the plan is made.
    """
    by_image = _by_image((job.rule, image_of(job.image) or python_image) for job in workflow.jobs
                         if workflow.rule(job.rule).kind in SNAKEMAKE_KINDS)
    docker = context.sandbox.docker
    labels = [arg for arg in context.sandbox.docker_args() if arg.startswith("--label=")]
    version = workflow.snakemake_version
    for image, rules in by_image.items():
        where = f"image {image}"
        who = f"rule {rules[0]} runs" if len(rules) == 1 else f"rules {', '.join(rules)} run"
        if image_id(docker, image) is None:
            if image == python_image and any(workflow.rule(r).image is None for r in rules):
                raise PolicyRefused(
                    f"{who} Python in Snakemake (run: or script:), in the image "
                    f"[engines.snakemake] python_image = {image!r}, which is not "
                    "present locally; build it with `cratebridge images build` (it makes "
                    f"cratebridge/snakemake:{version}), or set python_image to a local image "
                    f"with Snakemake {version}", rule="images.local-only", where=where)
            continue
        found = find_snakemake(docker, image, labels)
        if found != version:
            has = "no Snakemake for its python3" if found is None else \
                "a Snakemake of unknown version" if found == "unknown" else f"Snakemake {found}"
            raise UnsupportedCrate(
                f"{who} Python in Snakemake (run: or script:): each job "
                f"runs Snakemake's own job command in image {image}, which has {has}, but "
                f"the engine runs Snakemake {version}; use an image with python3 and "
                f"Snakemake {version} (e.g. cratebridge/snakemake:{version}, set as "
                "[engines.snakemake] python_image, for rules without container:)",
                where=where)


def _roots(request: RunRequest) -> tuple[Path, ...]:
    """Where a Snakefile's references may lead: the crate, a mirrored workflow, mapped data."""
    return (request.crate_dir, request.workflow.root,
            *(b.path for b in request.inputs if b.path is not None))


def _home(context: RunContext) -> Path:
    return context.work_dir / "home"


def _job_label(rule: str, wildcards: Mapping[str, str]) -> str:
    if not wildcards:
        return rule
    return f"{rule}[{','.join(f'{k}={v}' for k, v in wildcards.items())}]"


def _image_notes(workflow: SnakeWorkflow, default: str | None,
                 python_image: str | None) -> list[str]:
    notes = []
    for rule in workflow.used_rules():
        if rule.kind in SNAKEMAKE_KINDS:
            image = rule.image or python_image
            notes.append(f"rule {rule.name} ({rule.kind}:) runs as Snakemake's own job command "
                         f"in {'its image' if rule.image else 'the operator python_image'} "
                         f"{image_of(image)}, with no network")
        elif rule.kind != "norun" and rule.image is None and default:
            notes.append(f"rule {rule.name} has no container: and runs in the operator's "
                         f"default image {default}")
    return notes

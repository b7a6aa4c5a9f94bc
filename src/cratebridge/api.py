"""The library surface behind the CLI: run, plan, validate, verify, engines, cleanup."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cratebridge.config import Config, load_config
from cratebridge.containers.mounts import release_stale
from cratebridge.containers.reaper import Removed
from cratebridge.containers.sandbox import find_docker, remove_stale_containers
from cratebridge.engines.process import Stop
from cratebridge.engines.record import FileRecord, ParameterValue
from cratebridge.engines.registry import Registry
from cratebridge.errors import CratebridgeError, CrateRejected
from cratebridge.events import RunEvent
from cratebridge.lazy import names_from
from cratebridge.pipeline import PlanOutcome, RunOutcome, new_run_id, plan, run

__all__ = ["RunHandle", "ValidationReport", "VerifyOutcome", "cleanup", "describe_plan",
           "describe_run", "engines", "plan", "run", "start", "validate", "verify", "versions"]

if TYPE_CHECKING:
    from cratebridge.verify import VerifyOutcome, verify

# verify and its outcome are imported when first used: a run does not need them
__getattr__ = names_from(__name__, dict.fromkeys(["verify", "VerifyOutcome"], "verify"),
                         under="cratebridge")


class RunHandle:
    """A run going on in a thread of its own: follow it, cancel it, wait for its outcome.

    Made by :func:`start`. :meth:`cancel` stops the run as SIGTERM does, from
    any thread: the engine is stopped within half a second and the run still
    ends with a failed result crate recording every step it started.
    """

    def __init__(self, run_id: str, target: Callable[[Stop], RunOutcome]) -> None:
        self.run_id = run_id
        self._stop = Stop()
        self._outcome: RunOutcome | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(target,),
                                        name=f"cratebridge-run-{run_id}", daemon=True)

    def _run(self, target: Callable[[Stop], RunOutcome]) -> None:
        try:
            self._outcome = target(self._stop)
        except BaseException as exc:  # handed to whoever waits
            self._error = exc

    def cancel(self, reason: str = "a cancel request") -> bool:
        """Ask the run to stop; False when a stop was asked already."""
        return self._stop.request(reason)

    def done(self) -> bool:
        return self._thread.ident is not None and not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> RunOutcome:
        """The run's outcome once it ends; what it raised, raised here.

        Raises :class:`TimeoutError` when ``timeout`` passes first.
        """
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"run {self.run_id} still going after {timeout}s")
        if self._error is not None:
            raise self._error
        assert self._outcome is not None
        return self._outcome


def start(crate: Path, out: Path, *, engine: str | None = None,
          config: Config | Path | None = None,
          events: Callable[[RunEvent], None] | None = None, run_id: str | None = None,
          labels: Mapping[str, str] | None = None) -> RunHandle:
    """Start :func:`run` in a thread; its handle (``run_id`` is known at once)."""
    cfg = config if isinstance(config, Config) else load_config(config)
    chosen = run_id or new_run_id()
    handle = RunHandle(chosen, lambda stop: run(
        crate, out, engine=engine, config=cfg, events=events, run_id=chosen, labels=labels,
        stop=stop))
    handle._thread.start()
    return handle


def describe_run(outcome: RunOutcome) -> dict[str, Any]:
    """The JSON document ``cratebridge run --json`` prints."""
    record = outcome.record
    return {
        "run_id": outcome.run_id,
        "status": record.status.value,
        "exit_code": outcome.exit_code,
        "result": str(outcome.result),
        "run_dir": str(outcome.run_dir),
        "engine": record.engine,
        "engine_version": record.engine_version,
        "start_time": record.start_time.isoformat(),
        "end_time": record.end_time.isoformat(),
        "error": record.error,
        "outputs": [_item(o) for o in record.outputs],
        "steps": [{"name": s.name, "step": s.step, "status": s.status.value,
                   "exit_code": s.exit_code, "error": s.error,
                   "start_time": s.start_time.isoformat() if s.start_time else None,
                   "end_time": s.end_time.isoformat() if s.end_time else None,
                   "image": s.container.image if s.container else None,
                   "image_id": s.container.image_id if s.container else None}
                  for s in record.steps],
    }


def _item(item: FileRecord | ParameterValue) -> dict[str, Any]:
    if isinstance(item, FileRecord):
        return {"parameter": item.parameter, "path": str(item.path)}
    return {"parameter": item.parameter, "value": item.value}


def describe_plan(outcome: PlanOutcome) -> dict[str, Any]:
    """The JSON document ``cratebridge plan --json`` prints.

    A dry run unpacks the crate into a scratch folder that is gone afterwards;
    paths inside it are shown under ``$RUN_DIR``, the run folder a real run
    gets (``[run] runs_dir``/RUN_ID).
    """
    p = outcome.plan
    request = outcome.request
    doc = _plan_doc(outcome, p, request)
    text = json.dumps(doc).replace(str(outcome.run_dir), "$RUN_DIR")
    result: dict[str, Any] = json.loads(text)
    return result


def _plan_doc(outcome: PlanOutcome, p: Any, request: Any) -> dict[str, Any]:
    return {
        "engine": p.engine,
        "engine_version": outcome.engine_version,
        "language": p.language.value,
        "language_source": request.workflow.language_source,
        "workflow": {"id": request.workflow.id, "name": request.workflow.name,
                     "main_file": str(p.workflow.relative_to(request.crate_dir))
                     if p.workflow.is_relative_to(request.crate_dir) else str(p.workflow)},
        "crate_kind": request.kind.value,
        "inputs": dict(p.parameters),
        "images": [{"image": i.image, "present": i.present, "image_id": i.image_id,
                    "steps": list(i.steps)} for i in p.images],
        "steps": list(p.steps),
        "command": list(p.command),
        "env": dict(p.env),
        "files": dict(p.files),
        "notes": list(p.notes),
        "agent": request.agent.id if request.agent else None,
        "project": request.project.id if request.project else None,
    }


def engines(config: Config | Path | None = None) -> list[dict[str, Any]]:
    """Every installed engine plugin: what it runs and whether its engine is here."""
    cfg = config if isinstance(config, Config) else load_config(config)
    registry = Registry.from_entry_points(cfg.allowed_engines)
    rows = []
    for spec in registry.specs():
        row: dict[str, Any] = {"name": spec.name, "distribution": spec.distribution,
                               "version": spec.version, "entry_point": spec.value,
                               "language": None, "available": False, "program": None,
                               "program_version": None, "capabilities": None,
                               "problem": None}
        try:
            cls = registry.load_class(spec.name)
            row["language"] = cls.language.short
            caps = cls.capabilities
            row["capabilities"] = {"step_provenance": caps.step_provenance,
                                   "containers": list(caps.containers),
                                   "schedulers": list(caps.schedulers),
                                   "offline": caps.offline}
            info = cls(cfg.engine_settings.get(spec.name, {})).info()
            row.update(available=True, program=info.program, program_version=info.version)
        except CratebridgeError as err:
            row["problem"] = str(err)
        rows.append(row)
    return rows


def versions(config: Config | Path | None = None) -> dict[str, Any]:
    """``cratebridge version --json``: the core, its plugin interface, Python, each engine."""
    import platform

    from cratebridge import __version__
    from cratebridge.containers import client
    from cratebridge.engines.interface import INTERFACE_VERSION

    built = client.compiled()
    return {"cratebridge": __version__, "interface": INTERFACE_VERSION,
            "python": platform.python_version(),
            # the docker engines run in their rooms: compiled, or (None) the Python one
            "docker_client": str(built) if built else None,
            "engines": [{k: e[k] for k in ("name", "distribution", "version", "language",
                                           "available", "program", "program_version",
                                           "problem")}
                        for e in engines(config)]}


def cleanup(everything: bool = False, config: Config | Path | None = None) -> Removed:
    """Remove what killed runs of the configured runs folder left: containers, pinned mounts.

    Containers of runs whose cratebridge process is gone; with ``everything``,
    every container of this runs folder's runs, in progress or not. Never a
    container of another runs folder. As root, the bind mounts the brokers of
    runs no longer running pinned under the runs folder are released too.
    (A killed run's reaper normally removes all this, and its Slurm jobs, at once.)
    """
    cfg = config if isinstance(config, Config) else load_config(config)
    docker = find_docker()
    containers, left = remove_stale_containers(docker, cfg.runs_dir, everything) \
        if docker else ([], [])
    mounts = release_stale(cfg.runs_dir) if os.geteuid() == 0 else []
    return Removed(containers=tuple(containers), mounts=tuple(mounts), left=tuple(left))


@dataclass
class ValidationReport:
    """Every problem found in a crate (empty: valid)."""

    kind: str
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "valid": self.ok, "problems": self.problems}


def validate(crate: Path) -> ValidationReport:
    """Check a request or result crate: safe to open, bag intact, metadata complete."""
    from cratebridge.engines.registry import Registry
    from cratebridge.intake import IntakeLimits, open_crate, parse_request, verify_bag
    from cratebridge.intake.parse import load_graph

    limits = IntakeLimits()
    scratch = Path(tempfile.mkdtemp(prefix="cratebridge-validate-"))
    report = ValidationReport(kind="unknown")
    try:
        opened = open_crate(Path(crate), scratch / "crate", limits)
        if opened.bag_dir is not None:
            try:
                verify_bag(opened.bag_dir, known=opened.digests)
            except CrateRejected as err:
                report.problems.append(str(err))
        # the parser's loader: bounded, and any JSON (a list, 100,000 nested arrays) is an
        # error naming the file, never an exception from the shapes the checks below assume
        metadata = load_graph(opened.root / "ro-crate-metadata.json",
                              max_bytes=limits.max_metadata_bytes).document
        if _is_result(metadata):
            report.kind = "result"
            report.problems.extend(_result_problems(opened.root, metadata))
        else:
            report.kind = "request"
            try:  # in any language an installed plugin registers
                registry = Registry.from_entry_points(load_config(None).allowed_engines)
                parse_request(opened.root, languages=registry.languages())
            except CrateRejected as err:
                report.problems.append(str(err))
    except CrateRejected as err:
        report.problems.append(str(err))
    except (OSError, json.JSONDecodeError) as err:
        report.problems.append(f"cannot read the crate: {err}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return report


_DONE = ("http://schema.org/CompletedActionStatus", "http://schema.org/FailedActionStatus")


def _graph(metadata: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["@id"]: e for e in metadata.get("@graph", []) if isinstance(e, dict) and "@id" in e}


def _ids(value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value] if value else []
    return [i["@id"] for i in items if isinstance(i, dict) and "@id" in i]


def _is_result(metadata: dict[str, Any]) -> bool:
    return any(_status(e) in _DONE for e in _graph(metadata).values()
               if "CreateAction" in _types(e))


def _types(entity: dict[str, Any]) -> list[str]:
    t = entity.get("@type", [])
    return t if isinstance(t, list) else [t]


def _status(entity: dict[str, Any]) -> str | None:
    s = entity.get("actionStatus")
    return s.get("@id") if isinstance(s, dict) else s


def _result_problems(root: Path, metadata: dict[str, Any]) -> list[str]:
    from urllib.parse import unquote

    from cratebridge.intake.unpack import safe_relative_path
    from cratebridge.provenance.files import hash_file

    graph = _graph(metadata)
    problems = []
    for eid, entity in graph.items():
        if "CreateAction" not in _types(entity) or _status(entity) not in _DONE:
            continue
        for key in ("startTime", "endTime"):
            if key not in entity:
                problems.append(f"{eid}: finished CreateAction has no {key}")
        if _status(entity) == _DONE[1] and "error" not in entity:
            problems.append(f"{eid}: failed CreateAction has no error")
        for rid in _ids(entity.get("result")):
            if not isinstance(rid, str):
                problems.append(f"{eid}: a result's @id is not a string")
                continue
            if rid.startswith(("http:", "https:", "#", "_:")):
                continue
            try:  # an absolute or '..' id must not make validate read a host file
                target = root / str(safe_relative_path(unquote(rid), where=f"{eid} result"))
            except CrateRejected as err:
                problems.append(str(err))
                continue
            if not target.exists():
                problems.append(f"{eid}: result {rid} is not in the crate")
                continue
            want = graph.get(rid, {}).get("sha512")
            if want and target.is_file():
                if hash_file(target).sha512 != want:
                    problems.append(f"{rid}: sha512 does not match the metadata")
    return problems

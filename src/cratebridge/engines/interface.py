"""The engine plugin contract: what a plugin declares, plans and runs.

A plugin distribution registers a subclass of :class:`Engine` under the
entry-point group ``cratebridge.engines``. The core never imports a plugin
except the one chosen for a run (see :mod:`cratebridge.engines.registry`).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

from cratebridge.containers.confine import BROKER_DIR, Room
from cratebridge.containers.sandbox import Sandbox
from cratebridge.engines.record import RunRecord
from cratebridge.intake.request import Language, RunRequest

__all__ = [
    "INTERFACE_VERSION",
    "Capabilities",
    "Engine",
    "EngineInfo",
    "EnginePlan",
    "ImageUse",
    "ProgressEvent",
    "RunContext",
]

#: The version of this contract. A plugin states the one it was written for
#: (``Engine.interface``); the registry loads it only when the major numbers agree.
INTERFACE_VERSION = "1.1"


@dataclass(frozen=True)
class Capabilities:
    """What an engine can do, as data (shown by ``cratebridge engines``)."""

    step_provenance: bool = True
    containers: tuple[str, ...] = ("docker",)
    schedulers: tuple[str, ...] = ("local",)
    offline: bool = True


@dataclass(frozen=True)
class EngineInfo:
    """The engine program as found on this machine."""

    program: str
    version: str | None
    path: str | None


@dataclass(frozen=True)
class ImageUse:
    """An image a workflow step asks for, and whether it is here already."""

    image: str
    steps: tuple[str, ...]
    present: bool
    image_id: str | None = None


@dataclass(frozen=True)
class EnginePlan:
    """What a run would do, fully decided, before anything runs.

    ``command`` is the exact engine command line, ``env`` the exact
    environment it gets (an allow-list, never the caller's whole environment),
    ``files`` the files the engine will be given (job order, config), by name.
    """

    engine: str
    language: Language
    workflow: Path
    command: tuple[str, ...]
    env: Mapping[str, str]
    images: tuple[ImageUse, ...]
    parameters: Mapping[str, object]
    files: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    steps: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProgressEvent:
    """A step started or finished; shown on a terminal by ``cratebridge run``."""

    kind: str  # "started" | "finished" | "failed"
    step: str
    detail: str = ""


@dataclass
class RunContext:
    """Where and how one run happens; built by the core, handed to the engine.

    ``work_dir`` is the engine's scratch, ``outputs_dir`` is where the
    workflow's outputs must end up, ``logs_dir`` where engine logs go. The
    engine must write nowhere else. ``env`` is the only part of the caller's
    environment the engine may pass on (the operator's allow-list);
    ``settings`` are the operator's ``[engines.<name>]`` table. ``room`` is the
    confinement every engine process (and every plan-time reading of the
    workflow) runs in; an engine whose program lives outside it adds the
    program's folder with ``room.with_programs``. ``broker_socket`` is where
    the run's container broker listens while ``Engine.run`` runs.
    """

    run_id: str
    run_dir: Path
    work_dir: Path
    outputs_dir: Path
    logs_dir: Path
    sandbox: Sandbox
    room: Room
    broker_socket: Path
    settings: Mapping[str, object] = field(default_factory=dict)
    timeout: float | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    progress: Callable[[ProgressEvent], None] = lambda event: None

    def docker_env(self) -> dict[str, str]:
        """``PATH`` and the broker's address, for an engine whose steps call ``docker``.

        Call :meth:`use_scheduler` first for an engine that submits to Slurm:
        its ``sbatch``, ``squeue``... are then the broker's too.
        """
        return self.sandbox.engine_env(self.broker_socket.parent, BROKER_DIR)

    def use_scheduler(self, name: str) -> None:
        """Open the broker's door to a scheduler (``"slurm"``) for this run."""
        self.sandbox = replace(self.sandbox, scheduler=name)


class Engine(abc.ABC):
    """One workflow engine, for one language.

    Subclasses set ``name``, ``language`` and ``capabilities`` as class
    attributes, so that ``cratebridge engines`` can describe them. ``language``
    is a built-in :class:`~cratebridge.intake.request.Language` or one the
    plugin's distribution registers under the ``cratebridge.languages`` entry
    points; the registry refuses to load an engine of any other.
    """

    name: ClassVar[str]
    language: ClassVar[Language]
    capabilities: ClassVar[Capabilities] = Capabilities()
    #: the plugin interface this engine was written for (see :data:`INTERFACE_VERSION`)
    interface: ClassVar[str] = INTERFACE_VERSION

    def __init__(self, settings: Mapping[str, object] | None = None) -> None:
        """``settings`` is the operator's ``[engines.<name>]`` table (also in RunContext)."""
        self.settings: Mapping[str, object] = dict(settings or {})

    @abc.abstractmethod
    def info(self) -> EngineInfo:
        """Find the engine program and its version.

        Must not run a workflow or reach the network. Raises
        :class:`~cratebridge.errors.EngineUnavailable` when the program is
        missing or broken.
        """

    @abc.abstractmethod
    def plan(self, request: RunRequest, context: RunContext) -> EnginePlan:
        """Decide everything about the run without running anything.

        Whatever evaluates the workflow's own code (loading a CWL document,
        a Snakefile's Python) must run in ``context.room``
        (:func:`~cratebridge.engines.process.run_confined`), never in this
        process. Binds the request's inputs to the workflow's parameters (converting
        values to the declared types), lists the images the steps need and
        builds the exact command. Must start no container and write nothing
        outside ``context.work_dir``. Raises
        :class:`~cratebridge.errors.UnsupportedCrate` for a workflow the engine
        cannot run, :class:`~cratebridge.errors.MetadataError` for an input that
        does not fit its parameter; must never reach the network.
        """

    def release(self) -> None:
        """Let go of anything :meth:`plan` kept for :meth:`run` (a reader held in the room).

        Called after a dry run, and after a run (or a refusal between plan and
        run). The default keeps nothing.
        """
        return None

    @abc.abstractmethod
    def run(self, plan: EnginePlan, context: RunContext) -> RunRecord:
        """Run the plan and report what happened, step by step.

        The engine process must run in ``context.room`` (through
        :func:`~cratebridge.engines.process.run_engine`), its tools through
        the broker (``context.docker_env()``): no network, read-only inputs,
        limits. A workflow that fails is *not* an exception: return a
        record with status FAILED and the error. Outputs must be copied under
        ``context.outputs_dir``; logs under ``context.logs_dir``. Must honour
        ``context.timeout`` and stop the engine and its containers when the
        process is interrupted. Raises only
        :class:`~cratebridge.errors.EngineUnavailable` when the engine cannot
        start at all.
        """

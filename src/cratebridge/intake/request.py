"""The typed request: everything downstream needs from a request crate, parsed once."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Agent",
    "CrateKind",
    "InputBinding",
    "InputKind",
    "Language",
    "Project",
    "ReviewAction",
    "RunRequest",
    "WorkflowRef",
]


class Language(enum.Enum):
    """Workflow languages, by their Workflow RO-Crate identifiers."""

    CWL = "https://w3id.org/workflowhub/workflow-ro-crate#cwl"
    NEXTFLOW = "https://w3id.org/workflowhub/workflow-ro-crate#nextflow"
    SNAKEMAKE = "https://w3id.org/workflowhub/workflow-ro-crate#snakemake"

    @property
    def short(self) -> str:
        return self.value.rsplit("#", 1)[1]


class CrateKind(enum.Enum):
    """What kind of request crate we were handed."""

    FIVE_SAFES = "five-safes"
    WORKFLOW = "workflow-ro-crate"
    WORKFLOW_RUN = "workflow-run-crate"


class InputKind(enum.Enum):
    FILE = "File"
    DIRECTORY = "Directory"
    VALUE = "PropertyValue"


@dataclass(frozen=True)
class InputBinding:
    """One input of the request, bound to a workflow parameter by name.

    ``path`` is set for files and directories (absolute, inside the unpacked
    crate or an operator-mapped dataset); ``value`` holds the raw JSON value of a
    PropertyValue, converted to the declared type at plan time by the engine.
    ``parameter_source`` says how ``parameter`` was found (the FormalParameter
    named by ``exampleOfWork``, or a fallback such as the entity's own ``name``).
    ``encoding`` is a PropertyValue's ``encodingFormat``: ``application/json``
    says ``value`` is JSON text holding a structured value (an engine decodes it).
    """

    parameter: str
    kind: InputKind
    entity_id: str
    path: Path | None = None
    value: object = None
    formal_parameter_id: str | None = None
    parameter_source: str = ""
    encoding: str | None = None


@dataclass(frozen=True)
class Agent:
    id: str
    name: str | None = None


@dataclass(frozen=True)
class Project:
    id: str
    name: str | None = None


@dataclass(frozen=True)
class ReviewAction:
    """An AssessAction already recorded in the request (check, validation, sign-off...)."""

    id: str
    additional_type: str
    status: str | None
    end_time: str | None = None


@dataclass(frozen=True)
class WorkflowRef:
    """The workflow to run, resolved to a folder on disk.

    ``main_file`` is the workflow's entry point inside ``root`` (the Workflow
    RO-Crate folder); ``language_source`` says how the language was decided.
    """

    id: str
    root: Path
    main_file: Path
    language: Language
    language_source: str
    name: str | None = None
    source: str = "crate"


@dataclass(frozen=True)
class RunRequest:
    """A request crate, parsed once; nothing past intake reads its JSON-LD."""

    crate_dir: Path
    metadata: dict[str, object]
    kind: CrateKind
    workflow: WorkflowRef
    inputs: tuple[InputBinding, ...]
    action_id: str | None
    action_name: str | None
    agent: Agent | None
    project: Project | None
    reviews: tuple[ReviewAction, ...] = ()
    bagit: bool = False
    bag_info: dict[str, str] = field(default_factory=dict)
    conforms_to: tuple[str, ...] = ()

    def input(self, parameter: str) -> InputBinding | None:
        for binding in self.inputs:
            if binding.parameter == parameter:
                return binding
        return None

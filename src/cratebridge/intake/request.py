"""The typed request: everything downstream needs from a request crate, parsed once."""

from __future__ import annotations

import enum
import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

__all__ = [
    "BUILTIN_LANGUAGES",
    "Agent",
    "CrateKind",
    "InputBinding",
    "InputKind",
    "Language",
    "Organization",
    "Project",
    "ReviewAction",
    "RunRequest",
    "WorkflowRef",
]


@dataclass(frozen=True)
class Language:
    """A workflow language: its identifier and how a workflow in it is recognised.

    ``value`` is the language's identifier (an IRI, as a crate's
    ``programmingLanguage`` names it); ``short`` the name operators and engines
    use (``[engines] <short> = "<engine>"``); ``name`` and ``url`` what people
    call it and where it is described. A workflow file is recognised by
    ``files`` (fnmatch globs on its name, e.g. ``"*.cwl"``) and a
    ``programmingLanguage`` entity by ``words`` (lower-case words found in its
    ``@id``, ``name``, ``alternateName``, ``identifier`` or ``url``).

    ``Language.CWL``, ``Language.NEXTFLOW`` and ``Language.SNAKEMAKE`` are the
    built-ins (:data:`BUILTIN_LANGUAGES`); a plugin registers another under the
    ``cratebridge.languages`` entry point group (see ``docs/plugins.md``).
    """

    value: str
    short: str
    name: str
    url: str
    files: tuple[str, ...] = ()
    words: tuple[str, ...] = ()

    CWL: ClassVar[Language]
    NEXTFLOW: ClassVar[Language]
    SNAKEMAKE: ClassVar[Language]

    def __post_init__(self) -> None:
        if not _SHORT.fullmatch(self.short):
            raise ValueError(f"a language's short name must match {_SHORT.pattern}: "
                             f"{self.short!r}")
        if not _IRI.match(self.value):
            raise ValueError(f"a language's value must be an IRI: {self.value!r}")
        if not (self.files or self.words):
            raise ValueError(f"language {self.short!r} names no file globs nor words to "
                             "recognise a workflow by")

    def __str__(self) -> str:
        return self.short

    def recognises_file(self, file_name: str) -> bool:
        """Whether a workflow file named ``file_name`` is in this language."""
        return any(fnmatch.fnmatchcase(file_name, glob) for glob in self.files)

    def word_in(self, text: str) -> str | None:
        """The longest of this language's words found in ``text`` (lower-cased), if any."""
        found = [word for word in self.words if word in text.lower()]
        return max(found, key=len) if found else None


_SHORT = re.compile(r"[a-z][a-z0-9_-]*")
_IRI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")
_WRO = "https://w3id.org/workflowhub/workflow-ro-crate#"

Language.CWL = Language(
    _WRO + "cwl", "cwl", "Common Workflow Language", "https://www.commonwl.org/",
    files=("*.cwl",), words=("cwl", "common workflow language"),
)
Language.NEXTFLOW = Language(
    _WRO + "nextflow", "nextflow", "Nextflow", "https://www.nextflow.io/",
    files=("main.nf", "*.nf"), words=("nextflow",),
)
Language.SNAKEMAKE = Language(
    _WRO + "snakemake", "snakemake", "Snakemake", "https://snakemake.readthedocs.io",
    files=("Snakefile", "*.smk"), words=("snakemake",),
)

#: The languages cratebridge knows without any plugin.
BUILTIN_LANGUAGES: tuple[Language, ...] = (Language.CWL, Language.NEXTFLOW, Language.SNAKEMAKE)


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
class Organization:
    id: str
    name: str | None = None


@dataclass(frozen=True)
class Agent:
    id: str
    name: str | None = None
    affiliations: tuple[Organization, ...] = ()


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
    ``version`` and ``url`` are what the crate says of the workflow (its own
    Workflow RO-Crate first), or its URL when it came from the mirror.
    """

    id: str
    root: Path
    main_file: Path
    language: Language
    language_source: str
    name: str | None = None
    source: str = "crate"
    version: str | None = None
    url: str | None = None


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

"""What a result crate's preview shows, read from the crate's metadata into typed values.

The metadata is hostile input: every read tolerates any JSON, and no file outside the crate is read.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import MappingProxyType
from urllib.parse import quote, unquote

from cratebridge.provenance.preview_values import Entity as _Entity
from cratebridge.provenance.preview_values import as_text as _text
from cratebridge.provenance.preview_values import clip
from cratebridge.provenance.preview_values import ids_or_text as _ids_or_text
from cratebridge.provenance.preview_values import joined as _joined
from cratebridge.provenance.preview_values import refs as _refs
from cratebridge.provenance.preview_values import sort_key as _sort_key
from cratebridge.provenance.preview_values import types_of as _types

__all__ = [
    "NONE_KNOWN", "TAIL_LINES", "Crate", "LogTail", "Output", "Preview", "Review", "Status",
    "Step", "nested_crate", "read_preview",
]

#: How many lines of a failed step's log the page shows
TAIL_LINES = 40

_METADATA = "ro-crate-metadata.json"
#: No metadata document known in memory: every one is read from its file
NONE_KNOWN: Mapping[Path, object] = MappingProxyType({})
_TAIL_BYTES = 64 * 1024
_MAX_STEPS = 1000  # rows of the step table; a scatter of thousands stays readable
_MAX_TAILS = 20  # logs whose tail is shown
_MAX_TEXT = 4000  # characters of one error or value
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_REVIEW_TYPES = frozenset({"AssessAction", "DownloadAction", "UpdateAction"})
_LAST_SEGMENT = re.compile(r"[/#:]")


class Status(Enum):
    """What became of an action, as the page words it."""

    COMPLETED = "Completed"
    FAILED = "Failed"
    ACTIVE = "Running"
    POTENTIAL = "Pending"
    NOT_RUN = "No run recorded"
    UNKNOWN = "Unknown"

    @classmethod
    def of(cls, value: object) -> Status:
        """The status an ``actionStatus`` (IRI, ``{"@id": ...}`` or bare name) stands for."""
        word = _ids_or_text(value)
        name = _LAST_SEGMENT.split(word[0])[-1] if word else ""
        return _STATUS_NAMES.get(name, cls.UNKNOWN)


_STATUS_NAMES = {
    "CompletedActionStatus": Status.COMPLETED,
    "FailedActionStatus": Status.FAILED,
    "ActiveActionStatus": Status.ACTIVE,
    "PotentialActionStatus": Status.POTENTIAL,
}


@dataclass(frozen=True)
class LogTail:
    """The last lines of a log file of the crate."""

    title: str
    href: str | None
    lines: tuple[str, ...]
    cut: bool  # earlier lines are not shown


@dataclass(frozen=True)
class Step:
    """One step execution (or a planned step with no execution recorded)."""

    name: str
    status: Status
    start: str | None = None
    end: str | None = None
    image: str | None = None
    image_digest: str | None = None
    exit_code: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Output:
    """A result of the request: a file or folder of the crate, or a value."""

    name: str
    href: str | None
    size: str | None  # ``contentSize`` as written
    sha512: str | None
    value: str | None
    produced: bool = True  # False: a value the run left empty (``null``)


@dataclass(frozen=True)
class Review:
    """A check, approval or sign-off recorded on the request (Five Safes)."""

    kind: str
    name: str
    agent: str | None
    status: Status
    when: str | None


@dataclass(frozen=True)
class Preview:
    """Everything the page shows, read from the crate's metadata."""

    title: str
    description: str | None
    request: str | None
    agent: str | None
    project: str | None
    status: Status
    start: str | None
    end: str | None
    error: str | None
    reviews: tuple[Review, ...]
    steps: tuple[Step, ...]
    steps_left_out: int
    outputs: tuple[Output, ...]
    tails: tuple[LogTail, ...]
    problems: tuple[str, ...]


class _Graph:
    """The entities of one metadata document by ``@id``; every read tolerates any JSON."""

    def __init__(self, document: object) -> None:
        nodes = document.get("@graph") if isinstance(document, dict) else None
        self.entities: dict[str, _Entity] = {}
        for node in nodes if isinstance(nodes, list) else []:
            if isinstance(node, dict) and isinstance(node.get("@id"), str):
                self.entities.setdefault(node["@id"], node)
        self._by_type: dict[str, list[_Entity]] | None = None
        #: the steps as read for each run action (both pages of a result read the same)
        self.steps: dict[object, list[_Row]] = {}

    def get(self, entity_id: str) -> _Entity | None:
        return self.entities.get(entity_id)

    def linked(self, entity: _Entity, key: str) -> list[_Entity]:
        """The entities ``entity[key]`` refers to, in order (unknown ones left out)."""
        found = (self.entities.get(i) for i in _refs(entity.get(key)))
        return [e for e in found if e is not None]

    def of_type(self, name: str) -> list[_Entity]:
        if self._by_type is None:  # indexed once: a run crate may hold 10,000s of entities
            self._by_type = {}
            for entity in self.entities.values():
                for kind in _types(entity):
                    self._by_type.setdefault(kind, []).append(entity)
        return list(self._by_type.get(name, ()))

    @functools.cached_property
    def request_action(self) -> _Entity | None:
        """The action the crate is about: the one running the root's ``mainEntity``.

        In a Five Safes crate that is the request's ``CreateAction``; in a run
        crate, the workflow's run. Those the root ``mentions`` come first.
        """
        root = self.root()
        main = set(_refs(root.get("mainEntity")))
        mentioned = [e for e in self.linked(root, "mentions") if "CreateAction" in _types(e)]
        listed = {e["@id"] for e in mentioned}  # a run crate's root may mention every action
        others = (e for e in self.of_type("CreateAction") if e["@id"] not in listed)
        for action in itertools.chain(mentioned, others):
            if main & set(_refs(action.get("instrument"))):
                return action
        return mentioned[0] if mentioned else None

    def root(self) -> _Entity:
        descriptor = self.entities.get(_METADATA) or {}
        about = _refs(descriptor.get("about"))
        return self.entities.get(about[0] if about else "./") or {}

    def name(self, value: object) -> str | None:
        """A readable name for a reference (its entity's ``name``, else its id) or a text."""
        for entity_id in _refs(value):
            entity = self.entities.get(entity_id) or {}
            return _text(entity.get("name")) or entity_id
        return _text(value)


@dataclass(frozen=True)
class Crate:
    """One metadata file and the folder it describes; ``bound``: nothing outside it is read."""

    folder: Path
    bound: Path
    graph: _Graph
    problem: str | None

    @classmethod
    def load(cls, folder: Path, bound: Path,
             known: Mapping[Path, object] = NONE_KNOWN) -> Crate:
        """The crate in ``folder``; a missing or unreadable metadata file is its ``problem``.

        ``known``: documents already in memory by the path of their file, read
        from there instead of parsing the file again.
        """
        path = folder / _METADATA
        where = path.relative_to(bound).as_posix()
        if path in known:
            return cls(folder, bound, _Graph(known[path]), None)
        try:
            document = json.loads(path.read_bytes())
        except FileNotFoundError:
            return cls(folder, bound, _Graph(None), f"{where} is missing")
        except (OSError, ValueError, RecursionError) as exc:
            return cls(folder, bound, _Graph(None),
                       f"{where} could not be read ({type(exc).__name__})")
        return cls(folder, bound, _Graph(document), None)

    def file(self, entity_id: str) -> Path | None:
        """The file or folder an entity id names, if it is one of the crate (inside ``bound``)."""
        if (not entity_id or "#" in entity_id or "?" in entity_id
                or entity_id.startswith(("/", "_:")) or _SCHEME.match(entity_id)):
            return None
        try:
            path = (self.folder / unquote(entity_id)).resolve()
            found = path.is_relative_to(self.bound) and path.exists()
        except (OSError, ValueError):  # a name too long, a NUL byte
            return None
        return path if found else None

    def href(self, path: Path) -> str:
        """A link from this crate's preview to ``path``: relative, percent-encoded, no scheme."""
        return quote(Path(os.path.relpath(path, self.folder)).as_posix())


def read_preview(crate: Crate, nested: Crate | None) -> Preview:
    """What the page of ``crate`` shows; the steps come from its ``nested`` run crate if any."""
    graph = crate.graph
    root = graph.root()
    action = graph.request_action or {}
    run = nested or crate
    run_action = run.graph.request_action if nested else action
    steps = _steps(run, run_action.get("@id") if run_action else None)
    failed = [(f"{_step_of(run.graph, row).name}: ", row[1], run) for row in steps
              if row[0] is Status.FAILED]
    if Status.of(action.get("actionStatus")) is Status.FAILED:
        failed.append(("the run: ", action, crate))
    problems = [p for p in (crate.problem, nested.problem if nested else None) if p]
    if action and nested is None and _refs(action.get("subjectOf")):
        problems.append("the run's provenance crate named by the request was not found")
    return Preview(
        title=clip(_text(root.get("name")) or "Result crate", 300),
        description=clip(_text(root.get("description")), 1000),
        request=clip(_text(action.get("name")), 1000),
        agent=_person(graph, action.get("agent")),
        project=_project(graph, root, action),
        status=Status.of(action.get("actionStatus")),
        start=_text(action.get("startTime")),
        end=_text(action.get("endTime")),
        error=clip(_joined(action.get("error")), _MAX_TEXT),
        reviews=tuple(_reviews(graph, action)),
        steps=tuple(_step_of(run.graph, row) for row in steps[:_MAX_STEPS]),
        steps_left_out=max(0, len(steps) - _MAX_STEPS),
        outputs=tuple(_outputs(crate, action)),
        tails=tuple(_tails(crate, failed)),
        problems=tuple(problems),
    )


def nested_crate(crate: Crate, known: Mapping[Path, object] = NONE_KNOWN) -> Crate | None:
    """The run crate the request's action is ``subjectOf`` (a folder with its own metadata);
    ``known`` as for :meth:`Crate.load`."""
    action = crate.graph.request_action or {}
    for entity_id in _refs(action.get("subjectOf")):
        folder = crate.file(entity_id)
        if folder is not None and folder.is_dir() and folder != crate.folder \
                and (folder / _METADATA).is_file():
            return Crate.load(folder, crate.bound, known)
    return None


def _person(graph: _Graph, value: object) -> str | None:
    names = []
    for entity_id in _refs(value):
        name = graph.name({"@id": entity_id})
        names.append(name if name == entity_id else f"{name} ({entity_id})")
    return clip("; ".join(names), 1000) if names else clip(_text(value), 1000)


def _project(graph: _Graph, root: _Entity, action: _Entity) -> str | None:
    """The project: the root's ``sourceOrganization``, else the agent's."""
    projects = graph.linked(root, "sourceOrganization")
    for agent in graph.linked(action, "agent"):
        projects += [p for p in graph.linked(agent, "memberOf") if "Project" in _types(p)]
    names = [_text(p.get("name")) or str(p.get("@id")) for p in projects]
    return clip(names[0], 1000) if names else None


def _reviews(graph: _Graph, action: _Entity) -> Iterator[Review]:
    """The checks and sign-offs on the request: its other actions (``AssessAction`` ...)."""
    typed = {id(e) for kind in _REVIEW_TYPES for e in graph.of_type(kind)}
    for entity in graph.entities.values():
        shp = [i for i in _refs(entity.get("additionalType")) if "/shp#" in i]
        if entity is action or not (shp or id(entity) in typed):
            continue
        types = _types(entity)
        kind = re.split(r"[/#]", shp[0])[-1] if shp else sorted(types & _REVIEW_TYPES)[0]
        yield Review(
            kind=clip(re.sub(r"(?<=[a-z])(?=[A-Z])", " ", kind), 100),
            name=clip(_text(entity.get("name")) or str(entity.get("@id")), 1000),
            agent=_person(graph, entity.get("agent")),
            status=Status.of(entity.get("actionStatus")),
            when=_text(entity.get("endTime")) or _text(entity.get("startTime")),
        )


#: a step of the table: its status, its entity (an action, or a planned ``HowToStep``)
#: and whether it was only planned; read into a :class:`Step` for the rows shown
_Row = tuple[Status, _Entity, bool]


def _steps(run: Crate, run_action_id: object) -> list[_Row]:
    """Each step execution, by start time, then each planned step with none recorded.

    Executions are the objects of the engine's ``ControlAction``s; a crate
    without them (an engine that could not report) lists its other ``CreateAction``s.
    """
    graph = run.graph
    if run_action_id not in graph.steps:
        graph.steps[run_action_id] = _read_steps(graph, run_action_id)
    return graph.steps[run_action_id]


def _read_steps(graph: _Graph, run_action_id: object) -> list[_Row]:
    controls = [c for o in graph.of_type("OrganizeAction") for c in graph.linked(o, "object")
                if "ControlAction" in _types(c)]
    actions = [a for c in controls for a in graph.linked(c, "object")
               if "CreateAction" in _types(a)]
    if not controls:
        actions = [a for a in graph.of_type("CreateAction") if a.get("@id") != run_action_id]
    unique = list({str(a.get("@id")): a for a in actions}.values())
    unique.sort(key=lambda action: _sort_key(_text(action.get("startTime"))))
    ran = {i for c in controls for i in _refs(c.get("instrument"))}
    planned = [h for h in graph.of_type("HowToStep") if h.get("@id") not in ran] \
        if controls else []
    planned.sort(key=lambda h: _sort_key(_text(h.get("position"))))
    return ([(Status.of(a.get("actionStatus")), a, False) for a in unique]
            + [(Status.NOT_RUN, h, True) for h in planned])


def _step_of(graph: _Graph, row: _Row) -> Step:
    status, entity, planned = row
    if planned:
        return Step(clip(_text(entity.get("name")) or str(entity.get("@id")), 300), status)
    return _step(graph, entity)


def _step(graph: _Graph, action: _Entity) -> Step:
    name = _text(action.get("name")) or str(action.get("@id"))
    for prefix in ("Run of step ", "Run of "):  # the run crate's wording: the step is the rest
        if name.startswith(prefix) and len(name) > len(prefix):
            name = name[len(prefix):]
            break
    image, digest = _image(graph, action.get("containerImage"))
    return Step(
        name=clip(name, 300),
        status=Status.of(action.get("actionStatus")),
        start=_text(action.get("startTime")),
        end=_text(action.get("endTime")),
        image=image,
        image_digest=digest,
        exit_code=_exit_code(graph, action),
        error=clip(_joined(action.get("error")), _MAX_TEXT),
    )


def _image(graph: _Graph, value: object) -> tuple[str | None, str | None]:
    """``name:tag`` of a ``ContainerImage`` (registry too unless Docker Hub), and its sha256."""
    for image in filter(None, map(graph.get, _refs(value))):
        name = _text(image.get("name")) or str(image.get("@id"))
        tag, registry = _text(image.get("tag")), _text(image.get("registry"))
        if registry and registry != "docker.io":
            name = f"{registry}/{name}"
        digest = _text(image.get("sha256"))
        return clip(f"{name}:{tag}" if tag else name, 300), clip(digest, 100)
    named = _text(value) or next(iter(_refs(value)), None)
    return clip(named, 300), None


def _exit_code(graph: _Graph, action: _Entity) -> str | None:
    for prop in graph.linked(action, "additionalProperty"):
        if _text(prop.get("propertyID")) == "exitCode" or _text(prop.get("name")) == "exit code":
            return clip(_text(prop.get("value")), 100)
    return clip(_text(action.get("exitCode")), 100)


def _outputs(crate: Crate, action: _Entity) -> Iterator[Output]:
    graph = crate.graph
    for entity_id in _refs(action.get("result")):
        entity = graph.get(entity_id) or {}
        path = crate.file(entity_id)
        yield Output(
            name=clip(unquote(entity_id) if path is not None
                       else _text(entity.get("name")) or entity_id, 1000),
            href=crate.href(path) if path is not None else None,
            size=_text(entity.get("contentSize")),
            sha512=clip(_text(entity.get("sha512")), 200),
            value=clip(_text(entity.get("value")), _MAX_TEXT) if "value" in entity else None,
            produced=entity.get("value", "") is not None,
        )


def _tails(page: Crate, failed: list[tuple[str, _Entity, Crate]]) -> Iterator[LogTail]:
    """The tails of the logs of what failed (``File``s ``about`` each action, in its crate).

    Links are made from ``page``'s folder; at most :data:`_MAX_TAILS` logs are read.
    """
    indexes: dict[Path, dict[str, list[_Entity]]] = {}
    shown = 0
    for title, action, crate in failed:
        if crate.folder not in indexes:
            indexes[crate.folder] = _logs_by_action(crate.graph)
        for entity in indexes[crate.folder].get(str(action.get("@id")), []):
            path = crate.file(str(entity.get("@id")))
            if path is None or not path.is_file():
                continue
            if shown == _MAX_TAILS:
                return
            shown += 1
            lines, cut = _tail(path)
            name = _text(entity.get("name")) or str(entity.get("@id"))
            yield LogTail(clip(title + name, 400), page.href(path), lines, cut)


def _logs_by_action(graph: _Graph) -> dict[str, list[_Entity]]:
    """The ``File``s of a crate by the actions they are ``about``."""
    logs: dict[str, list[_Entity]] = {}
    for entity in graph.of_type("File"):
        for action_id in _refs(entity.get("about")):
            logs.setdefault(action_id, []).append(entity)
    return logs


def _tail(path: Path) -> tuple[tuple[str, ...], bool]:
    """The last :data:`TAIL_LINES` lines of a file (reading at most its last 64 KiB)."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - _TAIL_BYTES))
            data = handle.read(_TAIL_BYTES)
    except OSError as exc:
        return (f"(the log could not be read: {type(exc).__name__})",), False
    text = _CONTROL.sub("\ufffd", _ANSI.sub("", data.decode("utf-8", errors="replace")))
    lines = text.splitlines()
    cut = size > _TAIL_BYTES
    if cut and lines:
        lines = lines[1:]  # the first line read is likely a part of one
    if len(lines) > TAIL_LINES:
        lines, cut = lines[-TAIL_LINES:], True
    return tuple(clip(line, 2000) or "" for line in lines), cut

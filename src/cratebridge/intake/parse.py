"""Reads ``ro-crate-metadata.json`` once and turns a request crate into a typed RunRequest.

The JSON-LD is read as RO-Crate's flattened, compacted form: one ``@graph`` of
entities keyed by ``@id``. Nothing past this module looks at the JSON again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

from cratebridge.errors import MetadataError, PolicyRefused, UnsafeCrate, UnsupportedCrate
from cratebridge.intake.request import (
    BUILTIN_LANGUAGES,
    Agent,
    CrateKind,
    InputBinding,
    InputKind,
    Language,
    Organization,
    Project,
    ReviewAction,
    RunRequest,
)
from cratebridge.intake.unpack import METADATA_NAME, IntakeLimits, safe_relative_path

__all__ = ["CrateGraph", "load_graph", "parse_request"]

Entity = Mapping[str, object]

_SCHEMA = "http://schema.org/"
_POTENTIAL = _SCHEMA + "PotentialActionStatus"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_DESCRIPTOR_IDS = ("ro-crate-metadata.json", "./ro-crate-metadata.json", "ro-crate-metadata.jsonld")
_FIVE_SAFES = ("https://w3id.org/5s-crate/", "https://w3id.org/trusted-wfrun-crate/")
_WFRUN = ("https://w3id.org/ro/wfrun/",)
_WORKFLOW = (
    "https://w3id.org/workflowhub/workflow-ro-crate/",
    "https://about.workflowhub.eu/Workflow-RO-Crate",
)


# -- the graph -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CrateGraph:
    """One crate's metadata: the parsed document and its entities by ``@id``."""

    document: dict[str, object]
    entities: Mapping[str, Entity]
    descriptor_id: str
    root_id: str
    source: str

    @property
    def root(self) -> Entity:
        """The root data entity (the descriptor's ``about``)."""
        return self.entities[self.root_id]

    @property
    def descriptor(self) -> Entity:
        """The metadata descriptor entity."""
        return self.entities[self.descriptor_id]

    def get(self, entity_id: str) -> Entity | None:
        """The entity with ``entity_id``, or ``None`` when it is not described."""
        return self.entities.get(entity_id)

    def require(self, entity_id: str, what: str) -> Entity:
        """The entity with ``entity_id``; :class:`MetadataError` naming ``what`` if absent."""
        entity = self.entities.get(entity_id)
        if entity is None:
            raise MetadataError(
                f"{what} {entity_id!r} is referenced but not described in the @graph; "
                "add an entity with that @id",
                where=self.source,
            )
        return entity

    def where(self, entity_id: str) -> str:
        """A location for messages: the metadata file and the entity."""
        return f"{self.source} entity {entity_id!r}"


def ids(value: object) -> list[str]:
    """The ``@id`` references in a property value (one or a list); bare strings count too."""
    items = value if isinstance(value, list) else [value]
    found: list[str] = []
    for item in items:
        if isinstance(item, Mapping) and isinstance(item.get("@id"), str):
            found.append(str(item["@id"]))
        elif isinstance(item, str):
            found.append(item)
    return found


def types(entity: Entity) -> set[str]:
    """The entity's ``@type`` values."""
    value = entity.get("@type")
    items = value if isinstance(value, list) else [value]
    return {item for item in items if isinstance(item, str)}


def text(entity: Entity, key: str) -> str | None:
    """A plain string property, or ``None``."""
    value = entity.get(key)
    return value if isinstance(value, str) else None


def load_graph(path: Path, *, max_bytes: int, label: str | None = None) -> CrateGraph:
    """Read and check ``ro-crate-metadata.json`` at ``path``.

    Refuses files over ``max_bytes`` (:class:`UnsafeCrate`); JSON that does not
    parse (with line and column), is not an object, has no ``@graph``, no
    descriptor or no root (:class:`MetadataError`).
    """
    source = label or path.name
    document = _read_json(path, max_bytes, source)
    entities = _index(document, source)
    descriptor_id = _descriptor_id(entities, source)
    roots = ids(entities[descriptor_id].get("about"))
    if len(roots) != 1:
        raise MetadataError(
            "the metadata descriptor must have exactly one 'about' naming the root Dataset",
            where=f"{source} entity {descriptor_id!r}",
        )
    if roots[0] not in entities:
        raise MetadataError(
            f"the root Dataset {roots[0]!r} named by the descriptor's 'about' is not "
            "described in the @graph",
            where=source,
        )
    return CrateGraph(document, entities, descriptor_id, roots[0], source)


def _read_json(path: Path, max_bytes: int, source: str) -> dict[str, object]:
    try:
        with open(path, "rb") as stream:
            raw = stream.read(max_bytes + 1)
    except FileNotFoundError as exc:
        raise MetadataError(f"{METADATA_NAME} is missing", where=source) from exc
    except OSError as exc:
        raise MetadataError(f"cannot read {METADATA_NAME}: {exc.strerror}", where=source) from exc
    if len(raw) > max_bytes:
        raise UnsafeCrate(
            f"{METADATA_NAME} is larger than the limit of {max_bytes} bytes; "
            "ask the operator to raise intake.max_metadata_bytes",
            where=source,
        )
    try:
        document = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise MetadataError(f"not UTF-8 text (byte {exc.start})", where=source) from exc
    except json.JSONDecodeError as exc:
        raise MetadataError(
            f"not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}", where=source
        ) from exc
    except (ValueError, RecursionError) as exc:
        raise MetadataError(f"JSON cannot be read: {exc}", where=source) from exc
    if not isinstance(document, dict):
        raise MetadataError(
            f"the JSON document is a {type(document).__name__}, not an object with '@graph'",
            where=source,
        )
    return document


def _index(document: Mapping[str, object], source: str) -> dict[str, Entity]:
    graph = document.get("@graph")
    if not isinstance(graph, list):
        raise MetadataError(
            "no '@graph' list: RO-Crate metadata must be flattened JSON-LD with a @graph",
            where=source,
        )
    entities: dict[str, Entity] = {}
    for position, entity in enumerate(graph):
        if not isinstance(entity, dict) or not isinstance(entity.get("@id"), str):
            raise MetadataError(
                f"@graph item {position} is not an object with an '@id'", where=source
            )
        entity_id = entity["@id"]
        if entity_id in entities:
            raise MetadataError(
                f"@id {entity_id!r} is described twice; merge the two entities", where=source
            )
        entities[entity_id] = entity
    return entities


def _descriptor_id(entities: Mapping[str, Entity], source: str) -> str:
    for candidate in _DESCRIPTOR_IDS:
        if candidate in entities:
            return candidate
    for entity_id in entities:
        if entity_id.endswith("/" + METADATA_NAME):
            return entity_id
    raise MetadataError(
        f"no metadata descriptor (an entity with @id {METADATA_NAME!r} and 'about' the root); "
        "this is not an RO-Crate",
        where=source,
    )


# -- the request ---------------------------------------------------------------------------


def parse_request(
    crate_dir: Path,
    *,
    workflow_mirror: Path | None = None,
    workflow_dest: Path | None = None,
    dataset_map: Mapping[str, Path] | None = None,
    bagit: bool = False,
    bag_info: Mapping[str, str] | None = None,
    limits: IntakeLimits | None = None,
    languages: Sequence[Language] = BUILTIN_LANGUAGES,
) -> RunRequest:
    """Parse the crate in ``crate_dir`` (the folder holding ``ro-crate-metadata.json``).

    ``workflow_mirror`` is the operator's folder of approved Workflow RO-Crate zips
    (see :func:`cratebridge.intake.resolve.resolve_workflow`), unpacked under
    ``workflow_dest`` (default: ``crate_dir.parent / "workflow-mirror"``).
    ``dataset_map`` maps TRE-local dataset identifiers (``_:localid:...``,
    ``#dataset-x``, URLs) to operator paths. ``bagit`` and ``bag_info`` are passed
    through from :func:`cratebridge.intake.unpack.open_crate`. ``languages``: the
    languages the workflow may be in (default: the built-ins; a run passes the
    registry's).

    Raises :class:`MetadataError`, :class:`UnsafeCrate` or
    :class:`UnsupportedCrate` (exit 3), or :class:`PolicyRefused` for an unmapped
    TRE-local dataset (exit 4).
    """
    # resolve builds on this module's graph reader, so it is imported here.
    from cratebridge.intake.resolve import resolve_workflow

    limits = limits or IntakeLimits()
    graph = load_graph(crate_dir / METADATA_NAME, max_bytes=limits.max_metadata_bytes)
    conforms = tuple(ids(graph.root.get("conformsTo")))
    main_id = _main_entity(graph, conforms)
    kind = _crate_kind(conforms + tuple(ids(graph.descriptor.get("conformsTo"))))
    action = _find_action(graph, main_id, kind)
    workflow = resolve_workflow(
        crate_dir,
        graph,
        main_id,
        workflow_mirror=workflow_mirror,
        dest=workflow_dest,
        limits=limits,
        languages=languages,
    )
    inputs = _inputs(graph, action, crate_dir, dataset_map or {}) if action else ()
    return RunRequest(
        crate_dir=crate_dir,
        metadata=graph.document,
        kind=kind,
        workflow=workflow,
        inputs=inputs,
        action_id=None if action is None else str(action["@id"]),
        action_name=None if action is None else text(action, "name"),
        agent=_agent(graph, action),
        project=_project(graph),
        reviews=_reviews(graph),
        bagit=bagit,
        bag_info=dict(bag_info or {}),
        conforms_to=conforms,
    )


def _main_entity(graph: CrateGraph, conforms: tuple[str, ...]) -> str:
    found = ids(graph.root.get("mainEntity"))
    if len(found) == 1:
        return found[0]
    if not found and conforms and _known_kind(conforms) is None:
        raise UnsupportedCrate(
            f"the root conforms to {', '.join(conforms)}, none of which cratebridge knows, "
            "and names no mainEntity: there is nothing to run",
            where=graph.where(graph.root_id),
        )
    problem = "has no mainEntity" if not found else "has more than one mainEntity"
    raise MetadataError(
        f"the root Dataset {problem}; it must name the one workflow to run",
        where=graph.where(graph.root_id),
    )


def _crate_kind(conforms: tuple[str, ...]) -> CrateKind:
    """The request kind from profile URIs; a crate claiming none is read as a Workflow RO-Crate."""
    return _known_kind(conforms) or CrateKind.WORKFLOW


def _known_kind(conforms: tuple[str, ...]) -> CrateKind | None:
    for prefixes, kind in (
        (_FIVE_SAFES, CrateKind.FIVE_SAFES),
        (_WFRUN, CrateKind.WORKFLOW_RUN),
        (_WORKFLOW, CrateKind.WORKFLOW),
    ):
        if any(uri.startswith(prefixes) for uri in conforms):
            return kind
    return None


def _status(value: object) -> str | None:
    """An action status as a full schema.org IRI (strings and ``{"@id"}`` both accepted)."""
    found = ids(value)
    if not found:
        return None
    status = found[0]
    if status.startswith("https://schema.org/"):
        return _SCHEMA + status.removeprefix("https://schema.org/")
    if status.startswith("schema:"):
        return _SCHEMA + status.removeprefix("schema:")
    if "/" not in status and ":" not in status:
        return _SCHEMA + status
    return status


def _find_action(graph: CrateGraph, main_id: str, kind: CrateKind) -> Entity | None:
    """The CreateAction to run: its instrument is the mainEntity; in a request, it is Potential."""
    actions = [e for e in graph.entities.values() if "CreateAction" in types(e)]
    runs = [a for a in actions if main_id in ids(a.get("instrument"))]
    if kind is not CrateKind.WORKFLOW_RUN:
        runs = [a for a in runs if _status(a.get("actionStatus")) in (None, _POTENTIAL)]
    if len(runs) > 1:
        listed = ", ".join(repr(a["@id"]) for a in runs)
        raise MetadataError(
            f"several CreateActions ({listed}) run the mainEntity {main_id!r}; a request "
            "must hold exactly one, so remove the others",
            where=graph.source,
        )
    if runs or kind is not CrateKind.FIVE_SAFES:
        return runs[0] if runs else None
    raise MetadataError(_no_action_message(actions, main_id), where=graph.source)


def _no_action_message(actions: list[Entity], main_id: str) -> str:
    message = (
        f"no CreateAction with instrument {main_id!r} (the mainEntity) and actionStatus "
        "PotentialActionStatus; a Five Safes request needs exactly one"
    )
    if actions:
        described = "; ".join(
            f"{a['@id']!r} (instrument {ids(a.get('instrument'))}, "
            f"status {_status(a.get('actionStatus'))})"
            for a in actions
        )
        message += f". Found: {described}"
    return message


# -- inputs --------------------------------------------------------------------------------


def _inputs(
    graph: CrateGraph, action: Entity, crate_dir: Path, dataset_map: Mapping[str, Path]
) -> tuple[InputBinding, ...]:
    return tuple(
        _binding(graph, graph.require(entity_id, "input"), crate_dir, dataset_map)
        for entity_id in ids(action.get("object"))
    )


def _binding(
    graph: CrateGraph, entity: Entity, crate_dir: Path, dataset_map: Mapping[str, Path]
) -> InputBinding:
    entity_id = str(entity["@id"])
    kind = _input_kind(graph, entity)
    parameter, formal_id, source = _parameter(graph, entity)
    path = None
    if kind is not InputKind.VALUE:
        path = _data_path(graph, entity_id, kind, crate_dir, dataset_map)
    return InputBinding(
        parameter=parameter,
        kind=kind,
        entity_id=entity_id,
        path=path,
        value=entity.get("value") if kind is InputKind.VALUE else None,
        formal_parameter_id=formal_id,
        parameter_source=source,
        encoding=text(entity, "encodingFormat") if kind is InputKind.VALUE else None,
    )


def _input_kind(graph: CrateGraph, entity: Entity) -> InputKind:
    found = types(entity)
    if found & {"File", "MediaObject"}:
        return InputKind.FILE
    if found & {"Dataset", "Directory"}:
        return InputKind.DIRECTORY
    if "PropertyValue" in found:
        return InputKind.VALUE
    raise UnsupportedCrate(
        f"input has @type {sorted(found)}; inputs must be File, Dataset or PropertyValue",
        where=graph.where(str(entity["@id"])),
    )


def _parameter(graph: CrateGraph, entity: Entity) -> tuple[str, str | None, str]:
    """The workflow parameter an input binds to, its FormalParameter and how it was found."""
    entity_id = str(entity["@id"])
    formal_ids = ids(entity.get("exampleOfWork"))
    if len(formal_ids) > 1:
        raise MetadataError(
            f"exampleOfWork names several FormalParameters {formal_ids}; keep one",
            where=graph.where(entity_id),
        )
    if formal_ids:
        formal = graph.require(formal_ids[0], "FormalParameter")
        name = text(formal, "name")
        if name:
            return name, formal_ids[0], f"name of FormalParameter {formal_ids[0]!r} (exampleOfWork)"
        fragment = re.split(r"[#/]", formal_ids[0].rstrip("/"))[-1]
        if fragment:
            return (
                fragment,
                formal_ids[0],
                f"@id of FormalParameter {formal_ids[0]!r}, which has no name",
            )
    name = text(entity, "name")
    if name:
        return (
            name,
            None,
            f"the input's own name (no FormalParameter via exampleOfWork on {entity_id!r})",
        )
    raise MetadataError(
        "input has no exampleOfWork FormalParameter and no name, so it binds to no "
        "workflow parameter; add exampleOfWork",
        where=graph.where(entity_id),
    )


def _data_path(
    graph: CrateGraph,
    entity_id: str,
    kind: InputKind,
    crate_dir: Path,
    dataset_map: Mapping[str, Path],
) -> Path:
    """Where a File or Dataset input lives: inside the crate, or an operator-mapped dataset."""
    where = graph.where(entity_id)
    if entity_id in dataset_map:
        return _mapped_path(entity_id, dataset_map[entity_id], where)
    if entity_id.startswith(("_:", "#")):
        raise PolicyRefused(
            f"TRE-local dataset {entity_id!r} is not mapped to a folder; the operator must "
            "add it to the dataset map in the configuration",
            rule="datasets.map",
            where=where,
        )
    if _SCHEME.match(entity_id):
        raise UnsafeCrate(
            f"input {entity_id!r} points outside the crate; nothing is fetched in a TRE, so "
            "put the data in the crate or ask the operator to map the identifier to a dataset",
            where=where,
        )
    rel = safe_relative_path(unquote(entity_id.split("#", 1)[0]), where=where)
    return _crate_path(crate_dir, rel, kind, where)


def _mapped_path(entity_id: str, path: Path, where: str) -> Path:
    resolved = path.resolve()
    if not resolved.exists():
        raise PolicyRefused(
            f"dataset {entity_id!r} is mapped to {resolved}, which does not exist; "
            "fix the dataset map in the configuration",
            rule="datasets.map",
            where=where,
        )
    return resolved


def _crate_path(crate_dir: Path, rel: PurePosixPath, kind: InputKind, where: str) -> Path:
    base = crate_dir.resolve()
    path = (base / str(rel)).resolve()
    if not path.is_relative_to(base):
        raise UnsafeCrate(f"input resolves to {path}, outside the crate", where=where)
    present = path.is_file() if kind is InputKind.FILE else path.is_dir()
    if not present:
        noun = "file" if kind is InputKind.FILE else "folder"
        raise MetadataError(
            f"input {noun} {str(rel)!r} is described but not in the crate; add it to the "
            "crate or remove it from the CreateAction's object",
            where=where,
        )
    return path


# -- people and reviews --------------------------------------------------------------------


def _agent(graph: CrateGraph, action: Entity | None) -> Agent | None:
    found = ids(action.get("agent")) if action else []
    if not found:
        return None
    entity = graph.get(found[0]) or {}
    affiliations = tuple(Organization(o, text(graph.get(o) or {}, "name"))
                         for o in ids(entity.get("affiliation")))
    return Agent(id=found[0], name=text(entity, "name"), affiliations=affiliations)


def _project(graph: CrateGraph) -> Project | None:
    found = ids(graph.root.get("sourceOrganization"))
    if not found:
        return None
    entity = graph.get(found[0]) or {}
    return Project(id=found[0], name=text(entity, "name"))


def _reviews(graph: CrateGraph) -> tuple[ReviewAction, ...]:
    reviews: list[ReviewAction] = []
    for entity_id in ids(graph.root.get("mentions")):
        entity = graph.get(entity_id)
        if entity is None or "AssessAction" not in types(entity):
            continue
        additional = ids(entity.get("additionalType"))
        reviews.append(
            ReviewAction(
                id=entity_id,
                additional_type=additional[0] if additional else "",
                status=_status(entity.get("actionStatus")),
                end_time=text(entity, "endTime"),
            )
        )
    return tuple(reviews)

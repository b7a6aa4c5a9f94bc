"""Build Five Safes RO-Crate requests (0.4) for tests, demos and plugin authors.

A :class:`RequestSpec` says which workflow to run on which inputs, for whom; the
``write_request_*`` functions turn it into an RO-Crate folder, a BagIt bag or a
zip, with metadata shaped like the corrected reference request of the 0.4 spec
(``shared/reference/five-safes-0.4/04_...``). Everything is written with ``json``
and ``hashlib``; nothing touches the network. Given a fixed ``request_id`` and
``date_published`` the output is byte-for-byte reproducible.

Example::

    spec = RequestSpec(
        workflow_dir=Path("fixtures/workflows/cwl/three-step"),
        main_workflow="workflow.cwl",
        inputs=(FileInput("data", Path("input.txt")), ValueInput("repeat", 2)),
    )
    write_request_zip(spec, tmp_path / "request.zip")
"""

from __future__ import annotations

import enum
import hashlib
import json
import mimetypes
import os
import shutil
import tempfile
import urllib.parse
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

__all__ = [
    "CWL_LANGUAGE",
    "FIVE_SAFES_PROFILE",
    "RO_CRATE_CONTEXT",
    "WORKFLOW_RO_CRATE_PROFILE",
    "FileInput",
    "Input",
    "Organization",
    "Person",
    "ProjectInfo",
    "RequestSpec",
    "ReviewAction",
    "ReviewKind",
    "ValueInput",
    "ZipLayout",
    "request_metadata",
    "write_request_bag",
    "write_request_dir",
    "write_request_zip",
]

RO_CRATE_CONTEXT = "https://w3id.org/ro/crate/1.2/context"
RO_CRATE_SPEC = "https://w3id.org/ro/crate/1.2"
FIVE_SAFES_PROFILE = "https://w3id.org/5s-crate/0.4"
WORKFLOW_RO_CRATE_PROFILE = "https://w3id.org/workflowhub/workflow-ro-crate/1.0"
CWL_LANGUAGE = "https://w3id.org/workflowhub/workflow-ro-crate#cwl"
SHP = "https://w3id.org/shp#"
SHA512_TERM = "https://www.iana.org/assignments/named-information#sha-512"

POTENTIAL = "http://schema.org/PotentialActionStatus"
COMPLETED = "http://schema.org/CompletedActionStatus"

METADATA_FILE = "ro-crate-metadata.json"
# Zip entries get this time unless the spec's date is later (zip cannot go earlier).
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_BAGIT_TXT = "BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n"

JsonObject = dict[str, Any]


@dataclass(frozen=True)
class Organization:
    """An organisation, identified by an IRI (a ROR id in real requests)."""

    id: str
    name: str


@dataclass(frozen=True)
class Person:
    """A person, identified by ORCID, with the organisation they belong to."""

    name: str
    orcid: str
    affiliation: Organization


@dataclass(frozen=True)
class ProjectInfo:
    """The project a request is made under (root ``sourceOrganization``)."""

    name: str
    id: str = "#project-cratebridge-fixture"
    local_identifier: str = "project81"
    members: tuple[Organization, ...] = ()


class ReviewKind(enum.Enum):
    """Review steps a TRE agent records in root ``mentions``, by ``additionalType``."""

    CHECK_VALUE = "CheckValue"
    VALIDATION_CHECK = "ValidationCheck"
    SIGN_OFF = "SignOff"


@dataclass(frozen=True)
class ReviewAction:
    """One review ``AssessAction``; completed ones get start and end times."""

    kind: ReviewKind
    completed: bool = True


@dataclass(frozen=True)
class FileInput:
    """A file shipped in the crate as the value of workflow parameter ``parameter``.

    ``name`` is the file's name in the crate (default: ``source_path.name``).
    """

    parameter: str
    source_path: Path
    name: str | None = None

    @property
    def crate_path(self) -> str:
        """Where the file sits in the crate payload."""
        return self.name or self.source_path.name


@dataclass(frozen=True)
class ValueInput:
    """A scalar value (``PropertyValue``) for workflow parameter ``parameter``.

    The value is written as the matching JSON type, so booleans stay booleans.
    """

    parameter: str
    value: str | int | float | bool


Input = FileInput | ValueInput


class ZipLayout(enum.StrEnum):
    """How :func:`write_request_zip` lays out the zip."""

    FOLDER = "folder"
    """One BagIt bag in a single top-level folder (what TRE agents send)."""
    ROOT = "root"
    """The bag's files at the zip root."""
    PLAIN = "plain"
    """A plain RO-Crate at the zip root, no BagIt."""


DEFAULT_AFFILIATION = Organization("https://ror.org/027m9bs27", "The University of Manchester")
DEFAULT_PARTNER = Organization("https://ror.org/01ee9ar58", "University of Nottingham")
DEFAULT_REQUESTER = Person(
    name="Stian Soiland-Reyes",
    orcid="https://orcid.org/0000-0001-9842-9718",
    affiliation=DEFAULT_AFFILIATION,
)
DEFAULT_PROJECT = ProjectInfo(
    name="cratebridge fixture project (TRE72 project 81)",
    members=(DEFAULT_AFFILIATION, DEFAULT_PARTNER),
)
DEFAULT_APPROVER = Person(
    name="Josiah Carberry",
    orcid="https://orcid.org/0000-0002-1825-0097",
    affiliation=DEFAULT_AFFILIATION,
)


@dataclass(frozen=True, kw_only=True)
class RequestSpec:
    """Everything needed to write one Five Safes request crate.

    Give exactly one of ``workflow_dir`` (a Workflow RO-Crate folder, nested in
    the request as ``workflow_folder``) and ``workflow_url`` (the workflow
    referenced by URL, as in the 0.4 examples; ``workflow_download_url`` then
    names the zipped crate). ``main_workflow`` is the main workflow file inside
    the workflow folder. ``request_id`` (also the bag's External-Identifier)
    and ``date_published`` default to a fresh UUID and the current time.

    Raises:
        ValueError: if the spec cannot describe a valid crate (no or two
            workflow sources, the main workflow missing, clashing file names).
    """

    main_workflow: str = "workflow.cwl"
    workflow_dir: Path | None = None
    workflow_url: str | None = None
    workflow_download_url: str | None = None
    workflow_folder: str = "workflow"
    workflow_name: str | None = None
    inputs: tuple[Input, ...] = ()
    requester: Person = DEFAULT_REQUESTER
    project: ProjectInfo = DEFAULT_PROJECT
    reviews: tuple[ReviewAction, ...] = ()
    approver: Person = DEFAULT_APPROVER
    name: str = "cratebridge test request"
    description: str = "A Five Safes RO-Crate request written by cratebridge.testing"
    license: str = "https://spdx.org/licenses/CC-BY-4.0"
    request_id: uuid.UUID = field(default_factory=uuid.uuid4)
    date_published: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        if (self.workflow_dir is None) == (self.workflow_url is None):
            raise ValueError("RequestSpec needs exactly one of workflow_dir and workflow_url")
        if self.workflow_dir is not None:
            main = self.workflow_dir / self.main_workflow
            if not main.is_file():
                raise ValueError(f"main workflow {main} does not exist")
        if self.date_published.tzinfo is None:
            raise ValueError("date_published must be timezone-aware (RFC 3339 needs an offset)")
        seen = {METADATA_FILE, self.workflow_folder}
        for item in self.inputs:
            if isinstance(item, FileInput):
                _check_relative(item.crate_path)
                if item.crate_path in seen or item.crate_path.split("/")[0] == self.workflow_folder:
                    raise ValueError(f"input file name {item.crate_path!r} is used twice")
                seen.add(item.crate_path)

    @property
    def workflow_id(self) -> str:
        """The ``@id`` of the workflow Dataset: the nested folder or the URL."""
        if self.workflow_url is not None:
            return self.workflow_url
        return self.workflow_folder.rstrip("/") + "/"


def request_metadata(spec: RequestSpec) -> JsonObject:
    """Return the request's ``ro-crate-metadata.json`` content as a JSON object.

    Useful on its own for tests that write a crate and then break it on purpose.
    """
    entities: list[JsonObject] = []
    root_parts: list[str] = []
    workflow_entities, workflow_parts = _workflow_entities(spec)
    entities += workflow_entities
    root_parts += workflow_parts
    input_entities, object_ids, input_files = _input_entities(spec)
    entities += input_entities
    root_parts += input_files

    action_id = f"#request-{spec.request_id}"
    mentions = [action_id]
    entities.append(
        {
            "@id": action_id,
            "@type": "CreateAction",
            "name": f"Run {_workflow_label(spec)} for {spec.requester.name}",
            "actionStatus": POTENTIAL,
            "agent": _ref(spec.requester.orcid),
            "instrument": _ref(spec.workflow_id),
            "object": [_ref(i) for i in object_ids],
        }
    )
    for index, review in enumerate(spec.reviews):
        review_entities = _review_entities(spec, review, index)
        mentions.append(review_entities[0]["@id"])
        entities += review_entities

    entities += _people_and_project(spec)
    root: JsonObject = {
        "@id": "./",
        "@type": "Dataset",
        "name": spec.name,
        "description": spec.description,
        "license": _ref(spec.license),
        "datePublished": _timestamp(spec.date_published),
        "conformsTo": _ref(FIVE_SAFES_PROFILE),
        "hasPart": [_ref(p) for p in root_parts],
        "mainEntity": _ref(spec.workflow_id),
        "mentions": _one_or_many(mentions),
        "sourceOrganization": _ref(spec.project.id),
    }
    descriptor: JsonObject = {
        "@id": METADATA_FILE,
        "@type": "CreativeWork",
        "about": _ref("./"),
        "conformsTo": _ref(RO_CRATE_SPEC),
    }
    fixed: list[JsonObject] = [
        descriptor,
        root,
        {"@id": FIVE_SAFES_PROFILE, "@type": "Profile", "name": "Five Safes RO-Crate profile"},
        {"@id": spec.license, "@type": "CreativeWork", "name": spec.license.rsplit("/", 1)[-1]},
    ]
    return {"@context": RO_CRATE_CONTEXT, "@graph": fixed + _dedupe(entities)}


def write_request_dir(spec: RequestSpec, dest: Path) -> Path:
    """Write the request as an RO-Crate folder at ``dest`` and return ``dest``.

    ``dest`` must not exist or be an empty folder.

    Raises:
        FileExistsError: if ``dest`` exists and is not an empty folder.
    """
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest} exists and is not an empty folder")
    dest.mkdir(parents=True, exist_ok=True)
    if spec.workflow_dir is not None:
        shutil.copytree(spec.workflow_dir, dest / spec.workflow_folder, symlinks=False)
    for item in spec.inputs:
        if isinstance(item, FileInput):
            target = dest / item.crate_path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(item.source_path, target)
    metadata = json.dumps(request_metadata(spec), indent=2, ensure_ascii=False) + "\n"
    (dest / METADATA_FILE).write_text(metadata, encoding="utf-8")
    return dest


def write_request_bag(spec: RequestSpec, dest_dir: Path) -> Path:
    """Write the request as a BagIt 1.0 bag (sha-512) at ``dest_dir``; return it.

    The crate is the payload in ``data/``; ``bag-info.txt`` carries
    ``External-Identifier: urn:uuid:<request_id>``.

    Raises:
        FileExistsError: if ``dest_dir`` exists and is not an empty folder.
    """
    dest_dir = Path(dest_dir)
    if dest_dir.exists() and (not dest_dir.is_dir() or any(dest_dir.iterdir())):
        raise FileExistsError(f"{dest_dir} exists and is not an empty folder")
    write_request_dir(spec, dest_dir / "data")
    payload = sorted(_files_under(dest_dir / "data"))
    manifest = "".join(f"{_sha512(dest_dir / rel)}  {rel}\n" for rel in payload)
    octets = sum((dest_dir / rel).stat().st_size for rel in payload)
    bag_info = (
        f"Bag-Software-Agent: cratebridge.testing\n"
        f"Bagging-Date: {spec.date_published.date().isoformat()}\n"
        f"External-Identifier: urn:uuid:{spec.request_id}\n"
        f"Payload-Oxum: {octets}.{len(payload)}\n"
    )
    tag_files = {
        "bagit.txt": _BAGIT_TXT,
        "bag-info.txt": bag_info,
        "manifest-sha512.txt": manifest,
    }
    for tag_name, text in tag_files.items():
        (dest_dir / tag_name).write_text(text, encoding="utf-8")
    tagmanifest = "".join(
        f"{_sha512(dest_dir / tag_name)}  {tag_name}\n" for tag_name in sorted(tag_files)
    )
    (dest_dir / "tagmanifest-sha512.txt").write_text(tagmanifest, encoding="utf-8")
    return dest_dir


def write_request_zip(
    spec: RequestSpec, dest_zip: Path, layout: ZipLayout | str = ZipLayout.FOLDER
) -> Path:
    """Write the request as a zip at ``dest_zip`` and return its path.

    ``layout`` is a :class:`ZipLayout` or its value: ``"folder"`` puts one bag
    in a top-level folder named after the zip, ``"root"`` puts the bag's files
    at the zip root, ``"plain"`` zips the RO-Crate without BagIt. Entries are
    sorted and timestamped from ``date_published`` so the zip is reproducible.

    Raises:
        ValueError: if ``layout`` is not a known layout.
        FileExistsError: if ``dest_zip`` already exists.
    """
    chosen = ZipLayout(layout)
    dest_zip = Path(dest_zip)
    if dest_zip.exists():
        raise FileExistsError(f"{dest_zip} already exists")
    dest_zip.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cratebridge-crate-") as scratch:
        tree = Path(scratch) / "crate"
        if chosen is ZipLayout.PLAIN:
            write_request_dir(spec, tree)
        else:
            write_request_bag(spec, tree)
        prefix = dest_zip.stem + "/" if chosen is ZipLayout.FOLDER else ""
        partial = dest_zip.with_name(dest_zip.name + ".part")
        _zip_tree(tree, partial, prefix, _zip_time(spec.date_published))
        os.replace(partial, dest_zip)
    return dest_zip


# --- metadata pieces -------------------------------------------------------


def _workflow_entities(spec: RequestSpec) -> tuple[list[JsonObject], list[str]]:
    """The workflow Dataset (and, when nested, its main file); root parts to list."""
    dataset: JsonObject = {
        "@id": spec.workflow_id,
        "@type": "Dataset",
        "name": _workflow_label(spec),
        "conformsTo": _ref(WORKFLOW_RO_CRATE_PROFILE),
    }
    if spec.workflow_url is not None:
        entities = [dataset]
        if spec.workflow_download_url is not None:
            dataset["distribution"] = _ref(spec.workflow_download_url)
            entities.append(
                {
                    "@id": spec.workflow_download_url,
                    "@type": "DataDownload",
                    "conformsTo": _ref("https://w3id.org/ro/crate"),
                    "encodingFormat": "application/zip",
                }
            )
        return entities, [spec.workflow_id]

    # Nested crate: also describe the main workflow file, so a reader of the
    # outer crate finds it and its language without opening the nested one.
    main_id = spec.workflow_id + spec.main_workflow
    # No mainEntity on the Dataset: the Five Safes profile reads every
    # mainEntity in the graph as the request's, and would reject a second one.
    dataset["hasPart"] = _ref(main_id)
    main: JsonObject = {
        "@id": main_id,
        "@type": ["File", "SoftwareSourceCode", "ComputationalWorkflow"],
        "name": spec.main_workflow,
        "encodingFormat": _media_type(spec.main_workflow),
        "programmingLanguage": _ref(_language_of(spec)),
    }
    language = _nested_language_entity(spec) or {
        "@id": CWL_LANGUAGE,
        "@type": "ComputerLanguage",
        "name": "Common Workflow Language",
        "alternateName": "CWL",
        "url": _ref("https://www.commonwl.org/"),
    }
    return [dataset, main, language], [spec.workflow_id, main_id]


def _input_entities(spec: RequestSpec) -> tuple[list[JsonObject], list[str], list[str]]:
    """Input entities and their FormalParameters; the object ids; files for hasPart."""
    entities: list[JsonObject] = []
    object_ids: list[str] = []
    files: list[str] = []
    used_ids: set[str] = set()
    for item in spec.inputs:
        param_id = "#param-" + _fragment(item.parameter)
        formal: JsonObject = {
            "@id": param_id,
            "@type": "FormalParameter",
            "name": item.parameter,
            "additionalType": _additional_type(item),
        }
        if isinstance(item, FileInput):
            entity_id = urllib.parse.quote(item.crate_path)  # a relative URI: '#', ' ', '%' escaped
            entity: JsonObject = {
                "@id": entity_id,
                "@type": "File",
                "name": item.crate_path.rsplit("/", 1)[-1],
                "contentSize": str(item.source_path.stat().st_size),
                "encodingFormat": _media_type(item.crate_path),
                "exampleOfWork": _ref(param_id),
            }
            files.append(entity_id)
        else:
            entity_id = _unique("#input-" + _fragment(item.parameter), used_ids)
            entity = {
                "@id": entity_id,
                "@type": "PropertyValue",
                "name": item.parameter,
                "value": item.value,
                "exampleOfWork": _ref(param_id),
            }
        used_ids.add(entity_id)
        object_ids.append(entity_id)
        entities += [entity, formal]
    return entities, object_ids, files


def _review_entities(spec: RequestSpec, review: ReviewAction, index: int) -> list[JsonObject]:
    """The AssessAction for one review (first) and the entities it points at."""
    action_id = f"#{review.kind.value.lower()}-{index}-{spec.request_id}"
    checker = {"@id": "#tre-agent", "@type": "SoftwareApplication", "name": "TRE agent"}
    action: JsonObject = {
        "@id": action_id,
        "@type": "AssessAction",
        "additionalType": _ref(SHP + review.kind.value),
        "actionStatus": COMPLETED if review.completed else POTENTIAL,
        "object": _ref("./"),
        "agent": _ref(checker["@id"]),
    }
    extra: list[JsonObject] = [checker]
    verdict = ": OK" if review.completed else ""
    if review.kind is ReviewKind.CHECK_VALUE:
        action["name"] = "BagIt checksum of Crate" + verdict
        action["instrument"] = _ref(SHA512_TERM)
        extra = [checker, {"@id": SHA512_TERM, "@type": "DefinedTerm", "name": "sha-512 algorithm"}]
    elif review.kind is ReviewKind.VALIDATION_CHECK:
        action["name"] = "Validation against Five Safes RO-Crate profile" + verdict
        action["instrument"] = _ref(FIVE_SAFES_PROFILE)
    else:
        policy_id = "#tre-agreement-policy"
        action["name"] = "Sign-off of execution according to agreement policy" + (
            ": approved" if review.completed else ""
        )
        action["object"] = [_ref("./"), _ref(spec.workflow_id), _ref(spec.project.id)]
        action["instrument"] = _ref(policy_id)
        action["agent"] = _ref(spec.approver.orcid)
        extra = [
            {"@id": policy_id, "@type": "CreativeWork", "name": "TRE agreement policy"},
            _person(spec.approver, spec.project.id),
            _organization(spec.approver.affiliation),
        ]
    if review.completed:
        start = spec.date_published + timedelta(minutes=index + 1)
        action["startTime"] = _timestamp(start)
        action["endTime"] = _timestamp(start + timedelta(seconds=30))
    return [action, *extra]


def _people_and_project(spec: RequestSpec) -> list[JsonObject]:
    """The requester, the project, its identifier and every organisation named."""
    project = spec.project
    local_id = f"_:localid:{_fragment(project.local_identifier)}"
    entities: list[JsonObject] = [
        _person(spec.requester, project.id),
        _organization(spec.requester.affiliation),
        {
            "@id": project.id,
            "@type": "Project",
            "name": project.name,
            "identifier": _ref(local_id),
            "member": [_ref(m.id) for m in project.members] or _ref(spec.requester.affiliation.id),
        },
        {
            "@id": local_id,
            "@type": "PropertyValue",
            "name": "tre",
            "value": project.local_identifier,
        },
    ]
    entities += [_organization(m) for m in project.members]
    return entities


def _person(person: Person, project_id: str) -> JsonObject:
    return {
        "@id": person.orcid,
        "@type": "Person",
        "name": person.name,
        "affiliation": _ref(person.affiliation.id),
        "memberOf": _ref(project_id),
    }


def _organization(org: Organization) -> JsonObject:
    return {"@id": org.id, "@type": "Organization", "name": org.name}


# --- nested workflow crate -------------------------------------------------


def _nested_metadata(spec: RequestSpec) -> JsonObject | None:
    """The nested Workflow RO-Crate's metadata, or None if absent or unreadable."""
    if spec.workflow_dir is None:
        return None
    path = spec.workflow_dir / METADATA_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _nested_entity(spec: RequestSpec, entity_id: str) -> JsonObject | None:
    metadata = _nested_metadata(spec)
    graph = metadata.get("@graph", []) if metadata else []
    for entity in graph if isinstance(graph, list) else []:
        if isinstance(entity, dict) and entity.get("@id") == entity_id:
            return entity
    return None


def _workflow_label(spec: RequestSpec) -> str:
    if spec.workflow_name:
        return spec.workflow_name
    root = _nested_entity(spec, "./")
    if root and isinstance(root.get("name"), str):
        return str(root["name"])
    return spec.main_workflow


def _language_of(spec: RequestSpec) -> str:
    main = _nested_entity(spec, spec.main_workflow)
    language = main.get("programmingLanguage") if main else None
    if isinstance(language, dict) and isinstance(language.get("@id"), str):
        return str(language["@id"])
    return CWL_LANGUAGE


def _nested_language_entity(spec: RequestSpec) -> JsonObject | None:
    entity = _nested_entity(spec, _language_of(spec))
    return dict(entity) if entity else None


# --- small helpers ---------------------------------------------------------


def _ref(entity_id: str) -> JsonObject:
    return {"@id": entity_id}


def _one_or_many(ids: list[str]) -> JsonObject | list[JsonObject]:
    return _ref(ids[0]) if len(ids) == 1 else [_ref(i) for i in ids]


def _timestamp(moment: datetime) -> str:
    return moment.replace(microsecond=0).isoformat()


def _fragment(text: str) -> str:
    return urllib.parse.quote(text, safe="-._~")


def _unique(candidate: str, used: set[str]) -> str:
    result, counter = candidate, 1
    while result in used:
        counter += 1
        result = f"{candidate}-{counter}"
    return result


def _additional_type(item: Input) -> str:
    if isinstance(item, FileInput):
        return "File"
    # bool before int: bool is a subclass of int.
    if isinstance(item.value, bool):
        return "Boolean"
    if isinstance(item.value, int):
        return "Integer"
    if isinstance(item.value, float):
        return "Float"
    return "Text"


def _media_type(path: str) -> str:
    if path.endswith((".cwl", ".yml", ".yaml")):
        return "application/x-yaml"
    return mimetypes.guess_type(path)[0] or "application/octet-stream"


def _dedupe(entities: list[JsonObject]) -> list[JsonObject]:
    """Keep the first entity per ``@id`` (shared parameters, people, organisations)."""
    seen: set[str] = set()
    unique: list[JsonObject] = []
    for entity in entities:
        if entity["@id"] not in seen:
            seen.add(entity["@id"])
            unique.append(entity)
    return unique


def _check_relative(path: str) -> None:
    parts = path.split("/")
    if path.startswith("/") or "" in parts or ".." in parts or "." in parts:
        raise ValueError(f"input file name {path!r} must be a plain relative path")


def _files_under(folder: Path) -> Iterator[str]:
    """Paths of regular files under ``folder``, relative to its parent, with ``/``."""
    base = folder.parent
    for path in folder.rglob("*"):
        if path.is_file():
            yield path.relative_to(base).as_posix()


def _sha512(path: Path) -> str:
    digest = hashlib.sha512()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 16), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _zip_time(moment: datetime) -> tuple[int, int, int, int, int, int]:
    utc = moment.astimezone(UTC)
    stamp = (utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second)
    return max(stamp, _ZIP_EPOCH)


def _zip_tree(
    tree: Path, dest: Path, prefix: str, date_time: tuple[int, int, int, int, int, int]
) -> None:
    """Zip every folder and file under ``tree`` in sorted order, under ``prefix``."""
    entries = sorted(tree.rglob("*"), key=lambda p: p.relative_to(tree).as_posix())
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        if prefix:
            archive.writestr(_zip_info(prefix, date_time, is_dir=True), b"")
        for path in entries:
            name = prefix + path.relative_to(tree).as_posix()
            if path.is_dir():
                archive.writestr(_zip_info(name + "/", date_time, is_dir=True), b"")
            else:
                info = _zip_info(name, date_time, is_dir=False)
                archive.writestr(info, path.read_bytes())


def _zip_info(
    name: str, date_time: tuple[int, int, int, int, int, int], *, is_dir: bool
) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=date_time)
    info.compress_type = zipfile.ZIP_STORED if is_dir else zipfile.ZIP_DEFLATED
    info.external_attr = ((0o40755 if is_dir else 0o100644) << 16) | (0x10 if is_dir else 0)
    return info

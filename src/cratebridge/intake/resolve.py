"""Finds the workflow a request names and decides its language; never downloads.

The mainEntity is a folder in the crate holding a Workflow RO-Crate, a workflow
file in the crate itself, or a URL that the operator's workflow mirror holds as an
approved Workflow RO-Crate zip. The mirror is a folder with an ``index.toml`` or
``index.json`` mapping each workflow URL to a zip and its sha-256::

    [workflows."https://workflowhub.eu/workflows/289?version=1"]
    file = "289-v1.crate.zip"
    sha256 = "3b0c..."
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from cratebridge.errors import MetadataError, UnsafeCrate, UnsupportedCrate, UsageError
from cratebridge.intake.parse import CrateGraph, Entity, ids, load_graph, text
from cratebridge.intake.request import BUILTIN_LANGUAGES, Language, WorkflowRef
from cratebridge.intake.unpack import METADATA_NAME, IntakeLimits, open_crate, safe_relative_path

__all__ = ["MirrorEntry", "read_mirror_index", "resolve_workflow"]

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class MirrorEntry:
    """One approved workflow in the mirror: its zip (relative to the mirror) and sha-256."""

    url: str
    file: str
    sha256: str


def resolve_workflow(
    crate_dir: Path,
    graph: CrateGraph,
    main_id: str,
    *,
    workflow_mirror: Path | None = None,
    dest: Path | None = None,
    limits: IntakeLimits | None = None,
    languages: Sequence[Language] = BUILTIN_LANGUAGES,
) -> WorkflowRef:
    """Resolve the crate's mainEntity ``main_id`` to a workflow folder, entry file and language.

    URLs are looked up only in ``workflow_mirror``; the mirrored zip is checked
    against its sha-256 and unpacked (safely, within ``limits``) under ``dest``
    (default ``crate_dir.parent / "workflow-mirror"``). The workflow's language is
    one of ``languages`` (the registry's :meth:`~cratebridge.engines.Registry.languages`
    in a run), found by its ``programmingLanguage`` or else by its file name.

    Raises :class:`UnsupportedCrate` (URL not in the mirror, unknown language,
    no workflow file), :class:`UnsafeCrate` (path escapes, mirror checksum
    mismatch), :class:`MetadataError` (missing entities or files) and
    :class:`UsageError` for a broken mirror index.
    """
    limits = limits or IntakeLimits()
    entity = graph.require(main_id, "mainEntity")
    where = graph.where(main_id)
    if _SCHEME.match(main_id):
        target = dest or crate_dir.parent / "workflow-mirror"
        return _from_mirror(main_id, graph, workflow_mirror, target, limits, languages)
    if main_id.startswith(("#", "_:")):
        raise UnsupportedCrate(
            f"mainEntity {main_id!r} is neither a file or folder in the crate nor a URL; "
            "point mainEntity at the workflow",
            where=where,
        )
    rel = safe_relative_path(unquote(main_id), where=where)
    base = crate_dir.resolve()
    path = (base / str(rel)).resolve()
    if not path.is_relative_to(base):
        raise UnsafeCrate(f"mainEntity resolves to {path}, outside the crate", where=where)
    if path.is_dir():
        return _from_folder(main_id, path, entity, graph, limits, languages, source="crate")
    if path.is_file():
        language, how = _language(graph, entity, path, languages)
        return WorkflowRef(main_id, base, path, language, how, _name(entity), "crate",
                           *_identity(main_id, entity))
    raise MetadataError(
        f"mainEntity {str(rel)!r} is described but not in the crate; add the workflow",
        where=where,
    )


# -- a workflow folder ---------------------------------------------------------------------


def _from_folder(
    main_id: str,
    folder: Path,
    outer: Entity,
    outer_graph: CrateGraph,
    limits: IntakeLimits,
    languages: Sequence[Language],
    *,
    source: str,
) -> WorkflowRef:
    """A Workflow RO-Crate unpacked in ``folder``; without metadata, recognise its main file."""
    metadata = folder / METADATA_NAME
    if not metadata.is_file():
        main_file = _guess_main_file(folder, outer_graph.where(main_id), languages)
        language, how = _language(outer_graph, outer, main_file, languages)
        return WorkflowRef(main_id, folder, main_file, language, how, _name(outer), source,
                           *_identity(main_id, outer))
    label = f"{folder.name}/{METADATA_NAME}"
    graph = load_graph(metadata, max_bytes=limits.max_metadata_bytes, label=label)
    inner_ids = ids(graph.root.get("mainEntity"))
    if len(inner_ids) != 1:
        raise MetadataError(
            "the Workflow RO-Crate's root must name exactly one mainEntity (the workflow file)",
            where=graph.where(graph.root_id),
        )
    inner = graph.require(inner_ids[0], "mainEntity")
    where = graph.where(inner_ids[0])
    rel = safe_relative_path(unquote(inner_ids[0]), where=where)
    main_file = (folder / str(rel)).resolve()
    if not main_file.is_relative_to(folder.resolve()) or not main_file.is_file():
        raise MetadataError(
            f"workflow file {str(rel)!r} is described but not in {folder.name}/; add it",
            where=where,
        )
    language, how = _language(graph, inner, main_file, languages)
    name = _name(inner) or _name(graph.root) or _name(outer)
    return WorkflowRef(main_id, folder, main_file, language, how, name, source,
                       *_identity(main_id, inner, graph.root, outer))


def _guess_main_file(folder: Path, where: str, languages: Sequence[Language]) -> Path:
    candidates = sorted(p for p in folder.iterdir()
                        if p.is_file() and _language_of_file(p, languages))
    if len(candidates) == 1:
        return candidates[0]
    found = ", ".join(p.name for p in candidates) or "no workflow file"
    raise UnsupportedCrate(
        f"folder {folder.name}/ has no {METADATA_NAME} and cratebridge cannot tell which "
        f"file is the workflow (found: {found}); add a Workflow RO-Crate {METADATA_NAME} "
        "whose mainEntity is the workflow",
        where=where,
    )


def _name(entity: Entity) -> str | None:
    return text(entity, "name")


def _identity(main_id: str, *entities: Entity) -> tuple[str | None, str | None]:
    """The workflow's ``version`` and web ``url``: the first entity stating each wins;
    a workflow named by its URL (from the mirror) has that URL."""
    version = next((v for e in entities if (v := _version(e))), None)
    urls = [u for e in entities for key in ("url", "sameAs") for u in ids(e.get(key))]
    url = next((u for u in (*urls, main_id) if u.startswith(("https://", "http://"))), None)
    return version, url


def _version(entity: Entity) -> str | None:
    value = entity.get("version", entity.get("softwareVersion"))
    return str(value) if isinstance(value, str | int | float) and str(value) else None


# -- language ------------------------------------------------------------------------------


def _language(graph: CrateGraph, entity: Entity, main_file: Path,
              languages: Sequence[Language]) -> tuple[Language, str]:
    """The workflow language and a sentence saying how it was decided."""
    entity_id = str(entity["@id"])
    declared = ids(entity.get("programmingLanguage"))
    for language_id in declared:
        language = _language_of_entity(graph, language_id, languages)
        if language is not None:
            return language, (
                f"programmingLanguage {language_id!r} of {entity_id!r} in {graph.source}"
            )
    if declared:
        raise UnsupportedCrate(
            f"workflow language {', '.join(declared)} is none of the languages cratebridge "
            f"knows ({_known(languages)}); no installed engine can run it: install the "
            "plugin of its language or fix programmingLanguage",
            where=graph.where(entity_id),
        )
    language = _language_of_file(main_file, languages)
    if language is None:
        raise UnsupportedCrate(
            f"{entity_id!r} names no programmingLanguage and the file name "
            f"{main_file.name!r} is not one cratebridge recognises ({_file_hint(languages)}); "
            "add programmingLanguage to the workflow entity",
            where=graph.where(entity_id),
        )
    return language, (
        f"{graph.source} names no programmingLanguage for {entity_id!r}; "
        f"recognised as {language.short} from the file name {main_file.name!r}"
    )


def _language_of_entity(graph: CrateGraph, language_id: str,
                        languages: Sequence[Language]) -> Language | None:
    for language in languages:
        if language_id == language.value:
            return language
    words = [language_id]
    entity = graph.get(language_id) or {}
    for key in ("name", "alternateName", "identifier", "url"):
        words.extend(ids(entity.get(key)))
    return _language_of_words(" ".join(words), languages)


def _language_of_words(text: str, languages: Sequence[Language]) -> Language | None:
    """The language whose word found in ``text`` is longest (the most specific; the
    first in ``languages`` on a tie): "nextflow" wins over a "cwl" in the same text."""
    best: tuple[int, Language] | None = None
    for language in languages:
        word = language.word_in(text)
        if word is not None and (best is None or len(word) > best[0]):
            best = (len(word), language)
    return best[1] if best else None


def _language_of_file(path: Path, languages: Sequence[Language]) -> Language | None:
    return next((language for language in languages if language.recognises_file(path.name)),
                None)


def _known(languages: Sequence[Language]) -> str:
    return ", ".join(f"{language.name} ({language.value})" for language in languages)


def _file_hint(languages: Sequence[Language]) -> str:
    return "; ".join(f"{' or '.join(language.files)} for {language.name}"
                     for language in languages if language.files)


# -- the mirror ----------------------------------------------------------------------------


def read_mirror_index(mirror: Path) -> dict[str, MirrorEntry]:
    """The mirror's ``index.toml`` (or ``index.json``): workflow URL -> zip and sha-256.

    Raises :class:`UsageError` naming the index when it is missing or malformed.
    """
    toml_path, json_path = mirror / "index.toml", mirror / "index.json"
    index = toml_path if toml_path.is_file() else json_path
    try:
        if index is toml_path:
            document: object = tomllib.loads(index.read_text(encoding="utf-8"))
        else:
            document = json.loads(index.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UsageError(
            "the workflow mirror has no index.toml or index.json; create one mapping each "
            "approved workflow URL to its zip and sha256",
            where=str(mirror),
        ) from exc
    except (OSError, ValueError) as exc:
        raise UsageError(f"the mirror index cannot be read: {exc}", where=str(index)) from exc
    return _index_entries(document, index)


def _index_entries(document: object, index: Path) -> dict[str, MirrorEntry]:
    table = document.get("workflows", document) if isinstance(document, dict) else None
    if not isinstance(table, dict):
        raise UsageError("the mirror index must map workflow URLs to tables", where=str(index))
    entries: dict[str, MirrorEntry] = {}
    for url, item in table.items():
        if not (
            isinstance(item, dict)
            and isinstance(item.get("file"), str)
            and isinstance(item.get("sha256"), str)
        ):
            raise UsageError(
                f"mirror entry {url!r} needs 'file' and 'sha256' strings", where=str(index)
            )
        entries[str(url)] = MirrorEntry(str(url), item["file"], item["sha256"].lower())
    return entries


def _from_mirror(
    main_id: str,
    graph: CrateGraph,
    mirror: Path | None,
    dest: Path,
    limits: IntakeLimits,
    languages: Sequence[Language],
) -> WorkflowRef:
    entity, where = graph.require(main_id, "mainEntity"), graph.where(main_id)
    advice = (
        "nothing is downloaded in a TRE: the operator must add the approved Workflow "
        "RO-Crate zip to the workflow mirror and its index"
    )
    if mirror is None:
        raise UnsupportedCrate(
            f"workflow {main_id!r} is a URL and no workflow mirror is configured; {advice}",
            where=where,
        )
    index = read_mirror_index(mirror)
    wanted = [main_id, *ids(entity.get("distribution"))]
    entry = next((index[url] for url in wanted if url in index), None)
    if entry is None:
        raise UnsupportedCrate(
            f"workflow {main_id!r} is not in the workflow mirror {mirror}; {advice}",
            where=where,
        )
    archive = _mirror_zip(mirror, entry)
    target = dest / _folder_name(entry.file)
    if target.exists():
        shutil.rmtree(target)  # a previous resolution in this run folder
    opened = open_crate(archive, target, limits)
    return _from_folder(main_id, opened.root, entity, graph, limits, languages,
                        source=f"mirror:{entry.file}")


def _mirror_zip(mirror: Path, entry: MirrorEntry) -> Path:
    where = f"{mirror} entry {entry.url!r}"
    rel = safe_relative_path(entry.file, where=where)
    archive = mirror / str(rel)
    if not archive.is_file():
        raise UsageError(
            f"the mirror index names {entry.file!r}, which is not in the mirror", where=where
        )
    digest = hashlib.sha256()
    with open(archive, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != entry.sha256:
        raise UnsafeCrate(
            f"mirrored workflow {entry.file!r} has sha256 {digest.hexdigest()}, the index says "
            f"{entry.sha256}; the operator must re-fetch the approved zip or fix the index",
            where=where,
        )
    return archive


def _folder_name(file: str) -> str:
    stem = Path(file).name.removesuffix(".zip")
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem) or "workflow"

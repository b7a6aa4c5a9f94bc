"""TOOL as ``cratebridge-cwl-runner`` reads it: its files, its inputs, what it requires.

Three readers give one answer, the first that can. The plain one reads the
documents as YAML and nothing more (no schema-salad, whose import alone costs a
runner about 0.15 s): it takes only a tool with no ``secondaryFiles`` anywhere, whose
inputs are listed plainly, because then their names are all the runner needs of them
(the files a tool declares beside its inputs are what needs their types). The quick
one reads the document with cwl-utils' generated parser, which carries the CWL
schema as code; cwltool's loader parses the schema's YAML in every process (about a
second) and the run's own cwltool, in the room, does that again. The full one is
cwltool's loader, used whenever the quick one cannot read the document, so a
document cwltool refuses is refused in cwltool's own words. A document the plain
reader takes is still validated, by the run's cwltool in the room, before anything
runs. None evaluates a line of the document (JavaScript runs only in the run's room)
and none fetches anything from a network.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote, urldefrag, urljoin, urlsplit

from cratebridge.errors import CratebridgeError, UnsupportedCrate, UsageError

#: The CWL exit code for "this runner does not support a requirement of the tool".
EXIT_UNSUPPORTED = 33

_PROCESS_CLASSES = ("CommandLineTool", "ExpressionTool", "Workflow", "Operation")


class UnsupportedRequirement(UnsupportedCrate):
    """The tool needs something cratebridge never gives a step (exit 33, as CWL says)."""

    exit_code = EXIT_UNSUPPORTED


@dataclass(frozen=True)
class LoadedTool:
    """TOOL as cwltool reads it: its main file, the files it references, its inputs.

    ``parameters`` are its input parameters as cwltool loads them (full ids, types,
    ``secondaryFiles`` as ``{pattern, required}``, defaults with absolute
    locations); ``schema_defs`` its named types by full name. Both are empty when
    the plain reader read TOOL: with no ``secondaryFiles`` declared, nothing the
    runner does depends on them.
    """

    main: Path
    fragment: str
    documents: tuple[Path, ...]
    inputs: tuple[str, ...]
    namespaces: dict[str, str]
    parameters: tuple[dict[str, Any], ...] = ()
    schema_defs: dict[str, Any] = field(default_factory=dict)


def load_tool(tool: str) -> LoadedTool:
    """Read TOOL offline; list every file it references.

    Raises :class:`UnsupportedRequirement` for what cratebridge cannot give a step
    (a network, an image built or loaded at run time) and :class:`UnsupportedCrate`
    for a document that does not load.
    """
    uri = _tool_uri(tool)
    try:
        loaded = _read_plainly(uri, tool)
    except CratebridgeError:
        raise
    except Exception:  # not plain YAML in local files: the parser reads it
        loaded = None
    if loaded is not None:
        return loaded
    try:
        return _read_quickly(uri, tool)
    except CratebridgeError:
        raise
    except Exception:  # anything the generated parser does not take: cwltool decides
        return _read_with_cwltool(uri, tool)


# -- the documents -------------------------------------------------------------------------


class _PlainDocuments:
    """The YAML documents read so far, by URI, each parsed once: local files only,
    read as plain YAML (any other URL raises, and a reader that cannot take it
    leaves the document to the next)."""

    def __init__(self) -> None:
        self.read: dict[str, Any] = {}

    def __call__(self, uri: str) -> Any:
        if uri not in self.read:
            self.read[uri] = self._load(uri)
        return self.read[uri]

    def _load(self, uri: str) -> Any:
        split = urlsplit(uri)
        if split.scheme != "file" or split.netloc not in ("", "localhost"):
            raise LookupError(f"not a local file: {uri}")
        return plain_yaml(local_path(uri).read_text(encoding="utf-8"))


class _Documents(_PlainDocuments):
    """The documents as cwltool's loader reads them (schema-salad's fetcher and YAML)."""

    def __init__(self) -> None:
        from cratebridge_cwl.offline import OfflineFetcher

        super().__init__()
        self.fetcher = OfflineFetcher({}, None)

    def _load(self, uri: str) -> Any:
        from schema_salad.utils import yaml_no_ts

        return yaml_no_ts().load(self.fetcher.fetch_text(uri))


def plain_yaml(text: str) -> Any:
    """``text`` parsed as YAML 1.2 into plain dicts, lists and scalars (ruamel's safe loader)."""
    from ruamel.yaml import YAML

    return YAML(typ="safe").load(text)


# -- the plain reader ----------------------------------------------------------------------

_VERSIONS = ("v1.0", "v1.1", "v1.2")


def _read_plainly(uri: str, where: str) -> LoadedTool | None:
    """TOOL from its YAML alone, or None when it needs a reader that knows CWL's schema:
    ``secondaryFiles`` declared anywhere, inputs not listed plainly, ``$mixin``, a
    process or version the plain reading does not recognise."""
    documents = _PlainDocuments()
    main_uri, fragment = urldefrag(uri)
    raw = documents(main_uri)
    if not isinstance(raw, Mapping) or raw.get("cwlVersion") not in _VERSIONS:
        return None
    process = _graph_member(raw, _graph_choice(raw, fragment))
    if not isinstance(process, Mapping) or process.get("class") not in _PROCESS_CLASSES \
            or "$mixin" in process:
        return None
    inputs = _plain_input_names(process.get("inputs"))
    if inputs is None:
        return None
    namespaces = raw.get("$namespaces") or {}
    if not isinstance(namespaces, Mapping):
        return None
    _check_supported_raw(process, main_uri, documents, where)
    referenced = _referenced(main_uri, documents)
    if any(_mentions(document, "secondaryFiles") for document in documents.read.values()):
        return None
    return LoadedTool(
        main=local_path(main_uri), fragment=fragment or _own_id(raw),
        documents=tuple(sorted(referenced)), inputs=inputs,
        namespaces={str(k): str(v) for k, v in namespaces.items()})


def _plain_input_names(inputs: Any) -> tuple[str, ...] | None:
    """The names of inputs written as a list of ``{id: ...}`` or a map by name; None
    for anything else (an ``$import``, a missing ``id``)."""
    if isinstance(inputs, Mapping):
        if any(not isinstance(k, str) or k.startswith("$") for k in inputs) or any(
                isinstance(v, Mapping) and ("$import" in v or "$include" in v)
                for v in inputs.values()):
            return None
        return tuple(short_name(k) for k in inputs)
    if isinstance(inputs, list):
        if not all(isinstance(i, Mapping) and isinstance(i.get("id"), str) for i in inputs):
            return None
        return tuple(short_name(i["id"]) for i in inputs)
    return None


def _mentions(node: Any, key: str) -> bool:
    """Whether ``key`` is a key anywhere in a parsed document."""
    if isinstance(node, list):
        return any(_mentions(item, key) for item in node)
    if isinstance(node, Mapping):
        return key in node or any(_mentions(value, key) for value in node.values())
    return False


# -- the quick reader ----------------------------------------------------------------------


def _read_quickly(uri: str, where: str) -> LoadedTool:
    from cwl_utils.parser import load_document_by_yaml
    from schema_salad.runtime import LoadingOptions

    documents = _Documents()
    main_uri, fragment = urldefrag(uri)
    raw = documents(main_uri)
    chosen = _graph_choice(raw, fragment)
    options = LoadingOptions(fetcher=documents.fetcher, fileuri=main_uri)
    process = load_document_by_yaml(copy.deepcopy(raw), main_uri, options, chosen or None)
    _check_supported_raw(_graph_member(raw, chosen), main_uri, documents, where)
    parameters = tuple(plain(p.save(top=False, relative_uris=False)) for p in process.inputs)
    schema_defs: dict[str, Any] = {}
    for requirement in process.requirements or []:
        if getattr(requirement, "class_", "") == "SchemaDefRequirement":
            for kind in requirement.types:
                saved = plain(kind.save(top=False, relative_uris=False))
                schema_defs[str(saved["name"])] = saved
    return LoadedTool(
        main=local_path(main_uri), fragment=fragment or _own_id(raw),
        documents=tuple(sorted(_referenced(main_uri, documents))),
        inputs=tuple(short_name(str(p["id"])) for p in parameters),
        namespaces={str(k): str(v) for k, v in (raw.get("$namespaces") or {}).items()},
        parameters=parameters, schema_defs=schema_defs)


def _graph_choice(raw: Any, fragment: str) -> str:
    """The process cwltool runs from a ``$graph`` named with no fragment (``#main``, or
    the only one), for the parser; the fragment as given otherwise."""
    if fragment or not isinstance(raw, Mapping) or "$graph" not in raw:
        return fragment
    ids = [str(p.get("id", "")).lstrip("#") for p in raw["$graph"] if isinstance(p, Mapping)]
    if "main" in ids or len(ids) != 1:
        return "main"  # several and no #main: the parser's error sends it to cwltool
    return ids[0]


def _own_id(raw: Any) -> str:
    """The fragment cwltool gives a document of one process named by its ``id``."""
    own = raw.get("id") if isinstance(raw, Mapping) and "$graph" not in raw else None
    name = own.lstrip("#") if isinstance(own, str) else ""
    return name if name and ":" not in name and "/" not in name else ""


def _graph_member(raw: Any, fragment: str) -> Any:
    if not isinstance(raw, Mapping) or "$graph" not in raw:
        return raw
    for process in raw["$graph"]:
        if isinstance(process, Mapping) and str(process.get("id", "")).lstrip("#") == fragment:
            return process
    raise LookupError(fragment)


def _entries(value: Any) -> Iterator[Any]:
    """A CWL list written as a list, or as a map from the key field (``{Class: {...}}``)."""
    if isinstance(value, list):
        yield from value
    elif isinstance(value, Mapping):
        for key, body in value.items():
            yield {"class": key, **body} if isinstance(body, Mapping) else {"class": key}


def _check_supported_raw(process: Any, base: str, documents: _PlainDocuments, where: str,
                         seen: frozenset[int] = frozenset()) -> None:
    """Refuse, with exit 33, what the sandbox never allows a step: in this process, its
    steps and every process they run."""
    if not isinstance(process, Mapping) or id(process) in seen:
        return
    seen = seen | {id(process)}
    for requirement in _entries(process.get("requirements")):
        if isinstance(requirement, Mapping) and "$import" in requirement:
            requirement = documents(urljoin(base, str(requirement["$import"])))
        _refuse(requirement, str(process.get("id") or where))
    for step in _entries(process.get("steps")):
        if not isinstance(step, Mapping):
            continue
        for requirement in _entries(step.get("requirements")):
            _refuse(requirement, str(step.get("id") or where))
        run = step.get("run")
        if isinstance(run, Mapping) and "$import" in run:
            run = str(run["$import"])
        if isinstance(run, str):
            target, fragment = urldefrag(urljoin(base, run))
            _check_supported_raw(_graph_member(documents(target), fragment), target,
                                 documents, where, seen)
        else:
            _check_supported_raw(run, base, documents, where, seen)


def _refuse(requirement: Any, where: str) -> None:
    if not isinstance(requirement, Mapping):
        return
    cls = str(requirement.get("class", "")).split("#")[-1]
    if cls == "DockerRequirement":
        for key in ("dockerLoad", "dockerFile", "dockerImport"):
            if key in requirement:
                raise UnsupportedRequirement(
                    f"DockerRequirement {key}: cratebridge runs only images already "
                    "present and approved, never built or loaded during a run", where=where)
    if cls == "NetworkAccess" and requirement.get("networkAccess") is True:
        raise UnsupportedRequirement("NetworkAccess: every cratebridge step runs with no network",
                                     where=where)


def _referenced(main_uri: str, documents: _PlainDocuments) -> set[Path]:
    """Every local file TOOL's documents refer to, as cwltool lists them: the documents
    read through ``run``, ``$import`` and ``$mixin`` (and what they refer to), and the
    files of ``$include``, ``$schemas`` and File and Directory literals. Only what exists."""
    found: set[str] = set()
    queue = [main_uri]
    while queue:
        document = queue.pop()
        if document in found:
            continue
        found.add(document)
        for is_document, reference in _links(documents(document)):
            target = urldefrag(urljoin(document, reference))[0]
            if urlsplit(target).scheme != "file":
                continue
            if is_document:
                queue.append(target)
            else:
                found.add(target)
    paths = (local_path(u) for u in found)
    return {Path(os.path.abspath(p)) for p in paths if p.exists()} - {local_path(main_uri)}


def _links(node: Any) -> Iterator[tuple[bool, str]]:
    """``(is a document, reference)`` for every reference in a parsed document."""
    if isinstance(node, list):
        for item in node:
            yield from _links(item)
        return
    if not isinstance(node, Mapping):
        return
    for key in ("$import", "$mixin", "run"):
        if isinstance(node.get(key), str):
            yield True, str(node[key])
    if isinstance(node.get("$include"), str):
        yield False, str(node["$include"])
    schemas = node.get("$schemas")
    for schema in schemas if isinstance(schemas, list) else []:
        if isinstance(schema, str):
            yield False, schema
    if node.get("class") in ("File", "Directory"):
        where = node.get("location", node.get("path"))
        if isinstance(where, str) and where and not where.startswith("_:") \
                and "$(" not in where and "${" not in where:
            yield False, where
    for value in node.values():
        if isinstance(value, (list, Mapping)):
            yield from _links(value)


# -- the full reader: cwltool's loader -----------------------------------------------------


def _read_with_cwltool(uri: str, where: str) -> LoadedTool:
    from cwltool.context import LoadingContext
    from cwltool.errors import UnsupportedRequirement as CwltoolUnsupported
    from cwltool.load_tool import fetch_document, make_tool, resolve_and_validate_document
    from cwltool.main import find_deps

    from cratebridge_cwl.offline import OfflineFetcher

    logging.getLogger("cwltool").setLevel(logging.ERROR)
    logging.getLogger("salad").setLevel(logging.ERROR)

    def fresh() -> LoadingContext:
        return LoadingContext({"fetcher_constructor": OfflineFetcher,
                               "disable_js_validation": True})

    try:
        loading, document, uri = fetch_document(uri, fresh())
        loading, uri = resolve_and_validate_document(loading, document, uri)
        process = make_tool(uri, loading)
        # dependencies are scanned on a loader of their own: scanning fills its cache;
        # no folders made up to hold files in subfolders (they would be copied whole)
        scan, raw, _ = fetch_document(urldefrag(uri)[0], fresh())
        assert scan.loader is not None
        deps = find_deps(raw, scan.loader, urldefrag(uri)[0], nestdirs=False)
    except CwltoolUnsupported as exc:
        raise UnsupportedRequirement(str(exc), where=where) from None
    except CratebridgeError:
        raise
    except Exception as exc:  # schema-salad and cwltool raise many kinds for a bad document
        raise UnsupportedCrate(f"the CWL document does not load: {type(exc).__name__}: {exc}",
                               where=where) from None
    for proc in _processes(process):
        for requirement in proc.requirements:
            _refuse(requirement, str(proc.tool.get("id", where)))
    main, fragment = urldefrag(uri)
    documents = sorted({p for p in paths_in(deps) if p.exists()} - {local_path(main)})
    parameters = tuple(plain(i) for i in process.tool["inputs"])
    requirement, _ = process.get_requirement("SchemaDefRequirement")
    types: list[Any] = list(cast(Any, requirement or {}).get("types") or [])
    return LoadedTool(
        main=local_path(main), fragment=fragment, documents=tuple(documents),
        inputs=tuple(short_name(i["id"]) for i in parameters),
        namespaces=dict(cast(Mapping[str, str], process.metadata.get("$namespaces") or {})),
        parameters=parameters,
        schema_defs={str(t["name"]): plain(t) for t in types
                     if isinstance(t, Mapping) and "name" in t},
    )


def _processes(process: Any) -> Iterator[Any]:
    yield process
    for step in getattr(process, "steps", []) or []:
        yield from _processes(step.embedded_tool)


# -- shared --------------------------------------------------------------------------------


def _tool_uri(tool: str) -> str:
    """TOOL as a file URI, ``..`` resolved as cwltool resolves it (``os.path.abspath``).

    So ``../tools/x.cwl`` names the file cwltool would run, and no path in the
    request crate holds ``..`` (the crate refuses one that does).
    """
    path, fragment = [*tool.split("#", 1), ""][:2]
    if urlsplit(path).scheme not in ("", "file"):
        raise UsageError("cratebridge runs offline: give TOOL as a local file", where=tool)
    local = Path(os.path.abspath(local_path(path) if path.startswith("file:") else path))
    if not local.is_file():
        raise UsageError("no such CWL file", where=tool)
    return local.as_uri() + (f"#{fragment}" if fragment else "")


def short_name(identifier: str) -> str:
    return identifier.split("#")[-1].split("/")[-1]


def local_path(uri: str) -> Path:
    return Path(unquote(urlsplit(uri).path)) if uri.startswith("file:") else Path(uri)


def paths_in(value: Any) -> Iterator[Path]:
    """The local paths of every File and Directory (and their secondary files) in ``value``."""
    if isinstance(value, list):
        for item in value:
            yield from paths_in(item)
    elif isinstance(value, dict):
        location = value.get("location")
        if value.get("class") in ("File", "Directory") and isinstance(location, str) \
                and location.startswith("file:"):
            yield local_path(urldefrag(location)[0])
        for key in ("secondaryFiles", "listing"):
            yield from paths_in(value.get(key))


def plain(value: Any) -> Any:
    """ruamel's maps and sequences as plain dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value

"""The TOOL and JOB of ``cratebridge-cwl-runner``, loaded as cwltool would.

Also the secondary files the tool declares, resolved as CWL defines them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote, urldefrag, urlsplit

from cratebridge.errors import CratebridgeError, UnsupportedCrate, UsageError
from cratebridge_cwl.workflow import JOB_REQUIREMENTS

#: The CWL exit code for "this runner does not support a requirement of the tool".
EXIT_UNSUPPORTED = 33
#: Where the result crate is kept inside ``--outdir``.
RESULT_FOLDER = ".cratebridge-result"

CWL_LANGUAGE = "https://w3id.org/workflowhub/workflow-ro-crate#cwl"
WORKFLOW_RO_CRATE = "https://w3id.org/workflowhub/workflow-ro-crate/1.0"
RO_CRATE_1_2 = "https://w3id.org/ro/crate/1.2"
POTENTIAL = "http://schema.org/PotentialActionStatus"
_REQUIREMENTS_IRI = "https://w3id.org/cwl/cwl#requirements"


class UnsupportedRequirement(UnsupportedCrate):
    """The tool needs something cratebridge never gives a step (exit 33, as CWL says)."""

    exit_code = EXIT_UNSUPPORTED


# -- the tool ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedTool:
    """TOOL as cwltool reads it: its main file, the files it references, its inputs.

    ``parameters`` are its input parameters as cwltool loaded them (types,
    ``secondaryFiles``, defaults); ``schema_defs`` its named types.
    """

    main: Path
    fragment: str
    documents: tuple[Path, ...]
    inputs: tuple[str, ...]
    namespaces: dict[str, str]
    parameters: tuple[dict[str, Any], ...] = ()
    schema_defs: dict[str, Any] = field(default_factory=dict)


def load_tool(tool: str) -> LoadedTool:
    """Load TOOL offline with cwltool; list every file it references.

    Raises :class:`UnsupportedRequirement` for what cratebridge cannot give a step
    (a network, an image built or loaded at run time) and :class:`UnsupportedCrate`
    for a document that does not load.
    """
    from cwltool.context import LoadingContext
    from cwltool.errors import UnsupportedRequirement as CwltoolUnsupported
    from cwltool.load_tool import fetch_document, make_tool, resolve_and_validate_document
    from cwltool.main import find_deps

    from cratebridge_cwl.offline import OfflineFetcher

    logging.getLogger("cwltool").setLevel(logging.ERROR)
    logging.getLogger("salad").setLevel(logging.ERROR)
    uri = _tool_uri(tool)
    def fresh() -> LoadingContext:
        return LoadingContext({"fetcher_constructor": OfflineFetcher,
                               "disable_js_validation": True})

    try:
        loading, document, uri = fetch_document(uri, fresh())
        loading, uri = resolve_and_validate_document(loading, document, uri)
        process = make_tool(uri, loading)
        # dependencies are scanned on a loader of their own: scanning fills its cache
        scan, raw, _ = fetch_document(urldefrag(uri)[0], fresh())
        assert scan.loader is not None
        deps = find_deps(raw, scan.loader, urldefrag(uri)[0])
    except CwltoolUnsupported as exc:
        raise UnsupportedRequirement(str(exc), where=tool) from None
    except CratebridgeError:
        raise
    except Exception as exc:  # schema-salad and cwltool raise many kinds for a bad document
        raise UnsupportedCrate(f"the CWL document does not load: {type(exc).__name__}: {exc}",
                               where=tool) from None
    _check_supported(process, tool)
    main, fragment = urldefrag(uri)
    documents = sorted({p for p in paths_in(deps) if p.exists()})
    parameters = tuple(_plain(i) for i in process.tool["inputs"])
    return LoadedTool(
        main=local_path(main), fragment=fragment, documents=tuple(documents),
        inputs=tuple(short_name(i["id"]) for i in parameters),
        namespaces=dict(cast(Mapping[str, str], process.metadata.get("$namespaces") or {})),
        parameters=parameters,
        schema_defs=_schema_defs(process),
    )


def _schema_defs(process: Any) -> dict[str, Any]:
    """The process's named types (``SchemaDefRequirement``) by their full name, as loaded."""
    requirement, _ = process.get_requirement("SchemaDefRequirement")
    types = (requirement or {}).get("types") or []
    return {str(t["name"]): _plain(t) for t in types if isinstance(t, Mapping) and "name" in t}


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


def _processes(process: Any) -> Iterator[Any]:
    yield process
    for step in getattr(process, "steps", []) or []:
        yield from _processes(step.embedded_tool)


def _check_supported(process: Any, where: str) -> None:
    """Refuse, with exit 33, what the sandbox never allows a step."""
    for proc in _processes(process):
        for req in [*proc.requirements, *proc.hints]:
            cls = str(req.get("class", "")).split("#")[-1]
            in_requirements = req in proc.requirements
            if cls == "DockerRequirement" and in_requirements:
                for key in ("dockerLoad", "dockerFile", "dockerImport"):
                    if key in req:
                        raise UnsupportedRequirement(
                            f"DockerRequirement {key}: cratebridge runs only images already "
                            "present and approved, never built or loaded during a run",
                            where=str(proc.tool.get("id", where)))
            if cls == "NetworkAccess" and in_requirements and req.get("networkAccess") is True:
                raise UnsupportedRequirement(
                    "NetworkAccess: every cratebridge step runs with no network",
                    where=str(proc.tool.get("id", where)))


# -- the job -------------------------------------------------------------------------------


def load_job(job: str | None, tool: LoadedTool) -> dict[str, Any]:
    """JOB as cwltool reads it, limited to the tool's inputs; file locations are file URIs."""
    if job is None:
        return {}
    from cwltool.main import load_job_order
    from schema_salad.ref_resolver import Loader

    from cratebridge_cwl.offline import OfflineFetcher

    if not Path(job).is_file():
        raise UsageError("no such job file", where=job)
    args = argparse.Namespace(job_order=[os.path.abspath(job)], basedir=None)
    try:
        loaded, _, _ = load_job_order(args, sys.stdin, OfflineFetcher, [],
                                      tool.main.as_uri())
    except Exception as exc:  # a job that does not parse
        raise UsageError(f"the job does not load: {type(exc).__name__}: {exc}",
                         where=job) from None
    job_order: dict[str, Any] = dict(cast(Mapping[str, Any], loaded or {}))
    namespaces = {**dict(job_order.get("$namespaces") or {}), **tool.namespaces}
    expand = Loader(namespaces).expand_url
    values = {k: _plain(v) for k, v in job_order.items() if k in tool.inputs}
    if _REQUIREMENTS_IRI in job_order:  # cwltool applies these to the tool; so do we
        values[JOB_REQUIREMENTS] = _plain(job_order[_REQUIREMENTS_IRI])
    for value in values.values():
        _normalise(value, lambda fmt: expand(fmt, ""))
    return values


def _plain(value: Any) -> Any:
    """ruamel's maps and sequences as plain dicts and lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _normalise(value: Any, expand: Callable[[str], str]) -> None:
    """``path`` becomes ``location`` and formats become IRIs, as cwltool does on load."""
    for item in file_objects(value):
        if "location" not in item and "path" in item:
            item["location"] = _path_uri(item.pop("path"))
        if isinstance(item.get("format"), str):
            item["format"] = expand(item["format"])


def _path_uri(path: str) -> str:
    """A CWL ``path`` is a file name, taken literally: ``#``, ``%``, spaces and
    non-ASCII characters are escaped in its URI (the loader joined it to the job's
    folder without escaping them)."""
    raw = path.removeprefix("file://")
    return Path(raw).as_uri() if os.path.isabs(raw) else path


def file_objects(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, list):
        for item in value:
            yield from file_objects(item)
    elif isinstance(value, dict):
        if value.get("class") in ("File", "Directory"):
            yield value
        for item in value.values():
            yield from file_objects(item)


# -- secondary files -----------------------------------------------------------------------


@dataclass(frozen=True)
class SecondaryFiles:
    """The secondary files TOOL declares for the files of a job, found as cwltool finds them.

    ``paths``: the existing files and folders, to be copied beside their
    primaries; ``not_evaluated``: why a pattern was left to the engine.
    """

    paths: tuple[Path, ...]
    not_evaluated: tuple[str, ...]


def declared_secondary_files(tool: LoadedTool, values: Mapping[str, Any]) -> SecondaryFiles:
    """The ``secondaryFiles`` TOOL declares for the Files in ``values`` (name -> value).

    As cwltool finds them for the inputs of the process it runs: each pattern
    of the parameter (and of the record fields and array items it holds) is
    applied to the primary's ``basename`` (appended; each leading ``^``
    strips one extension first), beside the primary, and only what exists is
    taken: a ``?`` (``required: false``) pattern with nothing to find adds
    nothing, and a required one missing is for the engine to report. A
    parameter reference (``$(self.nameroot).idx``) is evaluated; JavaScript
    is never run outside the run's room, so such a pattern is left to the
    engine and listed in ``not_evaluated``.
    """
    found: list[Path] = []
    skipped: list[str] = []
    context = _described(dict(values))
    for param in tool.parameters:
        name = short_name(str(param.get("id", "")))
        if name not in values:
            continue
        for file_value, patterns in _files_with_patterns(
                param.get("type"), values[name], _patterns(param), tool.schema_defs):
            location = file_value.get("location")
            if not (isinstance(location, str) and location.startswith("file:")):
                continue
            for pattern in patterns:
                text = pattern.get("pattern") if isinstance(pattern, dict) else pattern
                if not isinstance(text, str):
                    continue
                try:
                    found += _pattern_files(text, file_value, local_path(location), context)
                except Exception:  # JavaScript, or a reference that does not evaluate
                    skipped.append(f"input {name!r}: secondaryFiles {text.strip()!r} is an "
                                   "expression evaluated only in the run; give its files in "
                                   "the job's secondaryFiles if it needs them")
    paths = [p for p in dict.fromkeys(Path(os.path.normpath(f)) for f in found) if p.exists()]
    return SecondaryFiles(tuple(paths), tuple(dict.fromkeys(skipped)))


def _pattern_files(text: str, file_value: Mapping[str, Any], primary: Path,
                   inputs: Any) -> list[Path]:
    """Where one pattern puts the secondary files of ``primary`` (they may not exist)."""
    from cwl_utils.expression import interpolate
    from cwltool.builder import substitute

    basename = str(file_value.get("basename") or primary.name)
    if "$(" not in text and "${" not in text:
        return [primary.parent / substitute(basename, text)]
    # parameter references only (fullJS off): JavaScript raises
    result = interpolate(text, {"inputs": inputs, "self": _described(dict(file_value)),
                                "runtime": {}}, fullJS=False)
    out: list[Path] = []
    for item in result if isinstance(result, list) else [result]:
        if isinstance(item, str) and item:
            out.append(primary.parent / item)
        elif isinstance(item, dict):
            where = item.get("location") or item.get("path")
            if isinstance(where, str) and where:
                out.append(local_path(where) if where.startswith(("file:", "/"))
                           else primary.parent / where)
    return out


def _patterns(schema: Any) -> tuple[Any, ...]:
    if not isinstance(schema, dict):
        return ()
    declared = schema.get("secondaryFiles") or ()
    return tuple(declared if isinstance(declared, list) else [declared])


_Patterned = tuple[dict[str, Any], tuple[Any, ...]]


def _files_with_patterns(kind: Any, value: Any, patterns: tuple[Any, ...],
                         defs: Mapping[str, Any]) -> Iterator[_Patterned]:
    """Each File in ``value`` with the patterns that apply to it, following the type."""
    if isinstance(kind, str) and kind in defs:
        kind = defs[kind]
    if isinstance(kind, list):  # a union: only the branch that fits the value yields
        for option in kind:
            yield from _files_with_patterns(option, value, patterns, defs)
    elif isinstance(kind, dict):
        own = (*patterns, *_patterns(kind))
        if kind.get("type") == "array":
            for item in value if isinstance(value, list) else []:
                yield from _files_with_patterns(kind.get("items"), item, own, defs)
        elif kind.get("type") == "record":
            if isinstance(value, dict) and value.get("class") not in ("File", "Directory"):
                for field_schema in kind.get("fields") or []:
                    field_name = short_name(str(field_schema.get("name", "")))
                    if field_name in value:
                        yield from _files_with_patterns(field_schema.get("type"),
                                                        value[field_name],
                                                        _patterns(field_schema), defs)
        else:
            yield from _files_with_patterns(kind.get("type"), value, own, defs)
    elif isinstance(kind, str) and kind.split("#")[-1] == "File" and patterns \
            and isinstance(value, dict) and value.get("class") == "File":
        yield value, patterns


def _described(value: Any) -> Any:
    """Files and folders with ``path``, ``basename``, ``nameroot``, ``nameext``, as an
    expression sees them (for ``$(self.nameroot)``, ``$(inputs.x.basename)``)."""
    if isinstance(value, list):
        return [_described(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: _described(v) for k, v in value.items()}
    location = value.get("location")
    if value.get("class") in ("File", "Directory") and isinstance(location, str) \
            and location.startswith("file:"):
        path = local_path(location)
        basename = str(value.get("basename") or path.name)
        root, ext = os.path.splitext(basename)
        out = {"path": str(path), "basename": basename, "nameroot": root, "nameext": ext,
               "dirname": str(path.parent), **out}
    return out

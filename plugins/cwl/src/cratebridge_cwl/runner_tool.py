"""The JOB of ``cratebridge-cwl-runner``, loaded as cwltool would, and the secondary
files TOOL declares for its files, resolved as CWL defines them.

TOOL itself is read in :mod:`cratebridge_cwl.runner_read`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from cratebridge.errors import UsageError
from cratebridge_cwl.runner_read import LoadedTool, local_path, plain, plain_yaml, short_name
from cratebridge_cwl.workflow import JOB_REQUIREMENTS

#: Where the result crate is kept inside ``--outdir``.
RESULT_FOLDER = ".cratebridge-result"

CWL_LANGUAGE = "https://w3id.org/workflowhub/workflow-ro-crate#cwl"
WORKFLOW_RO_CRATE = "https://w3id.org/workflowhub/workflow-ro-crate/1.0"
RO_CRATE_1_2 = "https://w3id.org/ro/crate/1.2"
POTENTIAL = "http://schema.org/PotentialActionStatus"
_REQUIREMENTS_IRI = "https://w3id.org/cwl/cwl#requirements"
#: How cwltool reads an input object (its ``jobloaderctx``): ``path`` and ``location``
#: are links, resolved against the job's folder; ``cwl:`` and ``cwltool:`` are prefixes.
_JOB_CONTEXT: dict[str, Any] = {
    "cwl": "https://w3id.org/cwl/cwl#", "cwltool": "http://commonwl.org/cwltool#",
    "path": {"@type": "@id"}, "location": {"@type": "@id"}, "__id": "@id"}


# -- the job -------------------------------------------------------------------------------


def load_job(job: str | None, tool: LoadedTool) -> dict[str, Any]:
    """JOB as cwltool reads it, limited to the tool's inputs; file locations are file URIs."""
    if job is None:
        return {}
    if not Path(job).is_file():
        raise UsageError("no such job file", where=job)
    values = _read_job_plainly(Path(job), tool)
    return values if values is not None else _read_job_with_loader(job, tool)


def _read_job_with_loader(job: str, tool: LoadedTool) -> dict[str, Any]:
    """JOB read by schema-salad's loader, with cwltool's job context."""
    from schema_salad.ref_resolver import Loader

    from cratebridge_cwl.offline import OfflineFetcher

    reader = Loader(dict(_JOB_CONTEXT), fetcher_constructor=OfflineFetcher)
    try:
        loaded, _ = reader.resolve_ref(os.path.abspath(job), checklinks=False)
    except StopIteration:  # what the YAML reader raises for an empty file
        loaded = None
    except Exception as exc:  # a job that does not parse
        raise UsageError(f"the job does not load: {type(exc).__name__}: {exc}",
                         where=job) from None
    if not isinstance(loaded, Mapping):
        raise UsageError("the job is not an input object: give a map of input names to "
                         "values ('{}' when the tool takes no inputs)", where=job)
    job_order: dict[str, Any] = dict(loaded)
    namespaces = {**dict(job_order.get("$namespaces") or {}), **tool.namespaces}
    expand = Loader(namespaces).expand_url
    values = {k: plain(v) for k, v in job_order.items() if k in tool.inputs}
    if _REQUIREMENTS_IRI in job_order:  # cwltool applies these to the tool; so do we
        values[JOB_REQUIREMENTS] = plain(job_order[_REQUIREMENTS_IRI])
    for value in values.values():
        _normalise(value, lambda fmt: expand(fmt, ""))
    return values


#: A ``location`` or ``path`` the plain reader resolves itself: a relative or absolute
#: path (or ``file:`` URI) of characters a URI keeps as they are.
_PLAIN_LINK = re.compile(r"(?:file://)?/?[A-Za-z0-9._+=,@~-][A-Za-z0-9._/+=,@~-]*")


#: Keys the job loader treats as more than data: formats (expanded by prefix), the
#: context's own terms.
_NOT_PLAIN_KEYS = frozenset({"format", "__id", *(k for k in _JOB_CONTEXT if ":" not in k)}
                            - {"location", "path"})


def _read_job_plainly(job: Path, tool: LoadedTool) -> dict[str, Any] | None:
    """JOB read as YAML alone, when it is plain data; None when schema-salad must read it.

    Plain: a map of JSON values with no ``$`` directive, no prefixed (``cwl:``) key,
    no ``format`` nor other term of the loader's context (:data:`_NOT_PLAIN_KEYS`),
    and every ``location`` and ``path`` a path a URI writes unescaped
    (:data:`_PLAIN_LINK`). Those are resolved against the job's folder, as cwltool's
    job loader resolves them; nothing else in such a job changes on loading.
    """
    try:
        loaded = plain_yaml(job.read_text(encoding="utf-8"))
    except Exception:  # the loader reads it, or says why not
        return None
    if not isinstance(loaded, dict) or not _plain_job(loaded):
        return None
    base = Path(os.path.abspath(job)).as_uri()
    values = {k: _joined(v, base) for k, v in loaded.items() if k in tool.inputs}
    for value in values.values():
        _normalise(value, None)
    return values


def _plain_job(value: Any) -> bool:
    if isinstance(value, list):
        return all(_plain_job(v) for v in value)
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or key.startswith("$") or ":" in key \
                    or key in _NOT_PLAIN_KEYS:
                return False
            if key in ("location", "path") and not (
                    isinstance(item, str) and _PLAIN_LINK.fullmatch(item)):
                return False
            if not _plain_job(item):
                return False
        return True
    return value is None or isinstance(value, (str, int, float, bool))


def _joined(value: Any, base: str) -> Any:
    """``value`` with every ``location`` and ``path`` resolved against ``base``."""
    if isinstance(value, list):
        return [_joined(v, base) for v in value]
    if isinstance(value, dict):
        return {k: urljoin(base, v) if k in ("location", "path") else _joined(v, base)
                for k, v in value.items()}
    return value


def _normalise(value: Any, expand: Callable[[str], str] | None) -> None:
    """``path`` becomes ``location`` and formats become IRIs (with ``expand``), as
    cwltool does on load."""
    for item in file_objects(value):
        if "location" not in item and "path" in item:
            item["location"] = _path_uri(item.pop("path"))
        if expand is not None and isinstance(item.get("format"), str):
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

    basename = str(file_value.get("basename") or primary.name)
    if "$(" not in text and "${" not in text:
        return [primary.parent / _substitute(basename, text)]
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


def _substitute(name: str, pattern: str) -> str:
    """A secondary file's name by CWL's rule: each leading ``^`` strips one extension
    (the last ``.`` and what follows) from ``name``; the rest of the pattern is appended."""
    while pattern.startswith("^"):
        stem, dot, _ = name.rpartition(".")
        name = stem if dot else name
        pattern = pattern[1:]
    return name + pattern


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

"""Reading a CWL workflow offline: its inputs, steps and images, and binding a request to it."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from cratebridge.errors import MetadataError, UnsafeCrate, UnsupportedCrate
from cratebridge.intake.request import InputBinding, InputKind, RunRequest
from cratebridge.intake.unpack import safe_relative_path

if TYPE_CHECKING:
    from cratebridge_cwl.offline import CrateFetcher

__all__ = ["JOB_REQUIREMENTS", "JSON_ENCODING", "CwlStep", "CwlWorkflow", "bind_inputs",
           "load_workflow"]

#: The job-level requirements cwltool accepts in an input object (not CWL, but used).
JOB_REQUIREMENTS = "cwl:requirements"
#: A PropertyValue with this ``encodingFormat`` holds a CWL value as JSON text, bound
#: exactly as given; its File and Directory ``location``s are paths inside the crate.
JSON_ENCODING = "application/json"


@dataclass(frozen=True)
class CwlStep:
    """A CommandLineTool reached from the workflow, with the image it asks for."""

    name: str
    tool: str
    image: str | None
    image_source: str | None


@dataclass(frozen=True)
class CwlWorkflow:
    path: Path
    cls: str
    cwl_version: str
    inputs: tuple[dict[str, Any], ...]
    steps: tuple[CwlStep, ...]


ORIGINAL_VERSION = "http://commonwl.org/cwltool#original_cwlVersion"


def _short(identifier: str) -> str:
    return identifier.split("#")[-1].split("/")[-1]


def load_workflow(path: Path, *, roots: tuple[Path, ...] | None = None) -> CwlWorkflow:
    """Load and validate a CWL document with cwltool, never touching the network.

    Every document it loads (``run``, ``$import``, ``$include``, ``$schemas``) and every
    File or Directory it names must lie inside ``roots``, symlinks and ``..`` resolved;
    anything else raises :class:`UnsafeCrate` naming the reference, and no file outside
    is ever read, so no error can quote one. ``roots`` defaults to the folder holding
    ``path`` alone, the narrowest safe choice: pass the crate root (``roots=(crate_dir,)``)
    when the workflow refers to files beside its own folder. A document cwltool cannot
    load raises :class:`UnsupportedCrate`.
    """
    import logging

    from cwltool.context import LoadingContext
    from cwltool.load_tool import load_tool
    from cwltool.workflow import default_make_tool
    from schema_salad.exceptions import ValidationException

    from cratebridge_cwl.offline import crate_fetcher
    from cratebridge_cwl.references import check_references

    logging.getLogger("cwltool").setLevel(logging.WARNING)
    allowed = roots if roots is not None else (path.parent,)
    fetcher = crate_fetcher(allowed)
    loading = LoadingContext({"fetcher_constructor": fetcher, "skip_schemas": True,
                              "disable_js_validation": True,
                              "construct_tool_object": default_make_tool})
    try:
        tool = load_tool(str(path), loading)
    except ValidationException as exc:
        _raise_if_refused(fetcher, path)
        raise UnsupportedCrate(f"the CWL workflow does not validate: {exc}",
                               where=str(path)) from None
    except Exception as exc:  # cwltool raises many kinds for a bad document
        _raise_if_refused(fetcher, path)
        raise UnsupportedCrate(f"cannot load the CWL workflow: {type(exc).__name__}: {exc}",
                               where=str(path)) from None
    _raise_if_refused(fetcher, path)  # one cwltool only warned about
    check_references(tool, fetcher.roots, written=fetcher.written)
    return CwlWorkflow(
        path=path,
        cls=str(tool.tool.get("class")),
        cwl_version=str(tool.metadata.get(ORIGINAL_VERSION, tool.metadata.get("cwlVersion", ""))),
        inputs=tuple(dict(i) for i in tool.tool.get("inputs", [])),
        steps=tuple(_steps(tool, prefix="")),
    )


def _raise_if_refused(fetcher: type[CrateFetcher], path: Path) -> None:
    """The first reference the fetcher refused, raised as the UnsafeCrate it is."""
    if fetcher.refused:
        from cratebridge_cwl.references import refusal_error

        raise refusal_error(fetcher.refused[0], path, fetcher.roots) from None


def _docker(process: Any) -> tuple[str | None, str | None]:
    req, _ = process.get_requirement("DockerRequirement")
    if not req:
        return None, None
    for key in ("dockerImageId", "dockerPull"):
        if key in req:
            return str(req[key]), key
    for key in ("dockerLoad", "dockerFile", "dockerImport"):
        if key in req:
            return None, key
    return None, None


def _steps(process: Any, prefix: str) -> Iterator[CwlStep]:
    if process.tool.get("class") != "Workflow":
        image, source = _docker(process)
        if process.tool.get("class") == "CommandLineTool":
            yield CwlStep(prefix or _short(process.tool["id"]), str(process.tool["id"]),
                          image, source)
        return
    for step in process.steps:
        name = f"{prefix}/{_short(step.id)}" if prefix else _short(step.id)
        inner = step.embedded_tool
        if inner.tool.get("class") == "Workflow":
            yield from _steps(inner, name)
        elif inner.tool.get("class") == "CommandLineTool":
            image, source = _docker(inner)
            yield CwlStep(name, str(inner.tool["id"]), image, source)


def _optional(cwl_type: Any) -> tuple[bool, Any]:
    if isinstance(cwl_type, list):
        rest = [t for t in cwl_type if t != "null"]
        return len(rest) < len(cwl_type), rest[0] if len(rest) == 1 else rest
    if isinstance(cwl_type, str) and cwl_type.endswith("?"):
        return True, cwl_type[:-1]
    return False, cwl_type


_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}


def convert(value: Any, cwl_type: Any, where: str) -> Any:
    """A PropertyValue's raw value as the CWL type asks (``"3"`` -> 3 for an int)."""
    _, cwl_type = _optional(cwl_type)
    if value is None:
        return None
    try:
        if cwl_type in ("int", "long"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(str(value).strip()) if not isinstance(value, float) else int(value)
        if cwl_type in ("float", "double"):
            return float(value)
        if cwl_type == "boolean":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE | _FALSE:
                return text in _TRUE
            raise ValueError
        if cwl_type == "string":
            return value if isinstance(value, str) else json.dumps(value)
        if isinstance(cwl_type, Mapping):
            kind = cwl_type.get("type")
            if kind == "array":
                items = json.loads(value) if isinstance(value, str) else value
                if not isinstance(items, list):
                    raise ValueError
                return [convert(v, cwl_type["items"], where) for v in items]
            if kind == "enum":
                symbols = [_short(s) for s in cwl_type.get("symbols", [])]
                if str(value) not in symbols:
                    raise MetadataError(f"{value!r} is not one of {symbols}", where=where)
                return str(value)
            if kind == "record":
                return json.loads(value) if isinstance(value, str) else value
        if isinstance(cwl_type, list):  # a union: keep the value as given
            return value
    except (ValueError, TypeError, json.JSONDecodeError):
        raise MetadataError(f"value {value!r} is not a valid {_type_name(cwl_type)}",
                            where=where) from None
    return value


def _type_name(cwl_type: Any) -> str:
    if isinstance(cwl_type, Mapping):
        return f"{cwl_type.get('type')}"
    return str(cwl_type)


def _file_value(binding: InputBinding) -> dict[str, Any]:
    assert binding.path is not None
    cls = "Directory" if binding.kind is InputKind.DIRECTORY else "File"
    return {"class": cls, "location": binding.path.resolve().as_uri()}


def _json_value(binding: InputBinding, crate_dir: Path, where: str) -> Any:
    """A JSON-encoded CWL value, its file locations resolved inside the crate."""
    if not isinstance(binding.value, str):
        raise MetadataError(f"encodingFormat is {JSON_ENCODING} but the value is not JSON "
                            "text", where=where)
    try:
        value = json.loads(binding.value)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise MetadataError(f"the value is not valid JSON: {exc}", where=where) from None
    return _locate_files(value, crate_dir.resolve(), where)


def _locate_files(value: Any, crate: Path, where: str) -> Any:
    if isinstance(value, list):
        return [_locate_files(v, crate, where) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: _locate_files(v, crate, where) for k, v in value.items()}
    if value.get("class") in ("File", "Directory"):
        for key in ("location", "path"):
            if isinstance(value.get(key), str):
                out[key] = _crate_uri(value[key], value["class"], crate, where)
    return out


def _crate_uri(location: str, cls: str, crate: Path, where: str) -> str:
    """``location`` (a path relative to the crate root) as a file URI; nothing outside it."""
    if location.startswith("_:"):
        return location  # a literal's blank identifier (its contents or listing are inline)
    if ":" in location.split("/", 1)[0]:
        raise UnsafeCrate(f"{cls} location {location!r} is not a path inside the crate; "
                          "nothing is fetched: put the data in the crate", where=where)
    rel = safe_relative_path(unquote(location), where=where)
    path = crate / str(rel)
    real = path.resolve()
    if path.is_symlink() or not real.is_relative_to(crate):
        raise UnsafeCrate(f"{cls} location {location!r} leads outside the crate", where=where)
    if not (real.is_file() if cls == "File" else real.is_dir()):
        raise MetadataError(f"{cls} {location!r} is not in the crate", where=where)
    return real.as_uri()


def bind_inputs(request: RunRequest, workflow: CwlWorkflow) -> dict[str, Any]:
    """The CWL job order for a request: every input bound by FormalParameter name."""
    declared = {_short(i["id"]): i for i in workflow.inputs}
    job: dict[str, Any] = {}
    for binding in request.inputs:
        where = f"input {binding.entity_id} (parameter {binding.parameter!r})"
        if binding.parameter == JOB_REQUIREMENTS and binding.encoding == JSON_ENCODING:
            job[JOB_REQUIREMENTS] = _json_value(binding, request.crate_dir, where)
            continue
        if binding.parameter not in declared:
            raise MetadataError(
                f"the workflow has no input named {binding.parameter!r}; its inputs are: "
                f"{', '.join(sorted(declared)) or 'none'}", where=where)
        cwl_type = declared[binding.parameter].get("type")
        _, base = _optional(cwl_type)
        if binding.kind is InputKind.VALUE and binding.encoding == JSON_ENCODING:
            job[binding.parameter] = _json_value(binding, request.crate_dir, where)
        elif binding.kind in (InputKind.FILE, InputKind.DIRECTORY):
            if base not in ("File", "Directory", "Any") and \
                    not isinstance(base, (list, Mapping)):
                raise MetadataError(f"a {binding.kind.value} was given but the workflow "
                                    f"expects {_type_name(base)}", where=where)
            job[binding.parameter] = _file_value(binding)
        else:
            if base in ("File", "Directory"):
                raise MetadataError(f"a value was given but the workflow expects a {base}",
                                    where=where)
            job[binding.parameter] = convert(binding.value, cwl_type, where)
    missing = [name for name, spec in declared.items()
               if name not in job and "default" not in spec and not _optional(spec.get("type"))[0]]
    if missing:
        raise MetadataError(
            f"the workflow needs input(s) {', '.join(missing)} that the crate does not give "
            "(add them to the CreateAction's object with exampleOfWork -> FormalParameter)",
            where=str(workflow.path))
    return job

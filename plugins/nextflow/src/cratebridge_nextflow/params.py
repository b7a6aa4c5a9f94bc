"""The request's inputs as Nextflow pipeline parameters (the ``-params-file`` JSON)."""

from __future__ import annotations

import re
from pathlib import Path

from cratebridge.errors import MetadataError
from cratebridge.intake.request import InputKind, RunRequest

__all__ = ["OUTDIR", "bind_params", "convert"]

#: The parameter workflows publish to; cratebridge points it at the run's outputs folder.
OUTDIR = "outdir"

_INT = re.compile(r"[-+]?(?:0|[1-9]\d*)")
_FLOAT = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def convert(name: str, value: object, declared: str | None, where: str) -> object:
    """``value`` as the type the schema declares, or as it looks when nothing is declared."""
    if declared in (None, "string") and not isinstance(value, str):
        return str(value) if declared == "string" else value
    if not isinstance(value, str):
        if declared == "integer" and isinstance(value, float) and value.is_integer():
            return int(value)
        if declared in ("number", "integer") and isinstance(value, bool):
            raise MetadataError(f"input {name!r} is a boolean but the parameter is a {declared}",
                                where=where)
        return value
    text = value.strip()
    if declared == "string":
        return value
    if declared == "boolean" or (declared is None and text in ("true", "false")):
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise MetadataError(f"input {name!r} = {value!r} is not a boolean", where=where)
    if declared == "integer" or (declared is None and _INT.fullmatch(text)):
        if _INT.fullmatch(text):
            return int(text)
        raise MetadataError(f"input {name!r} = {value!r} is not an integer", where=where)
    if declared == "number" or (declared is None and _FLOAT.fullmatch(text)):
        if _FLOAT.fullmatch(text):
            return float(text)
        raise MetadataError(f"input {name!r} = {value!r} is not a number", where=where)
    return value


def bind_params(request: RunRequest, schema: dict[str, str],
                outputs_dir: Path) -> tuple[dict[str, object], list[str]]:
    """Parameter name -> JSON value for every input, plus ``outdir``; and notes for the plan."""
    params: dict[str, object] = {}
    notes: list[str] = []
    for binding in request.inputs:
        where = f"input {binding.entity_id}"
        if binding.kind in (InputKind.FILE, InputKind.DIRECTORY):
            if binding.path is None:
                raise MetadataError(f"input {binding.parameter!r} has no file", where=where)
            params[binding.parameter] = str(Path(binding.path).absolute())
            continue
        params[binding.parameter] = convert(binding.parameter, binding.value,
                                            schema.get(binding.parameter), where)
    if OUTDIR in params:
        notes.append(f"the request sets params.{OUTDIR}; cratebridge replaces it with the "
                     "run's outputs folder")
    params[OUTDIR] = str(outputs_dir)
    return params, notes

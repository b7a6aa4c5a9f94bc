"""Entity templates shared by the Five Safes crate and the run crate."""

from __future__ import annotations

import json
from pathlib import PurePosixPath

from cratebridge.provenance.files import media_type
from cratebridge.provenance.graph import Node, ref
from cratebridge.provenance.locations import Placed

__all__ = [
    "RO_CRATE_1_1",
    "RO_CRATE_1_2",
    "RO_CRATE_1_2_CONTEXT",
    "WFRUN",
    "WFRUN_CONTEXT",
    "capped_description",
    "data_entity",
    "json_value",
    "link",
    "value_type",
]

RO_CRATE_1_1 = "https://w3id.org/ro/crate/1.1"
RO_CRATE_1_2 = "https://w3id.org/ro/crate/1.2"
RO_CRATE_1_2_CONTEXT = "https://w3id.org/ro/crate/1.2/context"
WFRUN = "https://w3id.org/ro/terms/workflow-run#"
WFRUN_CONTEXT = "https://w3id.org/ro/terms/workflow-run/context"


def capped_description(cut: int) -> str:
    """What a log entity says when the log cap cut its middle."""
    return (f"Capped: {cut} bytes were cut from the middle of this log (the operator's "
            "[limits] log_size); its head and tail are kept, with a note where the cut is.")


def data_entity(entity_id: str, placed: Placed, name: str | None = None) -> Node:
    """A ``File`` (with size, sha-512 and media type) or ``Dataset`` entity for a copied path."""
    label = name or PurePosixPath(placed.location.rstrip("/")).name or placed.location
    if placed.is_dir or placed.digest is None:
        return {"@id": entity_id, "@type": "Dataset", "name": label}
    node: Node = {
        "@id": entity_id,
        "@type": "File",
        "name": label,
        "contentSize": str(placed.digest.size),
        "sha512": placed.digest.sha512,
    }
    encoding = media_type(placed.location)
    if encoding:
        node["encodingFormat"] = encoding
    return node


def json_value(value: object) -> object:
    """A parameter value as JSON: scalars as they are, anything else as its JSON text."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return json.dumps(value, default=str, sort_keys=True)


def value_type(value: object) -> str:
    """The ``additionalType`` of a FormalParameter bound to ``value`` (a schema.org DataType)."""
    if isinstance(value, bool):
        return "Boolean"
    if isinstance(value, int):
        return "Integer"
    if isinstance(value, float):
        return "Float"
    if isinstance(value, str):
        return "Text"
    return "PropertyValue"


def link(node: Node, prop: str, target: str) -> None:
    """Add a reference to ``node[prop]`` (kept as a list) unless it is already there."""
    current = node.get(prop)
    if current is None:
        node[prop] = [ref(target)]
        return
    if isinstance(current, dict):
        current = node[prop] = [current]
    if all(item.get("@id") != target for item in current if isinstance(item, dict)):
        current.append(ref(target))

"""Entity templates shared by the Five Safes crate and the run crate."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import quote

from cratebridge.provenance.files import media_type
from cratebridge.provenance.graph import Node, ref
from cratebridge.provenance.locations import Placed

__all__ = [
    "RO_CRATE_1_1",
    "RO_CRATE_1_2",
    "RO_CRATE_1_2_CONTEXT",
    "WFRUN",
    "WFRUN_CONTEXT",
    "Publisher",
    "capped_description",
    "data_entity",
    "json_value",
    "link",
    "location_id",
    "organization",
    "organization_urls",
    "value_type",
]

RO_CRATE_1_1 = "https://w3id.org/ro/crate/1.1"
RO_CRATE_1_2 = "https://w3id.org/ro/crate/1.2"
RO_CRATE_1_2_CONTEXT = "https://w3id.org/ro/crate/1.2/context"
WFRUN = "https://w3id.org/ro/terms/workflow-run#"
WFRUN_CONTEXT = "https://w3id.org/ro/terms/workflow-run/context"


@dataclass(frozen=True)
class Publisher:
    """The TRE that publishes result crates (the operator's ``[publisher]``).

    ``identifier`` (a ROR id, say) names it in the crate when given, else ``url``.
    """

    name: str
    url: str
    identifier: str | None = None

    @property
    def id(self) -> str:
        return self.identifier or self.url

    def entity(self) -> Node:
        return {"@id": self.id, "@type": "Organization", "name": self.name, "url": self.url}


def organization(entity_id: str, name: str | None) -> Node:
    """An Organization; one named by a web address has it as its ``url``."""
    node: Node = {"@id": entity_id, "@type": "Organization", "name": name or entity_id}
    if entity_id.startswith(("https://", "http://")):
        node["url"] = entity_id
    return node


def organization_urls(nodes: Iterable[Node]) -> None:
    """An Organization named by a web address and giving no ``url`` gets that address:
    the profiles want a URL for every organization, and its identifier is one."""
    for node in nodes:
        typ = node.get("@type")
        kinds = [typ] if isinstance(typ, str) else typ if isinstance(typ, list) else []
        entity_id = str(node.get("@id", ""))
        if "Organization" in kinds and "url" not in node and entity_id.startswith(
                ("https://", "http://")):
            node["url"] = entity_id


def capped_description(cut: int) -> str:
    """What a log entity says when the log cap cut its middle."""
    return (f"Capped: {cut} bytes were cut from the middle of this log (the operator's "
            "[limits] log_size); its head and tail are kept, with a note where the cut is.")


def location_id(location: str) -> str:
    """The ``@id`` of a file or folder of the crate: its path as a relative URI."""
    if _PLAIN_PATH.fullmatch(location):  # the usual path: nothing to escape
        return location
    return quote(location, safe="/")


# what ``quote(..., safe="/")`` never escapes
_PLAIN_PATH = re.compile(r"[A-Za-z0-9_.~/-]*")


def data_entity(entity_id: str, placed: Placed, name: str | None = None) -> Node:
    """A ``File`` (with size, sha-512 and media type) or ``Dataset`` entity for a copied path."""
    label = name or _base_name(placed.location) or placed.location
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


def _base_name(location: str) -> str:
    """The last segment of a location (``PurePosixPath(location).name``)."""
    base = location.rstrip("/").rpartition("/")[2]
    if base in ("", "."):  # a root, or a path that is not plain: as pathlib says
        return PurePosixPath(location.rstrip("/")).name
    return base


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

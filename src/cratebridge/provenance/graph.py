"""A tiny JSON-LD graph of plain dicts, keyed by ``@id``, written as ``ro-crate-metadata.json``."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cratebridge.provenance.files import Digest

__all__ = ["Graph", "Node", "fragment", "iso", "ref", "refs"]

Node = dict[str, Any]

# Above this many entities the metadata is written without indentation: the C
# JSON encoder is only used when ``indent`` is None, and it is several times faster.
_PRETTY_LIMIT = 5000


def ref(entity_id: str) -> dict[str, str]:
    """A JSON-LD reference to an entity."""
    return {"@id": entity_id}


def refs(ids: Iterable[str]) -> list[dict[str, str]]:
    """References to several entities, in order."""
    return [{"@id": entity_id} for entity_id in ids]


def fragment(text: str) -> str:
    """``text`` made safe for use inside an IRI fragment or path segment."""
    if _UNRESERVED.fullmatch(text):  # the usual name: nothing to escape
        return text
    return quote(text, safe="-._~")


# what ``quote`` never escapes (RFC 3986 unreserved characters)
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*")


def iso(moment: datetime) -> str:
    """ISO 8601 / RFC 3339 to the millisecond with a ``+HH:MM`` offset (never ``Z``).

    The run-crate profiles' time pattern takes three fractional digits or none;
    a naive time is taken as local time.
    """
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return moment.isoformat(timespec="milliseconds")


class Graph:
    """An ordered set of entities; adding an existing ``@id`` keeps the first one."""

    def __init__(self, nodes: Iterable[Node] = ()) -> None:
        self._nodes: dict[str, Node] = {}
        for node in nodes:
            self.add(node)

    def add(self, node: Node) -> Node:
        """Add ``node`` unless its ``@id`` is taken; return the entity now in the graph."""
        return self._nodes.setdefault(str(node["@id"]), node)

    def get(self, entity_id: str) -> Node | None:
        """The entity with this ``@id``, if any."""
        return self._nodes.get(entity_id)

    def __contains__(self, entity_id: object) -> bool:
        return entity_id in self._nodes

    def __iter__(self) -> Iterator[Node]:
        return iter(self._nodes.values())

    def __len__(self) -> int:
        return len(self._nodes)

    def write(self, path: Path, context: object) -> tuple[Digest, dict[str, object]]:
        """Write the graph as a JSON-LD document at ``path``; return its digest and the
        document written (what reading the file back gives)."""
        document = {"@context": context, "@graph": [_flatten(n) for n in self._nodes.values()]}
        indent = 2 if len(self._nodes) <= _PRETTY_LIMIT else None
        data = json.dumps(document, indent=indent, ensure_ascii=False).encode("utf-8")
        path.write_bytes(data)
        return Digest(len(data), hashlib.sha512(data).hexdigest()), document


def _flatten(node: Node) -> Node:
    """Single values instead of one-element lists, as RO-Crate recommends; ``@type`` is
    kept, and so is a ``value``: an array of one item is a list (runcrate runs it so)."""
    singles = [key for key, value in node.items()
               if isinstance(value, list) and len(value) == 1 and key not in _LISTS]
    if not singles:
        return node
    flat = node.copy()  # the entity's own keys, in its order
    for key in singles:
        flat[key] = flat[key][0]
    return flat


_LISTS = frozenset({"@type", "value"})

"""Values in the run crate: the files and parameter values a run read and wrote, as entities.

:class:`ValueWriter` is the part of
:class:`~cratebridge.provenance.runcrate.RunCrateBuilder` that writes them; it
names what it uses of the builder below.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote, urlsplit

from cratebridge.engines.interface import EnginePlan
from cratebridge.engines.record import FileRecord, ParameterValue, StepRecord
from cratebridge.intake.request import InputBinding, InputKind, RunRequest
from cratebridge.provenance.entities import data_entity, json_value, link, value_type
from cratebridge.provenance.graph import Graph, Node, fragment, ref
from cratebridge.provenance.locations import Placed, Placer

__all__ = ["ValueWriter"]

# a URI scheme, as in "file:", "toildir:" or "_:"
_SCHEME = re.compile(r"^[A-Za-z_][A-Za-z0-9+.-]*:")


class ValueWriter:
    """Inputs, outputs and parameter values as entities (a part of the run crate's builder)."""

    # what the builder holds
    graph: Graph
    request: RunRequest
    placer: Placer
    plan: EnginePlan | None
    main_id: str
    _mapped: dict[Path, str]  # operator-mapped data by its resolved path
    _values: int

    # what the builder does
    def local_id(self, location: str) -> str:
        raise NotImplementedError

    def _part(self, node: Node) -> Node:
        raise NotImplementedError

    def _place_step_file(self, path: Path, is_dir: bool) -> Placed:
        raise NotImplementedError

    # -- values: files and parameters ----------------------------------------

    def _values_of(
        self,
        values: Iterable[FileRecord | ParameterValue],
        owner: str,
        direction: str,
        step: StepRecord | None,
    ) -> list[str]:
        ids: list[str] = []
        for value in values:
            if isinstance(value, ParameterValue):
                if value.value is not None:  # no value given: nothing to describe
                    ids.append(self._property_value(value.parameter, value.value, owner,
                                                    direction))
                continue
            mapped = self._mapped_id(value.path) if step is not None else None
            if mapped is not None:
                ids.append(mapped)
                continue
            if step is None:
                entity = self._data(self._output(value))
            else:
                entity = self._data(self._place_step_file(value.path, value.is_dir))
            if value.parameter:
                kind = "Dataset" if value.is_dir else "File"
                param_id = self._parameter(owner, direction, value.parameter, kind)
                link(entity, "exampleOfWork", param_id)
            ids.append(str(entity["@id"]))
        return ids

    def _mapped_id(self, path: Path) -> str | None:
        """The entity id of operator-mapped data a step read (the data, or a file in it)."""
        if not self._mapped:
            return None
        resolved = path.resolve()
        for candidate in (resolved, *resolved.parents):
            if candidate in self._mapped:
                return self._mapped[candidate]
        return None

    def _property_value(self, name: str, value: object, owner: str, direction: str) -> str:
        """The entity of a parameter value, written as runcrate's CWLProv converter writes
        one, which is what ``runcrate run`` reads back: a scalar as text ("42", "True"), an
        array as a list (the parameter's ``additionalType`` is its items' type), a File or
        Directory as its data entity, a record as a PropertyValue per field. A value naming
        a file that is not in the result stays JSON text."""
        self._values += 1
        value_id = f"#value-{self._values}-{fragment(name)}"
        files = [self._placed_file(f) for f in _file_objects(value)]
        if None in files:
            kind, written = value_type(value), json_value(value)
        else:
            kind, written = _kind(value), self._written(value, value_id)
        param_id = self._parameter(owner, direction, name, kind)
        if isinstance(written, dict):  # one File or Directory: its entity is the value
            entity = self.graph.get(str(written["@id"]))
            assert entity is not None
            link(entity, "exampleOfWork", param_id)
            return str(entity["@id"])
        self.graph.add(
            {
                "@id": value_id,
                "@type": "PropertyValue",
                "name": name,
                "value": written,
                "exampleOfWork": ref(param_id),
            }
        )
        return value_id

    def _written(self, value: object, value_id: str) -> object:
        """``value`` in runcrate's form (see :meth:`_property_value`); its files are placed."""
        if isinstance(value, list):
            return [self._item(item, f"{value_id}/{index}")
                    for index, item in enumerate(value) if item is not None]
        if isinstance(value, dict):
            if value.get("class") in ("File", "Directory"):
                placed = self._placed_file(value)
                assert placed is not None
                return ref(str(self._data(placed)["@id"]))
            return [self._value_node(f"{value_id}/{fragment(str(key))}", str(key), item)
                    for key, item in value.items() if item is not None]
        return str(value)

    def _item(self, item: object, item_id: str) -> object:
        """An array item: a nested array or record becomes a PropertyValue of its own
        (JSON-LD has no list of lists)."""
        if isinstance(item, list) or (
                isinstance(item, dict) and item.get("class") not in ("File", "Directory")):
            return self._value_node(item_id, item_id.rsplit("/", 1)[1], item)
        return self._written(item, item_id)

    def _value_node(self, node_id: str, name: str, value: object) -> Node:
        self.graph.add({"@id": node_id, "@type": "PropertyValue", "name": name,
                        "value": self._written(value, node_id)})
        return ref(node_id)

    def _placed_file(self, value: dict[str, object]) -> Placed | None:
        """Where a CWL File or Directory object of a value is in the result, if it is.

        A relative location is relative to the request crate (as the crate gives values);
        nothing is copied, so a location outside the run's files is never described."""
        location = value.get("location") or value.get("path")
        if not isinstance(location, str) or not location:
            return None
        if location.startswith("file://"):
            path = Path(unquote(urlsplit(location).path))
        elif _SCHEME.match(location):  # another scheme (toildir:, _:, http:): not a file here
            return None
        else:
            path = self.request.crate_dir / unquote(location)
        try:
            return self.placer.lookup(path)
        except OSError:  # a name no file system takes is no file of the result
            return None

    def _output(self, value: FileRecord) -> Placed:
        placed = self.placer.lookup(value.path)
        if placed is None:
            raise ValueError(f"{value.path}: workflow output was not copied into the result")
        return placed

    def _data(self, placed: Placed) -> Node:
        entity_id = self.local_id(placed.location)
        existing = self.graph.get(entity_id)
        return existing if existing is not None else self._part(data_entity(entity_id, placed))

    def _inputs(self) -> list[str]:
        ids: list[str] = []
        parameters = self.plan.parameters if self.plan else {}
        for binding in self.request.inputs:
            if binding.kind is InputKind.VALUE:
                value = parameters.get(binding.parameter, binding.value)
                if binding.encoding == "application/json" and isinstance(binding.value, str):
                    # as the crate gives it: file locations relative to the crate, not the host
                    value = json.loads(binding.value)
                if value is not None:  # null: no value given (runcrate's converter omits it)
                    ids.append(self._property_value(binding.parameter, value, self.main_id,
                                                    "input"))
            else:
                ids.append(self._input_file(binding))
        return ids

    def _input_file(self, binding: InputBinding) -> str:
        kind = "Dataset" if binding.kind is InputKind.DIRECTORY else "File"
        param_id = self._parameter(self.main_id, "input", binding.parameter, kind)
        placed = self.placer.lookup(binding.path) if binding.path else None
        if placed is not None:
            entity = self._data(placed)
        else:
            # Operator-mapped data stays in the TRE: described, never copied.
            entity = self.graph.add(
                {
                    "@id": f"#input-{fragment(binding.parameter)}",
                    "@type": "CreativeWork",
                    "name": binding.parameter,
                    "description": f"Input {binding.entity_id}: data mapped by the TRE, not copied",
                }
            )

        link(entity, "exampleOfWork", param_id)
        return str(entity["@id"])

    def _parameter(self, owner: str, direction: str, name: str, kind: str) -> str:
        """The FormalParameter ``name`` of ``owner`` (a workflow or tool), added on first use."""
        separator = "/" if "#" in owner else "#"
        param_id = f"{owner}{separator}{direction}/{fragment(name)}"
        if param_id not in self.graph:
            self.graph.add(
                {
                    "@id": param_id,
                    "@type": "FormalParameter",
                    "name": name,
                    "additionalType": kind,
                    "conformsTo": ref(
                        "https://bioschemas.org/profiles/FormalParameter/1.0-RELEASE"
                    ),
                }
            )
            owner_node = self.graph.get(owner)
            assert owner_node is not None
            owner_node.setdefault(direction, []).append(ref(param_id))
        return param_id


def _file_objects(value: object) -> Iterable[dict[str, object]]:
    """The CWL File and Directory objects in a value, wherever they are nested."""
    if isinstance(value, list):
        for item in value:
            yield from _file_objects(item)
    elif isinstance(value, dict):
        if value.get("class") in ("File", "Directory"):
            yield value
        else:
            for item in value.values():
                yield from _file_objects(item)


def _kind(value: object) -> str:
    """A parameter's ``additionalType`` as runcrate's converter gives it: a File or Directory
    is a ``File`` or ``Dataset``, an array has its items' type (``DataType`` when mixed)."""
    if isinstance(value, list):
        kinds = {_kind(item) for item in value if item is not None}
        return kinds.pop() if len(kinds) == 1 else "DataType"
    if isinstance(value, dict) and value.get("class") in ("File", "Directory"):
        return "File" if value["class"] == "File" else "Dataset"
    return value_type(value)

"""The outer result crate of a Five Safes request: the request crate, updated."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import unquote

from cratebridge import __version__
from cratebridge.engines.record import FileRecord, LogRecord, ParameterValue, RunRecord, RunStatus
from cratebridge.intake.request import RunRequest
from cratebridge.provenance.entities import (
    RO_CRATE_1_2,
    RO_CRATE_1_2_CONTEXT,
    WFRUN_CONTEXT,
    Publisher,
    capped_description,
    data_entity,
    json_value,
    link,
    location_id,
    organization_urls,
)
from cratebridge.provenance.files import media_type
from cratebridge.provenance.graph import Graph, Node, fragment, iso, ref
from cratebridge.provenance.locations import Placed

__all__ = ["OWN_ID_PREFIX", "FiveSafesResult", "request_graph", "request_license", "root_of"]

_Output = tuple[FileRecord | ParameterValue, Placed | None]
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
SHP = "https://w3id.org/shp#"
SHA_512 = "https://www.iana.org/assignments/named-information#sha-512"
#: every entity the result adds of its own has an id starting so (verify removes them)
OWN_ID_PREFIX = "#cratebridge"
CRATEBRIDGE = OWN_ID_PREFIX
UNSTATED_LICENSE: Node = {
    "@id": "#license-unstated",
    "@type": "CreativeWork",
    "name": "License not stated",
    "description": "The request crate stated no license; the TRE's data agreement applies.",
}


def request_graph(request: RunRequest) -> list[Node]:
    """A deep copy of the request crate's ``@graph``."""
    graph = request.metadata.get("@graph")
    if not isinstance(graph, list):
        raise ValueError(f"{request.crate_dir}: request metadata has no @graph")
    return [node for node in copy.deepcopy(graph) if isinstance(node, dict) and "@id" in node]


def root_of(graph: Graph) -> Node:
    """The root data entity, found through the metadata descriptor."""
    descriptor = graph.get("ro-crate-metadata.json")
    about = descriptor.get("about") if descriptor else None
    root_id = about.get("@id") if isinstance(about, dict) else "./"
    root = graph.get(str(root_id))
    if root is None:
        raise ValueError("request metadata has no root data entity")
    return root


def request_license(request: RunRequest) -> Node:
    """The request root's license entity (for the run crate too), or a plain 'not stated' one."""
    graph = Graph(request_graph(request))
    value = root_of(graph).get("license")
    if isinstance(value, list) and value:
        value = value[0]
    if isinstance(value, dict) and "@id" in value:
        described = graph.get(str(value["@id"]))
        return described or {"@id": value["@id"], "@type": "CreativeWork", "name": value["@id"]}
    if isinstance(value, str) and value:
        return {"@id": f"#license-{fragment(value)}", "@type": "CreativeWork", "name": value}
    return dict(UNSTATED_LICENSE)


class FiveSafesResult:
    """Updates the request's graph into the result's: action status, results, logs, run crate."""

    def __init__(self, request: RunRequest, record: RunRecord,
                 publisher: Publisher | None = None, payload: str = "") -> None:
        """``payload``: the folder (ending ``/``) the request's files were copied to."""
        self.request = request
        self.record = record
        self.publisher = publisher
        nodes = request_graph(request)
        self.graph = Graph(_moved(nodes, payload) if payload else nodes)
        self.root = root_of(self.graph)
        self.action = self._find_action()
        self._has_part: dict[str, None] = {
            str(item["@id"]): None for item in _as_list(self.root.get("hasPart"))
        }

    def _find_action(self) -> Node:
        candidates = [self.request.action_id] if self.request.action_id else []
        candidates += [str(m.get("@id")) for m in _as_list(self.root.get("mentions"))]
        for candidate in candidates:
            node = self.graph.get(candidate) if candidate else None
            if node is not None and "CreateAction" in _types(node):
                return node
        for node in self.graph:
            if "CreateAction" in _types(node):
                return node
        raise ValueError(f"{self.request.crate_dir}: request crate has no CreateAction to update")

    def context(self) -> list[Any]:
        """The request's ``@context`` moved to RO-Crate 1.2, plus the workflow-run terms."""
        declared = self.request.metadata.get("@context")
        items = declared if isinstance(declared, list) else [declared]
        result: list[Any] = []
        for item in items:
            if isinstance(item, str) and item.startswith("https://w3id.org/ro/crate/"):
                item = RO_CRATE_1_2_CONTEXT
            if item is not None and item not in result:
                result.append(item)
        if RO_CRATE_1_2_CONTEXT not in result:
            result.insert(0, RO_CRATE_1_2_CONTEXT)
        if WFRUN_CONTEXT not in result:
            result.append(WFRUN_CONTEXT)
        return result

    def build(
        self,
        outputs: Iterable[_Output],
        logs: Iterable[tuple[LogRecord, Placed]],
        run_crate: str,
    ) -> Graph:
        """The updated graph; ``run_crate`` is the nested crate's folder (ends with ``/``)."""
        self._descriptor_and_root()
        self._update_action(outputs)
        for log, placed in logs:
            entity = self._put(data_entity(location_id(placed.location), placed, log.name))
            entity.setdefault("encodingFormat", "text/plain")
            if log.cut:
                entity["description"] = capped_description(log.cut)
            link(entity, "about", str(self.action["@id"]))
        self._nested_crate(run_crate)
        self._checks()
        self._sweep_data_entities()
        organization_urls(self.graph)
        self.root["hasPart"] = [ref(i) for i in self._has_part]
        return self.graph

    def _descriptor_and_root(self) -> None:
        descriptor = self.graph.get("ro-crate-metadata.json")
        assert descriptor is not None
        descriptor["conformsTo"] = ref(RO_CRATE_1_2)
        root = self.root
        root.setdefault("name", self.request.action_name or "Five Safes RO-Crate result")
        root.setdefault("description", "Result of a workflow run in a Trusted Research Environment")
        root["datePublished"] = iso(datetime.now().astimezone())
        if not root.get("license"):
            self.graph.add(dict(UNSTATED_LICENSE))
            root["license"] = ref(str(UNSTATED_LICENSE["@id"]))
        if self.publisher is not None:  # the TRE publishes the result
            root["publisher"] = ref(self._put(self.publisher.entity())["@id"])
        if not root.get("author"):
            agent = self.request.agent.id if self.request.agent else None
            author = agent or (self.publisher.id if self.publisher else None)
            if author is not None:
                root["author"] = ref(author)

    def _update_action(self, outputs: Iterable[_Output]) -> None:
        record, action = self.record, self.action
        action["actionStatus"] = record.status.action_status
        action["startTime"] = iso(record.start_time)
        action["endTime"] = iso(record.end_time)
        results: list[dict[str, str]] = []
        for index, (value, placed) in enumerate(outputs):
            if placed is None:
                assert isinstance(value, ParameterValue)
                node = self._put(
                    {
                        "@id": f"#output-{index}-{fragment(value.parameter)}",
                        "@type": "PropertyValue",
                        "name": value.parameter,
                        "value": json_value(value.value),
                    }
                )
            else:
                node = self._part(data_entity(location_id(placed.location), placed))
            results.append(ref(str(node["@id"])))
        action["result"] = results
        if record.status is RunStatus.FAILED:
            action["error"] = record.error or "The workflow run failed"
        else:
            action.pop("error", None)
        self._labels(record.labels)

    def _labels(self, labels: Mapping[str, str]) -> None:
        """The caller's labels (``--label``), as PropertyValues of the CreateAction."""
        if not labels:
            return
        found = []
        for key, value in sorted(labels.items()):
            node = self._put({"@id": f"#label-{fragment(key)}", "@type": "PropertyValue",
                              "name": key, "value": value,
                              "description": "A label the TRE agent gave the run"})
            found.append(ref(str(node["@id"])))
        self.action["additionalProperty"] = found

    def _nested_crate(self, folder: str) -> None:
        metadata = folder + "ro-crate-metadata.json"
        self._part(
            {
                "@id": metadata,
                "@type": "File",
                "name": "Run crate metadata",
                "encodingFormat": "application/ld+json",
            }
        )
        self._part(
            {
                "@id": folder,
                "@type": "Dataset",
                "name": "Provenance of the workflow run",
                "description": (
                    "A Provenance Run Crate (an RO-Crate of its own) describing each step's "
                    "execution, tools, containers and logs."
                ),
                "conformsTo": ref("https://w3id.org/ro/crate"),
                "subjectOf": ref(metadata),
                "about": ref(str(self.action["@id"])),
            }
        )
        link(self.action, "subjectOf", folder)

    def _checks(self) -> None:
        """What cratebridge did or leaves to do that the request does not record already.

        The BagIt check when it verified the request's manifests; the retrieval
        of a workflow from the operator's mirror; and the disclosure check the
        TRE's output checkers have still to make (``PotentialActionStatus``).
        """
        done = {str(t.get("@id")) for node in self.graph
                for t in _as_list(node.get("additionalType"))}
        started = iso(self.record.start_time)
        if self.request.bagit and SHP + "CheckValue" not in done:
            self.graph.add({"@id": SHA_512, "@type": "DefinedTerm", "name": "sha-512 algorithm"})
            self._mention(self._assess("#cratebridge-checkvalue", "CheckValue",
                                       "BagIt checksums of the request crate: OK", {
                                           "instrument": ref(SHA_512), "endTime": started,
                                           "agent": ref(self._cratebridge())}))
        source = self.request.workflow.source
        if source.startswith("mirror:") and not any(
                "DownloadAction" in _types(node) for node in self.graph):
            self._mention(self._put({
                "@id": "#cratebridge-workflow-download", "@type": "DownloadAction",
                "name": "Workflow taken from the TRE's mirror of approved workflows",
                "description": f"{self.request.workflow.id} resolved offline from the "
                               f"mirror's {source.removeprefix('mirror:')} (sha-256 checked)",
                "object": ref(self.request.workflow.id), "endTime": started,
                "agent": ref(self._cratebridge()),
                "actionStatus": "http://schema.org/CompletedActionStatus"}))
        if SHP + "DisclosureCheck" not in done:
            self._mention(self._assess(
                "#cratebridge-disclosure", "DisclosureCheck",
                "Disclosure check of the workflow's results: awaiting the TRE's output checkers",
                {"actionStatus": "http://schema.org/PotentialActionStatus"}))

    def _assess(self, node_id: str, kind: str, name: str, extra: Node) -> Node:
        node: Node = {"@id": node_id, "@type": "AssessAction",
                      "additionalType": ref(SHP + kind), "name": name, "object": ref("./"),
                      "actionStatus": "http://schema.org/CompletedActionStatus"}
        node.update(extra)
        return self._put(node)

    def _cratebridge(self) -> str:
        return str(self._put({"@id": CRATEBRIDGE, "@type": "SoftwareApplication",
                              "name": "cratebridge", "softwareVersion": __version__})["@id"])

    def _mention(self, node: Node) -> None:
        link(self.root, "mentions", str(node["@id"]))

    def _sweep_data_entities(self) -> None:
        """Every local File or Dataset goes into the root's ``hasPart``; a File the
        request gave no media type gets the one its name says."""
        root_id = self.root["@id"]
        for node in self.graph:
            entity_id = str(node["@id"])
            if entity_id == root_id or not _is_local(entity_id):
                continue
            if {"File", "Dataset"} & set(_types(node)):
                self._has_part.setdefault(entity_id, None)
            if "File" in _types(node) and "encodingFormat" not in node:
                node["encodingFormat"] = media_type(unquote(entity_id))

    def _put(self, node: Node) -> Node:
        existing = self.graph.get(str(node["@id"]))
        if existing is None:
            return self.graph.add(node)
        existing.update(node)
        return existing

    def _part(self, node: Node) -> Node:
        added = self._put(node)
        self._has_part.setdefault(str(added["@id"]), None)
        return added


def _moved(nodes: list[Node], folder: str) -> list[Node]:
    """The request's graph with each of its files and folders named inside ``folder``."""
    keep = {"./", "ro-crate-metadata.json"}
    local = {str(n["@id"]) for n in nodes if _is_local(str(n["@id"])) and n["@id"] not in keep}

    def moved(value: Any) -> Any:
        if isinstance(value, list):
            return [moved(item) for item in value]
        if isinstance(value, dict):
            return {k: (folder + v if k == "@id" and v in local else moved(v))
                    for k, v in value.items()}
        return value

    return [moved(node) for node in nodes]


def _as_list(value: object) -> list[dict[str, Any]]:
    items = value if isinstance(value, list) else [value] if value is not None else []
    return [item for item in items if isinstance(item, dict) and "@id" in item]


def _types(node: Node) -> list[str]:
    value = node.get("@type", [])
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _is_local(entity_id: str) -> bool:
    return not (entity_id.startswith(("#", "_:")) or _SCHEME.match(entity_id))

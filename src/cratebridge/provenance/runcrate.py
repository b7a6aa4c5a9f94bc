"""The run's own crate: Provenance Run Crate 0.5 metadata built from a RunRecord.

The crate lives at ``prefix`` inside the result folder (``""`` when the run
crate is the result crate). Files outside that prefix (the request payload,
the outputs) are referred to with relative ``../`` paths. Nested workflows
are described by :mod:`cratebridge.provenance.nesting`, inputs, outputs and
parameter values by :mod:`cratebridge.provenance.values`, container images by
:mod:`cratebridge.provenance.images`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from cratebridge.engines.interface import EnginePlan
from cratebridge.engines.record import (
    ContainerRecord,
    LogRecord,
    RunRecord,
    RunStatus,
    StepRecord,
)
from cratebridge.intake.request import RunRequest
from cratebridge.provenance.entities import (
    RO_CRATE_1_1,
    RO_CRATE_1_2,
    Publisher,
    capped_description,
    data_entity,
    link,
    location_id,
    organization,
)
from cratebridge.provenance.graph import Graph, Node, fragment, iso, ref, refs
from cratebridge.provenance.images import image_entity
from cratebridge.provenance.locations import Placed, Placer
from cratebridge.provenance.nesting import COMPUTATIONAL_WORKFLOW, NestedWorkflows, is_file
from cratebridge.provenance.readme import run_readme
from cratebridge.provenance.values import ValueWriter

__all__ = ["RunCrateBuilder", "RunCrateSpec"]

PROFILES = {
    "https://w3id.org/ro/wfrun/process/0.5": "Process Run Crate",
    "https://w3id.org/ro/wfrun/workflow/0.5": "Workflow Run Crate",
    "https://w3id.org/ro/wfrun/provenance/0.5": "Provenance Run Crate",
    "https://w3id.org/workflowhub/workflow-ro-crate/1.0": "Workflow RO-Crate",
}
ENGINE_URLS = {
    "cwltool": "https://github.com/common-workflow-language/cwltool",
    "toil": "https://github.com/DataBiosphere/toil",
    "nextflow": "https://www.nextflow.io/",
    "snakemake": "https://snakemake.github.io/",
}
WORKFLOW_RO_CRATE = "https://w3id.org/workflowhub/workflow-ro-crate/1.0"
WORKFLOW_RUN_ID = "#workflow-run"
ORGANIZE_ID = "#engine-run"


@dataclass(frozen=True)
class RunCrateSpec:
    """Where the run crate and its workflow sit in the result folder.

    ``prefix`` is the run crate's folder (``""`` or ends with ``/``);
    ``workflow_src`` the workflow folder on disk, already copied to
    ``workflow_location``; ``main_location`` is the main workflow file's location.
    """

    prefix: str
    workflow_src: Path
    workflow_location: str
    main_location: str
    license: Node
    publisher: Publisher | None = None


class RunCrateBuilder(ValueWriter, NestedWorkflows):
    """Builds the run crate graph; copies step files (not outputs) as it goes.

    ``ValueWriter`` comes first: its methods, not ``NestedWorkflows``' stubs of them, run.
    """

    def __init__(
        self,
        request: RunRequest,
        record: RunRecord,
        placer: Placer,
        spec: RunCrateSpec,
        plan: EnginePlan | None = None,
    ) -> None:
        self.request = request
        self.record = record
        self.placer = placer
        self.spec = spec
        self.plan = plan
        self.graph = Graph()
        self._has_part: dict[str, None] = {}
        self._mentions: dict[str, None] = {}
        self._tools: dict[str, str] = {}
        self._mapped: dict[Path, str] = {}
        self._tool_params: dict[str, set[str]] = {}
        self._steps: dict[str, str] = {}
        self._step_count: dict[str, int] = {}
        self._main_run = WORKFLOW_RUN_ID
        self._images: dict[tuple[str, str | None], str] = {}
        self._action_by_name: dict[str, str] = {}
        self._values = 0
        self._up = "../" * self.spec.prefix.count("/")
        self.main_id = self.local_id(spec.main_location)
        self._workflows: dict[str, str] = {"": self.main_id}  # by the path of their step

    # -- identifiers ---------------------------------------------------------

    def local_id(self, location: str) -> str:
        """The ``@id`` in this crate of a location relative to the result folder
        (a relative URI: spaces, ``#``, ``%`` and non-ASCII letters escaped)."""
        if location.startswith(self.spec.prefix):
            return location_id(location[len(self.spec.prefix) :]) or "./"
        return self._up + location_id(location)

    # -- the whole crate -----------------------------------------------------

    def build(self, run_logs: Iterable[tuple[LogRecord, Placed]] = ()) -> Graph:
        """All entities of the run crate, root first."""
        step_records = [step if _short(step.step) == step.step else  # a copy only to shorten
                        replace(step, step=_short(step.step)) for step in self.record.steps]
        step_records = step_records or self._in_engine_step()
        with_steps = bool(step_records)
        self._mapped = {
            b.path.resolve(): f"#input-{fragment(b.parameter)}"
            for b in self.request.inputs
            if b.path is not None and not b.path.resolve().is_relative_to(self.placer.run_dir)
        }
        self._descriptor_and_root(with_steps)
        self._workflow()
        self._engine()
        self._planned_steps()
        control_ids = [self._step_execution(i, step) for i, step in enumerate(step_records)]
        nested = enumerate(self.record.subworkflows)
        control_ids += [self._subworkflow_execution(index, run) for index, run in nested]
        self._workflow_action()
        self._skipped_notes()
        if with_steps:
            self._organize_action(control_ids)
        for log, placed in run_logs:
            self._log(log, placed, self._about(log.about))
        self._readme()
        self._finish_root()
        return self.graph

    def _in_engine_step(self) -> list[StepRecord]:
        """A completed run with no step of its own (a lone ExpressionTool): the engine
        evaluated the process itself, recorded as the run's one step, in no container."""
        record = self.record
        if record.subworkflows or record.status is not RunStatus.COMPLETED:
            return []
        name = PurePosixPath(self.spec.main_location).name
        return [StepRecord(step=name, name=name, tool=name, status=record.status,
                           start_time=record.start_time, end_time=record.end_time,
                           exit_code=None, container=None, outputs=record.outputs)]

    def _descriptor_and_root(self, with_steps: bool) -> None:
        profiles = [p for p in PROFILES if with_steps or "/provenance/" not in p]
        self.graph.add(
            {
                "@id": "ro-crate-metadata.json",
                "@type": "CreativeWork",
                "about": ref("./"),
                "conformsTo": refs([RO_CRATE_1_2, RO_CRATE_1_1, WORKFLOW_RO_CRATE]),
            }
        )
        name = self.request.workflow.name or PurePosixPath(self.spec.main_location).name
        self.graph.add(
            {
                "@id": "./",
                "@type": "Dataset",
                "name": f"Run of {name}",
                "description": (
                    f"Provenance of a run of the workflow {name} by {self.record.engine}: "
                    "the workflow, each step's execution, containers, inputs, outputs and logs."
                ),
                "datePublished": iso(self.record.end_time),
                "license": ref(str(self.spec.license["@id"])),
                "conformsTo": refs(profiles),
                "mainEntity": ref(self.main_id),
            }
        )
        self.graph.add(dict(self.spec.license))
        for profile in profiles:
            version = profile.rsplit("/", 1)[1]
            self.graph.add(
                {
                    "@id": profile,
                    "@type": "CreativeWork",
                    "name": f"{PROFILES[profile]} {version}",
                    "version": version,
                }
            )

    def _finish_root(self) -> None:
        root = self.graph.get("./")
        assert root is not None
        publisher = self.spec.publisher
        if publisher is not None:
            root["publisher"] = ref(self.graph.add(publisher.entity())["@id"])
        # the researcher who asked for the run, else the TRE that made the crate
        author = self._agent()
        if author is not None:
            root["author"] = ref(author)
        root["hasPart"] = refs(self._has_part)
        root["mentions"] = refs(self._mentions)

    def _readme(self) -> None:
        """``README.md`` about the crate: the request's own, else one saying what ran."""
        location = self.spec.prefix + "README.md"
        digest = self.placer.digest_of(location)
        if digest is not None:
            placed = Placed(location, False, digest)
        elif (self.placer.dest / location).exists():
            return  # a folder of the request's named README.md
        else:
            text = run_readme(self.request, self.record, self.spec.main_location)
            placed = self.placer.write_new(location, text.encode("utf-8"))
        entity = self._data(placed)
        entity["encodingFormat"] = "text/markdown"
        link(entity, "about", "./")

    # -- workflow definition -------------------------------------------------

    def _workflow(self) -> None:
        folder_id = self.local_id(self.spec.workflow_location)
        if folder_id != "./":
            self._part({"@id": folder_id, "@type": "Dataset", "name": "Workflow definition"})
        language = self.request.workflow.language
        self.graph.add(
            {
                "@id": language.value,
                "@type": "ComputerLanguage",
                "name": language.name,
                "identifier": ref(language.url),
                "url": ref(language.url),
            }
        )
        digest = self.placer.digest_of(self.spec.main_location)
        main = data_entity(self.main_id, Placed(self.spec.main_location, False, digest))
        main["@type"] = ["File", "SoftwareSourceCode", "ComputationalWorkflow", "HowTo"]
        main["name"] = self.request.workflow.name or main["name"]
        main["programmingLanguage"] = ref(language.value)
        main["conformsTo"] = ref(COMPUTATIONAL_WORKFLOW)
        self._versioned(main)
        if self.request.workflow.url:
            main["url"] = self.request.workflow.url
        self._part(main)

    def _versioned(self, node: Node) -> None:
        """The workflow's version (as its request states it) on the workflow and its files."""
        version = self.request.workflow.version
        if version:
            typ = node.get("@type")
            application = typ == "SoftwareApplication"
            node["softwareVersion" if application else "version"] = version

    # -- engine and steps ----------------------------------------------------

    def _engine(self) -> None:
        engine = self.record.engine
        url = ENGINE_URLS.get(engine)
        node: Node = {
            "@id": url or f"#engine-{fragment(engine)}",
            "@type": "SoftwareApplication",
            "name": engine,
        }
        if url:
            node["url"] = url
        if self.record.engine_version:
            node["softwareVersion"] = self.record.engine_version
        self.engine_id = self.graph.add(node)["@id"]

    def _step_execution(self, index: int, step: StepRecord) -> str:
        """Add one step execution (CreateAction + ControlAction); return the ControlAction id."""
        tool_id = self._tool(step.tool, self._owner(step.step) or self.main_id)
        howto_id = self._howto(step.step, tool_id)
        action_id = f"#step-run-{index}"
        self._action_by_name.setdefault(step.name, action_id)
        self._action_by_name.setdefault(step.step, action_id)
        action = self._action(
            action_id, f"Run of step {step.name}", step.status, step.start_time, step.end_time
        )
        action["instrument"] = ref(tool_id)
        action["object"] = refs(self._values_of(step.inputs, tool_id, "input", step))
        action["result"] = refs(self._values_of(step.outputs, tool_id, "output", step))
        if step.container is not None:
            action["containerImage"] = ref(self._image(step.container))
        if step.exit_code is not None:
            action["additionalProperty"] = ref(self._exit_code(action_id, step.exit_code))
        if step.status is RunStatus.FAILED:
            code = f" with exit code {step.exit_code}" if step.exit_code is not None else ""
            action["error"] = step.error or f"Step {step.name} failed{code}"
        for log in step.logs:
            self._log(log, self._place_step_file(log.path, False), action_id)
        control_id = f"#step-control-{index}"
        control = self._action(
            control_id,
            f"Orchestration of step {step.name}",
            step.status,
            step.start_time,
            step.end_time,
            typ="ControlAction",
        )
        control["instrument"] = ref(howto_id)
        control["object"] = ref(action_id)
        if "error" in action:
            control["error"] = action["error"]
        return control_id

    def _tool(self, tool: str, owner: str | None, workflow: bool = False) -> str:
        """The entity of ``tool``, added on first use; listed in ``owner``'s ``hasPart``.

        ``owner`` is the workflow that ran it (``None`` when it did not run);
        ``workflow``: the tool is a nested workflow that ran.
        """
        tool_id = self._tools.get(tool)
        if tool_id is None:
            node = self._tool_file(tool) or self._named_tool(tool)
            tool_id = str(node["@id"])
            self._versioned(node)
            if is_file(node):
                self._part(node)
            else:
                self.graph.add(node)
            self._tools[tool] = tool_id
        if workflow:  # also when first met at a step that did not run
            known = self.graph.get(tool_id)
            assert known is not None
            self._as_workflow(known)
        if owner is not None:
            owner_node = self.graph.get(owner)
            assert owner_node is not None
            parts = owner_node.setdefault("hasPart", [])
            if ref(tool_id) not in parts:
                parts.append(ref(tool_id))
        return tool_id

    def _named_tool(self, tool: str) -> Node:
        """A tool known by name only; one known by a host URI is named by its file name."""
        name = _short(tool)
        tool_id, number = f"#tool-{fragment(name)}", 1
        while tool_id in self.graph:  # another tool of the same file name
            number += 1
            tool_id = f"#tool-{fragment(name)}-{number}"
        return {"@id": tool_id, "@type": "SoftwareApplication", "name": name}

    def _tool_file(self, tool: str) -> Node | None:
        """The tool as a file of the workflow (``tool.cwl`` or ``tool.cwl#id``), if it is one."""
        name, _, anchor = tool.partition("#")
        if name.startswith("file://"):
            name = unquote(urlsplit(name).path)
        if not name:
            return None
        src = self.spec.workflow_src.resolve()
        candidate = (src / name).resolve()  # an absolute path stays as it is
        if not candidate.is_relative_to(src) or not candidate.is_file():
            return None
        relative = candidate.relative_to(src).as_posix()
        location = self.spec.workflow_location + relative
        file_id = self.local_id(location)
        # named as in the workflow folder: the engine's URI holds the host's run folder
        if anchor:
            return {
                "@id": f"{file_id}#{fragment(anchor)}",
                "@type": "SoftwareSourceCode",
                "name": f"{relative}#{anchor}",
            }
        if file_id == self.main_id:
            return None
        node = data_entity(file_id, Placed(location, False, self.placer.digest_of(location)),
                           relative)
        node["@type"] = ["File", "SoftwareSourceCode"]
        return node

    def _image(self, container: ContainerRecord) -> str:
        key = (container.image, container.image_id)
        known = self._images.get(key)
        if known is None:
            known = f"#container-image-{len(self._images)}"
            self.graph.add(image_entity(known, container))
            self._images[key] = known
        return known

    def _exit_code(self, action_id: str, code: int) -> str:
        value_id = f"{action_id}-exit-code"
        self.graph.add(
            {
                "@id": value_id,
                "@type": "PropertyValue",
                "name": "exit code",
                "propertyID": "exitCode",
                "value": code,
            }
        )
        return value_id

    def _place_step_file(self, path: Path, is_dir: bool) -> Placed:
        """A step's file (or log) in the crate, copied where it sat in the run folder."""
        return self.placer.place_as_in_run(path, is_dir, self.spec.prefix)

    # -- actions -------------------------------------------------------------

    def _action(
        self,
        action_id: str,
        name: str,
        status: RunStatus,
        start: datetime | None,
        end: datetime | None,
        typ: str = "CreateAction",
    ) -> Node:
        node: Node = {
            "@id": action_id,
            "@type": typ,
            "name": name,
            "description": f"{name} ({status.value})",
            "actionStatus": status.action_status,
        }
        if start is not None:
            node["startTime"] = iso(start)
        if end is not None:
            node["endTime"] = iso(end)
        agent = self._agent() if typ == "CreateAction" else None
        if agent is not None:
            node["agent"] = ref(agent)
        if typ == "CreateAction":
            self._mentions[action_id] = None
        return self.graph.add(node)

    def _agent(self) -> str | None:
        """Who asked for the run; else the TRE that ran it (the operator's publisher)."""
        agent = self.request.agent
        if agent is None:
            publisher = self.spec.publisher
            return self.graph.add(publisher.entity())["@id"] if publisher else None
        if agent.id not in self.graph:
            person = self.graph.add({"@id": agent.id, "@type": "Person",
                                     "name": agent.name or agent.id})
            for org in agent.affiliations:
                self.graph.add(organization(org.id, org.name))
                link(person, "affiliation", org.id)
        return agent.id

    def _workflow_action(self) -> None:
        record = self.record
        name = self.request.workflow.name or PurePosixPath(self.spec.main_location).name
        action = self._action(
            WORKFLOW_RUN_ID,
            f"Run of workflow {name}",
            record.status,
            record.start_time,
            record.end_time,
        )
        action["instrument"] = ref(self.main_id)
        action["object"] = refs(self._inputs())
        action["result"] = refs(self._values_of(record.outputs, self.main_id, "output", None))
        if record.status is RunStatus.FAILED:
            action["error"] = record.error or "The workflow run failed"

    def _organize_action(self, control_ids: list[str]) -> None:
        record = self.record
        node = self._action(
            ORGANIZE_ID,
            f"Orchestration of the run by {record.engine}",
            record.status,
            record.start_time,
            record.end_time,
            typ="OrganizeAction",
        )
        node["instrument"] = ref(self.engine_id)
        node["object"] = refs(control_ids)
        node["result"] = ref(WORKFLOW_RUN_ID)
        if record.status is RunStatus.FAILED:
            node["error"] = record.error or "The workflow run failed"
        self._mentions[ORGANIZE_ID] = None

    def _about(self, about: str | None) -> str:
        if about is None:
            return WORKFLOW_RUN_ID
        return self._action_by_name.get(about, WORKFLOW_RUN_ID)

    def _log(self, log: LogRecord, placed: Placed, about: str) -> None:
        entity = self._data(placed)
        entity["name"] = log.name
        entity.setdefault("encodingFormat", "text/plain")
        if log.cut:
            entity["description"] = capped_description(log.cut)
        link(entity, "about", about)

    def _part(self, node: Node) -> Node:
        added = self.graph.add(node)
        self._has_part[str(added["@id"])] = None
        return added


def _short(name: str) -> str:
    """A step or tool named by the engine with a host URI or path (a lone CWL tool's
    job): its file name (and fragment), so no host path reaches the crate."""
    if "://" not in name and not name.startswith("/"):
        return name
    path, _, anchor = name.partition("#")
    base = unquote(path.rstrip("/").rsplit("/", 1)[-1])
    return f"{base}#{anchor}" if anchor else base

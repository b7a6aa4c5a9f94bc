"""Nested workflows in the run crate: their steps, their runs, and steps that did not run.

A nested workflow that ran is a ``ComputationalWorkflow`` of its own, with its
``step``s and the tools it ran in its ``hasPart``; its run is a
``CreateAction`` (``instrument``: the nested workflow) that a ``ControlAction``
of the outer step orchestrates. A step that did not run keeps its
``HowToStep`` and tool, with no action (Provenance Run Crate 0.5, "Conditional
step execution"). :class:`NestedWorkflows` is the part of
:class:`~cratebridge.provenance.runcrate.RunCrateBuilder` that does this; it
names what it uses of the builder below.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from cratebridge.engines.record import (
    FileRecord,
    ParameterValue,
    PlannedStep,
    RunRecord,
    RunStatus,
    SubworkflowRecord,
)
from cratebridge.intake.request import RunRequest
from cratebridge.provenance.entities import link
from cratebridge.provenance.graph import Graph, Node, fragment, ref, refs
from cratebridge.provenance.locations import Placed, Placer

__all__ = ["COMPUTATIONAL_WORKFLOW", "NestedWorkflows", "is_file"]

COMPUTATIONAL_WORKFLOW = "https://bioschemas.org/profiles/ComputationalWorkflow/1.0-RELEASE"
#: A condition longer than this is cut in the step's description (it is in the workflow file).
CONDITION_CHARS = 200


class NestedWorkflows:
    """Workflows within the workflow, their steps and runs (a part of the run crate's builder)."""

    # what the builder holds
    graph: Graph
    record: RunRecord
    request: RunRequest
    placer: Placer
    main_id: str
    _workflows: dict[str, str]  # by the path of their step
    _steps: dict[str, str]
    _step_count: dict[str, int]
    _main_run: str  # the main workflow's action

    # what the builder does
    def _tool(self, tool: str, owner: str | None, workflow: bool = False) -> str:
        raise NotImplementedError

    def _action(self, action_id: str, name: str, status: RunStatus, start: datetime | None,
                end: datetime | None, typ: str = "CreateAction") -> Node:
        raise NotImplementedError

    def _parameter(self, owner: str, direction: str, name: str, kind: str) -> str:
        raise NotImplementedError

    def _property_value(self, name: str, value: object, owner: str, direction: str) -> str:
        raise NotImplementedError

    def _mapped_id(self, path: Path) -> str | None:
        raise NotImplementedError

    def _data(self, placed: Placed) -> Node:
        raise NotImplementedError

    # -- nested workflows ----------------------------------------------------

    def _as_workflow(self, node: Node) -> None:
        """Make a tool entity a nested workflow (a contextual entity unless a file of its own)."""
        kinds = ["SoftwareSourceCode", "ComputationalWorkflow", "HowTo"]
        node["@type"] = ["File", *kinds] if is_file(node) else kinds
        node["programmingLanguage"] = ref(self.request.workflow.language.value)
        node["conformsTo"] = ref(COMPUTATIONAL_WORKFLOW)

    def _owner(self, step: str) -> str | None:
        """The workflow that step ``step`` (a path) is a step of, if it is described."""
        return self._workflows.get(step.rpartition("/")[0])

    def _howto(self, step: str, tool_id: str, planned: PlannedStep | None = None) -> str:
        """The ``HowToStep`` of step ``step`` (a path) in the workflow it belongs to.

        A step of a nested workflow is that workflow's, and shared by every run
        of it; a path with no described workflow above it is a step of the main one.
        """
        known = self._steps.get(step)
        if known is not None:
            return known
        owner, name = self._owner(step), step.rpartition("/")[2]
        if owner is None:
            owner, name = self.main_id, step
        separator = "/" if "#" in owner else "#"
        step_id = f"{owner}{separator}step/{fragment(name)}"
        count = self._step_count.get(owner, 0)
        node = self.graph.get(step_id)
        if node is None:
            node = self.graph.add(
                {
                    "@id": step_id,
                    "@type": "HowToStep",
                    "name": name,
                    "position": str(planned.position if planned else count),
                    "workExample": ref(tool_id),
                }
            )
            if planned is not None and planned.condition is not None:
                condition = planned.condition
                if len(condition) > CONDITION_CHARS:
                    condition = condition[:CONDITION_CHARS] + "..."
                node["description"] = f"Runs only when {condition} is true"
            self._step_count[owner] = count + 1
            owner_node = self.graph.get(owner)
            assert owner_node is not None
            owner_node.setdefault("step", []).append(ref(step_id))
        self._steps[step] = step_id
        return step_id

    def _planned_steps(self) -> None:
        """Every step the engine says its workflows have, whether it ran or not.

        A nested workflow that ran is described as a workflow before its own
        steps are; a tool that did not run is in no workflow's ``hasPart``
        (nothing ran it), but its step still points at it.
        """
        executed = {s.step for s in self.record.steps}
        nested_runs = {r.step for r in self.record.subworkflows}
        for planned in self.record.planned:
            owner = self._owner(planned.step)
            if owner is None:
                continue  # inside a nested workflow that is not described
            if planned.workflow and planned.step in nested_runs:
                tool_id = self._tool(planned.tool, owner, workflow=True)
                self._workflows[planned.step] = tool_id
            else:
                ran = planned.step in executed and not planned.workflow
                tool_id = self._tool(planned.tool, owner if ran else None)
            self._howto(planned.step, tool_id, planned)

    def _subworkflow_execution(self, index: int, run: SubworkflowRecord) -> str:
        """Add one run of a nested workflow (CreateAction + ControlAction); return the latter."""
        workflow_id = self._workflows.get(run.step)
        if workflow_id is None:
            owner = self._owner(run.step) or self.main_id
            workflow_id = self._tool(run.tool, owner, workflow=True)
            self._workflows[run.step] = workflow_id
        howto_id = self._howto(run.step, workflow_id)
        action_id = f"#subworkflow-run-{index}"
        action = self._action(action_id, f"Run of nested workflow {run.name}", run.status,
                              run.start_time, run.end_time)
        for skipped in run.skipped:  # this run's: another run of it may have run the step
            _note_skipped(action, skipped)
        action["instrument"] = ref(workflow_id)
        action["object"] = refs(self._nested_values(run.inputs, workflow_id, "input"))
        action["result"] = refs(self._nested_values(run.outputs, workflow_id, "output"))
        if run.status is RunStatus.FAILED:
            action["error"] = run.error or f"Nested workflow {run.name} failed"
        control_id = f"#subworkflow-control-{index}"
        control = self._action(control_id, f"Orchestration of step {run.step}", run.status,
                               run.start_time, run.end_time, typ="ControlAction")
        control["instrument"] = ref(howto_id)
        control["object"] = ref(action_id)
        if "error" in action:
            control["error"] = action["error"]
        return control_id

    def _nested_values(self, values: Iterable[FileRecord | ParameterValue], owner: str,
                       direction: str) -> list[str]:
        """A nested run's inputs or outputs: its steps' files (never copied here) and values."""
        ids: list[str] = []
        for value in values:
            if isinstance(value, ParameterValue):
                if value.value is not None:  # no value: nothing to describe, as at the top
                    ids.append(self._property_value(value.parameter, value.value, owner,
                                                    direction))
                continue
            mapped = self._mapped_id(value.path)
            placed = self.placer.lookup(value.path) if mapped is None else None
            if mapped is not None:
                ids.append(mapped)
            elif placed is not None:
                entity = self._data(placed)
                if value.parameter:
                    kind = "Dataset" if value.is_dir else "File"
                    link(entity, "exampleOfWork",
                         self._parameter(owner, direction, value.parameter, kind))
                ids.append(str(entity["@id"]))
        return ids

    def _skipped_notes(self) -> None:
        """Say on the main workflow's run which of its steps were skipped, and why (a
        nested workflow's runs say it of theirs, each its own)."""
        action = self.graph.get(self._main_run)
        for planned in self.record.planned:
            if planned.skipped and "/" not in planned.step and action is not None:
                _note_skipped(action, planned.step)


def _note_skipped(action: Node, step: str) -> None:
    action["description"] += f"; step {step} was skipped: its condition was false"


def is_file(node: Node) -> bool:
    """Whether an entity is a ``File`` (among its types)."""
    kinds = node["@type"]
    return "File" in (kinds if isinstance(kinds, list) else [kinds])

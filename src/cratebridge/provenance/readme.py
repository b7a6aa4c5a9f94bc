"""The run crate's ``README.md``: what ran, how it ended, and where to look, for people."""

from __future__ import annotations

from pathlib import PurePosixPath

from cratebridge.engines.record import RunRecord, StepRecord
from cratebridge.intake.request import RunRequest
from cratebridge.provenance.graph import iso

__all__ = ["run_readme"]

_GUIDE = """\
## Reading this crate

`ro-crate-metadata.json` is the machine-readable record (Provenance Run Crate 0.5).
Its `mainEntity` is the workflow as it ran; `#workflow-run` is the run as a whole;
`#step-run-N` is each step's execution, with its container image, times, exit code,
the files it read and wrote, and its standard error as the container broker
captured it; `#engine-run` is the engine's orchestration of the steps.
"""


def run_readme(request: RunRequest, record: RunRecord, main_location: str) -> str:
    """Markdown for the run crate of ``record``: the run, each step, a guide to the files."""
    name = request.workflow.name or PurePosixPath(main_location).name
    lines = [
        f"# Run of {_text(name)}",
        "",
        f"- Status: **{record.status.value}**",
        f"- Engine: {_text(record.engine)}"
        + (f" {_text(record.engine_version)}" if record.engine_version else ""),
        f"- Started: {iso(record.start_time)}",
        f"- Ended: {iso(record.end_time)}",
    ]
    if request.workflow.version:
        lines.append(f"- Workflow version: {_text(request.workflow.version)}")
    if record.error:
        lines.append(f"- Error: {_text(record.error)}")
    if record.steps:
        lines += ["", "## Steps", "", "| step | image | exit code | status |",
                  "| --- | --- | --- | --- |"]
        lines += [_step_row(step) for step in record.steps]
    lines += ["", _GUIDE]
    return "\n".join(lines)


def _step_row(step: StepRecord) -> str:
    image = step.container.image if step.container is not None else "(none)"
    code = "" if step.exit_code is None else str(step.exit_code)
    return (f"| {_cell(step.name)} | {_cell(image)} | {code} | {step.status.value} |")


def _text(value: str) -> str:
    """One line of the request's or engine's words, kept inert in Markdown."""
    return " ".join(value.split()).replace("<", "&lt;").replace(">", "&gt;")


def _cell(value: str) -> str:
    return _text(value).replace("|", "\\|")

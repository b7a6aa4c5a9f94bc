"""Synthetic run folders: a real request payload, real step files, a RunRequest and a RunRecord."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cratebridge.engines.interface import EnginePlan
from cratebridge.engines.record import (
    ContainerRecord,
    FileRecord,
    LogRecord,
    ParameterValue,
    RunRecord,
    RunStatus,
    StepRecord,
)
from cratebridge.intake.request import (
    Agent,
    CrateKind,
    InputBinding,
    InputKind,
    Language,
    Project,
    RunRequest,
    WorkflowRef,
)

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
SHA_A = "sha256:" + "a" * 64
SHA_B = "sha256:" + "b" * 64
AGENT = "https://orcid.org/0000-0002-1825-0097"
PROJECT = "#project-1"
ACTION = "#query-1"


def five_safes_metadata() -> dict[str, object]:
    """A minimal Five Safes 0.4 request crate (modelled on the validator's test crate)."""
    graph = [
        {
            "@id": "ro-crate-metadata.json",
            "@type": "CreativeWork",
            "about": {"@id": "./"},
            "conformsTo": {"@id": "https://w3id.org/ro/crate/1.2"},
        },
        {
            "@id": "./",
            "@type": "Dataset",
            "name": "Five Safes request",
            "description": "A synthetic request",
            "datePublished": "2025-03-01T10:00:00+00:00",
            "license": {"@id": "https://spdx.org/licenses/CC-BY-4.0"},
            "conformsTo": {"@id": "https://w3id.org/5s-crate/0.4"},
            "mainEntity": {"@id": "workflow/"},
            "hasPart": [{"@id": "workflow/"}, {"@id": "input1.txt"}],
            "mentions": [{"@id": ACTION}],
            "sourceOrganization": {"@id": PROJECT},
        },
        {
            "@id": "https://w3id.org/5s-crate/0.4",
            "@type": "Profile",
            "name": "Five Safes RO-Crate profile",
        },
        {
            "@id": "https://spdx.org/licenses/CC-BY-4.0",
            "@type": "CreativeWork",
            "name": "CC BY 4.0",
        },
        {
            "@id": "workflow/",
            "@type": "Dataset",
            "name": "Sort and count",
            "conformsTo": {"@id": "https://w3id.org/workflowhub/workflow-ro-crate/1.0"},
        },
        {
            "@id": ACTION,
            "@type": "CreateAction",
            "name": "Execute query 12389 on workflow",
            "actionStatus": "http://schema.org/PotentialActionStatus",
            "agent": {"@id": AGENT},
            "instrument": {"@id": "workflow/"},
            "object": [{"@id": "input1.txt"}, {"@id": "#threshold"}],
        },
        {
            "@id": "input1.txt",
            "@type": "File",
            "name": "input1",
            "exampleOfWork": {"@id": "#param-lines"},
        },
        {
            "@id": "#threshold",
            "@type": "PropertyValue",
            "name": "threshold",
            "value": 3,
            "exampleOfWork": {"@id": "#param-threshold"},
        },
        {"@id": "#param-lines", "@type": "FormalParameter", "name": "lines"},
        {"@id": "#param-threshold", "@type": "FormalParameter", "name": "threshold"},
        {
            "@id": PROJECT,
            "@type": "Project",
            "name": "Project 1",
            "member": [{"@id": "https://ror.org/027m9bs27"}],
        },
        {
            "@id": AGENT,
            "@type": "Person",
            "name": "Josiah Carberry",
            "affiliation": {"@id": "https://ror.org/027m9bs27"},
            "memberOf": [{"@id": PROJECT}],
        },
        {
            "@id": "https://ror.org/027m9bs27",
            "@type": "Organization",
            "name": "The University of Manchester",
        },
    ]
    return {"@context": "https://w3id.org/ro/crate/1.2/context", "@graph": graph}


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@dataclass
class Run:
    """A run folder with the request and record that describe it."""

    run_dir: Path
    request: RunRequest
    record: RunRecord
    plan: EnginePlan


def make_run(
    tmp_path: Path, *, kind: CrateKind = CrateKind.FIVE_SAFES, failed: bool = False
) -> Run:
    """Three steps (two CWL tool files, one named tool), files and an int parameter."""
    run_dir = tmp_path / "run"
    crate = run_dir / "request" / "data"
    wf = crate / "workflow"
    main = _write(wf / "main.cwl", "cwlVersion: v1.2\nclass: Workflow\n")
    _write(wf / "tools" / "sort.cwl", "class: CommandLineTool\nbaseCommand: sort\n")
    _write(wf / "tools" / "count.cwl", "class: CommandLineTool\nbaseCommand: wc\n")
    input1 = _write(crate / "input1.txt", "b\na\nc\n")
    sorted_ = _write(run_dir / "work" / "s1" / "sorted.txt", "a\nb\nc\n")
    count = _write(run_dir / "work" / "s2" / "count.txt", "3\n")
    report = _write(run_dir / "outputs" / "report.txt", "3 lines\n")
    summary = _write(run_dir / "outputs" / "summary.csv", "lines,3\n")
    engine_log = _write(run_dir / "logs" / "engine.log", "engine ran\n")
    stderr = _write(run_dir / "logs" / "report.stderr", "report: boom\n")
    stdout = _write(run_dir / "logs" / "sort.stdout", "")

    def step(i: int, name: str, tool: str, **kw: object) -> StepRecord:
        status = kw.pop("status", RunStatus.COMPLETED)
        return StepRecord(
            step=name,
            name=name,
            tool=tool,
            status=status,  # type: ignore[arg-type]
            start_time=T0 + timedelta(minutes=i),
            end_time=T0 + timedelta(minutes=i + 1),
            exit_code=kw.pop("exit_code", 0),  # type: ignore[arg-type]
            container=ContainerRecord(f"busybox:1.3{i}", SHA_A if i < 2 else SHA_B, f"c{i}"),
            **kw,  # type: ignore[arg-type]
        )

    steps = (
        step(
            0,
            "sort",
            "tools/sort.cwl",
            inputs=(FileRecord(input1, "lines"),),
            outputs=(FileRecord(sorted_, "sorted"),),
            logs=(LogRecord(stdout, "stdout"),),
        ),
        step(
            1,
            "count",
            "tools/count.cwl",
            inputs=(FileRecord(sorted_, "lines"), ParameterValue("threshold", 3)),
            outputs=(FileRecord(count, "count"), ParameterValue("n", 3)),
        ),
        step(
            2,
            "report",
            "report-tool",
            inputs=(FileRecord(count, "count"),),
            outputs=() if failed else (FileRecord(report, "report"),),
            logs=(LogRecord(stderr, "stderr"),),
            status=RunStatus.FAILED if failed else RunStatus.COMPLETED,
            exit_code=1 if failed else 0,
        ),
    )
    record = RunRecord(
        engine="cwltool",
        engine_version="3.1.20240508115724",
        status=RunStatus.FAILED if failed else RunStatus.COMPLETED,
        start_time=T0,
        end_time=T0 + timedelta(minutes=5),
        outputs=(FileRecord(summary, "summary"),)
        if failed
        else (FileRecord(report, "report"), FileRecord(summary, "summary"), ParameterValue("n", 3)),
        steps=steps,
        logs=(LogRecord(engine_log, "engine log"),),
        error="step report failed: exit code 1" if failed else None,
    )
    request = RunRequest(
        crate_dir=crate,
        metadata=five_safes_metadata(),
        kind=kind,
        workflow=WorkflowRef(
            id="workflow/",
            root=wf,
            main_file=main,
            language=Language.CWL,
            language_source="crate",
            name="Sort and count",
        ),
        inputs=(
            InputBinding(
                "lines",
                InputKind.FILE,
                "input1.txt",
                path=input1,
                formal_parameter_id="#param-lines",
            ),
            InputBinding(
                "threshold",
                InputKind.VALUE,
                "#threshold",
                value=3,
                formal_parameter_id="#param-threshold",
            ),
        ),
        action_id=ACTION,
        action_name="Execute query 12389 on workflow",
        agent=Agent(AGENT, "Josiah Carberry"),
        project=Project(PROJECT, "Project 1"),
        bagit=True,
        bag_info={"External-Identifier": "urn:uuid:1b6b5b4e-0000-4000-8000-000000000001"},
    )
    plan = EnginePlan(
        engine="cwltool",
        language=Language.CWL,
        workflow=main,
        command=("cwltool", str(main)),
        env={},
        images=(),
        parameters={"threshold": 3},
    )
    return Run(run_dir, request, record, plan)


@pytest.fixture
def five_safes_run(tmp_path: Path) -> Run:
    return make_run(tmp_path)


@pytest.fixture
def failed_run(tmp_path: Path) -> Run:
    return make_run(tmp_path, failed=True)

"""The conformance kit: the request crates every engine plugin must pass.

A plugin's test suite subclasses :class:`EngineConformance`, names its engine,
the folder holding its fixture workflows and the workflow's main file name,
and pytest runs every check against the real engine, real containers and the
real external validator::

    class TestCwltool(EngineConformance):
        __test__ = True
        engine = "cwltool"
        workflows = REPO / "fixtures" / "workflows" / "cwl"
        main_file = "workflow.cwl"

The fixture folder holds one Workflow RO-Crate folder per case
(``three-step``, ``step-fails``, ``scalar-inputs``), written in the engine's
language, whose outputs must be exactly those in :data:`CASES`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote

import pytest

from cratebridge.config import load_config
from cratebridge.containers.sandbox import OWNER_LABEL, labelled_containers, owner_id
from cratebridge.engines.record import RunStatus
from cratebridge.intake import IntakeLimits, open_crate
from cratebridge.pipeline import RunOutcome, plan, run
from cratebridge.testing.crates import (
    FileInput,
    Input,
    RequestSpec,
    ReviewAction,
    ReviewKind,
    ValueInput,
    ZipLayout,
    write_request_zip,
)
from cratebridge.testing.validator import (
    ACCEPTED_FINDINGS,
    FAILED_ACTION_FINDINGS,
    UNSTATED_FINDINGS,
    ExternalValidator,
)

__all__ = ["CASES", "KIT_PUBLISHER", "EngineConformance", "KitCase", "KitResult",
           "assert_recommended"]

THREE_STEP_INPUT = "alpha beta gamma\ndelta epsilon\nzeta\neta theta iota kappa\n"
FAILURE_MARK = "CRATEBRIDGE_FIXTURE_FAILURE"
PROVENANCE_PROFILE = "provenance-run-crate-0.5"
#: The kit's operator names a publisher, as a TRE would ([publisher] in docs/configuration.md)
KIT_PUBLISHER = ('[publisher]\nname = "cratebridge conformance kit TRE"\n'
                 'url = "https://tre.example.org/"\n\n')
FIVE_SAFES_PROFILE = "five-safes-crate"


@dataclass(frozen=True)
class KitCase:
    """One request crate of the kit and what every engine must make of it.

    ``files`` are input files the kit writes (name -> content); ``values`` the
    PropertyValue inputs; ``outputs`` the workflow outputs (file name -> exact
    content); ``steps`` the number of step executions the record must hold.
    """

    name: str
    files: Mapping[str, str] = field(default_factory=dict)
    values: Mapping[str, object] = field(default_factory=dict)
    status: RunStatus = RunStatus.COMPLETED
    outputs: Mapping[str, str] = field(default_factory=dict)
    steps: int = 1


CASES: Mapping[str, KitCase] = {
    "three-step": KitCase(
        "three-step", files={"data": THREE_STEP_INPUT}, values={"repeat": 2},
        outputs={"report.txt": "lines: 4\nwords: 10\nfirst lines:\nalpha beta gamma\n"
                               "delta epsilon\n"},
        steps=3,
    ),
    "step-fails": KitCase(
        "step-fails", files={"data": THREE_STEP_INPUT}, values={"repeat": 2},
        status=RunStatus.FAILED,
    ),
    "scalar-inputs": KitCase(
        "scalar-inputs",
        values={"text": "hello crate", "count": 42, "flag": True, "ratio": 0.25},
        outputs={"values.txt": "text=hello crate\ncount=42\nflag=true\nratio=0.25\n"},
        steps=1,
    ),
}


@dataclass(frozen=True)
class KitResult:
    """A run of one kit case: the outcome and the unpacked result crate."""

    outcome: RunOutcome
    crate: Path
    metadata: dict[str, Any]

    def entities(self, type_name: str, metadata: dict[str, Any] | None = None) -> list[
            dict[str, Any]]:
        graph = (metadata or self.metadata)["@graph"]
        return [e for e in graph if type_name in _types(e)]

    def output(self, name: str) -> Path:
        """The workflow output ``name`` (its path in the outputs folder), found as the
        result crates name it: through the request's CreateAction."""
        for action in self.entities("CreateAction"):
            for item in _ids(action.get("result")):
                path = unquote(item)
                if path == f"outputs/{name}" or path.endswith(f"/outputs/{name}"):
                    return self.crate / path
        raise AssertionError(f"the result crate's CreateAction names no output {name}")

    def provenance(self) -> tuple[Path, dict[str, Any]]:
        """The crate holding the run's provenance: nested for Five Safes, else the crate."""
        for entity in self.metadata["@graph"]:
            candidate = self.crate / str(entity.get("@id", ""))
            if entity.get("@id", "").endswith("/") and \
                    (candidate / "ro-crate-metadata.json").is_file() and \
                    "Dataset" in _types(entity) and candidate != self.crate and \
                    _is_run_crate(candidate):
                return candidate, json.loads((candidate / "ro-crate-metadata.json").read_text())
        return self.crate, self.metadata


def _ids(value: object) -> list[str]:
    items = value if isinstance(value, list) else [value]
    return [str(i["@id"]) for i in items if isinstance(i, dict) and "@id" in i]


def _types(entity: Mapping[str, Any]) -> list[str]:
    value = entity.get("@type", [])
    return value if isinstance(value, list) else [value]


def _is_run_crate(folder: Path) -> bool:
    text = (folder / "ro-crate-metadata.json").read_text()
    return "https://w3id.org/ro/wfrun/" in text


class EngineConformance:
    """Abstract checks every engine must pass; subclass with ``__test__ = True``."""

    __test__ = False
    engine: ClassVar[str]
    workflows: ClassVar[Path]
    main_file: ClassVar[str]
    #: extra operator configuration (TOML) for this engine, e.g. an [engines.x] table
    config_toml: ClassVar[str] = ""

    # -- helpers -----------------------------------------------------------------

    @classmethod
    def request(cls, case: KitCase, tmp: Path) -> Path:
        inputs: list[Input] = []
        for parameter, content in case.files.items():
            source = tmp / "inputs" / f"{parameter}.txt"
            source.parent.mkdir(parents=True, exist_ok=True)
            source.write_text(content)
            inputs.append(FileInput(parameter, source))
        inputs.extend(ValueInput(p, v) for p, v in case.values.items())  # type: ignore[arg-type]
        spec = RequestSpec(
            workflow_dir=cls.workflows / case.name, main_workflow=cls.main_file,
            inputs=tuple(inputs), name=f"Conformance kit: {case.name} on {cls.engine}",
            reviews=(ReviewAction(ReviewKind.CHECK_VALUE),
                     ReviewAction(ReviewKind.VALIDATION_CHECK),
                     ReviewAction(ReviewKind.SIGN_OFF)),
        )
        return write_request_zip(spec, tmp / f"{case.name}-request.zip", ZipLayout.FOLDER)

    @classmethod
    def config(cls, tmp: Path) -> Path:
        path = tmp / "cratebridge.toml"
        path.write_text(f'[run]\nruns_dir = "{tmp / "runs"}"\ntimeout = "15m"\n\n'
                        + KIT_PUBLISHER + cls.config_toml)
        return path

    @classmethod
    def run_case(cls, name: str, tmp: Path) -> KitResult:
        case = CASES[name]
        crate = cls.request(case, tmp)
        out = tmp / "result.zip"
        outcome = run(crate, out, engine=cls.engine, config=load_config(cls.config(tmp)))
        opened = open_crate(out, tmp / "unpacked", IntakeLimits())
        metadata = json.loads((opened.root / "ro-crate-metadata.json").read_text())
        return KitResult(outcome, opened.root, metadata)

    @pytest.fixture(scope="class")
    @classmethod
    def validator(cls) -> ExternalValidator:
        found = ExternalValidator.find()
        if found is not None:
            return found
        reason = ("rocrate-validator (pip install roc-validator) or the Five Safes validator "
                  "profiles ($CRATEBRIDGE_SHARED_DIR/validator-profiles) are missing")
        if os.environ.get("CRATEBRIDGE_KIT_VALIDATE") == "0":
            pytest.skip(f"CRATEBRIDGE_KIT_VALIDATE=0: {reason}")
        pytest.fail(f"cannot validate the result crates: {reason}; set "
                    "CRATEBRIDGE_KIT_VALIDATE=0 to skip these checks knowingly")

    @pytest.fixture(scope="class")
    @classmethod
    def three_step(cls, tmp_path_factory: pytest.TempPathFactory) -> KitResult:
        return cls.run_case("three-step", tmp_path_factory.mktemp("three-step"))

    @pytest.fixture(scope="class")
    @classmethod
    def step_fails(cls, tmp_path_factory: pytest.TempPathFactory) -> KitResult:
        return cls.run_case("step-fails", tmp_path_factory.mktemp("step-fails"))

    # -- checks --------------------------------------------------------------------

    def test_three_step_completes_with_right_outputs(self, three_step: KitResult) -> None:
        case = CASES["three-step"]
        assert three_step.outcome.status is RunStatus.COMPLETED, three_step.outcome.record.error
        assert three_step.outcome.exit_code == 0
        for name, content in case.outputs.items():
            assert three_step.output(name).read_text() == content

    def test_every_step_recorded_with_its_container(self, three_step: KitResult) -> None:
        steps = three_step.outcome.record.steps
        assert len(steps) == CASES["three-step"].steps
        for step in steps:
            assert step.container is not None, step.name
            assert step.container.image_id and step.container.image_id.startswith("sha256:")
            assert step.exit_code == 0
            assert step.start_time and step.end_time and step.start_time <= step.end_time

    def test_request_action_completed_in_result(self, three_step: KitResult) -> None:
        mentioned = [e for e in three_step.entities("CreateAction")]
        assert len(mentioned) == 1
        action = mentioned[0]
        assert action["actionStatus"] in ("http://schema.org/CompletedActionStatus",
                                          {"@id": "http://schema.org/CompletedActionStatus"})
        assert action["startTime"] and action["endTime"] and action["result"]

    def test_one_create_action_per_step_with_container_image(
            self, three_step: KitResult) -> None:
        _, metadata = three_step.provenance()
        root = next(e for e in metadata["@graph"] if e["@id"] == "./")
        conforms = json.dumps(root.get("conformsTo"))
        assert "https://w3id.org/ro/wfrun/provenance/0.5" in conforms
        actions = three_step.entities("CreateAction", metadata)
        with_image = [a for a in actions if "containerImage" in a]
        assert len(with_image) == CASES["three-step"].steps

    def test_result_crates_pass_the_validator(self, three_step: KitResult,
                                              validator: ExternalValidator) -> None:
        folder, _ = three_step.provenance()
        assert_recommended(validator, folder, PROVENANCE_PROFILE)
        assert_recommended(validator, three_step.crate, FIVE_SAFES_PROFILE)

    def test_step_failure_gives_failed_result_with_step_log(self, step_fails: KitResult,
                                                            validator: ExternalValidator) -> None:
        outcome = step_fails.outcome
        assert outcome.status is RunStatus.FAILED and outcome.exit_code == 1
        assert outcome.record.error
        action = step_fails.entities("CreateAction")[0]
        assert "FailedActionStatus" in json.dumps(action["actionStatus"])
        assert action.get("error")
        logs = [p for p in step_fails.crate.rglob("*") if p.is_file()
                and FAILURE_MARK in p.read_text(errors="replace")
                and p.name != "ro-crate-metadata.json"]
        assert logs, "the failing step's stderr is not inside the result crate"
        folder, _ = step_fails.provenance()
        assert_recommended(validator, folder, PROVENANCE_PROFILE)
        assert_recommended(validator, step_fails.crate, FIVE_SAFES_PROFILE)

    def test_scalar_inputs_converted_and_bound(self, tmp_path: Path) -> None:
        result = self.run_case("scalar-inputs", tmp_path)
        assert result.outcome.status is RunStatus.COMPLETED, result.outcome.record.error
        for name, content in CASES["scalar-inputs"].outputs.items():
            assert result.output(name).read_text() == content

    def test_plan_names_engine_images_and_command_and_runs_nothing(
            self, tmp_path: Path) -> None:
        crate = self.request(CASES["three-step"], tmp_path)
        before = _containers()
        outcome = plan(crate, engine=self.engine, config=load_config(self.config(tmp_path)))
        assert outcome.plan.engine == self.engine
        assert outcome.plan.command and outcome.plan.images
        assert all(use.present for use in outcome.plan.images)
        assert _containers() == before
        assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def assert_recommended(validator: ExternalValidator, crate: Path, profile: str,
                       unstated: Collection[str] = ()) -> None:
    """No finding at RECOMMENDED but those :data:`ACCEPTED_FINDINGS` explains, those of a
    failed action, and the ``unstated`` ones (of :data:`UNSTATED_FINDINGS`) the caller
    knows its request or configuration leaves out."""
    assert set(unstated) <= set(UNSTATED_FINDINGS), unstated
    found = validator.findings(crate, profile)
    metadata = json.loads((crate / "ro-crate-metadata.json").read_text())
    failed = {e["@id"] for e in metadata["@graph"]
              if "FailedActionStatus" in json.dumps(e.get("actionStatus"))}
    left = [f for f in found if f.check not in ACCEPTED_FINDINGS and f.check not in unstated
            and not (f.check in FAILED_ACTION_FINDINGS and f.entity.removeprefix("./") in failed)]
    hints = {f.check: UNSTATED_FINDINGS[f.check] for f in left if f.check in UNSTATED_FINDINGS}
    assert not left, (f"{crate} ({profile}):\n" + "\n".join(map(str, left))
                      + "".join(f"\n{check}: fails when {why}" for check, why in hints.items()))


def _containers() -> list[str]:
    """Containers started on behalf of this process (other runs may share the machine)."""
    return sorted(labelled_containers("docker", f"{OWNER_LABEL}={owner_id()}"))

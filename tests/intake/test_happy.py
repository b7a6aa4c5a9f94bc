"""Intake of clean crates: every accepted layout, the three kinds, the mirror, mappings."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import cratebridge.intake as intake
from cratebridge.errors import BagItError, CrateRejected
from cratebridge.intake import (
    CrateKind,
    InputKind,
    Language,
    open_crate,
    parse_request,
    verify_bag,
)

from .conftest import corpus, run_intake

REFERENCE_04 = Path(
    "/work/shared/reference/five-safes-0.4/"
    "04_rocrate-validator-5s-branch_five-safes-crate-request.json"
)


def _check_five_safes(request: intake.RunRequest) -> None:
    assert request.kind is CrateKind.FIVE_SAFES
    assert request.action_id == "#query-1"
    assert request.agent == intake.Agent(
        "https://orcid.org/0000-0001-9842-9718", "Stian Soiland-Reyes"
    )
    assert request.project is not None and request.project.name == "Investigation of cancer"
    assert request.workflow.language is Language.CWL
    assert request.workflow.main_file.name == "main.cwl"
    assert request.workflow.main_file.is_file()
    assert "programmingLanguage" in request.workflow.language_source
    sequence = request.input("input-sequence")
    assert sequence is not None and sequence.kind is InputKind.FILE
    assert sequence.path is not None and sequence.path.read_text() == "ACGTACGT\n"
    assert sequence.formal_parameter_id == "#sequence"
    fast = request.input("fast-mode")
    assert fast is not None and fast.kind is InputKind.VALUE and fast.value == "True"
    assert request.reviews == (
        intake.ReviewAction(
            "#check-1",
            "https://w3id.org/shp#CheckValue",
            "http://schema.org/CompletedActionStatus",
            "2025-09-20T14:40:00+00:00",
        ),
    )


def test_bag_in_single_top_level_folder(tmp_path: Path, run_dir: Path) -> None:
    request = run_intake(corpus.request_bag_zip(tmp_path), run_dir / "request")
    _check_five_safes(request)
    assert request.bagit
    assert request.bag_info["External-Identifier"].startswith("urn:uuid:")
    assert request.crate_dir == run_dir / "request" / "request" / "data"


def test_bag_at_zip_root(tmp_path: Path, run_dir: Path) -> None:
    bag = corpus.make_bag(corpus.write_request(tmp_path / "bag"))
    archive = corpus.zip_tree(bag, tmp_path / "root.zip")
    opened = open_crate(archive, run_dir / "request")
    assert opened.bag_dir == run_dir / "request"
    _check_five_safes(run_intake(archive, run_dir / "again"))


@pytest.mark.parametrize("prefix", ["", "crate/"])
def test_plain_crate_zip(tmp_path: Path, run_dir: Path, prefix: str) -> None:
    folder = corpus.write_request(tmp_path / "plain")
    archive = corpus.zip_tree(folder, tmp_path / "plain.zip", prefix=prefix)
    request = run_intake(archive, run_dir / "request")
    _check_five_safes(request)
    assert not request.bagit and request.bag_info == {}


def test_folder_source_bag(tmp_path: Path, run_dir: Path) -> None:
    bag = corpus.make_bag(corpus.write_request(tmp_path / "bag"))
    request = run_intake(bag, run_dir / "request")
    _check_five_safes(request)
    assert bag.exists(), "the source folder is copied, not moved"


def test_reference_04_through_the_mirror(tmp_path: Path, run_dir: Path) -> None:
    folder = tmp_path / "crate"
    folder.mkdir()
    shutil.copy(REFERENCE_04, folder / "ro-crate-metadata.json")
    (folder / "input1.txt").write_text("ACGT\n")
    mirror = corpus.mirror_for(tmp_path)
    request = run_intake(folder, run_dir / "request", mirror=mirror)
    assert request.kind is CrateKind.FIVE_SAFES
    assert request.workflow.id == corpus.WORKFLOW_URL
    assert request.workflow.source == "mirror:289-v1.crate.zip"
    assert request.workflow.root.is_relative_to(run_dir / "workflow-mirror")
    assert request.workflow.language is Language.CWL
    assert request.project is not None and request.project.id.startswith("#project-")
    binding = request.input("fast-mode")
    assert binding is not None and binding.value == "True"
    # The reference mentions only the CreateAction: no reviews yet.
    assert request.reviews == ()


def test_mirror_resolution_can_be_repeated(tmp_path: Path, run_dir: Path) -> None:
    folder = tmp_path / "crate"
    folder.mkdir()
    shutil.copy(REFERENCE_04, folder / "ro-crate-metadata.json")
    (folder / "input1.txt").write_text("ACGT\n")
    mirror = corpus.mirror_for(tmp_path)
    first = parse_request(folder, workflow_mirror=mirror, workflow_dest=run_dir / "wf")
    second = parse_request(folder, workflow_mirror=mirror, workflow_dest=run_dir / "wf")
    assert first.workflow == second.workflow


def test_plain_workflow_crate(tmp_path: Path, run_dir: Path) -> None:
    folder = corpus.write_workflow_crate(tmp_path / "wf")
    request = run_intake(folder, run_dir / "request")
    assert request.kind is CrateKind.WORKFLOW
    assert request.workflow.main_file == (run_dir / "request" / "main.cwl").resolve()
    assert request.inputs == ()
    assert request.action_id is None


def test_language_recognised_by_file_and_said(tmp_path: Path) -> None:
    folder = corpus.write_workflow_crate(
        tmp_path / "wf", corpus.workflow_crate_metadata(language="")
    )
    request = parse_request(folder)
    assert request.workflow.language is Language.CWL
    assert "names no programmingLanguage" in request.workflow.language_source
    assert "main.cwl" in request.workflow.language_source


@pytest.mark.parametrize(
    ("language", "expected"),
    [
        ({"@id": "https://w3id.org/workflowhub/workflow-ro-crate#nextflow"}, Language.NEXTFLOW),
        ({"@id": "#snakemake-lang"}, Language.SNAKEMAKE),
        ("CWL", Language.CWL),
    ],
)
def test_language_declared(tmp_path: Path, language: object, expected: Language) -> None:
    metadata = corpus.workflow_crate_metadata(language=language)
    metadata["@graph"].append(
        {"@id": "#snakemake-lang", "@type": "ComputerLanguage", "name": "Snakemake"}
    )
    request = parse_request(corpus.write_workflow_crate(tmp_path / "wf", metadata))
    assert request.workflow.language is expected


TOY = Language("https://example.org/toy", "toy", "Toy", "https://example.org/toy",
               files=("*.toy",), words=("toy language",))


@pytest.mark.parametrize("language", [{"@id": "https://example.org/toy"}, {"@id": "#toy"}])
def test_a_registered_language_is_recognised(tmp_path: Path, language: object) -> None:
    metadata = corpus.workflow_crate_metadata(language=language)
    metadata["@graph"].append({"@id": "#toy", "@type": "ComputerLanguage",
                               "name": "The Toy Language"})
    folder = corpus.write_workflow_crate(tmp_path / "wf", metadata)
    request = parse_request(folder, languages=(*intake.BUILTIN_LANGUAGES, TOY))
    assert request.workflow.language is TOY
    # without the plugin's language: refused, naming the languages cratebridge knows
    with pytest.raises(CrateRejected, match=r"none of the languages cratebridge knows "
                                            r"\(Common Workflow Language \(https://"):
        parse_request(folder)


def test_workflow_run_crate_reuses_its_completed_action(tmp_path: Path) -> None:
    metadata = corpus.workflow_crate_metadata()
    root = corpus.entity(metadata, "./")
    root["conformsTo"] = [{"@id": "https://w3id.org/ro/wfrun/workflow/0.5"}]
    root["mentions"] = {"@id": "#run"}
    metadata["@graph"] += [
        {
            "@id": "#run",
            "@type": "CreateAction",
            "instrument": {"@id": "main.cwl"},
            "actionStatus": {"@id": "http://schema.org/CompletedActionStatus"},
            "object": [{"@id": "#n"}],
        },
        {"@id": "#n", "@type": "PropertyValue", "name": "n", "value": 3},
    ]
    request = parse_request(corpus.write_workflow_crate(tmp_path / "wf", metadata))
    assert request.kind is CrateKind.WORKFLOW_RUN
    binding = request.input("n")
    assert binding is not None and binding.value == 3
    assert "own name" in binding.parameter_source


def test_dataset_map_binds_tre_local_dataset(tmp_path: Path) -> None:
    data = tmp_path / "tre-data" / "cohort"
    data.mkdir(parents=True)

    def mutate(m: dict[str, object]) -> None:
        graph = m["@graph"]
        assert isinstance(graph, list)
        graph.append(
            {
                "@id": "_:localid:tre72:cohort",
                "@type": "Dataset",
                "exampleOfWork": {"@id": "#cohort"},
            }
        )
        graph.append({"@id": "#cohort", "@type": "FormalParameter", "name": "cohort"})
        corpus.entity(m, "#query-1")["object"].append({"@id": "_:localid:tre72:cohort"})

    folder = corpus.write_request(tmp_path / "crate", mutate=mutate)
    request = parse_request(folder, dataset_map={"_:localid:tre72:cohort": data})
    binding = request.input("cohort")
    assert binding is not None
    assert binding.kind is InputKind.DIRECTORY and binding.path == data.resolve()


def test_percent_encoded_input_and_status_as_id(tmp_path: Path) -> None:
    def mutate(m: dict[str, object]) -> None:
        corpus.entity(m, "input1.txt")["@id"] = "my%20input.txt"
        action = corpus.entity(m, "#query-1")
        action["object"][0] = {"@id": "my%20input.txt"}
        action["actionStatus"] = {"@id": "http://schema.org/PotentialActionStatus"}

    folder = corpus.write_request(tmp_path / "crate", mutate=mutate)
    (folder / "my input.txt").write_text("x")
    binding = parse_request(folder).input("input-sequence")
    assert binding is not None and binding.path == (folder / "my input.txt").resolve()


def test_verify_bag_returns_bag_info(tmp_path: Path) -> None:
    bag = corpus.make_bag(corpus.write_request(tmp_path / "bag"))
    info = verify_bag(bag)
    assert info["Payload-Oxum"].endswith(".5")  # metadata, input, 3 workflow files


def test_verify_bag_lists_every_problem(tmp_path: Path) -> None:
    bag = corpus.make_bag(corpus.write_request(tmp_path / "bag"))
    (bag / "data" / "input1.txt").write_text("changed\n")
    (bag / "data" / "workflow" / "main.cwl").write_text("changed\n")
    with pytest.raises(BagItError) as info:
        verify_bag(bag)
    message = str(info.value)
    assert "data/input1.txt: sha512 checksum mismatch" in message
    assert "data/workflow/main.cwl: sha512 checksum mismatch" in message
    assert "Payload-Oxum" in message


def test_large_payload_hashes_in_flat_memory(tmp_path: Path) -> None:
    bag = corpus.write_request(tmp_path / "bag")
    with open(bag / "big.bin", "wb") as out:
        for _ in range(8):
            out.write(bytes(1024**2))
    corpus.make_bag(bag)
    assert verify_bag(bag)


def test_open_crate_refuses_non_empty_dest(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "x").write_text("x")
    with pytest.raises(CrateRejected):
        open_crate(corpus.request_bag_zip(tmp_path), dest)
    assert (dest / "x").exists(), "a caller's non-empty folder is never removed"


def test_every_public_name_resolves_and_none_is_imported_before_use() -> None:
    """An engine's process imports the request's types without the rest of intake."""
    for name in intake.__all__:
        assert getattr(intake, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        intake.nothing  # noqa: B018
    code = ("import sys, cratebridge.intake.request; "
            "print(sorted(m for m in sys.modules if m.startswith('cratebridge.intake.')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "['cratebridge.intake.request']"


def test_metadata_is_the_parsed_document(tmp_path: Path) -> None:
    folder = corpus.write_request(tmp_path / "crate")
    request = parse_request(folder)
    assert request.metadata == json.loads((folder / "ro-crate-metadata.json").read_text())

"""The hostile corpus: every crate is refused with exit code 3, a message naming the
file or entity, nothing written outside the run folder and no half-unpacked crate."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cratebridge.errors import CrateRejected, PolicyRefused, UnsafeCrate
from cratebridge.intake import open_crate, parse_request, verify_bag

from .conftest import corpus, run_intake

CASES = corpus.CASES


def _snapshot(top: Path, skip: Path) -> set[str]:
    """Every path under ``top`` except those under ``skip`` (the run folder)."""
    found: set[str] = set()
    for folder, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if Path(folder, d) != skip]
        found.update(os.path.join(folder, name) for name in dirs + files)
    return found


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 30
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_crate_is_refused(tmp_path: Path, case: corpus.Case) -> None:
    work = tmp_path / "inputs"
    work.mkdir()
    built = case.build(work)
    run_dir = tmp_path / "deep" / "runs" / "run-1"
    run_dir.mkdir(parents=True)
    dest = run_dir / "request"
    before = _snapshot(tmp_path, run_dir)

    with pytest.raises(CrateRejected) as info:
        _intake(built, dest)

    error = info.value
    assert type(error) is case.error, f"{type(error).__name__}: {error}"
    assert error.exit_code == 3
    assert case.mentions in str(error), str(error)
    assert "Traceback" not in str(error)
    assert _snapshot(tmp_path, run_dir) == before, "something was written outside the run"
    assert not Path("/tmp/cratebridge-evil.txt").exists()


def _intake(built: corpus.Built, dest: Path) -> None:
    """Run intake; a refusal while unpacking must leave no half-unpacked crate."""
    try:
        open_crate(built.source, dest, built.limits)
    except CrateRejected:
        assert not dest.exists(), "a refused crate must not stay half-unpacked"
        raise
    shutil.rmtree(dest)
    run_intake(
        built.source,
        dest,
        limits=built.limits,
        mirror=built.mirror,
        dataset_map=built.dataset_map,
    )


@pytest.mark.parametrize(
    "name", ["zip_slip", "symlink_in_zip", "bomb_ratio", "bomb_total", "oversized_metadata"]
)
def test_unpack_refusals_leave_nothing(tmp_path: Path, name: str) -> None:
    case = next(c for c in CASES if c.name == name)
    built = case.build(tmp_path)
    dest = tmp_path / "run" / "request"
    with pytest.raises(UnsafeCrate):
        open_crate(built.source, dest, built.limits)
    assert not dest.exists()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == []


def test_bomb_stops_at_the_limit_not_the_header(tmp_path: Path) -> None:
    """The total is counted from bytes written, so it holds with the ratio check off."""
    archive = corpus.write_zip(tmp_path / "bomb.zip", [("crate/zeros.bin", bytes(3 * 1024**2))])
    limits = corpus.IntakeLimits(max_total_bytes=1024**2, max_ratio=1e9)
    with pytest.raises(UnsafeCrate, match=r"zeros\.bin"):
        open_crate(archive, tmp_path / "dest", limits)
    assert not (tmp_path / "dest").exists()


def test_unmapped_tre_dataset_is_a_policy_refusal(tmp_path: Path) -> None:
    def mutate(m: dict[str, object]) -> None:
        corpus.entity(m, "input1.txt")["@id"] = "#dataset-cohort"
        corpus.entity(m, "#query-1")["object"][0] = {"@id": "#dataset-cohort"}

    folder = corpus.write_request(tmp_path / "crate", mutate=mutate)
    with pytest.raises(PolicyRefused) as info:
        parse_request(folder)
    assert info.value.exit_code == 4
    assert "#dataset-cohort" in str(info.value)


def test_verify_bag_without_bagit_txt(tmp_path: Path) -> None:
    bag = corpus.make_bag(corpus.write_request(tmp_path / "bag"))
    (bag / "bagit.txt").unlink()
    with pytest.raises(CrateRejected, match=r"bagit\.txt is missing"):
        verify_bag(bag)


def test_malformed_json_reports_position(tmp_path: Path) -> None:
    folder = tmp_path / "crate"
    folder.mkdir()
    (folder / "ro-crate-metadata.json").write_text('{\n  "@graph": [,]\n}')
    with pytest.raises(CrateRejected, match=r"line 2, column 14"):
        parse_request(folder)

"""Packaging a result folder: folder or ZIP, BagIt or not, written atomically."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import bagit
import pytest

from cratebridge.provenance import build_result_crate, write_result
from cratebridge.provenance import package as package_module

from .conftest import Run

EXTERNAL_ID = "urn:uuid:1b6b5b4e-0000-4000-8000-000000000001"


@pytest.fixture
def result(five_safes_run: Run, tmp_path: Path) -> Path:
    return build_result_crate(
        five_safes_run.request,
        five_safes_run.record,
        run_dir=five_safes_run.run_dir,
        dest=tmp_path / "result",
    )


def test_bagit_folder_validates(result: Path, tmp_path: Path) -> None:
    out = write_result(
        result, tmp_path / "bag", bagit=True, bag_info={"External-Identifier": EXTERNAL_ID}
    )
    bag = bagit.Bag(str(out))
    bag.validate()
    assert bag.info["External-Identifier"] == EXTERNAL_ID
    assert "sha512" in bag.algorithms
    assert (out / "data" / "ro-crate-metadata.json").is_file()
    assert (out / "data" / "provenance" / "ro-crate-metadata.json").is_file()


def test_bagit_zip_has_one_top_folder_and_validates(result: Path, tmp_path: Path) -> None:
    out = write_result(result, tmp_path / "result.zip", bagit=True)
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        assert {name.split("/", 1)[0] for name in names} == {"result"}
        assert "result/data/ro-crate-metadata.json" in names
        zf.extractall(tmp_path / "unzipped")
    bagit.Bag(str(tmp_path / "unzipped" / "result")).validate()


def test_plain_zip_and_folder(result: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(write_result(result, tmp_path / "plain.zip", bagit=False)) as zf:
        assert "ro-crate-metadata.json" in zf.namelist()
    folder = tmp_path / "empty"
    folder.mkdir()
    out = write_result(result, folder, bagit=False)
    assert (out / "provenance" / "ro-crate-metadata.json").is_file()


def test_a_folder_holds_copies_in_the_order_of_the_result(result: Path, tmp_path: Path) -> None:
    """Every file is a file of its own (intake refuses a crate whose files have two names,
    and the result folder's step files are links to the run's), listed in the manifest as
    the folder is walked: each folder's files by name, then its folders."""
    out = write_result(result, tmp_path / "bag", bagit=True)
    files = sorted(p for p in (out / "data").rglob("*") if p.is_file())
    assert files and all(p.stat().st_nlink == 1 for p in files)
    listed = [line.split("  ", 1)[1] for line in
              (out / "manifest-sha512.txt").read_text().splitlines()]
    walked = [f"data/{Path(top, name).relative_to(result).as_posix()}"
              for top, dirs, names in _walk(result) for name in sorted(names)]
    assert listed == walked


def _walk(folder: Path) -> list[tuple[str, list[str], list[str]]]:
    found = []
    for top, dirs, names in os.walk(folder):
        dirs.sort()
        found.append((top, dirs, names))
    return found


def test_a_pipe_in_the_result_folder_is_refused(result: Path, tmp_path: Path) -> None:
    os.mkfifo(result / "provenance" / "pipe")
    for name in ("bag", "bag.zip"):
        with pytest.raises(ValueError, match="not a regular file"):
            write_result(result, tmp_path / name, bagit=True)


def test_non_empty_folder_is_refused(result: Path, tmp_path: Path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "x").write_text("x")
    with pytest.raises(FileExistsError):
        write_result(result, out, bagit=True)


def test_digest_cache_is_reused(
    result: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_hashing(path: Path) -> object:
        raise AssertionError(f"hashed again: {path}")

    monkeypatch.setattr("cratebridge.provenance.digests.hash_file", no_hashing)
    bagit.Bag(str(write_result(result, tmp_path / "bag", bagit=True))).validate()


@pytest.mark.parametrize("name", ["out", "out.zip"])
def test_failure_midway_leaves_nothing(
    result: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    calls = {"n": 0}
    real_copy = package_module.copy_new

    real_write = zipfile.ZipFile.write

    def tick() -> None:
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError("disk full")

    def flaky_copy(src: str, dst: str) -> None:
        tick()
        real_copy(src, dst)

    def flaky_write(self: zipfile.ZipFile, *args: object, **kwargs: object) -> None:
        tick()
        real_write(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(package_module, "copy_new", flaky_copy)
    monkeypatch.setattr(zipfile.ZipFile, "write", flaky_write)
    with pytest.raises(OSError, match="disk full"):
        write_result(result, tmp_path / name, bagit=True)
    assert not (tmp_path / name).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{name}.tmp-")]


# -- a folder moved into place (what ``cratebridge run --out FOLDER`` does) -------------


def _own_copies(run: Run, dest: Path) -> Path:
    return build_result_crate(run.request, run.record, run_dir=run.run_dir, dest=dest,
                              link=False)


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("bagit_out", [True, False], ids=["bagit", "plain"])
def test_a_folder_of_own_copies_is_moved_and_matches_a_copied_one(
        five_safes_run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        bagit_out: bool) -> None:
    """No file is copied a second time; the crate holds what a copy holds, one name each."""
    own = _own_copies(five_safes_run, tmp_path / "own")
    assert all(p.stat().st_nlink == 1 for p in own.rglob("*") if p.is_file())
    copied = write_result(own, tmp_path / "copied", bagit=bagit_out)

    def no_copying(src: str, dst: str) -> None:
        raise AssertionError(f"copied: {src}")

    monkeypatch.setattr(package_module, "copy_new", no_copying)
    moved = write_result(own, tmp_path / "moved", bagit=bagit_out, move=True)
    assert not own.exists() and not (tmp_path / ".own.sha512").exists()
    expected = _contents(copied)
    if bagit_out:  # the same bag but its date
        bagit.Bag(str(moved)).validate()
        for tag in ("bag-info.txt", "tagmanifest-sha512.txt"):
            del expected[tag]
    got = _contents(moved)
    assert {k: v for k, v in got.items() if k in expected} == expected
    assert set(got) - set(expected) <= {"bag-info.txt", "tagmanifest-sha512.txt"}
    assert all(p.stat().st_nlink == 1 for p in moved.rglob("*") if p.is_file())


def test_a_folder_sharing_files_with_the_run_is_copied_not_moved(
        result: Path, tmp_path: Path) -> None:
    """Built with links (the default), the run's files would be the crate's: copied."""
    assert any(p.stat().st_nlink > 1 for p in result.rglob("*") if p.is_file())
    out = write_result(result, tmp_path / "bag", bagit=True, move=True)
    assert result.is_dir()
    assert all(p.stat().st_nlink == 1 for p in out.rglob("*") if p.is_file())
    bagit.Bag(str(out)).validate()


def test_a_folder_holding_what_a_copy_leaves_out_is_copied_not_moved(
        five_safes_run: Run, tmp_path: Path) -> None:
    own = _own_copies(five_safes_run, tmp_path / "own")
    (own / "provenance" / "elsewhere").symlink_to(tmp_path, target_is_directory=True)
    out = write_result(own, tmp_path / "bag", bagit=True, move=True)
    assert own.is_dir() and not (out / "data" / "provenance" / "elsewhere").exists()
    bagit.Bag(str(out)).validate()


def test_a_move_to_a_zip_is_a_copy(five_safes_run: Run, tmp_path: Path) -> None:
    own = _own_copies(five_safes_run, tmp_path / "own")
    out = write_result(own, tmp_path / "own.zip", bagit=True, move=True)
    assert own.is_dir() and zipfile.is_zipfile(out)


def test_a_failed_move_puts_the_result_folder_back(
        five_safes_run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    own = _own_copies(five_safes_run, tmp_path / "own")
    before = _contents(own)

    def full_disk(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(package_module.os, "replace", full_disk)
    with pytest.raises(OSError, match="disk full"):
        write_result(own, tmp_path / "bag", bagit=True, move=True)
    assert _contents(own) == before
    assert not (tmp_path / "bag").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bag.tmp-")]

"""Digests taken while unpacking: the payload is not read again to verify it, and every
bag problem is still found and reported in the same words."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import zipfile
from pathlib import Path, PurePosixPath

import pytest

import cratebridge.intake.bag as bag_module
from cratebridge.errors import BagItError, UnsafeCrate
from cratebridge.intake import open_crate, unpack, verify_bag

from .conftest import corpus

BAG_CASES = [case for case in corpus.CASES if case.error is BagItError]


def _payload_sha512(bag_dir: Path) -> dict[str, str]:
    return {
        path.relative_to(bag_dir).as_posix(): hashlib.sha512(path.read_bytes()).hexdigest()
        for path in sorted((bag_dir / "data").rglob("*"))
        if path.is_file()
    }


def _bag_error(bag_dir: Path, **kwargs: object) -> str:
    with pytest.raises(BagItError) as info:
        verify_bag(bag_dir, **kwargs)  # type: ignore[arg-type]
    return str(info.value)


def _hash_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[str, ...]]]:
    """Record (path in the bag, algorithms) for every file ``verify_bag`` reads to hash."""
    calls: list[tuple[str, tuple[str, ...]]] = []
    real = bag_module._hash_file

    def spy(path: Path, algorithms: list[str]) -> object:
        algorithms = list(algorithms)
        calls.append((path.as_posix(), tuple(sorted(algorithms))))
        return real(path, algorithms)

    monkeypatch.setattr(bag_module, "_hash_file", spy)
    return calls


# -- what open_crate hands over ------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["request/", ""])
def test_zip_digests_are_the_payload_sha512(tmp_path: Path, prefix: str) -> None:
    bag = corpus.make_bag(corpus.write_request(tmp_path / "bag"))
    source = corpus.zip_tree(bag, tmp_path / "request.zip", prefix=prefix)
    opened = open_crate(source, tmp_path / "run" / "request")
    assert opened.bag_dir is not None
    assert dict(opened.digests) == _payload_sha512(opened.bag_dir)
    assert dict(opened.digests) == _payload_sha512(bag)
    assert all(rel.startswith("data/") for rel in opened.digests)


def test_folder_digests_are_the_payload_sha512(tmp_path: Path) -> None:
    bag = corpus.make_bag(corpus.write_request(tmp_path / "inputs" / "bag"))
    opened = open_crate(tmp_path / "inputs", tmp_path / "run" / "request")
    assert opened.bag_dir is not None and opened.bag_dir.name == "bag"
    assert dict(opened.digests) == _payload_sha512(bag)
    assert len(opened.digests) == 5  # metadata, input, 3 workflow files


def test_digests_leave_out_archiver_noise_and_tag_files(tmp_path: Path) -> None:
    bag = corpus.make_bag(corpus.write_request(tmp_path / "bag"))
    source = corpus.zip_tree(bag, tmp_path / "request.zip", prefix="request/")
    with zipfile.ZipFile(source, "a") as archive:
        archive.writestr("__MACOSX/request/data/._input1.txt", b"resource fork")
    opened = open_crate(source, tmp_path / "run" / "request")
    assert set(opened.digests) == set(_payload_sha512(bag))


def test_plain_crate_has_no_digests(tmp_path: Path) -> None:
    folder = corpus.write_request(tmp_path / "crate")
    source = corpus.zip_tree(folder, tmp_path / "crate.zip")
    opened = open_crate(source, tmp_path / "run" / "request")
    assert opened.bag_dir is None
    assert dict(opened.digests) == {}


def test_big_member_digest_spans_chunks(tmp_path: Path) -> None:
    folder = corpus.write_request(tmp_path / "bag")
    blob = os.urandom(3 * 1024**2 + 17)
    (folder / "big.bin").write_bytes(blob)
    bag = corpus.make_bag(folder)
    source = corpus.zip_tree(bag, tmp_path / "request.zip", prefix="request/")
    opened = open_crate(source, tmp_path / "run" / "request")
    assert opened.digests["data/big.bin"] == hashlib.sha512(blob).hexdigest()
    assert verify_bag(opened.bag_dir, known=opened.digests)  # type: ignore[arg-type]


# -- (a) problems are still caught, in the same words --------------------------------------


@pytest.mark.parametrize("case", BAG_CASES, ids=[case.name for case in BAG_CASES])
def test_bag_problems_same_with_unpack_digests(tmp_path: Path, case: corpus.Case) -> None:
    built = case.build(tmp_path / "inputs")
    try:
        opened = open_crate(built.source, tmp_path / "run" / "request", built.limits)
    except BagItError as error:  # found while unpacking (no bagit.txt): no digests involved
        assert case.mentions in str(error)
        return
    assert opened.bag_dir is not None
    with_known = _bag_error(opened.bag_dir, known=opened.digests)
    assert case.mentions in with_known
    assert with_known == _bag_error(opened.bag_dir)


def test_checksum_mismatch_caught_with_unpack_digests(tmp_path: Path) -> None:
    bag = corpus.make_bag(corpus.write_request(tmp_path / "bag"))
    (bag / "data" / "input1.txt").write_text("TAMPERED\n")
    source = corpus.zip_tree(bag, tmp_path / "request.zip", prefix="request/")
    opened = open_crate(source, tmp_path / "run" / "request")
    assert opened.bag_dir is not None
    assert "data/input1.txt" in opened.digests
    message = _bag_error(opened.bag_dir, known=opened.digests)
    tampered = hashlib.sha512(b"TAMPERED\n").hexdigest()
    assert re.search(
        rf"data/input1\.txt: sha512 checksum mismatch, manifest says [0-9a-f]{{128}}, "
        rf"file has {tampered}",
        message,
    ), message
    assert "(1 problem)" in message  # same size, so Payload-Oxum still holds
    assert message == _bag_error(opened.bag_dir)


def test_mismatch_in_a_second_algorithm_is_still_hashed(tmp_path: Path) -> None:
    folder = corpus.write_request(tmp_path / "inputs" / "bag")
    import bagit

    bagit.make_bag(str(folder), checksums=["sha256", "sha512"])
    (folder / "data" / "input1.txt").write_text("TAMPERED\n")
    (folder / "bag-info.txt").write_text(
        "\n".join(
            line
            for line in (folder / "bag-info.txt").read_text().splitlines()
            if not line.startswith("Payload-Oxum")
        )
        + "\n"
    )
    opened = open_crate(folder.parent, tmp_path / "run" / "request")
    assert opened.bag_dir is not None
    message = _bag_error(opened.bag_dir, known=opened.digests)
    assert "data/input1.txt: sha256 checksum mismatch" in message
    assert "data/input1.txt: sha512 checksum mismatch" in message
    assert message == _bag_error(opened.bag_dir)


# -- (b) the known digests are used --------------------------------------------------------


def test_known_digests_spare_the_payload_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = open_crate(corpus.request_bag_zip(tmp_path), tmp_path / "run" / "request")
    assert opened.bag_dir is not None
    calls = _hash_calls(monkeypatch)
    verify_bag(opened.bag_dir, known=opened.digests)
    hashed = {Path(path).relative_to(opened.bag_dir).as_posix() for path, _ in calls}
    assert not any(rel.startswith("data/") for rel in hashed), hashed
    assert "bagit.txt" in hashed  # tag files are still hashed from the file

    calls.clear()
    verify_bag(opened.bag_dir)
    hashed = {Path(path).relative_to(opened.bag_dir).as_posix() for path, _ in calls}
    assert set(opened.digests) <= hashed  # without them every payload file is read


def test_known_digest_is_what_gets_compared(tmp_path: Path) -> None:
    """A wrong known digest is reported, though the file on disk is intact: it was used."""
    opened = open_crate(corpus.request_bag_zip(tmp_path), tmp_path / "run" / "request")
    assert opened.bag_dir is not None
    verify_bag(opened.bag_dir)  # the bag on disk is intact
    wrong = dict(opened.digests)
    wrong["data/input1.txt"] = "0" * 128
    message = _bag_error(opened.bag_dir, known=wrong)
    assert "data/input1.txt: sha512 checksum mismatch, manifest says " in message
    assert message.endswith(f"file has {'0' * 128}")
    assert "1 problem)" in message


def test_sha512_is_not_computed_for_known_payload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = open_crate(corpus.request_bag_zip(tmp_path), tmp_path / "run" / "request")
    assert opened.bag_dir is not None
    real_new = hashlib.new
    made: list[str] = []

    def counting_new(name: str, *args: object, **kwargs: object) -> object:
        made.append(name)
        return real_new(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(hashlib, "new", counting_new)
    verify_bag(opened.bag_dir, known=opened.digests)
    tag_files = len((opened.bag_dir / "tagmanifest-sha512.txt").read_text().splitlines())
    assert made.count("sha512") == tag_files  # only the tag files, none of the payload


def test_only_present_payload_files_use_known(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = open_crate(corpus.request_bag_zip(tmp_path), tmp_path / "run" / "request")
    assert opened.bag_dir is not None
    known = dict(opened.digests)
    # A digest for a tag file or a file not in the payload is never trusted.
    known["bagit.txt"] = "0" * 128
    known["data/ghost.txt"] = "0" * 128
    (opened.bag_dir / "data" / "input1.txt").unlink()
    message = _bag_error(opened.bag_dir, known=known)
    assert "data/input1.txt: listed in manifest-sha512.txt but missing from the bag" in message
    assert "bagit.txt" not in message
    assert "ghost" not in message
    assert message == _bag_error(opened.bag_dir)


def test_upper_case_known_digest_matches(tmp_path: Path) -> None:
    opened = open_crate(corpus.request_bag_zip(tmp_path), tmp_path / "run" / "request")
    assert opened.bag_dir is not None
    upper = {rel: digest.upper() for rel, digest in opened.digests.items()}
    assert verify_bag(opened.bag_dir, known=upper)


# -- the writer resolves each folder once --------------------------------------------------


def test_writer_resolves_each_folder_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    members = [(f"crate/sub{i % 3}/deep/file-{i}.txt", b"x") for i in range(60)]
    members.append(("crate/ro-crate-metadata.json", b"{}"))
    source = corpus.write_zip(tmp_path / "many.zip", members)
    resolved: list[str] = []
    real = Path.resolve

    def counting(self: Path, strict: bool = False) -> Path:
        resolved.append(str(self))
        return real(self, strict=strict)

    monkeypatch.setattr(Path, "resolve", counting)
    dest = tmp_path / "run" / "request"
    open_crate(source, dest)
    monkeypatch.undo()
    # dest once, then crate, crate/sub{0,1,2} and each sub*/deep once: 1 + 1 + 3 + 3.
    assert len(resolved) == 8, resolved
    assert sorted(p.name for p in (dest / "crate" / "sub1" / "deep").iterdir())[:2] == [
        "file-1.txt",
        "file-10.txt",
    ]


@pytest.mark.parametrize(
    ("members", "mentions"),
    [
        ([("c/a", b"x"), ("c/a/b/", b"")], "folder 'c/a/b' collides with a file"),
        ([("c/a", b"x"), ("c/a/b/d.txt", b"x")], "folder 'c/a/b' collides with a file"),
        ([("c/a/b/", b""), ("c/a", b"x")], "'c/a' appears twice (or collides with a fold"),
        ([("c/a/b.txt", b"x"), ("c/a", b"x")], "'c/a' appears twice (or collides"),
    ],
)
def test_writer_collisions_still_refused(
    tmp_path: Path, members: list[tuple[str, bytes]], mentions: str
) -> None:
    source = corpus.write_zip(tmp_path / "collide.zip", members)
    dest = tmp_path / "run" / "request"
    with pytest.raises(UnsafeCrate) as info:
        open_crate(source, dest)
    assert mentions in str(info.value)
    assert not dest.exists()


def test_writer_never_writes_through_a_swapped_folder(tmp_path: Path) -> None:
    """A folder replaced by a link after it was made is not written through: files are
    created relative to the folder's own descriptor, and folders are opened without
    following links."""
    outside = tmp_path / "outside"
    outside.mkdir()
    source = corpus.write_zip(
        tmp_path / "two.zip",
        [("c/a/one.txt", b"1"), ("c/a/two.txt", b"2"), ("c/a/b/three.txt", b"3")],
    )
    real_create = unpack._Writer._create

    def swap_after_first(self: unpack._Writer, rel: PurePosixPath, executable: bool) -> int:
        fd: int = real_create(self, rel, executable)
        if rel.name == "one.txt":  # made: now its folder becomes a link, before two.txt
            folder = self.dest / "c" / "a"
            shutil.move(str(folder), str(tmp_path / "moved"))
            folder.symlink_to(outside, target_is_directory=True)
        return fd

    dest = tmp_path / "run" / "request"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(unpack._Writer, "_create", swap_after_first)
        with pytest.raises(UnsafeCrate) as info:
            open_crate(source, dest)
    assert "'c/a/b' resolves outside the crate" in str(info.value)
    assert list(outside.iterdir()) == []
    assert not dest.exists()


def test_writer_keeps_few_folders_open(tmp_path: Path) -> None:
    """More folders than descriptors kept open, revisited out of order: all written."""
    members = [(f"c/d{i % 50}/e/f{i}.txt", str(i).encode()) for i in range(200)]
    members.append(("c/ro-crate-metadata.json", b"{}"))
    source = corpus.write_zip(tmp_path / "wide.zip", members)
    dest = tmp_path / "run" / "request"
    before = len(os.listdir("/proc/self/fd")) if Path("/proc/self/fd").is_dir() else None
    open_crate(source, dest)
    for i in range(200):
        assert (dest / "c" / f"d{i % 50}" / "e" / f"f{i}.txt").read_bytes() == str(i).encode()
    if before is not None:
        assert len(os.listdir("/proc/self/fd")) == before, "a folder descriptor was left open"


def test_run_folder_inside_the_crate_folder_is_a_usage_error(tmp_path: Path) -> None:
    from cratebridge.errors import UsageError
    from cratebridge.intake import open_crate

    crate = tmp_path / "crate"
    crate.mkdir()
    (crate / "ro-crate-metadata.json").write_text("{}")
    with pytest.raises(UsageError, match="inside the crate folder"):
        open_crate(crate, crate / "runs" / "r1" / "request")
    assert not (crate / "runs").exists()

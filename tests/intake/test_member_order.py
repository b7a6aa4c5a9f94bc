"""Files are copied by several threads, yet a crate with several faults always names
the same one: the first in member order, as a sequential unpack would (issue 17)."""

from __future__ import annotations

import io
import os
import struct
import zipfile
from pathlib import Path, PurePosixPath

import pytest

from cratebridge.errors import CrateRejected, UnsafeCrate
from cratebridge.intake import IntakeLimits, open_crate
from cratebridge.intake._writer import Writer

from .conftest import corpus

ROUNDS = 5  # timing varies between rounds; the fault named must not


def _flip(archive: Path, name: str, at: int) -> None:
    """Invert one byte of the member's stored data (``at`` from its start, or its end)."""
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo(name)
    raw = bytearray(archive.read_bytes())
    names, extra = struct.unpack_from("<2H", raw, info.header_offset + 26)
    start = info.header_offset + 30 + names + extra
    raw[start + at % info.compress_size] ^= 0xFF
    archive.write_bytes(bytes(raw))


def _slow_fault_then_quick_fault(tmp: Path) -> Path:
    """A big stored member damaged at its very end (found only once all of it is read),
    then small members, then a member whose deflate stream breaks at once."""
    big = zipfile.ZipInfo("crate/big.bin")
    big.compress_type = zipfile.ZIP_STORED
    members: list[tuple[str | zipfile.ZipInfo, bytes]] = [
        *corpus.minimal_members(),
        (big, os.urandom(8 * 1024**2)),
        *[(f"crate/small/{i}.txt", b"x" * 100) for i in range(5)],  # all in flight at once
        ("crate/quick.txt", b"ACGT" * 50_000),
    ]
    archive = corpus.write_zip(tmp / "two-faults.zip", members)
    _flip(archive, "crate/big.bin", -1)
    _flip(archive, "crate/quick.txt", 1)
    return archive


def test_the_earlier_damaged_member_is_named_whatever_finishes_first(tmp_path: Path) -> None:
    archive = _slow_fault_then_quick_fault(tmp_path)
    for round_ in range(ROUNDS):
        dest = tmp_path / f"run-{round_}" / "request"
        with pytest.raises(CrateRejected) as info:
            open_crate(archive, dest)
        assert "'crate/big.bin' is damaged" in str(info.value), str(info.value)
        assert not dest.exists()


def test_a_damaged_member_is_named_before_a_later_collision(tmp_path: Path) -> None:
    """The collision is met while the damaged member is still being copied."""
    big = zipfile.ZipInfo("c/big.bin")
    big.compress_type = zipfile.ZIP_STORED
    archive = corpus.write_zip(
        tmp_path / "fault-and-collision.zip",
        [(big, os.urandom(8 * 1024**2)), ("c/a", b"x"), ("c/a/b/", b"")],
    )
    _flip(archive, "c/big.bin", -1)
    for round_ in range(ROUNDS):
        dest = tmp_path / f"run-{round_}" / "request"
        with pytest.raises(CrateRejected) as info:
            open_crate(archive, dest)
        assert "'c/big.bin' is damaged" in str(info.value), str(info.value)
        assert not dest.exists()


def test_a_folder_over_the_total_names_the_file_that_passes_it(tmp_path: Path) -> None:
    """Sizes are counted in member order before any copy, so the file named is always
    the one at which the running total passes the limit, and nothing past it is written."""
    crate = corpus.write_request(tmp_path / "crate")
    for i in range(20):
        (crate / f"part-{i:02d}.bin").write_bytes(b"\0" * 100_000)
    limit = sum(p.stat().st_size for p in sorted(crate.iterdir()) if p.name < "part-07")
    limit += 50_000  # part-07 passes it
    for round_ in range(ROUNDS):
        dest = tmp_path / f"run-{round_}" / "request"
        with pytest.raises(UnsafeCrate) as info:
            open_crate(crate, dest, IntakeLimits(max_total_bytes=limit))
        assert "(while writing 'part-07.bin')" in str(info.value), str(info.value)
        assert not dest.exists()


def test_digests_are_kept_in_member_order(tmp_path: Path) -> None:
    members = [(f"c/d{i % 7}/f{i:03d}.txt", str(i).encode()) for i in range(120)]
    dest = tmp_path / "dest"
    dest.mkdir()
    with Writer(dest, IntakeLimits(), "crate") as writer:
        for name, data in members:
            writer.write_file(
                PurePosixPath(name), io.BytesIO(data), executable=False, size=len(data),
                compressed=None,
            )
    assert list(writer.digests) == [name for name, _ in members]


def test_a_source_longer_than_counted_is_refused(tmp_path: Path) -> None:
    """A file that grows between being counted and being copied is not copied past its
    counted size: the total checked before the copy bounds what is written."""
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(UnsafeCrate, match=r"'grows\.bin' grew past its 10 bytes"):
        with Writer(dest, IntakeLimits(), "crate") as writer:
            writer.write_file(
                PurePosixPath("grows.bin"), io.BytesIO(b"x" * 5000), executable=False,
                size=10, compressed=None,
            )
    assert (dest / "grows.bin").stat().st_size <= 10

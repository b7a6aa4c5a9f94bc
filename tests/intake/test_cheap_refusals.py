"""Hostile input is cheap to refuse (issue 12).

Each attack is built in ``tmp_path`` and handed to the real CLI: exit code 3, a
message naming the member or file, no traceback, seconds rather than minutes, and
nothing left behind (no run folder, no scratch folder, no result). A faster in-process
layer checks the error class and that a refused crate leaves no half-unpacked folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from cratebridge.errors import BagItError, CrateRejected, UnsafeCrate
from cratebridge.intake import IntakeLimits, open_crate, verify_bag

from .conftest import corpus

TIME_LIMIT = 10.0  # generous on a loaded 2-core machine; the deep zip used to take 348 s
PAYLOAD = b"ACGT" * 50_000  # compressible, so a flipped byte lands in deflate data


# -- building hostile zips -------------------------------------------------------------------


def _zip(tmp: Path, *extra: tuple[str | zipfile.ZipInfo, bytes], name: str = "hostile.zip") -> Path:
    return corpus.write_zip(tmp / name, [*corpus.minimal_members(), *extra])


def _info(name: str, method: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.compress_type = method
    return info


def _central_entry(raw: bytes, name: bytes) -> int:
    """Offset of the central directory entry for ``name``."""
    at = raw.find(b"PK\x01\x02")
    while at >= 0:
        size = struct.unpack_from("<H", raw, at + 28)[0]
        if raw[at + 46 : at + 46 + size] == name:
            return at
        at = raw.find(b"PK\x01\x02", at + 4)
    raise AssertionError(f"{name!r} not in the central directory")


def _patch_central(archive: Path, name: str, offset: int, fmt: str, value: int) -> Path:
    raw = bytearray(archive.read_bytes())
    struct.pack_into(fmt, raw, _central_entry(bytes(raw), name.encode()) + offset, value)
    archive.write_bytes(bytes(raw))
    return archive


def _rename_raw(archive: Path, old: bytes, new: bytes) -> Path:
    """Replace a member name's bytes in the local header and central directory alike."""
    assert len(old) == len(new)
    raw = archive.read_bytes()
    assert raw.count(old) == 2
    archive.write_bytes(raw.replace(old, new))
    return archive


def _flip_member_byte(archive: Path, name: str, *, at: int | None = None) -> Path:
    """Invert one byte of the member's stored data (by default the middle one)."""
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo(name)
    raw = bytearray(archive.read_bytes())
    names, extra = struct.unpack_from("<2H", raw, info.header_offset + 26)
    start = info.header_offset + 30 + names + extra
    raw[start + (info.compress_size // 2 if at is None else at % info.compress_size)] ^= 0xFF
    archive.write_bytes(bytes(raw))
    return archive


def broken_deflate(tmp: Path) -> Path:
    """A flipped byte early in the deflate stream: zlib.error, not a CRC mismatch."""
    return _flip_member_byte(_zip(tmp, ("crate/data.txt", PAYLOAD)), "crate/data.txt", at=1)


def bad_crc_deflated(tmp: Path) -> Path:
    """A flipped byte late in the deflate stream: it inflates, to the wrong bytes."""
    archive = _zip(tmp, ("crate/data.txt", PAYLOAD))
    return _flip_member_byte(archive, "crate/data.txt", at=-3)


def bad_crc_stored(tmp: Path) -> Path:
    archive = _zip(tmp, (_info("crate/data.txt", zipfile.ZIP_STORED), PAYLOAD))
    return _flip_member_byte(archive, "crate/data.txt")


# A stored member is read by offset, not through zipfile (intake._zipread._StoredReader):
# the same faults, the same refusals.


def _stored(tmp: Path) -> Path:
    return _zip(tmp, (_info("crate/data.txt", zipfile.ZIP_STORED), PAYLOAD))


def stored_size_declared_smaller(tmp: Path) -> Path:
    return _patch_central(_stored(tmp), "crate/data.txt", 24, "<L", 10)


def stored_sizes_declared_larger(tmp: Path) -> Path:
    """Both sizes larger: the member's read runs on into the next member's bytes."""
    archive = _patch_central(_stored(tmp), "crate/data.txt", 20, "<L", len(PAYLOAD) + 64)
    return _patch_central(archive, "crate/data.txt", 24, "<L", len(PAYLOAD) + 64)


def stored_local_name_differs(tmp: Path) -> Path:
    archive = _stored(tmp)
    raw = archive.read_bytes()
    at = raw.index(b"crate/data.txt")  # the local header's copy comes first
    archive.write_bytes(raw[:at] + b"crate/dada.txt" + raw[at + 14:])
    return archive


def stored_local_header_not_one(tmp: Path) -> Path:
    archive = _stored(tmp)
    with zipfile.ZipFile(archive) as zf:
        offset = zf.getinfo("crate/data.txt").header_offset
    raw = bytearray(archive.read_bytes())
    raw[offset:offset + 4] = b"PK\x09\x09"
    archive.write_bytes(bytes(raw))
    return archive


def long_name(tmp: Path) -> Path:
    return _zip(tmp, ("crate/" + "n" * 300 + ".txt", b"x"))


def deep_2100(tmp: Path) -> Path:
    return _zip(tmp, ("crate/" + "d/" * 2100 + "f.txt", b"x"))


def deep_100(tmp: Path) -> Path:
    return _zip(tmp, ("crate/" + "d/" * 100 + "f.txt", b"x"))


def deep_folders_only(tmp: Path) -> Path:
    """2,100 folder entries, each one deeper: no file at all."""
    return _zip(tmp, *[("crate/" + "d/" * depth, b"") for depth in range(1, 2101)])


def dotdot_inside_bag(tmp: Path) -> Path:
    bag = corpus.make_bag(corpus.write_request(tmp / "bag"))
    archive = corpus.zip_tree(bag, tmp / "request.zip", prefix="request/")
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("request/data/../extra.txt", b"not in any manifest\n")
    return archive


def normalised_duplicate(tmp: Path) -> Path:
    return _zip(tmp, ("crate/./main.cwl", b"class: Workflow\n"))


def newline_in_name(tmp: Path) -> Path:
    return _zip(tmp, ("crate/bad\nname.txt", b"x"))


def escape_in_name(tmp: Path) -> Path:
    return _zip(tmp, ("crate/\x1b[31mred.txt", b"x"))


def nul_in_name(tmp: Path) -> Path:
    # zipfile cuts a name at NUL when reading; the bytes are patched in after writing.
    return _rename_raw(_zip(tmp, ("crate/evilX.txt", b"x")), b"evilX.txt", b"evil\x00.txt")


def not_utf8_name(tmp: Path) -> Path:
    # "é" makes zipfile set the UTF-8 flag; its two bytes become an invalid sequence.
    archive = _zip(tmp, ("crate/caf\u00e9.txt", b"x"))
    return _rename_raw(archive, "caf\u00e9".encode(), b"caf\xff\xfe")


def bzip2_member(tmp: Path) -> Path:
    return _zip(tmp, (_info("crate/data.txt", zipfile.ZIP_BZIP2), PAYLOAD))


def lzma_member(tmp: Path) -> Path:
    return _zip(tmp, (_info("crate/data.txt", zipfile.ZIP_LZMA), PAYLOAD))


def deflate64_member(tmp: Path) -> Path:
    archive = _zip(tmp, ("crate/data.txt", PAYLOAD))
    return _patch_central(archive, "crate/data.txt", 10, "<H", 9)


def encrypted_member(tmp: Path) -> Path:
    return corpus.set_encrypted_flag(_zip(tmp, ("crate/data.txt", PAYLOAD)))


def truncated_zip(tmp: Path) -> Path:
    archive = corpus.request_bag_zip(tmp)
    raw = archive.read_bytes()
    archive.write_bytes(raw[: len(raw) * 6 // 10])
    return archive


def size_declared_smaller(tmp: Path) -> Path:
    archive = _zip(tmp, ("crate/data.txt", PAYLOAD))
    return _patch_central(archive, "crate/data.txt", 24, "<L", 10)


def size_declared_larger(tmp: Path) -> Path:
    archive = _zip(tmp, ("crate/data.txt", PAYLOAD))
    return _patch_central(archive, "crate/data.txt", 24, "<L", len(PAYLOAD) + 4096)


def size_declared_huge(tmp: Path) -> Path:
    archive = _zip(tmp, ("crate/data.txt", PAYLOAD))
    return _patch_central(archive, "crate/data.txt", 24, "<L", 0xFFFF_FFF0)


def compressed_past_the_end(tmp: Path) -> Path:
    archive = _zip(tmp, ("crate/data.txt", PAYLOAD))
    return _patch_central(archive, "crate/data.txt", 20, "<L", 0x7FFF_FFFF)


def symlink_member(tmp: Path) -> Path:
    return _zip(tmp, corpus.special_member("crate/link", 0o120777, b"/etc/passwd"))


# -- building hostile bags and folders -------------------------------------------------------


def _bag(tmp: Path) -> Path:
    return corpus.make_bag(corpus.write_request(tmp / "bag"))


def bag_extra_tag_file(tmp: Path) -> Path:
    bag = _bag(tmp)
    (bag / "extra.txt").write_text("read me, workflow\n")
    return corpus.zip_tree(bag, tmp / "request.zip", prefix="request/")


def bag_extra_tag_folder(tmp: Path) -> Path:
    bag = _bag(tmp)
    (bag / "notes").mkdir()
    (bag / "notes" / "hidden.txt").write_text("read me, workflow\n")
    return corpus.zip_tree(bag, tmp / "request.zip", prefix="request/")


def bag_extra_without_tagmanifest(tmp: Path) -> Path:
    bag = _bag(tmp)
    for tagmanifest in bag.glob("tagmanifest-*.txt"):
        tagmanifest.unlink()
    (bag / "extra.txt").write_text("read me, workflow\n")
    return corpus.zip_tree(bag, tmp / "request.zip", prefix="request/")


def bag_extra_payload_file(tmp: Path) -> Path:
    bag = _bag(tmp)
    (bag / "data" / "extra.csv").write_text("a,b\n")
    return corpus.zip_tree(bag, tmp / "request.zip", prefix="request/")


def _host_secret(tmp: Path) -> Path:
    host = tmp / "host"
    host.mkdir(exist_ok=True)
    secret = host / "secret.txt"
    secret.write_text("HOST SECRET\n")
    return secret


def hard_link_folder(tmp: Path) -> Path:
    crate = corpus.write_request(tmp / "crate")
    (crate / "input1.txt").unlink()
    os.link(_host_secret(tmp), crate / "input1.txt")
    return crate


def hard_link_bag_folder(tmp: Path) -> Path:
    """The link sits in a bag's payload with a correct checksum: only nlink gives it away."""
    crate = corpus.write_request(tmp / "bag")
    (crate / "input1.txt").unlink()
    os.link(_host_secret(tmp), crate / "input1.txt")
    return corpus.make_bag(crate)


def symlink_folder(tmp: Path) -> Path:
    crate = corpus.write_request(tmp / "crate")
    (crate / "input1.txt").unlink()
    (crate / "input1.txt").symlink_to(_host_secret(tmp))
    return crate


def fifo_folder(tmp: Path) -> Path:
    crate = corpus.write_request(tmp / "crate")
    os.mkfifo(crate / "pipe")
    return crate


def socket_folder(tmp: Path) -> Path:
    crate = corpus.write_request(tmp / "crate")
    os.mknod(crate / "socket", 0o600 | stat.S_IFSOCK)
    return crate


def deep_folder(tmp: Path) -> Path:
    crate = corpus.write_request(tmp / "crate")
    deep = crate.joinpath(*["d"] * 100)
    deep.mkdir(parents=True)
    (deep / "f.txt").write_text("x")
    return crate


# -- the attacks -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Attack:
    build: Callable[[Path], Path]
    mentions: str  # the member or file the message must name
    error: type[CrateRejected]
    commands: tuple[str, ...] = ("validate",)

    @property
    def name(self) -> str:
        return self.build.__name__


ATTACKS = [
    Attack(broken_deflate, "crate/data.txt", CrateRejected, ("validate", "plan", "run")),
    Attack(bad_crc_deflated, "crate/data.txt", CrateRejected),
    Attack(bad_crc_stored, "crate/data.txt", CrateRejected),
    Attack(stored_size_declared_smaller, "crate/data.txt", CrateRejected),
    Attack(stored_sizes_declared_larger, "crate/data.txt", CrateRejected),
    Attack(stored_local_name_differs, "crate/data.txt", CrateRejected),
    Attack(stored_local_header_not_one, "crate/data.txt", CrateRejected),
    Attack(long_name, "crate/nnnnnnnn", UnsafeCrate, ("validate", "plan")),
    Attack(deep_2100, "crate/d/d/d/d", UnsafeCrate, ("validate", "plan", "run")),
    Attack(deep_100, "crate/d/d/d/d", UnsafeCrate),
    Attack(deep_folders_only, "crate/d/d/d/d", UnsafeCrate),
    Attack(dotdot_inside_bag, "request/data/../extra.txt", UnsafeCrate),
    Attack(normalised_duplicate, "crate/./main.cwl", UnsafeCrate),
    Attack(newline_in_name, "crate/bad\\x0aname.txt", UnsafeCrate),
    Attack(escape_in_name, "crate/\\x1b[31mred.txt", UnsafeCrate),
    Attack(nul_in_name, "crate/evil\\x00.txt", UnsafeCrate),
    Attack(not_utf8_name, "crate/caf\\udcff", UnsafeCrate),
    Attack(bzip2_member, "crate/data.txt", CrateRejected),
    Attack(lzma_member, "crate/data.txt", CrateRejected),
    Attack(deflate64_member, "crate/data.txt", CrateRejected),
    Attack(encrypted_member, "crate/ro-crate-metadata.json", UnsafeCrate),
    Attack(truncated_zip, "request.zip", CrateRejected),
    Attack(size_declared_smaller, "crate/data.txt", CrateRejected),
    Attack(size_declared_larger, "crate/data.txt", CrateRejected),
    Attack(size_declared_huge, "crate/data.txt", UnsafeCrate, ("validate", "plan")),
    Attack(compressed_past_the_end, "crate/data.txt", CrateRejected),
    Attack(symlink_member, "crate/link", UnsafeCrate),
    Attack(bag_extra_tag_file, "extra.txt", BagItError, ("validate", "plan", "run")),
    Attack(bag_extra_tag_folder, "notes/hidden.txt", BagItError),
    Attack(bag_extra_without_tagmanifest, "extra.txt", BagItError, ("validate", "run")),
    Attack(bag_extra_payload_file, "data/extra.csv", BagItError),
    Attack(hard_link_folder, "input1.txt", UnsafeCrate, ("validate", "plan", "run")),
    Attack(hard_link_bag_folder, "data/input1.txt", UnsafeCrate, ("validate", "run")),
    Attack(symlink_folder, "input1.txt", UnsafeCrate, ("validate", "run")),
    Attack(fifo_folder, "pipe", UnsafeCrate),
    Attack(socket_folder, "socket", UnsafeCrate),
    Attack(deep_folder, "crate/d/d/d", UnsafeCrate, ("validate", "plan")),
]
RUNS = [(a, c) for a in ATTACKS for c in a.commands]


def _tree(top: Path) -> set[str]:
    found: set[str] = set()
    for folder, dirs, files in os.walk(top):
        found.update(os.path.join(folder, name) for name in dirs + files)
    return found


def _cli(
    tmp_path: Path, command: str, crate: Path
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run the real CLI; ``tmp_path/scratch`` is its TMPDIR and working folder, ``tmp_path/runs``
    its runs folder (both made by :func:`_prepare`)."""
    args = [sys.executable, "-m", "cratebridge", command, str(crate), "--json"]
    if command in ("plan", "run"):
        args += ["--config", str(tmp_path / "config.toml")]
    if command == "run":
        args += ["--out", str(tmp_path / "result.zip")]
    env = {**os.environ, "TMPDIR": str(tmp_path / "scratch")}
    env.pop("CRATEBRIDGE_RUNS_DIR", None)
    started = time.monotonic()
    done = subprocess.run(args, capture_output=True, text=True, env=env,
                          cwd=tmp_path / "scratch", timeout=120, check=False)
    return done, time.monotonic() - started


def _prepare(tmp_path: Path, attack: Attack) -> Path:
    (tmp_path / "scratch").mkdir()
    (tmp_path / "config.toml").write_text(f'[run]\nruns_dir = "{tmp_path / "runs"}"\n')
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    return attack.build(inputs)


@pytest.mark.parametrize(("attack", "command"), RUNS, ids=[f"{a.name}-{c}" for a, c in RUNS])
def test_cli_refuses_quickly_and_leaves_nothing(
    attack: Attack, command: str, tmp_path: Path
) -> None:
    crate = _prepare(tmp_path, attack)
    before = _tree(tmp_path)

    done, elapsed = _cli(tmp_path, command, crate)

    assert done.returncode == 3, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    assert "\x1b" not in done.stdout + done.stderr, "a name drove the terminal"
    assert elapsed < TIME_LIMIT, f"{attack.name} took {elapsed:.1f} s"
    doc = json.loads(done.stdout)
    if command == "validate":
        assert doc["valid"] is False
        text = "\n".join(doc["problems"])
    else:
        assert doc["error"] in {c.__name__ for c in attack.error.__mro__}, doc
        text = f"{doc['where']}: {doc['message']}"
    assert attack.mentions in text, text
    left = _tree(tmp_path) - before - {str(tmp_path / "runs")}
    assert not left, f"left behind: {sorted(left)[:5]}"
    if attack.build in (hard_link_folder, hard_link_bag_folder):
        assert (tmp_path / "inputs" / "host" / "secret.txt").read_text() == "HOST SECRET\n"


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_intake_refuses_with_the_right_error(attack: Attack, tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    crate = attack.build(inputs)
    dest = tmp_path / "run" / "request"
    started = time.monotonic()
    with pytest.raises(CrateRejected) as info:
        opened = open_crate(crate, dest)
        if opened.bag_dir is not None:
            verify_bag(opened.bag_dir, known=opened.digests)
    assert time.monotonic() - started < TIME_LIMIT
    assert isinstance(info.value, attack.error), f"{type(info.value).__name__}: {info.value}"
    assert attack.mentions in str(info.value), str(info.value)
    if not isinstance(info.value, BagItError):  # unpack refusals leave no half-made folder
        assert not dest.exists()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) in ([], ["request"])


# -- the mechanisms behind the refusals ------------------------------------------------------


def _many(tmp: Path, count: int, *, comment: bytes = b"") -> Path:
    archive = tmp / "many.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("c/ro-crate-metadata.json", b"{}")
        for i in range(count):
            zf.writestr(f"c/{i}", b"")
        zf.comment = comment
    return archive


def _lying_count(tmp: Path) -> Path:
    """The end record says 1 member; the directory holds 300 (zipfile reads them all)."""
    archive = _many(tmp, 300)
    raw = bytearray(archive.read_bytes())
    struct.pack_into("<2H", raw, raw.rfind(b"PK\x05\x06") + 8, 1, 1)  # this disk, total
    archive.write_bytes(bytes(raw))
    return archive


MANY = {
    "plain": lambda tmp: _many(tmp, 300),
    "comment": lambda tmp: _many(tmp, 300, comment=b"the end record is not last"),
    "lying_count": _lying_count,
    "zip64": lambda tmp: _many(tmp, 0x10000 + 10),  # past 65,535: a zip64 end record
}


@pytest.mark.parametrize("shape", sorted(MANY))
def test_member_count_is_refused_before_zipfile_reads_the_directory(
    shape: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A million members would cost zipfile gigabytes of ZipInfo; the count comes first."""
    from cratebridge.intake import _zipread

    archive = MANY[shape](tmp_path)
    with zipfile.ZipFile(archive) as zf:  # the real thing, before it is forbidden below
        real = len(zf.infolist())
    assert real > 100

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("zipfile.ZipFile was built for an over-limit zip")

    monkeypatch.setattr(_zipread.zipfile, "ZipFile", never)
    started = time.monotonic()
    with pytest.raises(UnsafeCrate, match="more than 100 members"):
        open_crate(archive, tmp_path / "dest", IntakeLimits(max_files=100))
    assert time.monotonic() - started < 1.0
    assert not (tmp_path / "dest").exists()


def test_many_members_cli_with_operator_limit(tmp_path: Path) -> None:
    archive = corpus.write_zip(tmp_path / "many.zip", [(f"c/{i}", b"") for i in range(2000)])
    runs = tmp_path / "runs"
    config = tmp_path / "config.toml"
    config.write_text(f'[run]\nruns_dir = "{runs}"\n[intake]\nmax_files = 1000\n')
    done = subprocess.run(
        [sys.executable, "-m", "cratebridge", "plan", str(archive), "--config", str(config)],
        capture_output=True, text=True, check=False, timeout=120,
    )
    assert done.returncode == 3, done.stderr
    assert "more than 1000 members" in done.stderr
    assert "Traceback" not in done.stderr


def test_depth_and_name_limits_are_operator_settings(tmp_path: Path) -> None:
    archive = _zip(tmp_path, ("crate/a/b/c/d.txt", b"x"), ("crate/" + "n" * 40, b"x"))
    with pytest.raises(UnsafeCrate, match="5 levels deep, more than 4"):
        open_crate(archive, tmp_path / "a", IntakeLimits(max_depth=4))
    with pytest.raises(UnsafeCrate, match="longer than 32 bytes"):
        open_crate(archive, tmp_path / "b", IntakeLimits(max_name_bytes=32))
    with pytest.raises(UnsafeCrate, match="longer than 20 bytes"):
        open_crate(archive, tmp_path / "c", IntakeLimits(max_path_bytes=20))
    assert open_crate(archive, tmp_path / "d").root == tmp_path / "d" / "crate"


def test_names_are_counted_in_utf8_bytes(tmp_path: Path) -> None:
    """200 two-byte characters are 400 bytes: longer than a file system's 255."""
    archive = _zip(tmp_path, ("crate/" + "\u00e9" * 200, b"x"))
    with pytest.raises(UnsafeCrate, match="longer than 255 bytes"):
        open_crate(archive, tmp_path / "dest")


def test_a_zip_inside_the_crate_is_a_file_not_unpacked(tmp_path: Path) -> None:
    inner = corpus.write_zip(tmp_path / "inner.zip", [("../../evil.txt", b"evil")])
    archive = _zip(tmp_path, ("crate/inner.zip", inner.read_bytes()))
    dest = tmp_path / "run" / "request"
    opened = open_crate(archive, dest)
    assert (opened.root / "inner.zip").read_bytes() == inner.read_bytes()
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "run" / "evil.txt").exists()


def test_names_differing_only_in_case_are_two_files(tmp_path: Path) -> None:
    """On a case-sensitive file system they are distinct; on one that is not, the second
    is refused as a duplicate (files are created with O_EXCL), never merged."""
    archive = _zip(tmp_path, ("crate/Data.txt", b"1"), ("crate/data.txt", b"2"))
    probe = tmp_path / "Probe"
    probe.touch()
    if (tmp_path / "probe").exists():
        with pytest.raises(UnsafeCrate, match="appears twice"):
            open_crate(archive, tmp_path / "dest")
        return
    opened = open_crate(archive, tmp_path / "dest")
    assert (opened.root / "Data.txt").read_bytes() == b"1"
    assert (opened.root / "data.txt").read_bytes() == b"2"


def test_clean_crates_still_open(tmp_path: Path) -> None:
    """The stricter rules refuse none of the shapes real requests have."""
    bag_zip = corpus.request_bag_zip(tmp_path / "zip")
    opened = open_crate(bag_zip, tmp_path / "a")
    assert opened.bag_dir is not None
    verify_bag(opened.bag_dir, known=opened.digests)
    bag_folder = _bag(tmp_path / "folder")
    opened = open_crate(bag_folder, tmp_path / "b")
    assert opened.bag_dir is not None
    verify_bag(opened.bag_dir, known=opened.digests)
    for fixture in sorted(Path(__file__).parents[2].joinpath("fixtures", "crates").glob("*.zip")):
        dest = tmp_path / "fixtures" / fixture.stem
        opened = open_crate(fixture, dest)
        if opened.bag_dir is not None:
            verify_bag(opened.bag_dir, known=opened.digests)
        shutil.rmtree(dest)


def test_tag_folder_listed_in_the_tagmanifest_is_accepted(tmp_path: Path) -> None:
    """BagIt allows tag files in folders beside data/: covered by the tagmanifest, they pass."""
    bag = _bag(tmp_path)
    (bag / "notes").mkdir()
    (bag / "notes" / "about.txt").write_text("reviewed\n")
    for tagmanifest in bag.glob("tagmanifest-*.txt"):
        algorithm = tagmanifest.stem.removeprefix("tagmanifest-")
        digest = hashlib.new(algorithm, b"reviewed\n").hexdigest()
        with tagmanifest.open("a") as out:
            out.write(f"{digest}  notes/about.txt\n")
    verify_bag(bag)


# -- validate reads hostile metadata without an exception escaping -----------------------------


def _metadata_folder(tmp: Path, text: str | bytes) -> Path:
    crate = tmp / "crate"
    crate.mkdir()
    data = text.encode() if isinstance(text, str) else text
    (crate / "ro-crate-metadata.json").write_bytes(data)
    return crate


def _result_claiming(rid: object) -> str:
    return json.dumps({"@context": "https://w3id.org/ro/crate/1.2/context", "@graph": [
        {"@id": "ro-crate-metadata.json", "@type": "CreativeWork", "about": {"@id": "./"}},
        {"@id": "./", "@type": "Dataset", "mentions": {"@id": "#run"}},
        {"@id": "#run", "@type": "CreateAction", "actionStatus": corpus.COMPLETED,
         "startTime": "2025-01-01T00:00:00Z", "endTime": "2025-01-01T00:01:00Z",
         "result": [{"@id": rid}]},
        {"@id": str(rid), "@type": "File", "sha512": "00"},
    ]})


METADATA = {
    "nested_100k": ("[" * 100_000 + "]" * 100_000, "ro-crate-metadata.json"),
    "a_list": ("[]", "ro-crate-metadata.json"),
    "graph_not_a_list": ('{"@graph": 5}', "@graph"),
    "not_utf8": (b"\xff\xfe{}", "not UTF-8"),
    "result_outside": (_result_claiming("/etc/passwd"), "'/etc/passwd'"),
    "result_climbs": (_result_claiming("../../../etc/passwd"), "'../../../etc/passwd'"),
    "result_id_number": (_result_claiming(5), "#run: a result's @id is not a string"),
}


@pytest.mark.parametrize("case", sorted(METADATA))
def test_validate_refuses_hostile_metadata(case: str, tmp_path: Path) -> None:
    text, mentions = METADATA[case]
    (tmp_path / "scratch").mkdir()
    crate = _metadata_folder(tmp_path, text)
    before = _tree(tmp_path)
    done, elapsed = _cli(tmp_path, "validate", crate)
    assert done.returncode == 3, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr, done.stderr
    assert elapsed < TIME_LIMIT
    problems = "\n".join(json.loads(done.stdout)["problems"])
    assert mentions in problems, problems
    assert "sha512 does not match" not in problems, "a host file was read and hashed"
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("shape", ["plain", "comment", "lying_count"])
def test_member_count_walk_reads_valid_shapes(shape: str, tmp_path: Path) -> None:
    """Under the limit the same archives unpack in full."""
    archive = MANY[shape](tmp_path)
    opened = open_crate(archive, tmp_path / "dest", IntakeLimits(max_files=1000))
    assert len(list(opened.root.iterdir())) == 301


def test_folder_walk_closes_every_descriptor_when_refused(tmp_path: Path) -> None:
    """Refused mid-walk (a subfolder over the file limit), no folder descriptor stays open."""
    crate = corpus.write_request(tmp_path / "crate")
    crowded = crate / "a" / "b"
    crowded.mkdir(parents=True)
    for i in range(50):
        (crowded / f"f{i}").write_text("x")
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(UnsafeCrate, match="more than 30 files"):
        open_crate(crate, tmp_path / "dest", IntakeLimits(max_files=30))
    assert len(os.listdir("/proc/self/fd")) == before
    assert not (tmp_path / "dest").exists()

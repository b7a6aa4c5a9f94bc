"""Safe unpacking of an untrusted request crate (a zip or a folder) into the run folder.

Every member is checked while it is written: no path may leave ``dest``, no link
or device file is created, and byte counts are taken from the data actually
written, so a zip bomb stops at the limit instead of filling the disk.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from cratebridge.errors import BagItError, CrateRejected, MetadataError, UnsafeCrate
from cratebridge.intake.bag import read_bag_info

__all__ = ["IntakeLimits", "OpenedCrate", "open_crate", "safe_relative_path"]

METADATA_NAME = "ro-crate-metadata.json"
_CHUNK = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")
# Top-level entries that archivers add and that say nothing about the layout.
_ARCHIVER_NOISE = frozenset({"__MACOSX", ".DS_Store"})


@dataclass(frozen=True)
class IntakeLimits:
    """How much an untrusted crate may unpack to; the operator config supplies its own.

    ``max_ratio`` is the largest uncompressed/compressed ratio of one zip member; it
    is enforced once a member has produced ``ratio_grace_bytes``, so small
    highly compressible files (an empty CSV, a run of zeros) still pass.
    """

    max_total_bytes: int = 10 * 1024**3
    max_files: int = 100_000
    max_ratio: float = 200.0
    max_metadata_bytes: int = 16 * 1024**2
    ratio_grace_bytes: int = 1024**2


@dataclass(frozen=True)
class OpenedCrate:
    """A request crate unpacked into the run folder.

    ``root`` is the folder holding ``ro-crate-metadata.json``; ``bag_dir`` is the
    bag's folder (``root`` is then ``bag_dir / "data"``) or ``None`` without BagIt.
    ``bag_info`` is ``bag-info.txt`` as read, not yet verified: call
    :func:`cratebridge.intake.bag.verify_bag` on ``bag_dir`` before trusting the payload.
    """

    root: Path
    bag_dir: Path | None
    bag_info: dict[str, str] = field(default_factory=dict)

    @property
    def bagit(self) -> bool:
        """True when the crate arrived as a BagIt bag."""
        return self.bag_dir is not None


def open_crate(source: Path, dest: Path, limits: IntakeLimits | None = None) -> OpenedCrate:
    """Unpack ``source`` (a ``.zip`` or a folder) into ``dest`` and find the crate in it.

    ``dest`` must not exist or be an empty folder. Accepted layouts: one BagIt bag
    in a single top-level folder, a bag at the root, or a plain RO-Crate with
    ``ro-crate-metadata.json`` at the root or in a single top-level folder. A bag is
    found but not verified here (hashing is :func:`cratebridge.intake.bag.verify_bag`'s
    job, so ``validate`` can report bag problems and metadata problems together).

    Raises :class:`UnsafeCrate` for anything that could escape ``dest`` or fill the
    disk, :class:`CrateRejected` (or a subclass) for anything else; on any refusal
    ``dest`` is removed, so nothing half-made is left behind.
    """
    limits = limits or IntakeLimits()
    _prepare_dest(dest)
    try:
        if source.is_dir():
            _copy_tree(source, dest, limits)
        elif source.is_file():
            _extract_zip(source, dest, limits)
        else:
            raise CrateRejected(
                "the request crate does not exist or is neither a .zip file nor a folder; "
                "pass the path of the crate as handed over by the TRE agent",
                where=str(source),
            )
        return _locate(dest, limits)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def safe_relative_path(name: str, *, where: str) -> PurePosixPath:
    """Check that ``name`` is a relative path that stays inside its folder.

    Rejects absolute paths, drive letters, backslashes, NUL bytes, empty
    components and ``..``; ``.`` components are dropped. Raises :class:`UnsafeCrate`
    naming ``where``.
    """
    if "\x00" in name:
        raise UnsafeCrate(f"path {name!r} contains a NUL byte; the crate is refused", where=where)
    if "\\" in name:
        raise UnsafeCrate(
            f"path {name!r} contains a backslash; rebuild the archive with '/' separators",
            where=where,
        )
    if name.startswith("/") or _DRIVE.match(name):
        raise UnsafeCrate(
            f"absolute path {name!r}; every path in a crate must be relative to its root",
            where=where,
        )
    parts = name.rstrip("/").split("/")
    if any(part == ".." for part in parts):
        raise UnsafeCrate(
            f"path {name!r} climbs out of the crate with '..'; the crate is refused",
            where=where,
        )
    if any(part == "" for part in parts):
        raise UnsafeCrate(f"path {name!r} has an empty component", where=where)
    kept = [part for part in parts if part != "."]
    if not kept:
        raise UnsafeCrate(f"path {name!r} names the crate root itself", where=where)
    return PurePosixPath(*kept)


# -- destination ---------------------------------------------------------------------------


def _prepare_dest(dest: Path) -> None:
    if dest.is_symlink():
        raise UnsafeCrate(
            "the unpack folder is a symbolic link; pass a real folder", where=str(dest)
        )
    if dest.exists():
        if not dest.is_dir() or any(dest.iterdir()):
            raise CrateRejected(
                "the unpack folder already exists and is not empty; use a fresh run folder",
                where=str(dest),
            )
    else:
        dest.mkdir(parents=True)


class _Writer:
    """Writes files under ``dest`` and keeps the running totals the limits apply to."""

    def __init__(self, dest: Path, limits: IntakeLimits, source: str) -> None:
        self.dest = dest
        self.limits = limits
        self.source = source
        self.total = 0
        self.files = 0

    def count_member(self, name: str) -> None:
        self.files += 1
        if self.files > self.limits.max_files:
            raise UnsafeCrate(
                f"more than {self.limits.max_files} files (reached at {name!r}); "
                "split the request or ask the operator to raise intake.max_files",
                where=self.source,
            )

    def target(self, rel: PurePosixPath) -> Path:
        target = self.dest.joinpath(*rel.parts)
        # Belt and braces: rel was checked, and no link is ever created under dest.
        if not target.resolve().is_relative_to(self.dest.resolve()):
            raise UnsafeCrate(f"path {str(rel)!r} resolves outside the crate", where=self.source)
        return target

    def make_dir(self, rel: PurePosixPath) -> None:
        target = self.target(rel)
        try:
            target.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise UnsafeCrate(
                f"folder {str(rel)!r} collides with a file of the same name", where=self.source
            ) from exc

    def write_file(
        self, rel: PurePosixPath, data: BinaryIO, *, executable: bool, compressed: int | None
    ) -> None:
        target = self.target(rel)
        if len(rel.parts) > 1:
            self.make_dir(rel.parent)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(target, flags, 0o755 if executable else 0o644)
        except FileExistsError as exc:
            raise UnsafeCrate(
                f"{str(rel)!r} appears twice (or collides with a folder); the crate is refused",
                where=self.source,
            ) from exc
        except (IsADirectoryError, NotADirectoryError) as exc:
            raise UnsafeCrate(
                f"{str(rel)!r} collides with a folder of the same name", where=self.source
            ) from exc
        with os.fdopen(fd, "wb") as out:
            self._pump(rel, data, out, compressed)

    def _pump(
        self, rel: PurePosixPath, data: BinaryIO, out: BinaryIO, compressed: int | None
    ) -> None:
        written = 0
        while chunk := data.read(_CHUNK):
            written += len(chunk)
            self.total += len(chunk)
            self._check_total(rel)
            if compressed is not None:
                self._check_ratio(rel, written, compressed)
            out.write(chunk)

    def _check_total(self, rel: PurePosixPath) -> None:
        if self.total > self.limits.max_total_bytes:
            raise UnsafeCrate(
                f"unpacked size passes the limit of {self.limits.max_total_bytes} bytes "
                f"(while writing {str(rel)!r}); ask the operator to raise "
                "intake.max_total_bytes if the crate is genuine",
                where=self.source,
            )

    def _check_ratio(self, rel: PurePosixPath, written: int, compressed: int) -> None:
        if written <= self.limits.ratio_grace_bytes:
            return
        ratio = written / max(compressed, 1)
        if ratio > self.limits.max_ratio:
            raise UnsafeCrate(
                f"member {str(rel)!r} expands more than {self.limits.max_ratio:g} times "
                f"its compressed size (a zip bomb?); the crate is refused",
                where=self.source,
            )


# -- zip -----------------------------------------------------------------------------------


def _extract_zip(source: Path, dest: Path, limits: IntakeLimits) -> None:
    where = str(source)
    try:
        with zipfile.ZipFile(source) as archive:
            members = archive.infolist()
            _check_member_list(members, limits, where)
            writer = _Writer(dest, limits, where)
            for info in members:
                _extract_member(archive, info, writer)
    except zipfile.BadZipFile as exc:
        raise CrateRejected(
            f"not a readable zip file ({exc}); re-create the archive", where=where
        ) from exc
    except NotImplementedError as exc:
        raise CrateRejected(
            f"the zip uses a compression method cratebridge cannot read ({exc}); "
            "re-create it with deflate or store",
            where=where,
        ) from exc


def _check_member_list(members: list[zipfile.ZipInfo], limits: IntakeLimits, where: str) -> None:
    if len(members) > limits.max_files:
        raise UnsafeCrate(
            f"the zip has {len(members)} members, more than the limit of {limits.max_files}; "
            "split the request or ask the operator to raise intake.max_files",
            where=where,
        )
    seen: set[str] = set()
    for info in members:
        key = info.filename.rstrip("/")
        if key in seen:
            raise UnsafeCrate(
                f"member {info.filename!r} appears more than once; the crate is refused",
                where=where,
            )
        seen.add(key)


def _extract_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, writer: _Writer) -> None:
    where = f"{writer.source}:{info.filename}"
    rel = safe_relative_path(info.filename, where=where)
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if info.flag_bits & 0x1:
        raise UnsafeCrate(
            f"member {info.filename!r} is encrypted; send the crate unencrypted", where=where
        )
    if kind == stat.S_IFLNK:
        raise UnsafeCrate(
            f"member {info.filename!r} is a symbolic link; crates may not contain links",
            where=where,
        )
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise UnsafeCrate(
            f"member {info.filename!r} is a device or special file; the crate is refused",
            where=where,
        )
    writer.count_member(info.filename)
    if info.is_dir() or kind == stat.S_IFDIR:
        writer.make_dir(rel)
        return
    with archive.open(info) as data:
        writer.write_file(
            rel,
            data,  # type: ignore[arg-type]  # ZipExtFile is a binary stream
            executable=bool(mode & stat.S_IXUSR),
            compressed=info.compress_size,
        )


# -- folder --------------------------------------------------------------------------------


def _copy_tree(source: Path, dest: Path, limits: IntakeLimits) -> None:
    writer = _Writer(dest, limits, str(source))
    for rel, entry in _walk(source, PurePosixPath()):
        writer.count_member(str(rel))
        if entry.is_dir(follow_symlinks=False):
            writer.make_dir(rel)
            continue
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
        with os.fdopen(os.open(entry.path, flags), "rb") as data:
            executable = bool(os.fstat(data.fileno()).st_mode & stat.S_IXUSR)
            writer.write_file(rel, data, executable=executable, compressed=None)


def _walk(folder: Path, rel: PurePosixPath) -> Iterator[tuple[PurePosixPath, os.DirEntry[str]]]:
    """Yield every entry below ``folder``, refusing links and special files."""
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            child = rel / entry.name
            where = str(Path(entry.path))
            if entry.is_symlink():
                raise UnsafeCrate(
                    f"{str(child)!r} is a symbolic link; crates may not contain links",
                    where=where,
                )
            if entry.is_dir(follow_symlinks=False):
                yield child, entry
                yield from _walk(Path(entry.path), child)
            elif entry.is_file(follow_symlinks=False):
                yield child, entry
            else:
                raise UnsafeCrate(
                    f"{str(child)!r} is a device, socket or pipe; the crate is refused",
                    where=where,
                )


# -- layout --------------------------------------------------------------------------------


def _locate(dest: Path, limits: IntakeLimits) -> OpenedCrate:
    """Find the bag or crate in the unpacked tree."""
    folder = _crate_folder(dest)
    if (folder / "bagit.txt").is_file():
        root = folder / "data"
        _check_metadata_file(root / METADATA_NAME, limits, bag=True)
        bag_info = read_bag_info(folder)
        return OpenedCrate(root=root, bag_dir=folder, bag_info=bag_info)
    if _looks_like_bag(folder):
        raise BagItError(
            "the crate looks like a BagIt bag (data/ and manifest files) but bagit.txt is "
            "missing; ask the submitter to rebuild the bag",
            where=str(folder / "bagit.txt"),
        )
    _check_metadata_file(folder / METADATA_NAME, limits, bag=False)
    return OpenedCrate(root=folder, bag_dir=None)


def _looks_like_bag(folder: Path) -> bool:
    has_manifest = any(folder.glob("manifest-*.txt"))
    return has_manifest and not (folder / METADATA_NAME).exists()


def _crate_folder(dest: Path) -> Path:
    if (dest / "bagit.txt").exists() or (dest / METADATA_NAME).exists():
        return dest
    entries = [e for e in dest.iterdir() if e.name not in _ARCHIVER_NOISE]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    raise MetadataError(
        "no ro-crate-metadata.json or bagit.txt at the top of the crate or in a single "
        "top-level folder; send one BagIt bag or one RO-Crate per request",
        where=dest.name,
    )


def _check_metadata_file(path: Path, limits: IntakeLimits, *, bag: bool) -> None:
    if not path.is_file():
        hint = "in the bag's data/ folder" if bag else "next to the crate's files"
        raise MetadataError(
            f"{METADATA_NAME} is missing; a request crate needs it {hint}", where=str(path)
        )
    size = path.stat().st_size
    if size > limits.max_metadata_bytes:
        raise UnsafeCrate(
            f"{METADATA_NAME} is {size} bytes, more than the limit of "
            f"{limits.max_metadata_bytes}; ask the operator to raise intake.max_metadata_bytes",
            where=str(path),
        )

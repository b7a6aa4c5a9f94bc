"""Safe unpacking of an untrusted request crate (a zip or a folder) into the run folder.

Every member is checked while it is written: no path may leave ``dest``, no link
or device file is created, and byte counts are taken from the data actually
written, so a zip bomb stops at the limit instead of filling the disk. Each file's
sha-512 is taken from the same chunks as they are written, so a bag's payload
need not be read a second time to verify it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import stat
import zipfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from cratebridge.errors import BagItError, CrateRejected, MetadataError, UnsafeCrate, UsageError
from cratebridge.intake.bag import read_bag_info

__all__ = ["IntakeLimits", "OpenedCrate", "open_crate", "safe_relative_path"]

METADATA_NAME = "ro-crate-metadata.json"
_CHUNK = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
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
    ``digests`` is the sha-512 (lower-case hex) of every payload file as it was
    written, keyed by its path in the bag (``data/...``), empty without BagIt: pass
    it as ``verify_bag(bag_dir, known=digests)`` so the payload is not read again.
    """

    root: Path
    bag_dir: Path | None
    bag_info: dict[str, str] = field(default_factory=dict)
    digests: Mapping[str, str] = field(default_factory=dict)

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
    if source.is_dir() and dest.resolve().is_relative_to(source.resolve()):
        raise UsageError(
            "the run folder would be inside the crate folder it unpacks; set [run] "
            "runs_dir (or CRATEBRIDGE_RUNS_DIR) outside the crate", where=str(source))
    _prepare_dest(dest)
    try:
        if source.is_dir():
            digests = _copy_tree(source, dest, limits)
        elif source.is_file():
            digests = _extract_zip(source, dest, limits)
        else:
            raise CrateRejected(
                "the request crate does not exist or is neither a .zip file nor a folder; "
                "pass the path of the crate as handed over by the TRE agent",
                where=str(source),
            )
        return _locate(dest, limits, digests)
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
    """Writes files under ``dest`` and keeps the running totals the limits apply to.

    ``dest`` is resolved once. Each folder is made once and opened once, relative to
    its parent's descriptor with ``O_NOFOLLOW``, so no link is followed anywhere under
    ``dest`` even if one appeared there; each file is created relative to its folder's
    descriptor with ``O_CREAT | O_EXCL | O_NOFOLLOW``. No path is resolved per file.
    ``digests`` holds the sha-512 of every file written, keyed by its path under ``dest``.
    Use as a context manager: it holds a few folder descriptors open.
    """

    _OPEN_FOLDERS = 32  # descriptors of recently used folders kept open

    def __init__(self, dest: Path, limits: IntakeLimits, source: str) -> None:
        self.dest = dest
        self.limits = limits
        self.source = source
        self.total = 0
        self.files = 0
        self.digests: dict[str, str] = {}
        self._root = dest.resolve()
        self._root_fd = os.open(self._root, _DIR_FLAGS)
        self._made: set[PurePosixPath] = {PurePosixPath()}
        self._fds: OrderedDict[PurePosixPath, int] = OrderedDict()

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        os.close(self._root_fd)

    def count_member(self, name: str) -> None:
        self.files += 1
        if self.files > self.limits.max_files:
            raise UnsafeCrate(
                f"more than {self.limits.max_files} files (reached at {name!r}); "
                "split the request or ask the operator to raise intake.max_files",
                where=self.source,
            )

    def make_dir(self, rel: PurePosixPath) -> None:
        self._folder(rel)

    def _folder(self, rel: PurePosixPath) -> int:
        """Make the folder ``rel`` and its parents; return an open descriptor of it."""
        if rel == PurePosixPath():
            return self._root_fd
        fd = self._fds.get(rel)
        if fd is not None:
            self._fds.move_to_end(rel)
            return fd
        chain = [rel]
        while chain[-1].parent != PurePosixPath() and chain[-1].parent not in self._fds:
            chain.append(chain[-1].parent)
        for folder in reversed(chain):
            parent = self._root_fd if folder.parent == PurePosixPath() else self._fds[folder.parent]
            fd = self._open_folder(folder, parent, rel)
            self._fds[folder] = fd
            if len(self._fds) > self._OPEN_FOLDERS:
                _, old = self._fds.popitem(last=False)
                os.close(old)
        return self._fds[rel]

    def _open_folder(self, folder: PurePosixPath, parent: int, asked: PurePosixPath) -> int:
        if folder not in self._made:
            with contextlib.suppress(FileExistsError):  # a folder is fine, the open checks
                os.mkdir(folder.name, dir_fd=parent)
        try:
            fd = os.open(folder.name, _DIR_FLAGS, dir_fd=parent)
        except NotADirectoryError as exc:
            raise UnsafeCrate(
                f"folder {str(asked)!r} collides with a file of the same name", where=self.source
            ) from exc
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            # A link where a folder was made: never created here, never followed.
            raise UnsafeCrate(
                f"path {str(asked)!r} resolves outside the crate", where=self.source
            ) from exc
        if folder not in self._made:
            # Belt and braces, once per folder: the name was checked and no link is followed.
            if not (self._root / Path(*folder.parts)).resolve().is_relative_to(self._root):
                os.close(fd)
                raise UnsafeCrate(
                    f"path {str(asked)!r} resolves outside the crate", where=self.source
                )
            self._made.add(folder)
        return fd

    def write_file(
        self, rel: PurePosixPath, data: BinaryIO, *, executable: bool, compressed: int | None
    ) -> None:
        # rel.name is one component that safe_relative_path (or os.scandir) gave: never
        # empty, '.', '..' or containing '/'; O_NOFOLLOW and O_EXCL refuse a link there.
        folder = self._folder(rel.parent)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        try:
            fd = os.open(rel.name, flags, 0o755 if executable else 0o644, dir_fd=folder)
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
            self.digests[str(rel)] = self._pump(rel, data, out, compressed)

    def _pump(
        self, rel: PurePosixPath, data: BinaryIO, out: BinaryIO, compressed: int | None
    ) -> str:
        """Copy ``data`` to ``out`` within the limits; return the sha-512 of what was written."""
        hasher = hashlib.sha512()
        written = 0
        while chunk := data.read(_CHUNK):
            written += len(chunk)
            self.total += len(chunk)
            self._check_total(rel)
            if compressed is not None:
                self._check_ratio(rel, written, compressed)
            out.write(chunk)
            hasher.update(chunk)
        return hasher.hexdigest()

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


def _extract_zip(source: Path, dest: Path, limits: IntakeLimits) -> dict[str, str]:
    where = str(source)
    try:
        with zipfile.ZipFile(source) as archive:
            members = archive.infolist()
            _check_member_list(members, limits, where)
            with _Writer(dest, limits, where) as writer:
                for info in members:
                    _extract_member(archive, info, writer)
            return writer.digests
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


def _copy_tree(source: Path, dest: Path, limits: IntakeLimits) -> dict[str, str]:
    with _Writer(dest, limits, str(source)) as writer:
        for rel, entry in _walk(source, PurePosixPath()):
            writer.count_member(str(rel))
            if entry.is_dir(follow_symlinks=False):
                writer.make_dir(rel)
                continue
            flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
            with os.fdopen(os.open(entry.path, flags), "rb") as data:
                executable = bool(os.fstat(data.fileno()).st_mode & stat.S_IXUSR)
                writer.write_file(rel, data, executable=executable, compressed=None)
    return writer.digests


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


def _locate(dest: Path, limits: IntakeLimits, digests: dict[str, str]) -> OpenedCrate:
    """Find the bag or crate in the unpacked tree; keep the digests of a bag's payload."""
    folder = _crate_folder(dest)
    if (folder / "bagit.txt").is_file():
        root = folder / "data"
        _check_metadata_file(root / METADATA_NAME, limits, bag=True)
        bag_info = read_bag_info(folder)
        return OpenedCrate(
            root=root,
            bag_dir=folder,
            bag_info=bag_info,
            digests=_payload_digests(digests, folder.relative_to(dest).as_posix()),
        )
    if _looks_like_bag(folder):
        raise BagItError(
            "the crate looks like a BagIt bag (data/ and manifest files) but bagit.txt is "
            "missing; ask the submitter to rebuild the bag",
            where=str(folder / "bagit.txt"),
        )
    _check_metadata_file(folder / METADATA_NAME, limits, bag=False)
    return OpenedCrate(root=folder, bag_dir=None)


def _payload_digests(digests: dict[str, str], bag: str) -> dict[str, str]:
    """Move the entries of ``digests`` (keyed by path under ``dest``) for the files under
    ``bag/data/`` into a new dict keyed by their path in the bag; ``digests`` is emptied,
    so the two are never both whole in memory."""
    prefix = "" if bag == "." else f"{bag}/"
    payload = f"{prefix}data/"
    moved: dict[str, str] = {}
    for rel in list(digests):
        digest = digests.pop(rel)
        if rel.startswith(payload):
            moved[rel[len(prefix) :]] = digest
    return moved


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

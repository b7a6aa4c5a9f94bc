"""Writes an untrusted crate's files under the unpack folder, never through a link.

Byte counts are taken from the data actually written, so a zip bomb stops at the
limit instead of filling the disk, and each file's sha-512 is taken from the same
chunks, so a bag's payload need not be read a second time to verify it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from collections import OrderedDict
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol

from cratebridge.errors import UnsafeCrate
from cratebridge.intake._limits import IntakeLimits

__all__ = ["Readable", "Writer"]

_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
# What the file system says about a name it cannot hold: the crate's fault, not the host's.
_NAME_ERRORS = frozenset({errno.ENAMETOOLONG, errno.EILSEQ, errno.EINVAL})


class Readable(Protocol):
    """What the writer copies from: an open file, or a zip member's checked stream."""

    def read(self, size: int, /) -> bytes: ...


class Writer:
    """Writes files under ``dest`` and keeps the running totals the limits apply to.

    ``dest`` is resolved once. Each folder is made once and opened once, relative to
    its parent's descriptor with ``O_NOFOLLOW``, so no link is followed anywhere under
    ``dest`` even if one appeared there; each file is created relative to its folder's
    descriptor with ``O_CREAT | O_EXCL | O_NOFOLLOW``. No path is resolved per file.
    ``digests`` holds the sha-512 of every file written, keyed by its path under ``dest``.
    Callers check every path with :func:`cratebridge.intake._limits.member_path` first.
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

    def __enter__(self) -> Writer:
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
        try:
            if folder not in self._made:
                with contextlib.suppress(FileExistsError):  # a folder is fine, the open checks
                    os.mkdir(folder.name, dir_fd=parent)
            fd = os.open(folder.name, _DIR_FLAGS, dir_fd=parent)
        except NotADirectoryError as exc:
            raise UnsafeCrate(
                f"folder {str(asked)!r} collides with a file of the same name", where=self.source
            ) from exc
        except OSError as exc:
            self._name_error(asked, exc)
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
        self, rel: PurePosixPath, data: Readable, *, executable: bool, compressed: int | None
    ) -> None:
        # rel.name is one component that member_path gave: never empty, '.', '..' or
        # containing '/'; O_NOFOLLOW and O_EXCL refuse a link there.
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
        except OSError as exc:
            self._name_error(rel, exc)
            raise
        with os.fdopen(fd, "wb") as out:
            self.digests[str(rel)] = self._pump(rel, data, out, compressed)

    def _name_error(self, rel: PurePosixPath, exc: OSError) -> None:
        if exc.errno in _NAME_ERRORS:
            raise UnsafeCrate(
                f"the file system cannot hold the name {str(rel)!r} ({exc.strerror}); "
                "rename it",
                where=self.source,
            ) from exc

    def _pump(
        self, rel: PurePosixPath, data: Readable, out: BinaryIO, compressed: int | None
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

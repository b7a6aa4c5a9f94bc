"""The working copy of a workflow folder that Snakemake runs in, made by the executor.

Snakemake is run as its author runs it: inside the workflow's folder, so that
relative paths, ``configfile:`` files and sample sheets shipped beside the
Snakefile are found. The crate's own folder stays untouched (it is read-only
in the room); the copy lives in the run's work folder, where the room and the
broker allow writes. The walk opens every folder and file relative to its
parent with ``O_NOFOLLOW`` and creates every entry with ``O_EXCL``, so no link
is ever followed, on either side; a link, fifo, socket or device in the
workflow folder is refused by name (intake already refuses them in crates and
mirrored workflows: this is the second look).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from cratebridge.errors import CrateRejected, UnsafeCrate

__all__ = ["make_working_copy"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20

_Level = tuple[int, int, PurePosixPath, Iterator[os.DirEntry[str]]]


def make_working_copy(source: Path, dest: Path, owner: tuple[int, int] | None = None) -> None:
    """Copy the folder ``source`` to ``dest`` (replaced if it exists): folders and files only.

    Modes are kept to the permission bits (executables stay executable, nothing
    setuid), times are kept (Snakemake compares them), and with ``owner``
    (uid, gid) every entry is given to the engine's user, which must be able
    to write in its working tree. Raises :class:`UnsafeCrate` naming a link
    or special file, :class:`CrateRejected` for a file that cannot be read.
    """
    if dest.is_symlink() or not dest.is_dir():
        dest.unlink(missing_ok=True)  # what the room may have left in its place
    else:
        shutil.rmtree(dest)  # a previous copy (the plan's); links in it are not followed
    dest.mkdir(parents=True)
    try:
        top = os.open(source, _DIR_FLAGS)
    except OSError as exc:
        raise CrateRejected(f"the workflow folder cannot be read ({exc.strerror})",
                            where=str(source)) from exc
    target = os.open(dest, _DIR_FLAGS)
    stack: list[_Level] = []
    try:
        _enter(stack, top, target, PurePosixPath(), owner)
        while stack:
            src, dst, rel, entries = stack[-1]
            entry = next(entries, None)
            if entry is None:
                stack.pop()
                _finish_dir(src, dst, owner)
                continue
            _copy_entry(entry, src, dst, rel / entry.name, source, stack, owner)
    finally:
        for src, dst, _, _ in stack:
            os.close(src)
            os.close(dst)


def _enter(stack: list[_Level], src: int, dst: int, rel: PurePosixPath,
           owner: tuple[int, int] | None) -> None:
    try:
        with os.scandir(src) as scan:
            entries = sorted(scan, key=lambda e: e.name)
    except BaseException:
        os.close(src)
        os.close(dst)
        raise
    stack.append((src, dst, rel, iter(entries)))


def _copy_entry(entry: os.DirEntry[str], src: int, dst: int, rel: PurePosixPath,
                source: Path, stack: list[_Level], owner: tuple[int, int] | None) -> None:
    where = f"{source}/{rel}"
    if entry.is_symlink():
        raise UnsafeCrate(f"'{rel}' in the workflow folder is a symbolic link; the working "
                          "copy Snakemake runs in follows no links", where=where)
    if entry.is_dir(follow_symlinks=False):
        child = _open(entry.name, src, _DIR_FLAGS, rel, where)
        try:
            os.mkdir(entry.name, 0o700, dir_fd=dst)
            made = os.open(entry.name, _DIR_FLAGS, dir_fd=dst)
        except BaseException:
            os.close(child)
            raise
        _enter(stack, child, made, rel, owner)
    elif entry.is_file(follow_symlinks=False):
        _copy_file(entry.name, src, dst, rel, where, owner)
    else:
        raise UnsafeCrate(f"'{rel}' in the workflow folder is a device, socket or pipe",
                          where=where)


def _open(name: str, folder: int, flags: int, rel: PurePosixPath, where: str) -> int:
    try:
        return os.open(name, flags, dir_fd=folder)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENXIO):
            raise UnsafeCrate(f"'{rel}' in the workflow folder changed into a link or special "
                              "file while it was copied", where=where) from exc
        raise CrateRejected(f"'{rel}' in the workflow folder cannot be read ({exc.strerror})",
                            where=where) from exc


def _copy_file(name: str, src: int, dst: int, rel: PurePosixPath, where: str,
               owner: tuple[int, int] | None) -> None:
    fd = _open(name, src, _FILE_FLAGS, rel, where)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeCrate(f"'{rel}' in the workflow folder is a device, socket or pipe",
                              where=where)
        out = os.open(name, _NEW_FLAGS, 0o600, dir_fd=dst)
        try:
            while chunk := os.read(fd, _CHUNK):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view):]
            _settle(out, info, owner)
        finally:
            os.close(out)
    finally:
        os.close(fd)


def _finish_dir(src: int, dst: int, owner: tuple[int, int] | None) -> None:
    """A folder's mode, owner and times, once everything in it is written."""
    try:
        _settle(dst, os.fstat(src), owner, folder=True)
    finally:
        os.close(src)
        os.close(dst)


def _settle(fd: int, info: os.stat_result, owner: tuple[int, int] | None,
            folder: bool = False) -> None:
    executable = folder or bool(info.st_mode & stat.S_IXUSR)
    os.fchmod(fd, 0o755 if executable else 0o644)
    if owner is not None:
        os.fchown(fd, *owner)
    os.utime(fd, ns=(info.st_atime_ns, info.st_mtime_ns))

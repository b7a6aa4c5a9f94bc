"""Copying a request crate that arrives as a folder: regular files and folders, nothing else.

The walk holds one descriptor per level and opens every folder and file relative to
its parent's descriptor with ``O_NOFOLLOW``, so a link swapped in mid-copy is
refused, never followed; files open with ``O_NONBLOCK``, so a fifo swapped in cannot
stall the copy. Symbolic links, hard links (a second name for a file that may live
outside the crate), fifos, sockets and devices are refused, each by name.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from cratebridge.errors import CrateRejected, UnsafeCrate
from cratebridge.intake._limits import member_path, shown
from cratebridge.intake._writer import Writer

__all__ = ["copy_folder"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def copy_folder(source: Path, writer: Writer) -> None:
    """Copy the folder ``source`` through ``writer`` (whose limits apply), depth first.

    No recursion: the walk keeps a stack of open folders, one per level, and a path
    deeper than ``max_depth`` is refused before its folder is opened.

    Raises :class:`UnsafeCrate` naming the first link, hard link, special file or
    over-limit path, :class:`CrateRejected` for a file that cannot be read.
    """
    try:  # the operator's own path to the crate may be a link; nothing below it is followed
        root = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise CrateRejected(
            f"the crate folder cannot be read ({exc.strerror})", where=str(source)
        ) from exc
    stack: _Stack = []
    try:
        _push(stack, root, PurePosixPath(), writer)
        while stack:
            folder, rel, entries = stack[-1]
            entry = next(entries, None)
            if entry is None:
                stack.pop()
                os.close(folder)
                continue
            name = f"{rel}/{entry.name}" if rel.parts else entry.name
            where = f"{source}/{shown(name)}"
            child = member_path(name, writer.limits, where=where)
            if entry.is_symlink():
                raise UnsafeCrate(
                    f"'{child}' is a symbolic link; crates may not contain links", where=where
                )
            if entry.is_dir(follow_symlinks=False):
                writer.make_dir(child)
                _push(stack, _open(entry.name, folder, _DIR_FLAGS, child, where), child, writer)
            elif entry.is_file(follow_symlinks=False):
                _copy_file(entry.name, folder, child, where, writer)
            else:
                raise UnsafeCrate(
                    f"'{child}' is a device, socket or pipe; the crate is refused", where=where
                )
    finally:
        for folder, _, _ in stack:
            os.close(folder)


_Stack = list[tuple[int, PurePosixPath, Iterator[os.DirEntry[str]]]]


def _push(stack: _Stack, folder: int, rel: PurePosixPath, writer: Writer) -> None:
    """List ``folder`` onto the stack; its descriptor is closed if listing it is refused."""
    try:
        entries = _entries(folder, rel, writer)
    except BaseException:
        os.close(folder)
        raise
    stack.append((folder, rel, entries))


def _entries(folder: int, rel: PurePosixPath, writer: Writer) -> Iterator[os.DirEntry[str]]:
    """The folder's entries by name, each counted against ``max_files`` as it is listed,
    so a folder of a million entries is refused while it is read, not after."""
    listed: list[os.DirEntry[str]] = []
    with os.scandir(folder) as scan:
        for entry in scan:
            writer.count_member(shown(f"{rel}/{entry.name}" if rel.parts else entry.name))
            listed.append(entry)
    return iter(sorted(listed, key=lambda e: e.name))


def _open(name: str, folder: int, flags: int, child: PurePosixPath, where: str) -> int:
    try:
        return os.open(name, flags, dir_fd=folder)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENXIO):
            raise UnsafeCrate(
                f"'{child}' changed into a link or special file while it was copied; "
                "the crate is refused",
                where=where,
            ) from exc
        raise CrateRejected(
            f"'{child}' cannot be read ({exc.strerror}); make every file in the crate "
            "readable by cratebridge",
            where=where,
        ) from exc


def _copy_file(
    name: str, folder: int, child: PurePosixPath, where: str, writer: Writer
) -> None:
    fd = _open(name, folder, _FILE_FLAGS, child, where)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeCrate(
                f"'{child}' is a device, socket or pipe; the crate is refused", where=where
            )
        if info.st_nlink > 1:
            raise UnsafeCrate(
                f"'{child}' is a hard link ({info.st_nlink} names for one file, which may lie "
                "outside the crate); copy the file into the crate instead of linking it",
                where=where,
            )
        data = os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise
    writer.write_file(  # the writer owns data from here, and closes it
        child,
        data,
        executable=bool(info.st_mode & stat.S_IXUSR),
        size=info.st_size,
        compressed=None,
    )

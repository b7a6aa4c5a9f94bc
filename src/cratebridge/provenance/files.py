"""Copying files into a crate while hashing them once (sha-512, 1 MiB chunks)."""

from __future__ import annotations

import errno
import hashlib
import mimetypes
import os
from dataclasses import dataclass
from stat import S_ISREG

__all__ = ["CHUNK", "Digest", "copy_hashed", "copy_new", "hash_file", "media_type"]

StrPath = str | os.PathLike[str]

CHUNK = 1024 * 1024
# Workflow and log files that the mimetypes database does not know.
_EXTRA_TYPES = {
    "cwl": "application/yaml",
    "yml": "application/yaml",
    "yaml": "application/yaml",
    "nf": "text/plain",
    "smk": "text/plain",
    "log": "text/plain",
    "stderr": "text/plain",
    "stdout": "text/plain",
}
# Files known by their whole name (workflow languages' conventions)
_NAMED_TYPES = {
    "Snakefile": "text/plain",
    "Dockerfile": "text/plain",
    "Makefile": "text/plain",
    "nextflow.config": "text/plain",
    "README": "text/plain",
}


@dataclass(frozen=True)
class Digest:
    """Size in bytes and sha-512 (hex) of one file."""

    size: int
    sha512: str


def copy_hashed(src: StrPath, dst: StrPath, *, link: bool = True) -> tuple[Digest, int]:
    """Put ``src`` at the new path ``dst``, hashing its bytes once.

    With ``link``, on the same filesystem ``dst`` is a hard link to ``src``:
    creating and filling a new file is what a run with many small outputs
    mostly pays for. Across filesystems, where linking is refused, or without
    ``link``, the bytes are copied to a file of its own.
    Returns the digest and the modification time (ns) of ``dst``.
    """
    if not link:
        return _copy_hashed(src, dst)
    try:
        os.link(src, dst)
    except OSError as exc:
        if exc.errno not in _LINK_REFUSED:
            raise
        return _copy_hashed(src, dst)
    return _hash_path(dst)


# Copy instead: another filesystem, links refused (protected_hardlinks), too many links.
_LINK_REFUSED = frozenset({errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK,
                           errno.ENOTSUP, errno.EOPNOTSUPP})


def _copy_hashed(src: StrPath, dst: StrPath) -> tuple[Digest, int]:
    """Copy ``src`` to a new file ``dst``, hashing the bytes as they pass."""
    sha = hashlib.sha512()
    size = 0
    reader = _open_regular(src)
    try:
        writer = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            while chunk := os.read(reader, CHUNK):
                sha.update(chunk)
                _write_all(writer, chunk)
                size += len(chunk)
            mtime = os.fstat(writer).st_mtime_ns
        finally:
            os.close(writer)
    finally:
        os.close(reader)
    return Digest(size, sha.hexdigest()), mtime


def _open_regular(path: StrPath) -> int:
    """Open a file a run made, for reading; :class:`ValueError` unless it is a regular file.

    A step may leave a fifo where a file was expected: opened plainly, it would
    wait for a writer forever. ``O_NONBLOCK`` makes the open return at once.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    if not S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError(f"{os.fspath(path)}: not a regular file (a fifo, socket or device); "
                         "refusing to read it")
    return fd


def copy_new(src: StrPath, dst: StrPath) -> None:
    """Copy the bytes of ``src`` to a new file ``dst`` (never one that is there); the
    kernel moves them (``sendfile``) where it can."""
    reader = os.open(src, os.O_RDONLY)
    try:
        writer = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            _send_all(reader, writer)
        finally:
            os.close(writer)
    finally:
        os.close(reader)


# sendfile cannot copy between these two files: read and write instead
_NO_SENDFILE = frozenset({errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.ENOTSOCK,
                          errno.EOPNOTSUPP})


def _send_all(reader: int, writer: int) -> None:
    sent = 0
    try:
        while count := os.sendfile(writer, reader, None, 8 * CHUNK):
            sent += count
    except OSError as exc:
        if sent or exc.errno not in _NO_SENDFILE:
            raise
        while chunk := os.read(reader, CHUNK):
            _write_all(writer, chunk)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def hash_file(path: StrPath) -> Digest:
    """Hash one file in 1 MiB chunks."""
    return _hash_path(path)[0]


def _hash_path(path: StrPath) -> tuple[Digest, int]:
    """The digest of a file and its modification time (ns), in one open.

    The time is taken before the bytes are read: a change while they are read
    makes the time differ from the file's next one.
    """
    fd = _open_regular(path)
    try:
        stat = os.fstat(fd)
        sha = hashlib.sha512()
        size = 0
        wanted = min(CHUNK, stat.st_size + 1)  # most run files are small: read whole at once
        while chunk := os.read(fd, wanted):
            sha.update(chunk)
            size += len(chunk)
            wanted = CHUNK
    finally:
        os.close(fd)
    return Digest(size, sha.hexdigest()), stat.st_mtime_ns


def media_type(name: str) -> str:
    """The IANA media type guessed from a file name; ``application/octet-stream``
    (bytes of no known kind) when the name says nothing."""
    base = name.rsplit("/", 1)[-1]
    if base in _NAMED_TYPES:
        return _NAMED_TYPES[base]
    suffix = base.rsplit(".", 1)[-1].lower() if "." in base else ""
    if suffix in _EXTRA_TYPES:
        return _EXTRA_TYPES[suffix]
    guessed, _encoding = mimetypes.guess_type(base, strict=False)
    return guessed or "application/octet-stream"

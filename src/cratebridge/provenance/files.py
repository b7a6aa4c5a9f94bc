"""Copying files into a crate while hashing them once (sha-512, 1 MiB chunks)."""

from __future__ import annotations

import errno
import hashlib
import mimetypes
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CHUNK", "Digest", "copy_hashed", "hash_file", "media_type"]

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


def copy_hashed(src: Path, dst: Path) -> tuple[Digest, int]:
    """Put ``src`` at the new path ``dst``, hashing its bytes once.

    On the same filesystem ``dst`` is a hard link to ``src``: creating and
    filling a new file is what a run with many small outputs mostly pays for.
    Across filesystems, or where linking is refused, the bytes are copied.
    Returns the digest and the modification time (ns) of ``dst``.
    """
    try:
        os.link(src, dst)
    except OSError as exc:
        if exc.errno not in _LINK_REFUSED:
            raise
        return _copy_hashed(src, dst)
    return hash_file(dst), os.stat(dst).st_mtime_ns


# Copy instead: another filesystem, links refused (protected_hardlinks), too many links.
_LINK_REFUSED = frozenset({errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK,
                           errno.ENOTSUP, errno.EOPNOTSUPP})


def _copy_hashed(src: Path, dst: Path) -> tuple[Digest, int]:
    """Copy ``src`` to a new file ``dst``, hashing the bytes as they pass."""
    sha = hashlib.sha512()
    size = 0
    reader = os.open(src, os.O_RDONLY)
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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def hash_file(path: Path) -> Digest:
    """Hash one file in 1 MiB chunks."""
    sha = hashlib.sha512()
    size = 0
    with path.open("rb") as reader:
        while chunk := reader.read(CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return Digest(size, sha.hexdigest())


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

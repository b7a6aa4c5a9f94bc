"""What an untrusted crate may hold: the operator's size limits and the rules every path obeys.

Both are checked from names and declared sizes before anything is written, so a
hostile crate is refused in milliseconds, not after it has filled the disk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from cratebridge.errors import UnsafeCrate

__all__ = ["IntakeLimits", "member_path", "safe_relative_path", "shown"]

_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class IntakeLimits:
    """How much an untrusted crate may unpack to; the operator config supplies its own.

    ``max_ratio`` is the largest uncompressed/compressed ratio of one zip member; it
    is enforced once a member has produced ``ratio_grace_bytes``, so small
    highly compressible files (an empty CSV, a run of zeros) still pass.
    """

    max_total_bytes: int = 10 * 1024**3
    """Most bytes the crate may unpack to, all files together."""
    max_files: int = 100_000
    """Most files and folders the crate may hold (zip members or folder entries)."""
    max_ratio: float = 200.0
    """Largest uncompressed/compressed size ratio of one zip member (a zip bomb's mark)."""
    max_metadata_bytes: int = 16 * 1024**2
    """Largest ``ro-crate-metadata.json`` read."""
    ratio_grace_bytes: int = 1024**2
    """Bytes a member may produce before ``max_ratio`` applies to it."""
    max_depth: int = 64
    """Most components (folders and the file name) in one path inside the crate."""
    max_name_bytes: int = 255
    """Longest file or folder name inside the crate, in UTF-8 bytes (most file systems: 255)."""
    max_path_bytes: int = 1024
    """Longest path inside the crate, in UTF-8 bytes."""


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


def member_path(name: str, limits: IntakeLimits, *, where: str) -> PurePosixPath:
    """:func:`safe_relative_path` for a file the crate holds, within ``limits``.

    Also refuses control characters and names that are not UTF-8 (a folder crate's
    undecodable bytes arrive as surrogates). Length is checked first, so a path
    thousands of folders deep costs one comparison, and depth before any folder is made.
    """
    if len(name) > limits.max_path_bytes:  # characters <= bytes: no need to encode yet
        raise UnsafeCrate(
            f"path '{shown(name)}' is longer than {limits.max_path_bytes} bytes; shorten it "
            "or ask the operator to raise intake.max_path_bytes",
            where=where,
        )
    if _CONTROL.search(name):
        raise UnsafeCrate(
            f"path '{shown(name)}' contains a control character (NUL, newline, escape, ...); "
            "rename the file",
            where=where,
        )
    rel = safe_relative_path(name, where=where)
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise UnsafeCrate(
            f"path '{shown(name)}' is not valid UTF-8; rename the file", where=where
        ) from None
    if size > limits.max_path_bytes:
        raise UnsafeCrate(
            f"path '{shown(name)}' is {size} bytes, longer than {limits.max_path_bytes}; "
            "shorten it or ask the operator to raise intake.max_path_bytes",
            where=where,
        )
    if len(rel.parts) > limits.max_depth:
        raise UnsafeCrate(
            f"path '{shown(name)}' is {len(rel.parts)} levels deep, more than "
            f"{limits.max_depth}; flatten the crate or ask the operator to raise "
            "intake.max_depth",
            where=where,
        )
    for part in rel.parts:
        if len(part.encode("utf-8")) > limits.max_name_bytes:
            raise UnsafeCrate(
                f"name '{shown(part)}' is longer than {limits.max_name_bytes} bytes; "
                "shorten it",
                where=where,
            )
    return rel


def shown(name: str, keep: int = 120) -> str:
    """``name`` as it may be printed: control characters and undecodable bytes escaped,
    and the middle of a very long name cut, so a hostile name cannot flood or drive
    the operator's terminal."""
    text = name.encode("utf-8", "backslashreplace").decode("utf-8")
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    if len(text) > keep:
        text = f"{text[: keep // 2]}...{text[-(keep // 3):]}"
    return text

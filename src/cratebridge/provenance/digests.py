"""A sidecar cache of the sha-512 digests computed while building a result crate.

The builder hashes every file as it copies it; packaging (BagIt manifests)
reuses those digests instead of reading the files again. The cache sits next to
the result folder (``.<name>.sha512``), never inside it, and an entry is only
trusted while the file's size and modification time are unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from cratebridge.provenance.files import Digest, hash_file

__all__ = ["DigestCache", "cache_path"]


def cache_path(result_dir: Path) -> Path:
    """Where the digest cache of ``result_dir`` lives."""
    return result_dir.parent / f".{result_dir.name}.sha512"


class DigestCache:
    """Digests of the files of one result folder, by POSIX path relative to it."""

    def __init__(self, root: Path, entries: Mapping[str, tuple[int, int, str]] | None = None):
        self.root = root
        self._entries: dict[str, tuple[int, int, str]] = dict(entries or {})

    def record(self, relpath: str, digest: Digest, mtime_ns: int | None = None) -> None:
        """Remember the digest of ``relpath`` (a file just written under ``root``)."""
        if mtime_ns is None:
            mtime_ns = (self.root / relpath).stat().st_mtime_ns
        self._entries[relpath] = (digest.size, mtime_ns, digest.sha512)

    def digest(self, relpath: str, stat: os.stat_result | None = None) -> Digest:
        """The digest of ``relpath``: from the cache when still valid, else by hashing."""
        stat = stat or (self.root / relpath).stat()
        entry = self._entries.get(relpath)
        if entry and entry[0] == stat.st_size and entry[1] == stat.st_mtime_ns:
            return Digest(entry[0], entry[2])
        return hash_file(self.root / relpath)

    def save(self) -> Path:
        """Write the cache next to ``root``; return its path."""
        path = cache_path(self.root)
        lines = (
            f"{size}\t{mtime}\t{sha}\t{_escape(rel)}\n"
            for rel, (size, mtime, sha) in self._entries.items()
        )
        path.write_text("".join(lines), encoding="utf-8")
        return path

    @classmethod
    def load(cls, root: Path) -> DigestCache:
        """The cache saved for ``root``, or an empty one when there is none or it is unreadable."""
        path = cache_path(root)
        entries: dict[str, tuple[int, int, str]] = {}
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            return cls(root)
        for line in text.splitlines():
            parts = line.split("\t", 3)
            if len(parts) == 4 and parts[0].isdigit() and parts[1].isdigit():
                entries[_unescape(parts[3])] = (int(parts[0]), int(parts[1]), parts[2])
        return cls(root, entries)


def _escape(relpath: str) -> str:
    escaped = relpath.replace("%", "%25").replace("\t", "%09")
    return escaped.replace("\n", "%0A").replace("\r", "%0D")


def _unescape(text: str) -> str:
    return text.replace("%0D", "\r").replace("%0A", "\n").replace("%09", "\t").replace("%25", "%")

"""Where each file of a run ends up in the result crate, copied and hashed exactly once.

A run of 10,000 steps places 10,000 files: paths are kept as strings here, and
each file costs the system calls that put it in place (a folder, a link or a
copy, one read to hash it), not more.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cratebridge.provenance.digests import DigestCache
from cratebridge.provenance.files import Digest, copy_hashed

__all__ = ["Placed", "Placer"]


@dataclass(frozen=True)
class Placed:
    """A file or folder in the result crate: its POSIX path relative to the crate root.

    Folder locations end with ``/``; ``digest`` is ``None`` for folders.
    """

    location: str
    is_dir: bool
    digest: Digest | None


class Placer:
    """Copies run files into ``dest``, de-duplicated by resolved source path and content.

    Every source path must lie inside ``run_dir`` (after resolving links);
    anything else is refused with :class:`ValueError`. Folders copied whole
    (the request payload, the workflow, folder outputs) are remembered, so a
    file recorded inside one of them maps to its copy instead of a new one.
    """

    def __init__(self, run_dir: Path, dest: Path, cache: DigestCache, *,
                 link: bool = True) -> None:
        self.run_dir = run_dir.resolve()
        self.link = link  # hard-link files in where the filesystem allows, else copy
        self.dest = dest
        self.cache = cache
        self._run = str(self.run_dir)
        self._root = os.fspath(dest)
        self._by_source: dict[str, Placed] = {}  # by resolved source path
        self._folders: dict[str, str] = {}  # resolved folder copied whole -> its location
        self._inside: dict[str, str] = {}  # a path as given (or resolved) -> resolved
        self._digests: dict[str, Digest] = {}
        self._taken: set[str] = set()
        self._made: set[str] = set()  # folders made for placed files (locations)
        self._ready: set[str] = set()  # folders known to be there, made here or not
        self._real_dirs: dict[str, str] = {}
        self._by_digest: dict[str, str] = {}  # sha-512 -> the first location holding it

    def _inside_run(self, path: Path | str) -> str:
        """``path`` resolved, or :class:`ValueError` when it lies outside the run folder."""
        given = os.fspath(path)
        known = self._inside.get(given)
        if known is not None:  # a step's output is the next one's input: asked again
            return known
        resolved = self._resolve(given)
        if not _within(resolved, self._run):
            raise ValueError(f"{path}: outside the run folder {self.run_dir}; refusing to copy it")
        self._inside[given] = self._inside[resolved] = resolved
        return resolved

    def _resolve(self, path: Path | str) -> str:
        """``path.resolve()``, resolving each parent folder only once (runs have many files)."""
        absolute = os.path.abspath(path)
        if os.path.islink(absolute):
            return str(Path(absolute).resolve())
        folder, name = os.path.split(absolute)
        return os.path.join(self._real_dir(folder), name)

    def _real_dir(self, folder: str) -> str:
        """``os.path.realpath(folder)`` (absolute, normalised), one ``lstat`` per new folder."""
        real = self._real_dirs.get(folder)
        if real is None:
            parent, name = os.path.split(folder)
            if not name or os.path.islink(folder):
                real = os.path.realpath(folder)
            else:
                real = os.path.join(self._real_dir(parent), name)
            self._real_dirs[folder] = real
        return real

    def _in_run(self, resolved: str) -> str:
        """The POSIX path of ``resolved`` (inside the run folder) relative to the run folder."""
        return "." if resolved == self._run else resolved[len(self._run):].lstrip("/")

    def copy_folder(
        self, src: Path, location: str, *, skip: frozenset[str] = frozenset(), trusted: bool = False
    ) -> Placed:
        """Copy the folder ``src`` to ``location`` (``""`` is the crate root), hashing each file.

        ``skip`` names top-level entries not to copy. ``trusted`` folders (the
        request payload, the workflow) need not lie inside the run folder.
        """
        resolved = str(src.resolve()) if trusted else self._inside_run(src)
        prefix = location if not location or location.endswith("/") else location + "/"
        self._folders[resolved] = prefix
        target = os.path.join(self._root, prefix)
        os.makedirs(target, exist_ok=True)
        for dirpath, dirnames, filenames in os.walk(resolved):
            rel_dir = os.path.relpath(dirpath, resolved)
            if rel_dir == ".":
                rel_dir = ""
                dirnames[:] = [d for d in dirnames if d not in skip]
                filenames = [f for f in filenames if f not in skip]
            dirnames.sort()
            for dirname in dirnames:
                _make_folder(os.path.join(target, rel_dir, dirname))
            for filename in sorted(filenames):
                rel = posixpath.join(rel_dir, filename) if rel_dir else filename
                source = self._readable(os.path.join(dirpath, filename), trusted)
                self._copy_file(source, prefix + rel)
        placed = Placed(prefix or "./", True, None)
        self._by_source[resolved] = placed
        return placed

    def place(self, path: Path, is_dir: bool, default: Callable[[Path], str],
              *, by_content: bool = False) -> Placed:
        """The crate location of the run file ``path``, copying it on first sight.

        ``default`` gives the wished location for a file not already copied
        with a folder; a taken location gets a numbered suffix. ``by_content``
        (a step's file): one with the bytes of a file placed before without it
        (the workflow's outputs) is that file, not a copy; the request's own
        files and the outputs keep their names.
        """
        return self._place(path, is_dir, lambda resolved: default(Path(resolved)), by_content)

    def place_as_in_run(self, path: Path, is_dir: bool, prefix: str) -> Placed:
        """:meth:`place` a step's file (by content) where it sits in the run folder, under
        ``prefix``: ``work/s1/out.txt`` at ``prefix + "work/s1/out.txt"``."""
        return self._place(path, is_dir, lambda resolved: prefix + self._in_run(resolved), True)

    def _place(self, path: Path, is_dir: bool, default: Callable[[str], str],
               by_content: bool) -> Placed:
        resolved = self._inside_run(path)
        known = self._by_source.get(resolved) or self._covered(resolved, is_dir)
        if known is not None:
            return known
        wished = default(resolved).rstrip("/")
        if is_dir:
            placed = self.copy_folder(Path(resolved), self._free(wished))
        else:
            location, digest = self._new_file(resolved, wished)
            placed = Placed(location, False, digest)
            if by_content:
                placed = self._once(placed)
            else:  # an output (or a log): what a step file of the same bytes becomes
                self._by_digest.setdefault(digest.sha512, location)
        self._by_source[resolved] = placed
        return placed

    def _new_file(self, resolved: str, wished: str) -> tuple[str, Digest]:
        """Copy ``resolved`` to ``wished``, or beside it with a number when that is taken.

        A name is taken when placed before, or found on disk when the copy is
        made (a folder copied whole, a name differing only in case where case is
        not told apart): one system call, not a look first.
        """
        number = 1
        location = wished
        while True:
            if location not in self._taken:
                self._taken.add(location)
                self._mkdir(posixpath.dirname(location))
                try:
                    return location, self._copy_file(resolved, location)
                except FileExistsError:
                    pass
            number += 1
            location = _numbered(wished, number)

    def _once(self, placed: Placed) -> Placed:
        """A step's file with the bytes of a workflow output (the file the engine then
        copied to the outputs) is stored once, as the output: its copy goes."""
        digest = placed.digest
        assert digest is not None
        same = self._by_digest.get(digest.sha512)
        if same is None or same == placed.location or digest.size == 0:
            return placed
        os.unlink(os.path.join(self._root, placed.location))
        del self._digests[placed.location]
        self._taken.discard(placed.location)
        folder = posixpath.dirname(placed.location)
        while folder and folder in self._made and not os.listdir(os.path.join(self._root, folder)):
            os.rmdir(os.path.join(self._root, folder))  # made for this copy alone
            self._made.discard(folder)
            self._ready.discard(folder)
            folder = posixpath.dirname(folder)
        return Placed(same, False, digest)

    def write_new(self, location: str, data: bytes) -> Placed:
        """Write a file cratebridge makes (a README) at ``location``, hashed as any copy."""
        self._mkdir(posixpath.dirname(location))
        (self.dest / location).write_bytes(data)
        digest = Digest(len(data), hashlib.sha512(data).hexdigest())
        self._digests[location] = digest
        self._taken.add(location)
        self.cache.record(location, digest)
        return Placed(location, False, digest)

    def lookup(self, path: Path) -> Placed | None:
        """The location of ``path`` if it was already copied (alone or in a folder), else ``None``.

        Unlike :meth:`place` this never copies and never refuses.
        """
        resolved = self._resolve(path)
        return self._by_source.get(resolved) or self._covered(resolved, os.path.isdir(resolved))

    def digest_of(self, location: str) -> Digest | None:
        """The digest of a file copied to ``location``."""
        return self._digests.get(location)

    def _covered(self, resolved: str, is_dir: bool) -> Placed | None:
        """Where ``resolved`` is if a folder holding it was copied whole (its nearest one)."""
        end = len(resolved)
        while self._folders and (end := resolved.rfind("/", 0, end)) >= 0:
            parent = resolved[:end] or "/"
            prefix = self._folders.get(parent)
            if prefix is not None:
                location = prefix + resolved[end:].lstrip("/")
                if is_dir and os.path.isdir(os.path.join(self._root, location)):
                    return Placed(location + "/", True, None)
                digest = self._digests.get(location)
                return Placed(location, False, digest) if digest else None
        return None

    def _free(self, location: str) -> str:
        candidate, number = location, 1
        while candidate in self._taken or (self.dest / candidate).exists():
            number += 1
            candidate = _numbered(location, number)
        self._taken.add(candidate)
        return candidate

    def _readable(self, path: str, trusted: bool) -> str:
        # A link inside a copied folder may only point back into the run folder.
        if not trusted or os.path.islink(path):
            return self._inside_run(path)
        return path

    def _copy_file(self, src: str, location: str) -> Digest:
        digest, mtime_ns = copy_hashed(src, os.path.join(self._root, location), link=self.link)
        self._digests[location] = digest
        self._taken.add(location)
        self.cache.record(location, digest, mtime_ns)
        return digest

    def _mkdir(self, folder: str) -> None:
        """Make the folder at ``folder`` (a location) and the ones missing above it."""
        if not folder or folder in self._ready:
            return
        path = os.path.join(self._root, folder)
        try:
            made = _make_folder(path)
        except FileNotFoundError:  # a folder above is missing too
            self._mkdir(posixpath.dirname(folder))
            os.mkdir(path)
            made = True
        self._ready.add(folder)
        if made:  # only a folder made here may go again with the copy it was made for
            self._made.add(folder)


def _within(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (both absolute and normalised)."""
    return path == folder or path.startswith(folder if folder.endswith("/") else folder + "/")


def _numbered(location: str, number: int) -> str:
    """``location`` with ``-<number>`` before its suffix (``out-2.txt``)."""
    path = PurePosixPath(location)
    return str(path.with_name(f"{path.stem}-{number}{path.suffix}"))


def _make_folder(path: str) -> bool:
    """``os.mkdir``, True; False for a folder already there (a file there is an error)."""
    try:
        os.mkdir(path)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
        return False
    return True

"""Where each file of a run ends up in the result crate, copied and hashed exactly once."""

from __future__ import annotations

import hashlib
import os
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

    def __init__(self, run_dir: Path, dest: Path, cache: DigestCache) -> None:
        self.run_dir = run_dir.resolve()
        self.dest = dest
        self.cache = cache
        self._by_source: dict[Path, Placed] = {}
        self._folders: dict[str, str] = {}  # resolved folder copied whole -> its location
        self._inside: dict[str, Path] = {}  # a path as given -> resolved, inside the run
        self._digests: dict[str, Digest] = {}
        self._taken: set[str] = set()
        self._made: set[Path] = set()
        self._real_dirs: dict[str, str] = {}
        self._by_digest: dict[str, str] = {}  # sha-512 -> the first location holding it

    def inside_run(self, path: Path) -> Path:
        """``path`` resolved, or :class:`ValueError` when it lies outside the run folder."""
        known = self._inside.get(os.fspath(path))
        if known is not None:  # a step's output is the next one's input: asked again
            return known
        resolved = self._resolve(path)
        if not resolved.is_relative_to(self.run_dir):
            raise ValueError(f"{path}: outside the run folder {self.run_dir}; refusing to copy it")
        self._inside[os.fspath(path)] = resolved
        return resolved

    def _resolve(self, path: Path) -> Path:
        """``path.resolve()``, resolving each parent folder only once (runs have many files)."""
        absolute = os.path.abspath(path)
        if os.path.islink(absolute):
            return Path(absolute).resolve()
        folder, name = os.path.split(absolute)
        return Path(os.path.join(self._real_dir(folder), name))

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

    def relative_to_run(self, path: Path) -> str:
        """The POSIX path of ``path`` (inside the run folder) relative to the run folder."""
        return self.inside_run(path).relative_to(self.run_dir).as_posix()

    def copy_folder(
        self, src: Path, location: str, *, skip: frozenset[str] = frozenset(), trusted: bool = False
    ) -> Placed:
        """Copy the folder ``src`` to ``location`` (``""`` is the crate root), hashing each file.

        ``skip`` names top-level entries not to copy. ``trusted`` folders (the
        request payload, the workflow) need not lie inside the run folder.
        """
        resolved = src.resolve() if trusted else self.inside_run(src)
        prefix = location if not location or location.endswith("/") else location + "/"
        self._folders[str(resolved)] = prefix
        target = self.dest / prefix if prefix else self.dest
        target.mkdir(parents=True, exist_ok=True)
        for dirpath, dirnames, filenames in os.walk(resolved):
            here = Path(dirpath)
            rel_dir = here.relative_to(resolved)
            if rel_dir == Path("."):
                dirnames[:] = [d for d in dirnames if d not in skip]
                filenames = [f for f in filenames if f not in skip]
            dirnames.sort()
            for dirname in dirnames:
                (target / rel_dir / dirname).mkdir(exist_ok=True)
            for filename in sorted(filenames):
                rel = (rel_dir / filename).as_posix()
                self._copy_file(self._readable(here / filename, trusted), prefix + rel)
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
        resolved = self.inside_run(path)
        known = self._by_source.get(resolved) or self._covered(resolved, is_dir)
        if known is not None:
            return known
        location = self._free(default(resolved).rstrip("/"))
        if is_dir:
            placed = self.copy_folder(resolved, location)
        else:
            self._mkdir((self.dest / location).parent)
            digest = self._copy_file(resolved, location)
            placed = Placed(location, False, digest)
            if by_content:
                placed = self._once(placed)
            else:  # an output (or a log): what a step file of the same bytes becomes
                self._by_digest.setdefault(digest.sha512, location)
        self._by_source[resolved] = placed
        return placed

    def _once(self, placed: Placed) -> Placed:
        """A step's file with the bytes of a workflow output (the file the engine then
        copied to the outputs) is stored once, as the output: its copy goes."""
        digest = placed.digest
        assert digest is not None
        same = self._by_digest.get(digest.sha512)
        if same is None or same == placed.location or digest.size == 0:
            return placed
        copy = self.dest / placed.location
        copy.unlink()
        del self._digests[placed.location]
        self._taken.discard(placed.location)
        folder = copy.parent
        while folder != self.dest and folder in self._made and not any(folder.iterdir()):
            folder.rmdir()  # made for this copy alone
            self._made.discard(folder)
            folder = folder.parent
        return Placed(same, False, digest)

    def write_new(self, location: str, data: bytes) -> Placed:
        """Write a file cratebridge makes (a README) at ``location``, hashed as any copy."""
        self._mkdir((self.dest / location).parent)
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
        return self._by_source.get(resolved) or self._covered(resolved, resolved.is_dir())

    def digest_of(self, location: str) -> Digest | None:
        """The digest of a file copied to ``location``."""
        return self._digests.get(location)

    def _covered(self, resolved: Path, is_dir: bool) -> Placed | None:
        """Where ``resolved`` is if a folder holding it was copied whole (its nearest one)."""
        text = str(resolved)
        parent = os.path.dirname(text)
        while True:
            prefix = self._folders.get(parent)
            if prefix is not None:
                location = prefix + text[len(parent):].lstrip("/")
                if is_dir and (self.dest / location).is_dir():
                    return Placed(location + "/", True, None)
                digest = self._digests.get(location)
                return Placed(location, False, digest) if digest else None
            up = os.path.dirname(parent)
            if up == parent:
                return None
            parent = up

    def _free(self, location: str) -> str:
        candidate, number = location, 1
        path = PurePosixPath(location)
        while candidate in self._taken or (self.dest / candidate).exists():
            number += 1
            candidate = str(path.with_name(f"{path.stem}-{number}{path.suffix}"))
        self._taken.add(candidate)
        return candidate

    def _readable(self, path: Path, trusted: bool) -> Path:
        # A link inside a copied folder may only point back into the run folder.
        if path.is_symlink() or not trusted:
            return self.inside_run(path)
        return path

    def _copy_file(self, src: Path, location: str) -> Digest:
        digest, mtime_ns = copy_hashed(src, self.dest / location)
        self._digests[location] = digest
        self._taken.add(location)
        self.cache.record(location, digest, mtime_ns)
        return digest

    def _mkdir(self, folder: Path) -> None:
        if folder not in self._made:
            missing, parent = [], folder.parent  # up to the first folder that is there
            while parent != self.dest and parent not in self._made and not parent.exists():
                missing.append(parent)
                parent = parent.parent
            folder.mkdir(parents=True, exist_ok=True)
            self._made.update(missing)
            self._made.add(folder)

"""Image layers from this environment: installed Python distributions and what they load.

Used by the recipes in :mod:`cratebridge.images` to put an installed program
(Snakemake, with every distribution it requires, at their installed versions)
and the host's Python standard library into a step image, without a download.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import tarfile
from collections.abc import Sequence
from pathlib import Path

from cratebridge.errors import EngineUnavailable

__all__ = ["add_file", "add_tree", "distribution_files", "host_libraries"]


def distribution_files(name: str, optional: Sequence[str] = ()) -> list[tuple[Path, str]]:
    """Each installed file of distribution ``name`` and of all it requires: (path, relative).

    ``relative`` is the file's path in its ``site-packages``; files installed
    elsewhere (console scripts) and bytecode are left out. Requirements are
    followed as installed here (extras and markers that do not apply skipped).
    The ``optional`` distributions that are installed come too, with theirs.
    Raises :class:`EngineUnavailable` naming a required distribution that is missing.
    """
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    files: list[tuple[Path, str]] = []
    seen: set[str] = set()
    todo = [name, *(o for o in optional if _installed(o))]
    while todo:
        wanted = todo.pop()
        if canonicalize_name(wanted) in seen:
            continue
        seen.add(canonicalize_name(wanted))
        try:
            dist = importlib.metadata.distribution(wanted)
        except importlib.metadata.PackageNotFoundError:
            raise EngineUnavailable(f"{wanted} (needed by {name}) is not installed in this "
                                    "environment", where=f"distribution {wanted}") from None
        site = Path(str(dist.locate_file(""))).resolve()
        for entry in dist.files or ():
            path = Path(str(dist.locate_file(entry))).resolve()
            if path.is_relative_to(site) and path.is_file() and "__pycache__" not in path.parts:
                files.append((path, path.relative_to(site).as_posix()))
        for text in dist.requires or ():
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return files


def _installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def host_libraries(modules: Sequence[Path]) -> list[Path]:
    """The system libraries (``/lib``, ``/usr/lib``) the ``modules`` (``.so`` files) load.

    As ``ldd`` resolves them on this host; libraries a wheel brings (its
    ``.libs`` folder) are already copied with it.
    """
    found: dict[str, Path] = {}
    for module in modules:
        if not module.name.endswith(".so") and ".so." not in module.name:
            continue
        done = subprocess.run(["ldd", str(module)], capture_output=True, text=True,
                              check=False, timeout=60)
        for line in done.stdout.splitlines():
            soname, arrow, rest = line.strip().partition(" => ")
            path = rest.split(" (")[0].strip() if arrow else ""
            if path.startswith(("/lib/", "/usr/lib/")) and soname not in found:
                found[soname] = Path(path)
    return [found[soname] for soname in sorted(found)]


def add_file(tar: tarfile.TarFile, source: Path, arcname: str) -> None:
    info = tar.gettarinfo(str(source), arcname)
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode = 0o755 if info.mode & 0o111 else 0o644
    with source.open("rb") as stream:
        tar.addfile(info, stream)


def add_tree(tar: tarfile.TarFile, root: Path, arcname: str,
              skip: Sequence[str]) -> list[Path]:
    """``root``'s files (links kept as links) under ``arcname``, minus ``skip`` names.

    Returns the files added.
    """
    added = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in skip)
        base = Path(folder)
        for item in sorted(names):
            path = base / item
            target = f"{arcname}/{path.relative_to(root).as_posix()}"
            if path.is_symlink():
                info = tarfile.TarInfo(target)
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
                tar.addfile(info)
            elif path.is_file():
                add_file(tar, path, target)
                added.append(path)
    return added

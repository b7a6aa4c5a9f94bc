"""What a Snakemake run hands over under ``outputs/``: what its author's folder holds after it.

A bare run leaves in the author's folder the final targets, every file its
jobs made and Snakemake kept (a ``temp()`` file it removed is gone), and
whatever a job wrote there without declaring it (a nested ``snakemake``, a
scratch file). cratebridge runs in a working copy of the workflow's folder
(:mod:`cratebridge_snakemake.worktree`), so the same set is: the targets, the
kept outputs and ``log:`` files of the jobs that succeeded, then every other
file of the working copy that the shipped folder does not hold as it is
(new, or changed in size or time: the copy keeps the shipped times). The
working copy was written by the room: it is read without following a link,
and a path counts only where it and what it points to lie inside it.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from cratebridge.engines.record import FileRecord
from cratebridge_snakemake.records import Events

__all__ = ["copy_outputs", "exported"]

_OWN = ".snakemake"  # Snakemake's own folders: metadata, logs, shadows, our job scripts


def exported(events: Events, tree: Path, shipped: Path, kept: bool) -> tuple[Path, ...]:
    """The paths that go under outputs/, targets first; only the targets without ``kept``.

    ``tree`` is the working copy the run used, ``shipped`` the folder it was
    made of.
    """
    paths = list(events.targets)
    if kept:
        for event in events.started:
            if events.finished.get(event["token"], {}).get("status") != "success":
                continue
            paths += [Path(path) for _, path in event.get("outputs", [])]
            paths += [Path(path) for path in event.get("logs", [])]
        paths += _left_in(tree, shipped)
    return tuple(dict.fromkeys(paths))


def _left_in(tree: Path, shipped: Path) -> list[Path]:
    """Files (and links) of ``tree`` that ``shipped`` does not hold as they are, sorted."""
    found = []
    for folder, dirs, files in os.walk(tree):  # links to folders are listed, not entered
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if d != _OWN)  # also where a workdir: moved it
        names = sorted(files) + [d for d in dirs if (here / d).is_symlink()]
        for name in names:
            path = here / name
            if not _as_shipped(path, shipped / path.relative_to(tree)):
                found.append(path)
    return found


def _as_shipped(path: Path, original: Path) -> bool:
    try:
        made, came = path.lstat(), original.lstat()
    except OSError:
        return False
    return (stat.S_ISREG(made.st_mode) and stat.S_ISREG(came.st_mode)
            and (made.st_size, made.st_mtime_ns) == (came.st_size, came.st_mtime_ns))


def copy_outputs(paths: tuple[Path, ...], workdir: Path,
                 outputs_dir: Path) -> tuple[FileRecord, ...]:
    """Copy files the run made under outputs/, keeping paths relative to its workdir.

    The events file was written in the room: a path counts only inside the
    workdir, both where it is (its folders' links resolved) and what it is
    (links resolved). A target that is a link is copied under its own name,
    as the bytes (or folder) it points to; links inside a folder are copied
    as links, never followed. A file inside a folder that is copied is copied
    with it, not again on its own. A fifo, socket or device is never copied
    (opening a fifo would wait for a writer).
    """
    records = []
    workdir = workdir.resolve()
    found: dict[Path, Path] = {}
    for target in paths:
        place = Path(os.path.realpath(target.parent)) / target.name
        real = Path(os.path.realpath(target))
        if not (place.is_relative_to(workdir) and real.is_relative_to(workdir)) \
                or place == workdir:
            continue
        if real.is_dir() or real.is_file():  # never a fifo, socket or device
            found.setdefault(place, real)
    folders = [place for place, real in found.items() if real.is_dir()]
    for place, real in found.items():
        if any(place != folder and place.is_relative_to(folder) for folder in folders):
            continue
        relative = place.relative_to(workdir)
        dest = outputs_dir / relative
        dest.parent.mkdir(parents=True, exist_ok=True)
        if real.is_dir():
            shutil.copytree(real, dest, symlinks=True, dirs_exist_ok=True, ignore=_special)
        else:
            shutil.copy2(real, dest, follow_symlinks=False)
        records.append(FileRecord(dest, relative.as_posix(), real.is_dir()))
    return tuple(records)


def _special(folder: str, names: list[str]) -> set[str]:
    """What a copied folder holds that is neither a file, a folder nor a link: left out."""
    kept = (stat.S_ISREG, stat.S_ISDIR, stat.S_ISLNK)
    return {name for name in names
            if not any(test(os.lstat(os.path.join(folder, name)).st_mode) for test in kept)}

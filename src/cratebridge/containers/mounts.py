"""Pinned bind sources: a step mounts exactly the folder the broker checked.

The broker resolves each bind source on the host and checks it lies inside
the run's folder; Docker would then resolve the path again when it mounts,
and the engine, which can write in its work folder, could swap a folder on
that path for a symlink in between. So the broker opens the checked source
(without following links), asks the kernel where that open file really is,
checks that again, and bind-mounts that very file onto a path in its own
folder, which the engine cannot see or change; Docker gets that path.
"""

from __future__ import annotations

import ctypes
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path

__all__ = ["OWNER_FILE", "Pinned", "pin_mounts", "release_job_pins", "release_pins",
           "release_stale"]

#: In a run's broker folder: ``host:pid`` of the process whose broker made its mounts.
OWNER_FILE = "owner"

MS_BIND = 4096
MNT_DETACH = 2
#: The C library the interpreter already has loaded (``find_library`` would run ldconfig).
_libc = ctypes.CDLL(None, use_errno=True)


class Pinned:
    """Bind mounts made for one container; :meth:`release` undoes them."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.targets: list[Path] = []

    def pin(self, source: str, roots: Sequence[Path]) -> str:
        """The path Docker should mount for ``source`` (checked to be inside ``roots``)."""
        fd = _open_nofollow(source)
        roots = [Path(os.path.realpath(r)) for r in roots]
        try:
            real = Path(os.readlink(f"/proc/self/fd/{fd}"))
            if not any(real == r or r in real.parents for r in roots):
                raise PermissionError(f"{source} leads to {real}, outside the run's folder")
            target = self.folder / str(len(self.targets))
            if os.path.isdir(f"/proc/self/fd/{fd}"):
                target.mkdir(parents=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.touch()
            if _libc.mount(f"/proc/self/fd/{fd}".encode(), str(target).encode(), None,
                           MS_BIND, None) != 0:
                errno = ctypes.get_errno()
                raise OSError(errno, f"bind-mounting {source}: {os.strerror(errno)}")
            self.targets.append(target)
            return str(target)
        finally:
            os.close(fd)

    def release(self) -> None:
        for target in reversed(self.targets):
            _libc.umount2(str(target).encode(), MNT_DETACH)
            try:
                target.rmdir() if target.is_dir() else target.unlink()
            except OSError:
                pass
        self.targets.clear()
        try:
            self.folder.rmdir()
        except OSError:
            pass


def release_stale(runs_dir: Path) -> list[str]:
    """Unmount the pins of runs whose broker is gone (killed before it could); their paths.

    Every pin lies in ``<run>/broker/mounts/``, and ``<run>/broker/owner`` names
    the process that made it; only pins under ``runs_dir`` are touched.
    """
    from cratebridge.containers.sandbox import owner_alive

    root = os.path.realpath(runs_dir) + os.sep
    released = []
    for point in _mount_points():
        run, marker, _ = point.partition(f"{os.sep}broker{os.sep}mounts{os.sep}")
        if not point.startswith(root) or not marker:
            continue
        owner_file = Path(run) / "broker" / OWNER_FILE
        owner = owner_file.read_text().strip() if owner_file.is_file() else ""
        if owner and owner_alive(owner):
            continue
        if _libc.umount2(point.encode(), MNT_DETACH) == 0:
            released.append(point)
    return released


def release_pins(run_dir: Path) -> list[str]:
    """Detach the pinned mounts left in one run's folder (``<run>/broker/mounts/``).

    For a run whose broker is done with them (ended, or killed). Returns the
    mount points released.
    """
    pins = os.path.realpath(run_dir / "broker" / "mounts") + os.sep
    return [point for point in _mount_points()
            if point.startswith(pins) and _libc.umount2(point.encode(), MNT_DETACH) == 0]


def release_job_pins(job: str) -> list[str]:
    """Detach the pinned mounts a Slurm job's own broker left on this node
    (``<run>/broker/nodes/job-<job>/broker/mounts/``, whatever the run), for the
    node's epilog once the job is over. Returns the mount points released."""
    marker = f"{os.sep}broker{os.sep}nodes{os.sep}job-{job}{os.sep}broker{os.sep}mounts{os.sep}"
    return [point for point in _mount_points()
            if marker in point and _libc.umount2(point.encode(), MNT_DETACH) == 0]


def _mount_points() -> list[str]:
    """Every mount point of this mount namespace, inner ones first (empty if unreadable)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as info:
            points = [_unescape(line.split()[4]) for line in info]
    except OSError:
        return []
    return sorted(points, reverse=True)


def _unescape(field: str) -> str:
    """A mountinfo path: space, tab, newline and backslash come as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def _open_nofollow(path: str) -> int:
    """An O_PATH descriptor of ``path``, walking it without following any symlink."""
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY)
    try:
        for part in Path(path).parts[1:]:
            # a symlink on the way is opened as itself: the next step then fails
            child = os.open(part, os.O_PATH | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = child
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            raise PermissionError(f"{path} is a symbolic link")
        return fd
    except BaseException:
        os.close(fd)
        raise


def pin_mounts(argv: Sequence[str], pinned: Pinned, roots: Sequence[Path]) -> list[str]:
    """``argv`` with every ``--mount=type=bind,source=...`` source pinned."""
    out = []
    for arg in argv:
        if arg.startswith("--mount=type=bind,source="):
            head, _, rest = arg.partition("source=")
            source, comma, tail = rest.partition(",")
            arg = f"{head}source={pinned.pin(source, roots)}{comma}{tail}"
        out.append(arg)
    return out

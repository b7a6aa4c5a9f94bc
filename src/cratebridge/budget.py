"""A run's bounded resources on disk: its disk budget, watched while it runs, and capped logs.

A run writes only inside its folder (the engine's room and the broker see to
that), so one walk of the folder measures everything the run holds on disk:
the engine's work, the steps' ``/tmp``, logs and outputs. :class:`DiskWatch`
walks it in a thread and asks the run to stop when it passes the operator's
``[limits] disk``, or when the filesystem itself is nearly full (so that the
result crate can still be written). Logs are capped at ``[limits] log_size``:
past the cap the head and the tail are kept and a line in the middle says
how much was cut (:func:`cap_file` after the fact, :class:`CappedLog` while a
step writes).
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

__all__ = ["CappedLog", "DiskWatch", "cap_file", "cut_note", "disk_usage", "human_size",
           "shrink_in_place"]


def human_size(size: float) -> str:
    """``size`` bytes as people read it: ``512 B``, ``3.2 MiB``, ``20.0 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def disk_usage(folder: Path, skip: Iterable[str] = ()) -> int:
    """Bytes of disk the files under ``folder`` take (blocks, each inode once).

    Walks without recursion and without following links; ``skip`` names
    top-level entries not counted. A file vanishing meanwhile is not an error.
    """
    skipped = set(skip)
    seen: set[tuple[int, int]] = set()
    total = 0
    pending = [str(folder)]
    top = True
    while pending:
        current = pending.pop()
        try:
            entries = list(os.scandir(current))
        except OSError:
            continue
        for entry in entries:
            if top and entry.name in skipped:
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(info.st_mode):
                pending.append(entry.path)
            key = (info.st_dev, info.st_ino)
            if info.st_nlink > 1:
                if key in seen:
                    continue
                seen.add(key)
            total += info.st_blocks * 512
        top = False
    return total


#: The fastest a run is taken to fill its disk, in bytes a second (a fast NVMe drive's
#: writes): the watch looks again before a run this fast could pass a limit unseen.
FILL_RATE = 4 * 1024**3
#: The shortest pause between two looks at the disk, in seconds.
TICK = 0.1


class DiskWatch:
    """Watches a run's folder in a thread; calls ``stop(reason)`` once when it runs out of room.

    ``budget`` is the run's limit in bytes (``None``: none); ``reserve`` the
    free space the filesystem must keep (default: 5% of it, at most 256 MiB),
    since the result crate is written in the same place.
    """

    def __init__(self, folder: Path, budget: int | None, stop: Callable[[str], object], *,
                 skip: Iterable[str] = ("request", "workflow"), reserve: int | None = None,
                 interval: float = 1.0) -> None:
        self.folder = folder
        self.budget = budget
        self.stop = stop
        self.skip = tuple(skip)
        self.reserve = reserve if reserve is not None else self._default_reserve(folder)
        self.interval = interval
        self.peak = 0
        self.reason: str | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cratebridge-disk",
                                        daemon=True)

    @staticmethod
    def _default_reserve(folder: Path) -> int:
        fs = os.statvfs(folder)
        return min(256 * 1024**2, fs.f_blocks * fs.f_frsize // 20)

    def __enter__(self) -> DiskWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def check(self) -> str | None:
        """Measure once (the folder and the disk); the reason to stop, if there is one."""
        used = disk_usage(self.folder, self.skip)
        self.peak = max(self.peak, used)
        return self._over_budget(used) or self.check_free()

    def check_free(self) -> str | None:
        """Whether the disk keeps its reserve (a cheap look, done every tick)."""
        return self._short_of_reserve(self._free())

    def _free(self) -> int:
        fs = os.statvfs(self.folder)
        return fs.f_bavail * fs.f_frsize

    def _over_budget(self, used: int) -> str | None:
        if self.budget is not None and used > self.budget:
            return (f"its disk budget ([limits] disk = {human_size(self.budget)}; "
                    f"the run's folder held {human_size(used)})")
        return None

    def _short_of_reserve(self, free: int) -> str | None:
        if free < self.reserve:
            return (f"a nearly full disk ({human_size(free)} left where the run's folder is, "
                    f"{human_size(self.reserve)} is kept free for the result crate)")
        return None

    def _pause(self, free: int, bound: int) -> float:
        """Seconds to the next look: soon enough that a run writing at :data:`FILL_RATE`
        cannot pass the reserve or the budget unseen; a tenth of a second at the least,
        the interval at the most."""
        headroom = free - self.reserve
        if self.budget is not None:
            headroom = min(headroom, self.budget - bound)
        return min(self.interval, max(TICK, headroom / FILL_RATE))

    def _loop(self) -> None:
        """Every tick, the disk's free space; the folder is walked only when the run may
        have passed its budget, or at the latest every ten walk intervals. Ticks are a
        tenth of a second apart near the reserve or the budget, an interval far from
        them (:meth:`_pause`): a run of hours wakes this thread a tenth as often.

        Between two walks the run can have added at most what the disk lost
        (``statvfs``): its last count plus that loss bounds what it holds now.
        While the bound stays within the budget no walk is needed; other writers
        on the same disk only make the bound larger (an earlier walk). What
        others free can hide the run's growth from the bound: the regular walk
        catches that.
        """
        soon = late = 0.0  # the earliest next walk, and the one taken whatever the bound
        used = free_then = 0
        while True:
            began = time.monotonic()
            free = self._free()
            bound = used + max(0, free_then - free)
            if began >= late or (began >= soon and self.budget is not None
                                 and bound > self.budget):
                used, free_then = disk_usage(self.folder, self.skip), free
                self.peak = max(self.peak, used)
                reason = self._over_budget(used) or self._short_of_reserve(free)
                # closer to the budget, walk more often; but a big folder takes a while
                # to walk: never spend more than a tenth of the time on it
                pause = self.interval
                if self.budget:
                    pause *= min(1.0, max(0.1, 2 * (1 - self.peak / self.budget)))
                took = time.monotonic() - began
                soon = began + max(pause, 10 * took)
                late = began + max(10 * pause, 10 * took)
                bound = used
            else:
                reason = self._short_of_reserve(free)
            if reason is not None:
                self.reason = reason
                self.stop(reason)
                return
            if self._done.wait(self._pause(free, bound)):
                return


def cut_note(cut: int, limit: int) -> bytes:
    """The line left where a log was cut."""
    return (f"\n[cratebridge: {cut} bytes cut here; this log passed the cap of "
            f"{human_size(limit)} ([limits] log_size): its head and tail are kept]\n").encode()


def cap_file(path: Path, limit: int) -> int:
    """Cut the middle of ``path`` so it holds at most about ``limit`` bytes; bytes cut.

    The file is replaced (never followed through a link): its first and last
    ``limit // 2`` bytes, and a note between them.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return 0
    with os.fdopen(fd, "rb") as log:
        size = os.fstat(log.fileno()).st_size
        if size <= limit + len(cut_note(size, limit)) + 32:  # within the cap, or capped already
            return 0
        half = limit // 2
        head = log.read(half)
        log.seek(size - half)
        tail = log.read(half)
    cut = size - len(head) - len(tail)
    fresh = path.with_name(f".{path.name}.capped")
    with fresh.open("wb") as out:
        out.write(head + cut_note(cut, limit) + tail)
    os.replace(fresh, path)
    return cut


def shrink_in_place(path: Path, keep: int) -> int:
    """Cut ``path`` to about ``keep`` bytes (head, note, tail), needing no free space; bytes cut.

    For a full disk: the file is truncated to its head first, which frees
    the room the note and the tail then take.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except OSError:
        return 0
    try:
        size = os.fstat(fd).st_size
        half = keep // 2
        if size <= keep + 256:
            return 0
        tail = os.pread(fd, half, size - half)
        cut = size - half - len(tail)
        os.ftruncate(fd, half)
        os.pwrite(fd, cut_note(cut, keep) + tail, half)
        return cut
    except OSError:
        return 0
    finally:
        os.close(fd)


class CappedLog:
    """A log written as it comes, holding at most about ``limit`` bytes: head, note, tail.

    Until the cap, every byte is in the file at once. Past it, the file keeps
    its first ``limit // 2`` bytes and the last ``limit // 2`` are held in
    memory, to be written after the note at :meth:`close`. A write that fails
    (a full disk) never stops the reading: what follows is drained into the
    tail, and the note says how much was not kept.
    """

    def __init__(self, path: Path, limit: int) -> None:
        self.file: IO[bytes] = path.open("w+b")
        self.limit = limit
        self.half = limit // 2
        self.written = 0
        self.head = 0  # bytes in the file before the note
        self.tail: bytearray | None = None  # set once the cap is passed (or the disk is full)

    @property
    def cut(self) -> int:
        return 0 if self.tail is None else self.written - self.head - len(self.tail)

    @property
    def passed(self) -> bool:
        return self.tail is not None

    def write(self, chunk: bytes) -> None:
        self.written += len(chunk)
        if self.tail is None:
            if self.head + len(chunk) <= self.limit:
                try:
                    self.file.write(chunk)
                    self.file.flush()
                    self.head += len(chunk)
                    return
                except OSError:  # what did reach the file stays its head
                    self.head = min(self._size(), self.limit)
                    self.tail = bytearray()
            else:  # past the cap: the file keeps half, the rest moves to the tail
                self.tail = bytearray(self._cut_at(self.half))
        self.tail += chunk
        del self.tail[:max(0, len(self.tail) - self.half)]

    def _size(self) -> int:
        try:
            return os.fstat(self.file.fileno()).st_size
        except OSError:
            return 0

    def _cut_at(self, size: int) -> bytes:
        """Keep ``size`` bytes in the file; what stood after them."""
        try:
            self.file.seek(size)
            rest = self.file.read()
            self.file.seek(size)
            self.file.truncate()
        except OSError:
            rest = b""
        self.head = min(self.head, size)
        return rest

    def close(self) -> None:
        try:
            if self.tail is not None:
                self.file.seek(self.head)
                self.file.truncate()
                self.file.write(cut_note(self.cut, self.limit) + bytes(self.tail))
            self.file.close()
        except OSError:
            pass  # a full disk: the log keeps what it could

"""The pieces of a run's bounded disk, alone: capped logs, the folder's measure, the watch.

A fast layer under tests/test_failure_contract.py, which checks the same
through the real CLI, engine and containers.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import pytest

from cratebridge import budget as budget_module
from cratebridge.budget import CappedLog, DiskWatch, cap_file, disk_usage, shrink_in_place


def lines(count: int) -> list[bytes]:
    return [f"line {i:05d}\n".encode() for i in range(count)]


def test_a_capped_log_keeps_everything_under_the_cap(tmp_path: Path) -> None:
    log = CappedLog(tmp_path / "x.log", 1000)
    for line in lines(50):
        log.write(line)
    log.close()
    assert (tmp_path / "x.log").read_bytes() == b"".join(lines(50)) and log.cut == 0


def test_a_capped_log_keeps_head_and_tail_and_says_what_it_cut(tmp_path: Path) -> None:
    log = CappedLog(tmp_path / "x.log", 1000)
    for line in lines(5000):
        log.write(line)
    assert log.passed
    log.close()
    text = (tmp_path / "x.log").read_bytes()
    assert text.startswith(b"line 00000\n") and text.endswith(b"line 04999\n")
    assert log.cut == 5000 * 11 - 1000
    assert f"[cratebridge: {log.cut} bytes cut here".encode() in text
    assert len(text) < 1000 + 200


class FullDisk:
    """A file that takes ``room`` bytes, then fails as a full disk does (a stand-in)."""

    def __init__(self, real: object, room: int) -> None:
        self.real = real
        self.room = room

    def write(self, data: bytes) -> int:
        if self.room < len(data):
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.real.write(data)  # type: ignore[attr-defined, no-any-return]

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)


def test_a_full_disk_never_stops_the_draining(tmp_path: Path) -> None:
    log = CappedLog(tmp_path / "x.log", 10_000)
    log.file = FullDisk(log.file, 110)  # type: ignore[assignment]
    for line in lines(2000):
        log.write(line)  # never raises: the reader keeps draining the step's output
    assert log.written == 22_000 and log.passed and len(log.tail or b"") == 5000
    assert log.cut > 0  # what could not be kept is counted


def test_cap_file_cuts_the_middle_once(tmp_path: Path) -> None:
    path = tmp_path / "engine.log"
    path.write_bytes(b"".join(lines(10_000)))
    cut = cap_file(path, 4096)
    text = path.read_bytes()
    assert cut == 110_000 - 4096 and text.startswith(b"line 00000") \
        and text.endswith(b"line 09999\n")
    assert cap_file(path, 4096) == 0  # capped already: left as it is


def test_shrink_in_place_needs_no_free_room(tmp_path: Path) -> None:
    path = tmp_path / "engine.log"
    path.write_bytes(b"".join(lines(10_000)))
    inode = path.stat().st_ino
    cut = shrink_in_place(path, 2048)
    text = path.read_bytes()
    assert path.stat().st_ino == inode  # the same file: truncated, never copied
    assert cut > 0 and text.endswith(b"line 09999\n") and len(text) < 2048 + 200


def test_disk_usage_counts_each_inode_once_and_follows_no_link(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 100_000)
    os.link(tmp_path / "a", tmp_path / "b")
    (tmp_path / "to-root").symlink_to("/")
    (tmp_path / "skipped").mkdir()
    (tmp_path / "skipped" / "big").write_bytes(b"x" * 1_000_000)
    used = disk_usage(tmp_path, skip=("skipped",))
    assert 100_000 <= used < 200_000


def test_the_watch_asks_to_stop_once_past_the_budget(tmp_path: Path) -> None:
    said: list[str] = []
    asked = threading.Event()

    def stop(reason: str) -> None:
        said.append(reason)
        asked.set()

    with DiskWatch(tmp_path, 50_000, stop, interval=0.05) as watch:
        assert watch.check() is None
        (tmp_path / "big").write_bytes(b"x" * 200_000)
        assert asked.wait(5)
    assert said and "[limits] disk = 48.8 KiB" in said[0] and len(said) == 1


@pytest.mark.parametrize("budget", [None, 10**12])
def test_the_watch_keeps_the_reserve_of_the_disk(tmp_path: Path, budget: int | None) -> None:
    watch = DiskWatch(tmp_path, budget, lambda reason: None, reserve=2**62)
    reason = watch.check()
    assert reason is not None and "nearly full disk" in reason


def test_far_from_the_budget_the_folder_is_walked_seldom(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the disk loses nothing, the run cannot have grown: one walk in ten intervals
    (a walk of a big run's folder costs milliseconds of CPU, every interval)."""
    walks: list[float] = []
    monkeypatch.setattr(budget_module, "disk_usage",
                        lambda folder, skip=(): walks.append(time.monotonic()) or 1000)
    monkeypatch.setattr(DiskWatch, "_free", lambda self: 10**15)
    with DiskWatch(tmp_path, 10**12, lambda reason: None, reserve=0, interval=0.02):
        time.sleep(0.5)
    assert 1 <= len(walks) <= 6, walks  # every interval, as before, would be about 25


def test_what_the_disk_loses_brings_the_next_walk_forward(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run may hold at most its last count plus what the disk lost since: past the
    budget, the folder is walked at the next interval, not at the regular walk."""
    free = [10**15]
    held = [0]
    monkeypatch.setattr(budget_module, "disk_usage", lambda folder, skip=(): held[0])
    monkeypatch.setattr(DiskWatch, "_free", lambda self: free[0])
    asked = threading.Event()
    with DiskWatch(tmp_path, 50_000, lambda reason: asked.set(), reserve=0, interval=0.2):
        time.sleep(0.1)  # the first walk is done: the regular one is due in 2 s
        held[0] = 200_000
        free[0] -= 200_000
        started = time.monotonic()
        assert asked.wait(5)
        assert time.monotonic() - started < 1.5


@pytest.mark.parametrize("budget", [None, 10**15])
def test_far_from_every_limit_the_disk_is_looked_at_each_interval(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, budget: int | None) -> None:
    """Terabytes from the reserve and the budget, no run fills the disk within an
    interval: one look an interval, not ten (a run of hours wakes the thread less)."""
    looks: list[float] = []
    monkeypatch.setattr(budget_module, "disk_usage", lambda folder, skip=(): 1000)
    monkeypatch.setattr(DiskWatch, "_free", lambda self: looks.append(time.monotonic()) or 10**15)
    with DiskWatch(tmp_path, budget, lambda reason: None, reserve=0, interval=0.4):
        time.sleep(1.0)
    assert 2 <= len(looks) <= 4, looks  # at a tenth of a second there would be ten


@pytest.mark.parametrize("near", ["reserve", "budget"])
def test_near_a_limit_the_disk_is_looked_at_every_tenth_of_a_second(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, near: str) -> None:
    """Within what a fast disk writes in an interval of the reserve or the budget, the
    watch looks every tenth of a second, whatever its interval."""
    looks: list[float] = []
    reserve = 10**9 if near == "reserve" else 0
    budget = 10**15 if near == "reserve" else 1000 + 10**8
    monkeypatch.setattr(budget_module, "disk_usage", lambda folder, skip=(): 1000)
    monkeypatch.setattr(DiskWatch, "_free",
                        lambda self: looks.append(time.monotonic()) or reserve + 10**8)
    with DiskWatch(tmp_path, budget, lambda reason: None, reserve=reserve, interval=5.0):
        time.sleep(1.0)
    assert len(looks) >= 7, looks

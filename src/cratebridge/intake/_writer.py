"""Writes an untrusted crate's files under the unpack folder, never through a link.

The caller's thread checks each member and counts its size against the total; a
few threads then make the folders and files and copy the bytes (hashlib and file
writes release the GIL). Folders and files are made strictly in member order, one
at a time, so collisions and links are met exactly as a sequential unpack meets
them; the copies overlap, each held to the size it was counted at, its sha-512 taken
from the same chunks so a bag's payload need not be read again. Every failure is
reported in member order: a crate with several faults always names the same one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol, TypeVar

from cratebridge.errors import UnsafeCrate
from cratebridge.intake._limits import IntakeLimits

__all__ = ["Source", "Writer"]

_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# What the file system says about a name it cannot hold: the crate's fault, not the host's.
_NAME_ERRORS = frozenset({errno.ENAMETOOLONG, errno.EILSEQ, errno.EINVAL})
# Threads that make and copy files: one more than the cores (up to four), so the cores
# stay busy hashing while one thread waits for its turn or for the file system.
_THREADS = min(4, (os.cpu_count() or 1) + 1)
_IN_FLIGHT = 8 * _THREADS  # members queued: a few descriptors each, never file contents
_T = TypeVar("_T")


class Source(Protocol):
    """What a file is copied from: an open file, or a zip member's checked stream.

    The writer owns it once handed over, and closes it from another thread.
    """

    def read(self, size: int, /) -> bytes: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class _File:
    rel: PurePosixPath
    source: Source
    executable: bool
    size: int
    compressed: int | None


class Writer:
    """Writes files under ``dest`` and keeps the running totals the limits apply to.

    ``dest`` is resolved once. Each folder is made once and opened once, relative to
    its parent's descriptor with ``O_NOFOLLOW``, so no link is followed anywhere under
    ``dest`` even if one appeared there; each file is created relative to its folder's
    descriptor with ``O_CREAT | O_EXCL | O_NOFOLLOW``. No path is resolved per file.
    ``digests`` holds the sha-512 of every file written, keyed by its path under
    ``dest``, in member order; it is complete once the ``with`` block has ended.
    Callers check every path with :func:`cratebridge.intake._limits.member_path` first.
    Use as a context manager: it holds a few folder descriptors and threads, and its
    exit waits for every member queued and raises the first failure in member order.
    """

    _OPEN_FOLDERS = 32  # descriptors of recently used folders kept open

    def __init__(self, dest: Path, limits: IntakeLimits, source: str) -> None:
        self.dest = dest
        self.limits = limits
        self.source = source
        self.total = 0
        self.files = 0
        self.digests: dict[str, str] = {}
        self._root = dest.resolve()
        self._root_fd = os.open(self._root, _DIR_FLAGS)
        self._made: set[str] = set()
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._pool = ThreadPoolExecutor(_THREADS, thread_name_prefix="cratebridge-intake")
        # Each member queued (path, sha-512 or None for a folder), oldest first.
        self._flight: deque[tuple[str, Future[str | None]]] = deque()
        self._queued = 0  # members queued so far: the next one's turn
        self._turn = 0  # the member whose folder or file is made next
        self._order = threading.Condition()  # guards _turn, the tree and the descriptors
        self._stop = threading.Event()  # set once the crate is refused: skip what is queued

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        try:
            self._settle(exc)
        finally:
            self._stop.set()
            self._pool.shutdown(wait=True)
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
            os.close(self._root_fd)

    @contextlib.contextmanager
    def copying(self) -> Iterator[None]:
        """Wait for every copy queued in the block when it ends, raising the first failure
        in member order: for sources (a zip) that must stay open until then."""
        try:
            yield
        except BaseException as exc:
            self._settle(exc)
            raise
        self._settle(None)

    def _settle(self, exc: BaseException | None) -> None:
        if exc is None:
            self._collect(0)
        elif isinstance(exc, Exception):
            self._raise_earlier_failure()
        else:  # interrupted: stop the copies, report nothing else
            self._abandon()

    def count_member(self, name: str) -> None:
        self.files += 1
        if self.files > self.limits.max_files:
            raise UnsafeCrate(
                f"more than {self.limits.max_files} files (reached at {name!r}); "
                "split the request or ask the operator to raise intake.max_files",
                where=self.source,
            )

    def make_dir(self, rel: PurePosixPath) -> None:
        """Queue the folder ``rel`` (and its parents)."""
        self._queue(str(rel), self._make_dir, str(rel))

    def write_file(
        self,
        rel: PurePosixPath,
        source: Source,
        *,
        executable: bool,
        size: int,
        compressed: int | None,
    ) -> None:
        """Count ``size`` bytes against the total and queue the file ``rel``, copied from
        ``source`` (which this call owns from now on).

        The copy refuses more than ``size`` bytes, so the total counted here bounds what
        is written. A refusal found here is raised here; one found later is raised by a
        later call or by the ``with`` block's exit, always the first in member order.
        """
        try:
            self.total += size
            self._check_total(rel)
        except BaseException:
            source.close()
            raise
        self._queue(str(rel), self._make_file, _File(rel, source, executable, size, compressed))

    def _queue(self, rel: str, task: Callable[[int, _T], str | None], arg: _T) -> None:
        self._flight.append((rel, self._pool.submit(task, self._queued, arg)))
        self._queued += 1
        self._collect(_IN_FLIGHT)

    # -- folders and files, made in member order by whichever thread runs them -------------

    @contextlib.contextmanager
    def _in_turn(self, ticket: int) -> Iterator[None]:
        """Hold the tree for the member ``ticket`` once every earlier one is made. Tasks
        leave the queue in order, so the member whose turn it is always has a thread."""
        with self._order:
            self._order.wait_for(lambda: self._turn == ticket)
            try:
                yield
            finally:
                self._turn += 1
                self._order.notify_all()

    def _make_dir(self, ticket: int, rel: str) -> None:
        with self._in_turn(ticket):
            if not self._stop.is_set():
                self._folder(rel)

    def _make_file(self, ticket: int, job: _File) -> str | None:
        """Create the file in its turn, then copy into it; return its sha-512 (None if
        the crate was refused meanwhile). The source is closed whatever happens."""
        try:
            with self._in_turn(ticket):
                fd = None if self._stop.is_set() else self._create(job.rel, job.executable)
            if fd is None:
                return None
            try:
                return None if self._stop.is_set() else self._pump(job, fd)
            finally:
                os.close(fd)
        finally:
            job.source.close()

    def _folder(self, rel: str) -> int:
        """Make the folder ``rel`` ('' for ``dest``) and its parents; return an open
        descriptor of it. Folders are keyed by their path as text: this runs per file."""
        if not rel:
            return self._root_fd
        fd = self._fds.get(rel)
        if fd is not None:
            self._fds.move_to_end(rel)
            return fd
        chain = [rel]
        while (up := chain[-1].rpartition("/")[0]) and up not in self._fds:
            chain.append(up)
        for folder in reversed(chain):
            up, _, name = folder.rpartition("/")
            fd = self._open_folder(folder, name, self._fds[up] if up else self._root_fd, rel)
            self._fds[folder] = fd
            if len(self._fds) > self._OPEN_FOLDERS:
                _, old = self._fds.popitem(last=False)
                os.close(old)
        return self._fds[rel]

    def _open_folder(self, folder: str, name: str, parent: int, asked: str) -> int:
        try:
            if folder not in self._made:
                with contextlib.suppress(FileExistsError):  # a folder is fine, the open checks
                    os.mkdir(name, dir_fd=parent)
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except NotADirectoryError as exc:
            raise UnsafeCrate(
                f"folder {asked!r} collides with a file of the same name", where=self.source
            ) from exc
        except OSError as exc:
            self._name_error(asked, exc)
            if exc.errno != errno.ELOOP:
                raise
            # A link where a folder was made: never created here, never followed.
            raise UnsafeCrate(
                f"path {asked!r} resolves outside the crate", where=self.source
            ) from exc
        if folder not in self._made:
            # Belt and braces, once per folder: the name was checked and no link is followed.
            if not (self._root / folder).resolve().is_relative_to(self._root):
                os.close(fd)
                raise UnsafeCrate(
                    f"path {asked!r} resolves outside the crate", where=self.source
                )
            self._made.add(folder)
        return fd

    def _create(self, rel: PurePosixPath, executable: bool) -> int:
        """Create the file ``rel``, refusing a second one of that name or a link there."""
        # The name is one component that member_path gave: never empty, '.', '..' or
        # containing '/'; O_NOFOLLOW and O_EXCL refuse a link there.
        text = str(rel)
        up, _, name = text.rpartition("/")
        folder = self._folder(up)
        try:
            return os.open(name, _FILE_FLAGS, 0o755 if executable else 0o644, dir_fd=folder)
        except FileExistsError as exc:
            raise UnsafeCrate(
                f"{text!r} appears twice (or collides with a folder); the crate is refused",
                where=self.source,
            ) from exc
        except (IsADirectoryError, NotADirectoryError) as exc:
            raise UnsafeCrate(
                f"{text!r} collides with a folder of the same name", where=self.source
            ) from exc
        except OSError as exc:
            self._name_error(text, exc)
            raise

    def _name_error(self, rel: str, exc: OSError) -> None:
        if exc.errno in _NAME_ERRORS:
            raise UnsafeCrate(
                f"the file system cannot hold the name {rel!r} ({exc.strerror}); "
                "rename it",
                where=self.source,
            ) from exc

    def _check_total(self, rel: PurePosixPath) -> None:
        if self.total > self.limits.max_total_bytes:
            raise UnsafeCrate(
                f"unpacked size passes the limit of {self.limits.max_total_bytes} bytes "
                f"(while writing {str(rel)!r}); ask the operator to raise "
                "intake.max_total_bytes if the crate is genuine",
                where=self.source,
            )

    # -- results, collected in member order ----------------------------------------------------

    def _collect(self, keep: int) -> None:
        """Wait for the oldest members until at most ``keep`` are in flight, keeping their
        digests; on a failure, wait for the rest (told to stop) and raise it."""
        while len(self._flight) > keep:
            rel, future = self._flight.popleft()
            try:
                digest = future.result()
            except BaseException:
                self._abandon()
                raise
            if digest is not None:
                self.digests[rel] = digest

    def _abandon(self) -> None:
        """Stop what is queued and wait for what is running; report nothing."""
        self._stop.set()
        flight, self._flight = self._flight, deque()
        wait([future for _, future in flight])

    def _raise_earlier_failure(self) -> None:
        """The caller's thread is refusing a member: a member still in flight is an
        earlier one, so its failure, if any, is the one to report. They are waited for
        in order and run to their end, or the failure reported would depend on timing;
        once one has failed, the rest are stopped."""
        flight, self._flight = self._flight, deque()
        failure: BaseException | None = None
        for _, future in flight:
            exc = future.exception()
            if exc is not None and failure is None:
                failure = exc
                self._stop.set()
        if failure is not None:
            raise failure

    # -- copies ------------------------------------------------------------------------------

    def _pump(self, job: _File, fd: int) -> str:
        """Copy ``job.source`` within the limits; return the sha-512 of what was written."""
        hasher = hashlib.sha512()
        written = 0
        while not self._stop.is_set():
            chunk = job.source.read(min(_CHUNK, job.size - written + 1))
            if not chunk:
                break
            written += len(chunk)
            if written > job.size:
                raise UnsafeCrate(
                    f"{str(job.rel)!r} grew past its {job.size} bytes while it was copied; "
                    "the crate is refused",
                    where=self.source,
                )
            if job.compressed is not None:
                self._check_ratio(job.rel, written, job.compressed)
            _write_all(fd, chunk)
            hasher.update(chunk)
        return hasher.hexdigest()

    def _check_ratio(self, rel: PurePosixPath, written: int, compressed: int) -> None:
        if written <= self.limits.ratio_grace_bytes:
            return
        ratio = written / max(compressed, 1)
        if ratio > self.limits.max_ratio:
            raise UnsafeCrate(
                f"member {str(rel)!r} expands more than {self.limits.max_ratio:g} times "
                f"its compressed size (a zip bomb?); the crate is refused",
                where=self.source,
            )


def _write_all(fd: int, chunk: bytes) -> None:
    """Write all of ``chunk``: one write may take only part of it."""
    view = memoryview(chunk)
    while view:
        done = os.write(fd, view)
        if not done:
            raise OSError(errno.EIO, "the unpack folder took no bytes")
        view = view[done:]

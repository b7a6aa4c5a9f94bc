"""Unpacking a request crate that arrives as a zip, refusing what is hostile before writing.

Three passes, each bounded: the central directory is counted without building it,
so a zip of a million members is refused before :mod:`zipfile` reads them all into
memory; every member's name, kind, method and declared sizes are checked before a
byte is written; then each member is streamed through a reader that turns every
decompression fault into a refusal naming the member and checks that it yields
exactly the size the zip declared.
"""

from __future__ import annotations

import os
import stat
import struct
import threading
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, BinaryIO

from cratebridge.errors import CrateRejected, UnsafeCrate
from cratebridge.intake._limits import IntakeLimits, member_path, shown
from cratebridge.intake._writer import Writer

__all__ = ["extract_zip"]

# Only these: deflate's output per read is bounded; bzip2 and lzma can turn one
# read of compressed data into gigabytes in memory.
_METHODS = {zipfile.ZIP_STORED: "store", zipfile.ZIP_DEFLATED: "deflate"}
_ENCRYPTED, _PATCHED, _STRONG, _UTF8 = 0x1, 0x20, 0x40, 0x800
_EOCD = struct.Struct("<4s4H2LH")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")
_LOCATOR_SIZE = 20
_CENTRAL_SIZE = 46
_LOCAL_HEADER_SIZE = 30
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # as zipfile.structFileHeader
# What reading a damaged member can raise: bad CRC and bad headers (BadZipFile), a broken
# deflate stream (zlib.error), a truncated one (EOFError), an odd name or flag (ValueError,
# RuntimeError, NotImplementedError), an unreadable archive (OSError).
_READ_ERRORS = (
    zipfile.BadZipFile, zlib.error, EOFError, ValueError, RuntimeError, NotImplementedError,
    OSError,
)


@dataclass(frozen=True)
class _Member:
    info: zipfile.ZipInfo
    rel: PurePosixPath
    where: str
    is_dir: bool


def extract_zip(source: Path, writer: Writer) -> None:
    """Unpack the zip ``source`` through ``writer`` (whose limits apply).

    Raises :class:`UnsafeCrate` for a member that could escape, hide a link or its
    content (encrypted), or expand past the limits, and :class:`CrateRejected` for a
    zip that is damaged or uses a method other than store or deflate; each names the
    member (or the zip, when its directory cannot be read).
    """
    where = str(source)
    try:
        raw = open(source, "rb", buffering=1 << 16)  # closed by the with below
    except OSError as exc:
        raise CrateRejected(f"the zip cannot be read ({exc.strerror})", where=where) from exc
    with raw:
        size = raw.seek(0, 2)
        _count_central_directory(raw, size, writer.limits, where)
        raw.seek(0)
        try:
            archive = zipfile.ZipFile(raw)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError,
                struct.error) as exc:
            raise CrateRejected(
                f"not a readable zip file ({shown(str(exc), 200)}); re-create the archive",
                where=where,
            ) from exc
        with archive, writer.copying():  # every copy ends before the zip is closed
            # Members are read by the writer's copy threads. A stored one by offset, with
            # no lock (_StoredReader); a deflated one through zipfile, whose reads are
            # locked, but whose opening and closing count references without a lock.
            refs = threading.Lock()
            for member in _check_members(archive.infolist(), size, writer.limits, where):
                _extract_member(archive, member, writer, refs, raw.fileno())


# -- pass 1: count the central directory -----------------------------------------------------


def _count_central_directory(raw: BinaryIO, size: int, limits: IntakeLimits, where: str) -> None:
    """Walk the central directory's entries without keeping them; refuse more than
    ``max_files`` and names flagged UTF-8 that are not. A damaged directory is left to
    :mod:`zipfile`, which reads the same bytes and names the damage."""
    found = _central_directory(raw, size)
    if found is None:
        raise CrateRejected(
            "not a readable zip file (no end-of-central-directory record: truncated or not a "
            "zip); re-create the archive",
            where=where,
        )
    start, length = found
    raw.seek(start)
    count = done = 0
    while done < length:
        head = raw.read(_CENTRAL_SIZE)
        if len(head) < _CENTRAL_SIZE or head[:4] != b"PK\x01\x02":
            return
        count += 1
        if count > limits.max_files:
            raise UnsafeCrate(
                f"the zip has more than {limits.max_files} members; split the request or ask "
                "the operator to raise intake.max_files",
                where=where,
            )
        (flags,) = struct.unpack_from("<H", head, 8)
        name_size, extra_size, comment_size = struct.unpack_from("<3H", head, 28)
        name = raw.read(name_size)
        if flags & _UTF8:
            _check_utf8(name, where)
        raw.seek(extra_size + comment_size, 1)
        done += _CENTRAL_SIZE + name_size + extra_size + comment_size


def _central_directory(raw: BinaryIO, size: int) -> tuple[int, int] | None:
    """Where the central directory starts and how long it is, found as :mod:`zipfile`
    finds it (the end record at the very end, else the last one in the comment)."""
    if size < _EOCD.size:
        return None
    raw.seek(size - _EOCD.size)
    at = size - _EOCD.size
    record = raw.read(_EOCD.size)
    if not (record[:4] == b"PK\x05\x06" and record[-2:] == b"\x00\x00"):
        tail_start = max(size - _EOCD.size - 0xFFFF, 0)
        raw.seek(tail_start)
        tail = raw.read()
        found = tail.rfind(b"PK\x05\x06")
        if found < 0 or len(tail) - found < _EOCD.size:
            return None
        at = tail_start + found
        record = tail[found : found + _EOCD.size]
    length = _EOCD.unpack(record)[5]
    if at >= _LOCATOR_SIZE + _EOCD64.size:
        raw.seek(at - _LOCATOR_SIZE)
        if raw.read(4) == b"PK\x06\x07":
            raw.seek(at - _LOCATOR_SIZE - _EOCD64.size)
            record64 = raw.read(_EOCD64.size)
            if record64[:4] == b"PK\x06\x06":
                at -= _LOCATOR_SIZE + _EOCD64.size
                length = _EOCD64.unpack(record64)[8]
    return (at - length, length) if at >= length else None


def _check_utf8(name: bytes, where: str) -> None:
    try:
        name.decode("utf-8")
    except UnicodeDecodeError:
        printable = shown(name.decode("utf-8", "surrogateescape"))
        raise UnsafeCrate(
            f"member name '{printable}' is marked UTF-8 but is not valid UTF-8; "
            "re-create the archive",
            where=f"{where}:{printable}",
        ) from None


# -- pass 2: check every member before writing -----------------------------------------------


def _check_members(
    members: list[zipfile.ZipInfo], size: int, limits: IntakeLimits, source: str
) -> list[_Member]:
    if len(members) > limits.max_files:  # the central directory walk stopped early
        raise UnsafeCrate(
            f"the zip has {len(members)} members, more than the limit of {limits.max_files}; "
            "split the request or ask the operator to raise intake.max_files",
            where=source,
        )
    checked: list[_Member] = []
    seen: set[PurePosixPath] = set()
    declared = 0
    for info in members:
        member = _check_member(info, size, limits, source)
        if member.rel in seen:
            raise UnsafeCrate(
                f"member '{shown(info.orig_filename)}' appears more than once; "
                "the crate is refused",
                where=member.where,
            )
        seen.add(member.rel)
        declared += info.file_size
        if declared > limits.max_total_bytes:
            raise UnsafeCrate(
                f"the zip declares more than {limits.max_total_bytes} bytes unpacked (passed at "
                f"member '{shown(info.orig_filename)}'); ask the operator to raise "
                "intake.max_total_bytes if the crate is genuine",
                where=member.where,
            )
        checked.append(member)
    return checked


def _check_member(
    info: zipfile.ZipInfo, size: int, limits: IntakeLimits, source: str
) -> _Member:
    # orig_filename: zipfile cuts ``filename`` at a NUL byte, hiding it from the checks.
    name = info.orig_filename
    where = f"{source}:{shown(name)}"
    rel = member_path(name, limits, where=where)
    label = f"member '{shown(name)}'"
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        raise UnsafeCrate(f"{label} is a symbolic link; crates may not contain links", where=where)
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise UnsafeCrate(f"{label} is a device or special file; the crate is refused", where=where)
    if info.flag_bits & (_ENCRYPTED | _STRONG):
        raise UnsafeCrate(f"{label} is encrypted; send the crate unencrypted", where=where)
    is_dir = info.is_dir() or kind == stat.S_IFDIR
    if is_dir:
        return _Member(info, rel, where, is_dir=True)
    if info.compress_type not in _METHODS or info.flag_bits & _PATCHED:
        raise CrateRejected(
            f"{label} uses compression method {info.compress_type}, which cratebridge does not "
            "read; re-create the zip with deflate or store",
            where=where,
        )
    if info.header_offset + _LOCAL_HEADER_SIZE + info.compress_size > size:
        raise CrateRejected(
            f"{label} claims {info.compress_size} compressed bytes at offset "
            f"{info.header_offset}, past the end of the {size}-byte zip (truncated or "
            "forged); re-create the archive",
            where=where,
        )
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size > limits.ratio_grace_bytes and ratio > limits.max_ratio:
        raise UnsafeCrate(
            f"{label} declares {info.file_size} bytes from {info.compress_size} compressed, "
            f"more than {limits.max_ratio:g} times (a zip bomb?); the crate is refused",
            where=where,
        )
    return _Member(info, rel, where, is_dir=False)


# -- pass 3: stream each member ----------------------------------------------------------------


def _extract_member(
    archive: zipfile.ZipFile, member: _Member, writer: Writer, refs: threading.Lock, fd: int
) -> None:
    writer.count_member(str(member.rel))
    if member.is_dir:
        writer.make_dir(member.rel)
        return
    info = member.info
    reader: _MemberReader | _StoredReader = _StoredReader(fd, member) \
        if info.compress_type == zipfile.ZIP_STORED else _MemberReader(archive, member, refs)
    writer.write_file(  # the writer owns the reader from here, and closes it
        member.rel,
        reader,
        executable=bool((info.external_attr >> 16) & stat.S_IXUSR),
        size=info.file_size,
        compressed=info.compress_size,
    )


class _MemberReader:
    """One member's data, read with every fault a refusal naming the member.

    The member is opened at the first read, in the thread that copies it. Yields at
    most the size the central directory declares and, at the end, checks that it
    yielded exactly that much (zipfile has already checked the CRC).
    """

    def __init__(self, archive: zipfile.ZipFile, member: _Member, refs: threading.Lock) -> None:
        self._archive = archive
        self._stream: IO[bytes] | None = None
        self._member = member
        self._refs = refs
        self._left = member.info.file_size

    def close(self) -> None:
        if self._stream is not None:
            with self._refs:
                self._stream.close()

    def read(self, size: int, /) -> bytes:
        try:
            if self._stream is None:
                with self._refs:
                    self._stream = self._archive.open(self._member.info)
            chunk = self._stream.read(min(size, self._left + 1))
        except _READ_ERRORS as exc:
            raise _damaged(self._member, exc) from exc
        self._left -= len(chunk)
        if self._left < 0:
            raise UnsafeCrate(
                f"member '{shown(self._member.info.orig_filename)}' holds more data than the "
                f"{self._member.info.file_size} bytes its zip entry declares; the crate is "
                "refused",
                where=self._member.where,
            )
        if not chunk and self._left > 0:
            raise _damaged(self._member, EOFError(f"{self._left} bytes short"))
        return chunk


class _StoredReader:
    """A stored member's data, read by offset from the zip's descriptor.

    The copies of several members at once share no file position, so they need
    no lock (:mod:`zipfile` locks every read of its shared file, and counts
    references to it on every open and close). The local header is read and
    checked as :mod:`zipfile` checks it (signature, name, no compressed patch);
    then exactly the size the central directory declares is read, and its CRC-32
    checked at the end. Every fault is a refusal naming the member.
    """

    def __init__(self, fd: int, member: _Member) -> None:
        self._fd = fd
        self._member = member
        self._at: int | None = None  # where the next read starts, once the header is read
        self._left = member.info.file_size
        self._crc = 0

    def close(self) -> None:
        pass  # the descriptor is the zip's, closed with it

    def read(self, size: int, /) -> bytes:
        info = self._member.info
        try:
            if self._at is None:
                self._at = self._data_offset()
            want = min(size, self._left)
            chunk = os.pread(self._fd, want, self._at) if want else b""
            if len(chunk) < want:
                raise EOFError(f"{self._left - len(chunk)} bytes short")
            self._at += len(chunk)
            self._left -= len(chunk)
            self._crc = zlib.crc32(chunk, self._crc)
            if self._left == 0 and self._crc != info.CRC:
                raise zipfile.BadZipFile(f"Bad CRC-32 for file {info.orig_filename!r}")
        except _READ_ERRORS as exc:
            raise _damaged(self._member, exc) from exc
        return chunk

    def _data_offset(self) -> int:
        info = self._member.info
        if info.compress_size != info.file_size:
            raise zipfile.BadZipFile(f"stored with {info.compress_size} bytes for "
                                     f"{info.file_size}")
        header = os.pread(self._fd, _LOCAL_HEADER_SIZE, info.header_offset)
        if len(header) < _LOCAL_HEADER_SIZE:
            raise EOFError("the local header is cut short")
        fields = _LOCAL_HEADER.unpack(header)
        if fields[0] != b"PK\x03\x04":
            raise zipfile.BadZipFile("Bad magic number for file header")
        if fields[3] & _PATCHED:
            raise NotImplementedError("compressed patched data (flag bit 5)")
        name_size, extra_size = int(fields[10]), int(fields[11])
        start = info.header_offset + _LOCAL_HEADER_SIZE
        name = os.pread(self._fd, name_size, start)
        text = name.decode("utf-8" if info.flag_bits & _UTF8 else "cp437")
        if text != info.orig_filename:
            raise zipfile.BadZipFile(f"File name in directory {info.orig_filename!r} and "
                                     f"header {name!r} differ.")
        return start + name_size + extra_size


def _damaged(member: _Member, exc: BaseException) -> CrateRejected:
    return CrateRejected(
        f"member '{shown(member.info.orig_filename)}' is damaged and cannot be unpacked "
        f"({type(exc).__name__}: {shown(str(exc), 200)}); re-create the archive",
        where=member.where,
    )

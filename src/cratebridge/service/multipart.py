"""A ``multipart/form-data`` body read without holding it in memory.

The body (its size already checked against the limit) is spooled to a file
in the run's folder, then split at its boundary through ``mmap``: each part's
headers are parsed with :mod:`email`, small fields are kept as text, and a
file part is copied out in chunks. Nothing a part names (its file name) is
used as a path.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import HTTP
from pathlib import Path
from typing import Protocol

__all__ = ["BadForm", "Form", "UploadedFile", "boundary_of", "read_form", "spool"]

_CHUNK = 1024 * 1024
#: Largest text field (workflow_params, tags, ...): they are JSON, not data.
MAX_FIELD_BYTES = 1024 * 1024
MAX_PARTS = 64


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class BadForm(ValueError):
    """The body is not the ``multipart/form-data`` it claims to be; the message says why."""


@dataclass(frozen=True)
class UploadedFile:
    """A file part: the field, the name the client gave (never a path here), where it is."""

    field: str
    filename: str
    path: Path
    size: int


@dataclass
class Form:
    fields: dict[str, list[str]] = field(default_factory=dict)
    files: list[UploadedFile] = field(default_factory=list)

    def one(self, name: str) -> str | None:
        values = self.fields.get(name, [])
        if len(values) > 1:
            raise BadForm(f"the form field {name} is given {len(values)} times")
        return values[0] if values else None


def boundary_of(content_type: str | None) -> str:
    message = Message()
    message["content-type"] = content_type or ""
    if message.get_content_type() != "multipart/form-data":
        raise BadForm("a run is submitted as multipart/form-data (a WES RunRequest), not "
                      f"{content_type or 'a body with no Content-Type'}")
    boundary = message.get_param("boundary")
    if not isinstance(boundary, str) or not 1 <= len(boundary) <= 70:
        raise BadForm("the multipart/form-data Content-Type has no usable boundary")
    return boundary


def spool(stream: _Readable, length: int, dest: Path) -> None:
    """Copy exactly ``length`` bytes of ``stream`` to ``dest``; :class:`BadForm` when short."""
    left = length
    with dest.open("wb") as out:
        while left:
            chunk = stream.read(min(_CHUNK, left))
            if not chunk:
                raise BadForm(f"the body ended {left} bytes before its Content-Length")
            out.write(chunk)
            left -= len(chunk)


def read_form(body: Path, boundary: str, files_dir: Path) -> Form:
    """The fields and files of the spooled ``body``; files land in ``files_dir`` as part-N."""
    form = Form()
    if body.stat().st_size == 0:
        raise BadForm("the body is empty")
    delimiter = b"--" + boundary.encode("ascii", "replace")
    with body.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as m:
        start = m.find(delimiter)
        if start != 0 and m.find(b"\r\n" + delimiter) != start - 2:
            raise BadForm("the body does not start with its boundary")
        pos = start + len(delimiter)
        count = 0
        while True:
            if m[pos:pos + 2] == b"--":
                return form
            if m[pos:pos + 2] != b"\r\n":
                raise BadForm("a boundary is not followed by a line end")
            head_end = m.find(b"\r\n\r\n", pos + 2)
            end = _next_delimiter(m, delimiter, pos + 2)
            if head_end < 0 or end < 0 or head_end + 4 > end:
                raise BadForm("a part is cut short: no closing boundary")
            count += 1
            if count > MAX_PARTS:
                raise BadForm(f"more than {MAX_PARTS} parts")
            headers = BytesHeaderParser(policy=HTTP).parsebytes(m[pos + 2:head_end + 4])
            _take(form, headers, m, head_end + 4, end, files_dir, count)
            pos = end + 2 + len(delimiter)


def _next_delimiter(m: mmap.mmap, delimiter: bytes, start: int) -> int:
    """Where the next delimiter line begins (its CRLF), or -1: one the content only looks like
    (``--BOUNDARY`` followed by anything but ``--`` or a line end) is skipped."""
    at = start
    while (at := m.find(b"\r\n" + delimiter, at)) >= 0:
        after = at + 2 + len(delimiter)
        if m[after:after + 2] in (b"\r\n", b"--"):
            return at
        at += 1
    return -1


def _take(form: Form, headers: Message, m: mmap.mmap, start: int, end: int,
          files_dir: Path, count: int) -> None:
    if headers.get_content_disposition() != "form-data":
        raise BadForm("a part has no Content-Disposition: form-data")
    name = headers.get_param("name", header="content-disposition")
    filename = headers.get_filename()
    if not isinstance(name, str) or not name:
        raise BadForm("a part has no field name")
    if filename is not None:
        dest = files_dir / f"part-{count}"
        with dest.open("wb") as out:
            for offset in range(start, end, _CHUNK):
                out.write(m[offset:min(offset + _CHUNK, end)])
        form.files.append(UploadedFile(name, filename, dest, end - start))
        return
    if end - start > MAX_FIELD_BYTES:
        raise BadForm(f"the form field {name} is over {MAX_FIELD_BYTES} bytes")
    try:
        text = m[start:end].decode("utf-8")
    except UnicodeDecodeError:
        raise BadForm(f"the form field {name} is not UTF-8 text") from None
    form.fields.setdefault(name, []).append(text)

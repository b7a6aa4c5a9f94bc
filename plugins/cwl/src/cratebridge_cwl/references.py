"""After cwltool has loaded a workflow: every File, Directory and document it names must lie
inside the crate, checked on what cwltool resolved rather than on the text as written."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urldefrag

from cratebridge.errors import UnsafeCrate
from cratebridge_cwl.offline import (
    OUTSIDE_ADVICE,
    OutsideRoots,
    file_path,
    file_target,
    is_inside,
)

__all__ = ["check_references", "display", "refusal_error"]

_FILE_CLASSES = ("File", "Directory")


def check_references(process: Any, roots: Sequence[Path], *,
                     written: Mapping[str, tuple[str, str]] | None = None) -> None:
    """Raise :class:`UnsafeCrate` for the first reference of ``process`` outside ``roots``.

    ``process`` is a loaded cwltool ``Process``; the check reaches its steps and their
    tools, inline or not, recursively. It covers every File or Directory object anywhere
    in them (input and step defaults, requirements and hints, ``secondaryFiles`` and
    ``listing`` entries), each step's ``run`` and each document's ``$schemas``. A
    ``location`` or ``path`` must be a ``file:`` URL whose real path is inside ``roots``;
    a literal's ``_:`` identifier and an object with only ``contents`` or ``listing`` are
    fine. ``written`` maps a resolved URL to the reference as written and its document,
    as :class:`~cratebridge_cwl.offline.CrateFetcher` records them, for the message.
    """
    real = tuple(Path(os.path.realpath(root)) for root in roots)
    checker = _Checker(real, written or {})
    for node in _processes(process, set()):
        checker.process(node)


def display(document: Path, roots: Sequence[Path]) -> str:
    """A document for a message: relative to the root it lies in, else as it is.

    The path as reached is tried before its real path, so a link in the crate is named
    by its own name rather than by where it leads.
    """
    for candidate in (Path(os.path.abspath(document)), Path(os.path.realpath(document))):
        for root in roots:
            if candidate.is_relative_to(root):
                return candidate.relative_to(root).as_posix()
    return str(document)


def refusal_error(refusal: OutsideRoots, main: Path, roots: Sequence[Path]) -> UnsafeCrate:
    """The :class:`UnsafeCrate` for a reference the fetcher refused, placed as well as known.

    ``main`` is the workflow loaded, named when nothing closer is known.
    """
    document = _from_relname(refusal.file) if refusal.file else None
    if document is None and refusal.document:
        document = file_path(refusal.document)
    real = tuple(Path(os.path.realpath(root)) for root in roots)
    where = display(document or main, real)
    if document is not None and refusal.start:
        where = f"{where}, line {refusal.start[0]}"
    return UnsafeCrate(refusal.message, where=where)


def _processes(process: Any, seen: set[int]) -> Iterator[Any]:
    """``process``, its steps and the tools they run, each once."""
    if process is None or id(process) in seen:
        return
    seen.add(id(process))
    yield process
    for step in getattr(process, "steps", ()):
        yield from _processes(step, seen)
    yield from _processes(getattr(process, "embedded_tool", None), seen)


class _Checker:
    def __init__(self, roots: tuple[Path, ...],
                 written: Mapping[str, tuple[str, str]]) -> None:
        self.roots = roots
        self.written = written
        self.seen: set[int] = set()

    def process(self, node: Any) -> None:
        tool = getattr(node, "tool", {})
        document = _document(tool, fallback=None)
        for source in (getattr(node, "metadata", {}), tool):
            for schema in _strings(source.get("$schemas")):
                self._check(schema, "$schemas entry", document, _line(source, "$schemas"))
        if isinstance(tool.get("run"), str):
            self._check(tool["run"], "run", document, _line(tool, "run"))
        for part in (tool, getattr(node, "requirements", []), getattr(node, "hints", [])):
            self._walk(part, document)

    def _walk(self, value: Any, document: Path | None) -> None:
        if isinstance(value, list):
            for item in value:
                self._walk(item, document)
            return
        if not isinstance(value, Mapping) or id(value) in self.seen:
            return
        self.seen.add(id(value))
        document = _document(value, document)
        if value.get("class") in _FILE_CLASSES:
            for key in ("location", "path"):
                if key in value:
                    self._check(value[key], f"{value['class']} {key}", document,
                                _line(value, key))
        for item in value.values():
            self._walk(item, document)

    def _check(self, reference: Any, what: str, document: Path | None,
               line: int | None) -> None:
        if isinstance(reference, str) and reference.startswith("_:"):
            return  # a literal's blank identifier: its contents or listing are inline
        target = file_target(reference) if isinstance(reference, str) else None
        if target is not None and is_inside(target, self.roots):
            return
        shown = str(reference)
        as_written, written_in = self.written.get(shown, (shown, ""))
        if document is None or file_path(written_in) == document:
            shown = as_written  # the author's text, when it was written in this document
        where = display(document, self.roots) if document else "the workflow"
        if line is not None:
            where = f"{where}, line {line}"
        leads = f"leads outside the crate (to {target})" if target is not None else \
            "is not a file inside the crate"
        raise UnsafeCrate(f"{what} {shown!r} {leads}; {OUTSIDE_ADVICE}", where=where)


def _document(node: Any, fallback: Path | None) -> Path | None:
    """The file ``node`` was read from; schema-salad notes it relative to the cwd."""
    filename = getattr(getattr(node, "lc", None), "filename", None)
    if isinstance(filename, str) and (found := _from_relname(filename)):
        return found
    if isinstance(node, Mapping) and isinstance(node.get("id"), str):
        return file_path(urldefrag(node["id"])[0]) or fallback
    return fallback


def _from_relname(filename: str) -> Path | None:
    """The path of a schema-salad ``relname``: a ``file:`` URL's path relative to the cwd."""
    if not filename or ":" in filename.split("/", 1)[0]:
        return None  # another scheme, or a ``_:`` identifier
    return Path(os.path.abspath(unquote(filename)))


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _line(node: Any, key: str) -> int | None:
    """The 1-based line of ``node[key]`` in its file, when ruamel kept it."""
    try:
        return int(node.lc.key(key)[0]) + 1
    except (AttributeError, KeyError, TypeError):
        return None

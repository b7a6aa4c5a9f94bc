"""Refusing, before anything runs, Nextflow code that names files outside its crate.

A static check of the text of the workflow's ``.nf`` files, its ``lib/*.groovy``
classes and its ``nextflow.config`` with the configs it includes; no Groovy is
evaluated, so it is defence in depth under the engine's confinement, not a proof.
Allow-list: a path passes only when its real path (symlinks and ``..``
resolved) lies inside an allowed folder. The rules:

- ``include { ... } from '<path>'`` and ``includeConfig '<path>'``: a relative
  path (from the including file's folder) that stays inside the workflow folder,
  its ``.nf`` or ``/main.nf`` form too; absolute paths, URLs and paths built
  from unknown values are refused. ``from 'plugin/...'`` names a plugin, not a
  file (plugins are checked against the operator's list elsewhere). Included
  files are checked in turn, even in folders the image scan skips.
- any other quoted string literal (``'...'``, ``"..."``, triple-quoted, slashy):
  one starting with ``/`` or ``file:`` must lie inside the workflow folder or an
  allowed root (the crate, an operator-mapped dataset); ``${projectDir}``,
  ``${baseDir}`` and ``${moduleDir}`` are replaced by their folders first; a
  relative literal, or the rest after another ``$`` value, must not climb out
  with ``..``; ``~/...`` (a home folder) is refused. Escapes (``\\u002f``,
  ``\\/``) are decoded before the check.
- every document read must itself resolve inside the workflow folder (a
  symlinked ``.nf`` is never read through).

Container-side text is not checked, since it runs in the task's container, where
``/tmp`` or ``/usr/bin/env`` are the container's own: the command string of a
process (a triple-quoted string standing alone as a statement in its
``script:``, ``shell:`` or ``stub:`` section or in a body without labels), the
plain literal values of the ``shell`` directive (``process.shell =
['/bin/bash', ...]``) and of ``beforeScript``/``afterScript``, and a plain
literal assigned to a variable of the config's ``env`` scope. Only plain
literals count: ``shell = new File('/etc/x').text``, or a triple-quoted string
passed to ``file(...)``, are checked. Groovy interpolated into a command string
(``${...}``, and ``!{...}`` in ``shell:``) runs in Nextflow itself and *is*
checked, as is the Groovy of a ``script:`` section outside its command string
and all of ``exec:``.

Two literals are not paths: ``/dev/null`` (read as empty; nf-core includes it)
and strings of slashes only (separators, as in ``tokenize('/')``); slashy
strings after ``~`` are patterns. Remote URLs (``https://``, ``s3://``) are not
files: the engine is offline and its confinement has no network. Paths computed
at run time (``params.x``, string building) cannot be seen by a static check:
the engine's confinement is what stops those.
"""

from __future__ import annotations

import bisect
import os
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cratebridge.errors import UnsafeCrate

__all__ = ["check_references"]

_SKIP_DIRS = {"work", ".nextflow", ".git", "node_modules"}  # as the image scan does
_NOT_PATHS = {"/dev/null"}
_SLASHY_AFTER = set("(,=~!&|?:;[{}") | {""}
_KNOWN_BASE = re.compile(
    r"^\$(?:\{\s*(?:workflow\.)?(projectDir|baseDir|moduleDir)\s*\}|"
    r"(?:workflow\.)?(projectDir|baseDir|moduleDir)\b)")
_UNKNOWN_BASE = re.compile(r"^\$(?:\{[^}]*\}|[A-Za-z_][\w.]*)")
_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|.)", re.DOTALL)
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}
_INCLUDE = re.compile(r"\binclude\s*\{[^{}]*\}\s*from\s*")
_INCLUDE_CONFIG = re.compile(r"\bincludeConfig\s*\(?\s*")
_PROCESS = re.compile(r"\bprocess\s+[A-Za-z_]\w*\s*$")
_LABEL = re.compile(r"^\s*(script|shell|exec|stub|input|output|when)\s*:", re.MULTILINE)
# Statement prefixes (strings blanked as NULs) that make a literal container-side text:
# a plain element of a shell/beforeScript/afterScript setting, an env variable's value,
# or a command string standing alone as a statement.
_CONTAINER_SETTING = re.compile(r"^\s*(?:process\s*\.\s*)?(?:shell|beforeScript|afterScript)"
                                r"\s*(?:=\s*)?[\[(]?\s*(?:\x00+\s*,\s*)*$")
_ENV_DOT = re.compile(r"^\s*env\s*\.\s*\w+\s*=\s*$")
_ASSIGN = re.compile(r"^\s*\w+\s*=\s*$")
_BARE = re.compile(r"^\s*(?:(?:script|shell|stub)\s*:\s*)?$")
_ENV_SCOPE = re.compile(r"(^|[\s.])env\s*$")
_HOME = re.compile(r"^~(/|$)")
_COMMAND_SECTIONS = {None, "script", "shell", "stub"}


@dataclass(frozen=True)
class _Literal:
    """A string literal as written: ``raw`` is its text between the quotes."""

    start: int
    raw: str
    quote: str
    after: str  # the code character before it ('' at the start of the text)


@dataclass(frozen=True)
class _Lexed:
    """A document's literals, and its code with strings and comments blanked out."""

    code: str
    literals: tuple[_Literal, ...]


def check_references(root: Path, main: Path, roots: tuple[Path, ...] = ()) -> None:
    """Refuse a Nextflow workflow whose code names a file outside the crate.

    ``root`` is the workflow folder (``projectDir``) and ``main`` its entry
    script; ``roots`` are the other folders a literal absolute path may point
    into (the request crate, operator-mapped datasets). Raises
    :class:`~cratebridge.errors.UnsafeCrate` naming the document, the line and
    the reference as written; never reads a file outside ``root``.
    """
    checker = _Checker(root, (root, *roots))
    checker.run(main)


class _Checker:
    def __init__(self, root: Path, roots: tuple[Path, ...]) -> None:
        self.root = root
        self.real_root = _real(root)
        self.roots = tuple(_real(r) for r in roots)
        self.seen: set[Path] = set()

    def run(self, main: Path) -> None:
        documents = [main, *_code_files(self.root)]
        config = self.root / "nextflow.config"
        while documents:
            self._check(documents.pop(0), documents, config=False)
        configs = [config] if config.is_file() else []
        while configs:
            self._check(configs.pop(0), configs, config=True)

    def _check(self, document: Path, queue: list[Path], *, config: bool) -> None:
        real = _real(document)
        if real in self.seen:
            return
        if not _inside(real, (self.real_root,)):
            raise UnsafeCrate("this workflow file resolves (through a symlink) to a file "
                              "outside the workflow folder; it was not read",
                              where=self._label(document))
        self.seen.add(real)
        text = document.read_text(errors="replace")
        lexed = _lex(text)
        includes = {m.end(): "include" for m in _INCLUDE.finditer(lexed.code)}
        includes.update({m.end(): "includeConfig" for m in _INCLUDE_CONFIG.finditer(lexed.code)})
        label = self._label(document)
        newlines = [i for i, char in enumerate(text) if char == "\n"]
        for literal, container_side in _classify(lexed, config):
            where = f"{label} line {bisect.bisect_left(newlines, literal.start) + 1}"
            kind = includes.get(literal.start)
            if kind is not None:
                queue.extend(self._included(kind, literal, document, where))
            elif not container_side:
                self._literal(literal, document, where)

    def _included(self, kind: str, literal: _Literal, document: Path,
                  where: str) -> list[Path]:
        """The files an include names, once it is shown to stay in the workflow folder."""
        value = _decode(literal.raw)
        if kind == "include" and value.startswith("plugin/"):
            return []
        base = _known_base(value, self.root, document)
        if base is not None:
            target = base
        elif value.startswith(("/", "$", "~")) or ":" in value:
            raise UnsafeCrate(
                f"{kind} {_written(literal)} is not a relative path inside the workflow "
                "folder; include files of the workflow by a path relative to the including "
                "file", where=where)
        else:
            target = document.parent / value
        candidates = [target]
        if kind == "include":
            candidates += [target.with_name(target.name + ".nf"), target / "main.nf"]
        for candidate in candidates:
            if candidate is target or candidate.exists():
                if not _inside(_real(candidate), (self.real_root,)):
                    raise UnsafeCrate(
                        f"{kind} {_written(literal)} points outside the workflow folder "
                        "(symlinks followed); a workflow may only include its own files",
                        where=where)
        return [c for c in candidates if c.is_file()]

    def _literal(self, literal: _Literal, document: Path, where: str) -> None:
        if literal.quote in ("/", "$/") and literal.after == "~":
            return  # a pattern, ~/.../
        value = _decode(literal.raw)
        if value in _NOT_PATHS or (value and set(value) == {"/"}):
            return
        if _HOME.match(value):
            raise UnsafeCrate(f"{_written(literal)} names a home folder, outside the crate",
                              where=where)
        if value.lower().startswith("file:"):
            path = re.sub(r"^file:(//)?", "", value, flags=re.IGNORECASE)
            if not path.startswith("/") or not self._allowed(path):
                raise UnsafeCrate(self._outside(literal, "is a file: URI"), where=where)
            return
        base = _known_base(value, self.root, document)
        if base is not None:
            if not self._allowed(str(base)):
                raise UnsafeCrate(self._outside(literal, "leads"), where=where)
            return
        if value.startswith("/"):
            if not self._allowed(value):
                raise UnsafeCrate(self._outside(literal, "is an absolute path"), where=where)
            return
        unknown = _UNKNOWN_BASE.match(value)
        rest = value[unknown.end():].lstrip("/") if unknown else value
        if rest and not any(c.isspace() for c in rest) and _climbs(rest):
            raise UnsafeCrate(
                f"the path {_written(literal)} climbs out of its folder with '..'; name "
                "files inside the workflow by paths that stay inside it", where=where)

    def _allowed(self, path: str) -> bool:
        return _inside(_real(Path(path)), self.roots)

    def _outside(self, literal: _Literal, what: str) -> str:
        return (f"{_written(literal)} {what} outside the crate (symlinks followed); a "
                "workflow may name only files inside its crate, by relative paths or from "
                "${projectDir}, and receives its data as params")

    def _label(self, document: Path) -> str:
        if document.is_relative_to(self.root):
            return str(document.relative_to(self.root))
        return str(document)


def _code_files(root: Path) -> list[Path]:
    """The workflow's ``.nf`` files and ``lib/`` Groovy classes (both run in Nextflow)."""
    found = [*root.rglob("*.nf"), *(root / "lib").rglob("*.groovy")]
    return sorted(p for p in found
                  if not _SKIP_DIRS.intersection(p.relative_to(root).parts[:-1]))


def _written(literal: _Literal) -> str:
    close = {"/": "/", "$/": "/$"}.get(literal.quote, literal.quote)
    return f"{literal.quote}{literal.raw}{close}"


def _decode(raw: str) -> str:
    """A literal's value: Groovy escapes (``\\n``, ``\\/``, ``\\u002f``) decoded."""
    def one(match: re.Match[str]) -> str:
        escape = match.group(1)
        if escape.startswith("u") and len(escape) == 5:
            return chr(int(escape[1:], 16))
        return _SIMPLE_ESCAPES.get(escape, escape)

    return _ESCAPE.sub(one, raw)


def _known_base(value: str, root: Path, document: Path) -> Path | None:
    """``${projectDir}/x`` as a path; None when the value does not start with such a folder."""
    match = _KNOWN_BASE.match(value)
    if match is None:
        return None
    name = match.group(1) or match.group(2)
    base = document.parent if name == "moduleDir" else root
    rest = value[match.end():].lstrip("/")
    return base / rest if rest else base


def _climbs(path: str) -> bool:
    return posixpath.normpath(path).split("/", 1)[0] == ".."


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _inside(path: Path, folders: tuple[Path, ...]) -> bool:
    return any(path == folder or path.is_relative_to(folder) for folder in folders)


# -- reading Groovy's strings --------------------------------------------------------


def _lex(text: str) -> _Lexed:
    """Every string literal of ``text`` (those inside ``${...}`` too) and its blanked code.

    In the blanked code, comments are spaces and strings NULs, offsets unchanged.
    """
    code = list(text)
    literals: list[_Literal] = []
    _Lexer(text, code, literals).code_until(0, closing=False)
    # a shell: command's !{...} is Groovy too
    for literal in [lit for lit in literals if lit.quote == "'''"]:
        for start, end in _bang_blocks(literal.raw):
            offset = literal.start + len(literal.quote) + start
            _Lexer(text, code, literals).code_until(offset, closing=False, end=offset + end)
    return _Lexed("".join(code), tuple(sorted(literals, key=lambda lit: lit.start)))


def _bang_blocks(raw: str) -> Iterator[tuple[int, int]]:
    for match in re.finditer(r"!\{", raw):
        depth, i = 1, match.end()
        while i < len(raw) and depth:
            depth += {"{": 1, "}": -1}.get(raw[i], 0)
            i += 1
        yield match.end(), i - 1


class _Lexer:
    """A small Groovy lexer: strings, comments and ``${...}`` nesting; nothing more."""

    def __init__(self, text: str, code: list[str], literals: list[_Literal]) -> None:
        self.text = text
        self.code = code
        self.literals = literals
        self.before = ""

    def blank(self, start: int, end: int, fill: str = " ") -> None:
        """Blank a comment (as spaces) or a string (as NULs, so it still counts as text)."""
        for i in range(start, min(end, len(self.text))):
            if self.code[i] != "\n":
                self.code[i] = fill

    def code_until(self, i: int, *, closing: bool, end: int | None = None) -> int:
        """Lex code from ``i``; with ``closing``, stop after the ``}`` that closes it."""
        text, stop = self.text, len(self.text) if end is None else end
        depth = 0
        while i < stop:
            char = text[i]
            if text.startswith("//", i) or (text.startswith("#!", i) and i == 0):
                j = text.find("\n", i)
                j = stop if j < 0 else j
                self.blank(i, j)
                i = j
            elif text.startswith("/*", i):
                j = text.find("*/", i + 2)
                j = stop if j < 0 else j + 2
                self.blank(i, j)
                i = j
            elif text.startswith(('"""', "'''"), i):
                i = self.string(i, text[i:i + 3], multiline=True)
            elif char in "'\"":
                i = self.string(i, char, multiline=False)
            elif text.startswith("$/", i):
                i = self.slashy(i, "$/", "/$")
            elif char == "/" and self.before in _SLASHY_AFTER:
                i = self.slashy(i, "/", "/")
            else:
                if closing and char == "{":
                    depth += 1
                elif closing and char == "}":
                    if depth == 0:
                        return i + 1
                    depth -= 1
                if not char.isspace():
                    self.before = char if not (char.isalnum() or char == "_") else "a"
                i += 1
        return i

    def string(self, start: int, quote: str, *, multiline: bool) -> int:
        text, i = self.text, start + len(quote)
        interpolates = quote.startswith('"')
        while i < len(text):
            if text.startswith(quote, i):
                self.finish(start, quote, i, i + len(quote))
                return i + len(quote)
            if text[i] == "\\":
                i += 2
            elif text[i] == "\n" and not multiline:
                break  # an unterminated string: stop at the line's end
            elif interpolates and text.startswith("${", i):
                inner = _Lexer(text, self.code, self.literals)
                i = inner.code_until(i + 2, closing=True)
            else:
                i += 1
        self.finish(start, quote, i, i)
        return i

    def slashy(self, start: int, opening: str, closing: str) -> int:
        text, i = self.text, start + len(opening)
        if opening == "/" and (i >= len(text) or text[i] in "/*= \t\n"):
            self.before = "/"
            return i  # a division, or a comment the lexer already took
        while i < len(text) and not text.startswith(closing, i):
            if text[i] == "\n" and opening == "/":
                break
            i += 2 if text[i] == "\\" else 1
        self.finish(start, opening, i, i + len(closing))
        return i + len(closing)

    def finish(self, start: int, quote: str, content_end: int, end: int) -> None:
        raw = self.text[start + len(quote):content_end]
        self.literals.append(_Literal(start, raw, quote, self.before))
        self.blank(start, end, "\0")
        self.before = "a"


# -- where a literal is: process command, container-side setting, or code ----------------


@dataclass
class _Scope:
    """A ``{...}`` being read: where it opened, what it is, where its statement began."""

    open_at: int
    process: bool = False
    env: bool = False
    depth: int = 0  # of ( and [ inside the current statement
    statement: int = 0


def _classify(lexed: _Lexed, config: bool) -> Iterator[tuple[_Literal, bool]]:
    """Each literal, and whether it is container-side text that is not checked.

    One pass over the blanked code keeps the stack of open braces and, in the
    innermost, where the current statement began (a newline or ``;`` ends one
    only outside ``(...)`` and ``[...]``).
    """
    code, literals = lexed.code, lexed.literals
    scopes = [_Scope(-1)]
    k = 0
    for i, char in enumerate(code):
        while k < len(literals) and literals[k].start <= i:
            yield literals[k], _container_side(code, literals[k], scopes, config)
            k += 1
        scope = scopes[-1]
        if char == "{":
            before = code[max(0, i - 200):i]
            scopes.append(_Scope(i, process=not config and bool(_PROCESS.search(before)),
                                 env=config and bool(_ENV_SCOPE.search(before)),
                                 statement=i + 1))
        elif char == "}" and len(scopes) > 1:
            scopes.pop()
            scopes[-1].statement = i + 1
        elif char in "([":
            scope.depth += 1
        elif char in ")]" and scope.depth:
            scope.depth -= 1
        elif char in "\n;" and scope.depth == 0:
            scope.statement = i + 1
    for literal in literals[k:]:
        yield literal, False


def _container_side(code: str, literal: _Literal, scopes: list[_Scope], config: bool) -> bool:
    """Whether the literal is a plain value of a container-side setting or command string.

    Only a plain literal counts: ``shell = new File('/etc/x').text`` is checked.
    """
    statement = code[scopes[-1].statement:literal.start]
    if config:
        return bool(_CONTAINER_SETTING.match(statement) or _ENV_DOT.match(statement)
                    or (scopes[-1].env and _ASSIGN.match(statement)))
    if scopes[-1].process and _CONTAINER_SETTING.match(statement):
        return True
    if literal.quote not in ('"""', "'''") or not _BARE.match(statement):
        return False
    for scope in scopes:
        if scope.process:
            labels = list(_LABEL.finditer(code, scope.open_at + 1, literal.start))
            return (labels[-1].group(1) if labels else None) in _COMMAND_SECTIONS
    return False

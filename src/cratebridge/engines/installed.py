"""What is installed: plugin entry points and distribution versions, read once and kept.

Asking ``importlib.metadata`` costs a process about 40 ms (its import, and a
reading of every installed distribution's entry points), at the start of every
run and of every ``cratebridge-cwl-runner`` call. The answers are kept in memory
and in a file of the user's cache (``$XDG_CACHE_HOME/cratebridge``, else
``~/.cache/cratebridge``), under a key that any installation changes: the names
and modification times of the ``.dist-info``, ``.egg-info``, ``.egg-link`` and
``.pth`` entries of every folder on ``sys.path`` (about 1 ms to list). A new
plugin, an upgrade or a removal is therefore seen by the next question, even in
a process that is already running.

A cache file is believed only when it is the user's own, a plain file (not a
link) that no one else can write, in a folder no one else can write: anything
else about it (missing, unreadable, another key, not JSON) means asking
``importlib.metadata`` afresh. Nothing in it is executed: an entry point's value
still names a module to import, as the installed metadata does.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

__all__ = ["EntryPointRow", "cache_folder", "entry_points", "version"]

#: One entry point: name, value (``module:attr``), distribution, its version.
EntryPointRow = tuple[str, str, str, str]

_FORMAT = 1
_INSTALLED_SUFFIXES = (".dist-info", ".egg-info", ".egg-link", ".pth")
_lock = threading.Lock()
_memory: dict[str, dict[str, Any]] = {}  # key -> the cache's content


def entry_points(group: str) -> tuple[EntryPointRow, ...]:
    """The installed entry points of ``group``, as ``(name, value, distribution, version)``."""
    key = _key()
    found = _content(key)["groups"].get(group)
    if found is None:
        import importlib.metadata

        found = []
        for ep in importlib.metadata.entry_points(group=group):
            dist = ep.dist
            found.append([ep.name, ep.value, dist.name if dist else "unknown",
                          dist.version if dist else "unknown"])
        _remember(key, "groups", group, found)
    return tuple((str(n), str(v), str(d), str(ver)) for n, v, d, ver in found)


def version(distribution: str) -> str | None:
    """The installed version of ``distribution``; None when it is not installed."""
    key = _key()
    versions = _content(key)["versions"]
    if distribution not in versions:
        import importlib.metadata

        try:
            found: str | None = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            found = None
        _remember(key, "versions", distribution, found)
        return found
    value = versions[distribution]
    return str(value) if value is not None else None


def cache_folder() -> Path | None:
    """Where the cache file goes: ``$XDG_CACHE_HOME/cratebridge``, else ``~/.cache/cratebridge``."""
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        home = os.environ.get("HOME")
        if not home:
            return None
        base = os.path.join(home, ".cache")
    return Path(base) / "cratebridge"


# -- the key and the file -----------------------------------------------------------------


def _key() -> str:
    """What an installation changes, as a digest (see the module's documentation)."""
    digest = hashlib.sha256(f"{_FORMAT}\0{sys.executable}\n".encode())
    for entry in sys.path:
        digest.update(f"{entry}\n".encode())
        try:
            listing = os.scandir(entry or ".")
        except OSError:
            continue
        with listing:
            rows = []
            for item in listing:
                if item.name.endswith(_INSTALLED_SUFFIXES):
                    try:
                        rows.append(f"{item.name}\0{item.stat().st_mtime_ns}")
                    except OSError:
                        rows.append(f"{item.name}\0gone")
        digest.update(("\n".join(sorted(rows)) + "\n").encode())
    return digest.hexdigest()


def _content(key: str) -> dict[str, Any]:
    with _lock:
        if key not in _memory:
            _memory[key] = _read(key) or {"groups": {}, "versions": {}}
        return _memory[key]


def _remember(key: str, part: str, name: str, value: object) -> None:
    with _lock:
        content = _memory.setdefault(key, {"groups": {}, "versions": {}})
        content[part][name] = value
        _write(key, content)


def _file() -> Path | None:
    folder = cache_folder()
    return folder / "installed.json" if folder is not None else None


def _trusted(st: os.stat_result, kind: int) -> bool:
    """The user's own, of the right kind, and writable by no one else."""
    return stat.S_IFMT(st.st_mode) == kind and st.st_uid == os.geteuid() \
        and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


#: How many keys a cache file keeps: one per ``sys.path`` in use (a console script's
#: and ``python -m``'s differ in their first entry), the latest first.
_KEYS_KEPT = 8


def _load_file(path: Path) -> dict[str, Any]:
    """The cache file's answers by key; empty when it is missing or not to be believed."""
    try:
        if not _trusted(os.lstat(path.parent), stat.S_IFDIR):
            return {}
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return {}
    try:
        if not _trusted(os.fstat(fd), stat.S_IFREG):
            return {}
        with os.fdopen(fd, "rb", closefd=False) as file:
            content = json.loads(file.read(1 << 20))
    except (OSError, ValueError):
        return {}
    finally:
        os.close(fd)
    if not isinstance(content, dict) or content.get("format") != _FORMAT \
            or not isinstance(content.get("keys"), dict):
        return {}
    return {key: entry for key, entry in content["keys"].items() if _well_formed(entry)}


def _well_formed(entry: object) -> bool:
    """Groups of ``[name, value, distribution, version]`` rows; versions strings or null."""
    if not isinstance(entry, dict):
        return False
    groups, versions = entry.get("groups"), entry.get("versions")
    return isinstance(groups, dict) and isinstance(versions, dict) and all(
        isinstance(rows, list) and all(
            isinstance(row, list) and len(row) == 4 and all(isinstance(v, str) for v in row)
            for row in rows)
        for rows in groups.values()) and all(
        value is None or isinstance(value, str) for value in versions.values())


def _read(key: str) -> dict[str, Any] | None:
    path = _file()
    return _load_file(path).get(key) if path is not None else None


def _write(key: str, content: dict[str, Any]) -> None:
    """Put ``content`` under ``key`` in the cache file, replaced at once (a reader sees
    the old file or the new); any failure leaves it as it was: it is only a cache."""
    path = _file()
    if path is None:
        return
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not _trusted(os.lstat(path.parent), stat.S_IFDIR):
            return
        keys = {key: content}
        for other, entry in _load_file(path).items():
            if other != key and len(keys) < _KEYS_KEPT:
                keys[other] = entry
        fd, temporary = tempfile.mkstemp(prefix=".installed-", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as file:
                json.dump({"format": _FORMAT, "keys": keys}, file)
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
    except OSError:
        pass

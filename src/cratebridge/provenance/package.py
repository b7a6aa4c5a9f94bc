"""Writes a result folder out as a folder or a ZIP, optionally as a BagIt bag, atomically.

The output is built in a hidden temporary sibling of ``out`` and moved into
place with one rename, so a failure never leaves a half-written ``out``.
BagIt manifests reuse the sha-512 digests the builder computed while copying.
A result folder whose files are its own can be moved into a folder ``out``
instead of copied (one rename, however many files).
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from stat import S_ISREG
from types import MappingProxyType

from cratebridge.provenance.digests import DigestCache, cache_path
from cratebridge.provenance.files import copy_new

__all__ = ["write_result"]

_NO_INFO: Mapping[str, str] = MappingProxyType({})
_COMPUTED = {"bagging-date", "payload-oxum", "bag-software-agent"}
_BAGIT_TXT = "BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n"


@dataclass(frozen=True)
class _Payload:
    relpath: str
    path: str
    size: int
    sha512: str | None
    links: int  # the file's names: more than one, and a move would share it


def write_result(
    result_dir: Path, out: Path, *, bagit: bool, bag_info: Mapping[str, str] = _NO_INFO,
    move: bool = False,
) -> Path:
    """Write ``result_dir`` to ``out`` (a folder, or a ZIP when ``out`` ends ``.zip``).

    With ``bagit`` the crate becomes the payload (``data/``) of a BagIt 1.0 bag
    with sha-512 manifests; ``bag_info`` entries (such as the request's
    ``External-Identifier``) are kept in ``bag-info.txt``. A ZIP holds the bag
    in one top-level folder named after the ZIP, or the crate at its root when
    not a bag. A folder ``out`` must be absent or empty (:class:`FileExistsError`);
    a ZIP ``out`` is replaced. Returns ``out``.

    With ``move`` and a folder ``out``, ``result_dir`` itself becomes the
    crate (it is gone afterwards) when every file in it has no other name and
    ``out`` is on its filesystem; otherwise its files are copied, as without
    ``move``. A file with two names is never moved: the crate would share it
    with the run's folder. Nor is a folder holding what a copy leaves out (a
    link to a folder, a folder that cannot be read).
    """
    if not result_dir.is_dir():
        raise FileNotFoundError(f"{result_dir}: no result folder to write")
    left_out: list[str] = []
    payload = list(_payload(result_dir, bagit, left_out))
    tags = _tag_files(payload, bag_info) if bagit else {}
    if out.suffix.lower() == ".zip":
        _write_zip(payload, tags, out, out.stem if bagit else "")
    else:
        movable = move and not left_out and all(item.links == 1 for item in payload)
        _write_folder(payload, tags, out, bagit, result_dir if movable else None)
    return out


def _payload(result_dir: Path, with_digests: bool, left_out: list[str]) -> Iterator[_Payload]:
    cache = DigestCache.load(result_dir) if with_digests else None
    for relpath, entry in _files(os.fspath(result_dir), left_out):
        if entry.is_symlink():
            raise ValueError(f"{entry.path}: a link in the result folder; refusing to package it")
        stat = entry.stat(follow_symlinks=False)
        if not S_ISREG(stat.st_mode):  # a pipe or a device: reading it would never end
            raise ValueError(f"{entry.path}: not a regular file in the result folder; "
                             "refusing to package it")
        sha = cache.digest(relpath, stat).sha512 if cache else None
        yield _Payload(relpath, entry.path, stat.st_size, sha, stat.st_nlink)


def _files(top: str, left_out: list[str]) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """The files under ``top`` as ``os.walk`` finds them: each folder's files by name,
    then its sub-folders by name; links to folders listed as neither, unreadable folders
    left out (their paths added to ``left_out``). One listing per folder; a file's
    ``stat`` is its entry's."""
    pending = [(top, "")]  # folders to list, the next one last
    while pending:
        folder, relpath = pending.pop()
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=_name)
        except OSError:
            left_out.append(folder)
            continue
        folders = []
        for entry in entries:
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if not is_dir:
                yield relpath + entry.name, entry
            elif not entry.is_symlink():
                folders.append((entry.path, f"{relpath}{entry.name}/"))
            else:
                left_out.append(entry.path)
        pending.extend(reversed(folders))


def _name(entry: os.DirEntry[str]) -> str:
    return entry.name


def _tag_files(payload: list[_Payload], bag_info: Mapping[str, str]) -> dict[str, bytes]:
    manifest = "".join(f"{item.sha512}  data/{_encode(item.relpath)}\n" for item in payload)
    info = [
        f"{key}: {_one_line(value)}"
        for key, value in bag_info.items()
        if key.lower() not in _COMPUTED
    ]
    info += [
        f"Bagging-Date: {date.today().isoformat()}",
        f"Payload-Oxum: {sum(item.size for item in payload)}.{len(payload)}",
        "Bag-Software-Agent: cratebridge",
    ]
    tags = {
        "bagit.txt": _BAGIT_TXT.encode(),
        "bag-info.txt": ("\n".join(info) + "\n").encode(),
        "manifest-sha512.txt": manifest.encode(),
    }
    tags["tagmanifest-sha512.txt"] = "".join(
        f"{hashlib.sha512(data).hexdigest()}  {name}\n" for name, data in tags.items()
    ).encode()
    return tags


def _write_zip(payload: list[_Payload], tags: dict[str, bytes], out: Path, top: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.tmp-")
    os.close(handle)
    tmp = Path(name)
    base = f"{top}/" if top else ""
    data = f"{base}data/" if tags else base
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
            for tag, content in tags.items():
                zf.writestr(base + tag, content)
            for item in payload:
                zf.write(item.path, data + item.relpath)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_folder(payload: list[_Payload], tags: dict[str, bytes], out: Path, bagit: bool,
                  movable: Path | None) -> None:
    """Write the crate at the folder ``out``: ``movable`` (the result folder) renamed
    into place when given and on ``out``'s filesystem, else each file copied."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: exists and is not an empty folder; refusing to overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    data = os.path.join(tmp, "data") if bagit else os.fspath(tmp)
    moved: Path | None = None
    try:
        if movable is not None and _moved(movable, data):
            moved = movable
        else:
            _copy_payload(payload, data)
        for tag, content in tags.items():
            (tmp / tag).write_bytes(content)
        os.replace(tmp, out)
    except BaseException:
        if moved is not None:  # the result folder goes back where it was
            os.rename(data, moved)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if moved is not None:  # its digests were read above; the folder they name is gone
        cache_path(moved).unlink(missing_ok=True)


def _moved(result_dir: Path, data: str) -> bool:
    """Rename ``result_dir`` to ``data`` (an empty folder, or none); False across filesystems."""
    try:
        os.rename(result_dir, data)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        return False
    return True


def _copy_payload(payload: list[_Payload], data: str) -> None:
    made: set[str] = set()  # the folders of ``data`` made, by their path relative to it
    for item in payload:
        _make_folders(data, posixpath.dirname(item.relpath), made)
        # a new file, never a link: intake refuses a crate whose files have two names
        copy_new(item.path, os.path.join(data, item.relpath))


def _make_folders(root: str, folder: str, made: set[str]) -> None:
    """Make ``root``/``folder`` and the folders missing above it, each once."""
    if folder in made:
        return
    if folder:
        _make_folders(root, posixpath.dirname(folder), made)
        os.mkdir(os.path.join(root, folder))
    else:
        os.makedirs(root, exist_ok=True)
    made.add(folder)


def _encode(relpath: str) -> str:
    """Percent-encode what a BagIt manifest line cannot hold (RFC 8493 §2.1.3)."""
    return relpath.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _one_line(value: str) -> str:
    return " ".join(value.split())

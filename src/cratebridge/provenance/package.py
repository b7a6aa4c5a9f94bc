"""Writes a result folder out as a folder or a ZIP, optionally as a BagIt bag, atomically.

The output is built in a hidden temporary sibling of ``out`` and moved into
place with one rename, so a failure never leaves a half-written ``out``.
BagIt manifests reuse the sha-512 digests the builder computed while copying.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from types import MappingProxyType

from cratebridge.provenance.digests import DigestCache

__all__ = ["write_result"]

_NO_INFO: Mapping[str, str] = MappingProxyType({})
_COMPUTED = {"bagging-date", "payload-oxum", "bag-software-agent"}
_BAGIT_TXT = "BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n"


@dataclass(frozen=True)
class _Payload:
    relpath: str
    path: Path
    size: int
    sha512: str | None


def write_result(
    result_dir: Path, out: Path, *, bagit: bool, bag_info: Mapping[str, str] = _NO_INFO
) -> Path:
    """Write ``result_dir`` to ``out`` (a folder, or a ZIP when ``out`` ends ``.zip``).

    With ``bagit`` the crate becomes the payload (``data/``) of a BagIt 1.0 bag
    with sha-512 manifests; ``bag_info`` entries (such as the request's
    ``External-Identifier``) are kept in ``bag-info.txt``. A ZIP holds the bag
    in one top-level folder named after the ZIP, or the crate at its root when
    not a bag. A folder ``out`` must be absent or empty (:class:`FileExistsError`);
    a ZIP ``out`` is replaced. Returns ``out``.
    """
    if not result_dir.is_dir():
        raise FileNotFoundError(f"{result_dir}: no result folder to write")
    payload = list(_payload(result_dir, bagit))
    tags = _tag_files(payload, bag_info) if bagit else {}
    if out.suffix.lower() == ".zip":
        _write_zip(payload, tags, out, out.stem if bagit else "")
    else:
        _write_folder(payload, tags, out, bagit)
    return out


def _payload(result_dir: Path, with_digests: bool) -> Iterator[_Payload]:
    cache = DigestCache.load(result_dir) if with_digests else None
    for dirpath, dirnames, filenames in os.walk(result_dir):
        dirnames.sort()
        here = Path(dirpath)
        for name in sorted(filenames):
            path = here / name
            if path.is_symlink():
                raise ValueError(f"{path}: a link in the result folder; refusing to package it")
            relpath = path.relative_to(result_dir).as_posix()
            stat = path.stat()
            sha = cache.digest(relpath, stat).sha512 if cache else None
            yield _Payload(relpath, path, stat.st_size, sha)


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


def _write_folder(payload: list[_Payload], tags: dict[str, bytes], out: Path, bagit: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: exists and is not an empty folder; refusing to overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    data = tmp / "data" if bagit else tmp
    try:
        for item in payload:
            target = data / item.relpath
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(item.path, target)
        for tag, content in tags.items():
            (tmp / tag).write_bytes(content)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _encode(relpath: str) -> str:
    """Percent-encode what a BagIt manifest line cannot hold (RFC 8493 §2.1.3)."""
    return relpath.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _one_line(value: str) -> str:
    return " ".join(value.split())

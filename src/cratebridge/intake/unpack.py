"""Safe unpacking of an untrusted request crate (a zip or a folder) into the run folder.

This module finds the crate in what was unpacked; the work is split by what it reads:
:mod:`~cratebridge.intake._limits` (the limits and the path rules),
:mod:`~cratebridge.intake._zipread` (a zip), :mod:`~cratebridge.intake._folder` (a folder)
and :mod:`~cratebridge.intake._writer` (the only code that writes, never through a link).
Every name and declared size is checked before anything is written, and a refusal
removes what was written, so nothing half-made is left behind.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cratebridge.errors import BagItError, CrateRejected, MetadataError, UnsafeCrate, UsageError
from cratebridge.intake._folder import copy_folder
from cratebridge.intake._limits import IntakeLimits, safe_relative_path
from cratebridge.intake._writer import Writer as _Writer
from cratebridge.intake._zipread import extract_zip
from cratebridge.intake.bag import read_bag_info

__all__ = ["IntakeLimits", "OpenedCrate", "open_crate", "safe_relative_path"]

METADATA_NAME = "ro-crate-metadata.json"
# Top-level entries that archivers add and that say nothing about the layout.
_ARCHIVER_NOISE = frozenset({"__MACOSX", ".DS_Store"})


@dataclass(frozen=True)
class OpenedCrate:
    """A request crate unpacked into the run folder.

    ``root`` is the folder holding ``ro-crate-metadata.json``; ``bag_dir`` is the
    bag's folder (``root`` is then ``bag_dir / "data"``) or ``None`` without BagIt.
    ``bag_info`` is ``bag-info.txt`` as read, not yet verified: call
    :func:`cratebridge.intake.bag.verify_bag` on ``bag_dir`` before trusting the payload.
    ``digests`` is the sha-512 (lower-case hex) of every payload file as it was
    written, keyed by its path in the bag (``data/...``), empty without BagIt: pass
    it as ``verify_bag(bag_dir, known=digests)`` so the payload is not read again.
    """

    root: Path
    bag_dir: Path | None
    bag_info: dict[str, str] = field(default_factory=dict)
    digests: Mapping[str, str] = field(default_factory=dict)

    @property
    def bagit(self) -> bool:
        """True when the crate arrived as a BagIt bag."""
        return self.bag_dir is not None


def open_crate(source: Path, dest: Path, limits: IntakeLimits | None = None) -> OpenedCrate:
    """Unpack ``source`` (a ``.zip`` or a folder) into ``dest`` and find the crate in it.

    ``dest`` must not exist or be an empty folder. Accepted layouts: one BagIt bag
    in a single top-level folder, a bag at the root, or a plain RO-Crate with
    ``ro-crate-metadata.json`` at the root or in a single top-level folder. A bag is
    found but not verified here (hashing is :func:`cratebridge.intake.bag.verify_bag`'s
    job, so ``validate`` can report bag problems and metadata problems together).

    Raises :class:`UnsafeCrate` for anything that could escape ``dest`` or fill the
    disk, :class:`CrateRejected` (or a subclass) for anything else; on any refusal
    ``dest`` is removed, so nothing half-made is left behind.
    """
    limits = limits or IntakeLimits()
    if source.is_dir() and dest.resolve().is_relative_to(source.resolve()):
        raise UsageError(
            "the run folder would be inside the crate folder it unpacks; set [run] "
            "runs_dir (or CRATEBRIDGE_RUNS_DIR) outside the crate", where=str(source))
    _prepare_dest(dest)
    try:
        with _Writer(dest, limits, str(source)) as writer:
            if source.is_dir():
                copy_folder(source, writer)
            elif source.is_file():
                extract_zip(source, writer)
            else:
                raise CrateRejected(
                    "the request crate does not exist or is neither a .zip file nor a "
                    "folder; pass the path of the crate as handed over by the TRE agent",
                    where=str(source),
                )
        return _locate(dest, limits, writer.digests)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


# -- destination ---------------------------------------------------------------------------


def _prepare_dest(dest: Path) -> None:
    if dest.is_symlink():
        raise UnsafeCrate(
            "the unpack folder is a symbolic link; pass a real folder", where=str(dest)
        )
    if dest.exists():
        if not dest.is_dir() or any(dest.iterdir()):
            raise CrateRejected(
                "the unpack folder already exists and is not empty; use a fresh run folder",
                where=str(dest),
            )
    else:
        dest.mkdir(parents=True)


# -- layout --------------------------------------------------------------------------------


def _locate(dest: Path, limits: IntakeLimits, digests: dict[str, str]) -> OpenedCrate:
    """Find the bag or crate in the unpacked tree; keep the digests of a bag's payload."""
    folder = _crate_folder(dest)
    if (folder / "bagit.txt").is_file():
        root = folder / "data"
        _check_metadata_file(root / METADATA_NAME, limits, bag=True)
        bag_info = read_bag_info(folder)
        return OpenedCrate(
            root=root,
            bag_dir=folder,
            bag_info=bag_info,
            digests=_payload_digests(digests, folder.relative_to(dest).as_posix()),
        )
    if _looks_like_bag(folder):
        raise BagItError(
            "the crate looks like a BagIt bag (data/ and manifest files) but bagit.txt is "
            "missing; ask the submitter to rebuild the bag",
            where=str(folder / "bagit.txt"),
        )
    _check_metadata_file(folder / METADATA_NAME, limits, bag=False)
    return OpenedCrate(root=folder, bag_dir=None)


def _payload_digests(digests: dict[str, str], bag: str) -> dict[str, str]:
    """Move the entries of ``digests`` (keyed by path under ``dest``) for the files under
    ``bag/data/`` into a new dict keyed by their path in the bag; ``digests`` is emptied,
    so the two are never both whole in memory."""
    prefix = "" if bag == "." else f"{bag}/"
    payload = f"{prefix}data/"
    moved: dict[str, str] = {}
    for rel in list(digests):
        digest = digests.pop(rel)
        if rel.startswith(payload):
            moved[rel[len(prefix) :]] = digest
    return moved


def _looks_like_bag(folder: Path) -> bool:
    has_manifest = any(folder.glob("manifest-*.txt"))
    return has_manifest and not (folder / METADATA_NAME).exists()


def _crate_folder(dest: Path) -> Path:
    if (dest / "bagit.txt").exists() or (dest / METADATA_NAME).exists():
        return dest
    entries = [e for e in dest.iterdir() if e.name not in _ARCHIVER_NOISE]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    raise MetadataError(
        "no ro-crate-metadata.json or bagit.txt at the top of the crate or in a single "
        "top-level folder; send one BagIt bag or one RO-Crate per request",
        where=dest.name,
    )


def _check_metadata_file(path: Path, limits: IntakeLimits, *, bag: bool) -> None:
    if not path.is_file():
        hint = "in the bag's data/ folder" if bag else "next to the crate's files"
        raise MetadataError(
            f"{METADATA_NAME} is missing; a request crate needs it {hint}", where=str(path)
        )
    size = path.stat().st_size
    if size > limits.max_metadata_bytes:
        raise UnsafeCrate(
            f"{METADATA_NAME} is {size} bytes, more than the limit of "
            f"{limits.max_metadata_bytes}; ask the operator to raise intake.max_metadata_bytes",
            where=str(path),
        )

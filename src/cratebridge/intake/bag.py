"""BagIt verification of a request bag: declaration, manifests, checksums and Payload-Oxum.

Every problem is collected and reported at once, so an operator can fix a bag in
one round. Every file in the bag must be covered: payload files by every payload
manifest, files beside ``data/`` by every tag manifest (or, in a bag without one, be
one of the standard tag files), so nothing unchecked rides along with a verified bag.

Files are hashed in 1 MiB reads, every algorithm in one pass, two files at a time
(hashlib releases the GIL), so memory stays flat for large payloads. The sha-512 of
payload files that unpacking already took (``known``) is not taken again.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from cratebridge.errors import BagItError

__all__ = ["read_bag_info", "verify_bag"]

_CHUNK = 1 << 20
_HASH_THREADS = 2
_MAX_LISTED = 20
_VERSIONS = frozenset({"0.93", "0.94", "0.95", "0.96", "0.97", "1.0"})
_ALGORITHMS = frozenset({"md5", "sha1", "sha224", "sha256", "sha384", "sha512"})
_MANIFEST = re.compile(r"^(tag)?manifest-([A-Za-z0-9]+)\.txt$")
_LINE = re.compile(r"^(\S+)[ \t]+(.+)$")
_DECODE = {"%0D": "\r", "%0A": "\n", "%25": "%", "%0d": "\r", "%0a": "\n"}
_ENCODED = re.compile(r"%0[DdAa]|%25")
_DRIVE = re.compile(r"^[A-Za-z]:")
# What may sit beside data/ in a bag without a tag manifest (manifests aside).
_STANDARD_TAG_FILES = frozenset({"bagit.txt", "bag-info.txt", "fetch.txt"})


@dataclass
class _Manifests:
    """The parsed manifests of a bag: algorithm -> path -> expected hex digest."""

    payload: dict[str, dict[str, str]] = field(default_factory=dict)
    tag: dict[str, dict[str, str]] = field(default_factory=dict)


def verify_bag(
    bag_dir: Path,
    *,
    required_algorithms: Iterable[str] = ("sha512",),
    known: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Verify the BagIt bag in ``bag_dir`` and return its ``bag-info.txt`` fields.

    Checks ``bagit.txt``; that there is at least one payload manifest and one for
    each of ``required_algorithms`` (Five Safes bags use sha-512); that every file
    under ``data/`` is listed in every payload manifest and every listed file exists;
    every payload and tag-manifest checksum; that every file beside ``data/`` is
    listed in every tag manifest (without a tag manifest: that it is ``bagit.txt``,
    ``bag-info.txt``, ``fetch.txt`` or a manifest); and ``Payload-Oxum`` when present.

    ``known`` maps payload paths (``data/...``) to the sha-512 (hex) of the file as
    :func:`cratebridge.intake.unpack.open_crate` wrote it (``OpenedCrate.digests``);
    those files are not read again for their sha-512. Any other algorithm, and any
    file not in ``known``, is hashed from the file. The problems reported are the same
    either way.

    Raises :class:`BagItError` listing every problem found (the first
    ``_MAX_LISTED`` of them), each naming the file and what to do.
    """
    problems: list[str] = []
    _check_declaration(bag_dir, problems)
    bag_info = _read_bag_info(bag_dir, problems)
    _check_fetch(bag_dir, problems)
    manifests = _read_manifests(bag_dir, problems)
    _check_algorithms(manifests, required_algorithms, problems)
    payload = _payload_files(bag_dir, problems)
    _check_completeness(manifests, payload, problems)
    _check_tag_files(bag_dir, manifests, problems)
    _check_digests(bag_dir, manifests, problems, known or {}, payload)
    _check_oxum(bag_info, payload, problems)
    if problems:
        raise BagItError(_summary(problems), where=str(bag_dir))
    return bag_info


def _summary(problems: list[str]) -> str:
    shown = [f"  - {p}" for p in problems[:_MAX_LISTED]]
    if len(problems) > _MAX_LISTED:
        shown.append(f"  ... and {len(problems) - _MAX_LISTED} more")
    noun = "problem" if len(problems) == 1 else "problems"
    return (
        f"the BagIt bag failed verification ({len(problems)} {noun}); "
        "ask the submitter to rebuild the bag:\n" + "\n".join(shown)
    )


# -- tag files -----------------------------------------------------------------------------


def _read_tag_file(path: Path, problems: list[str]) -> dict[str, str] | None:
    """Parse a ``Label: value`` tag file with indented continuation lines."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{path.name}: cannot be read as UTF-8 ({exc})")
        return {}
    fields: dict[str, str] = {}
    label: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if line[0] in " \t" and label is not None:
            fields[label] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if not sep:
            problems.append(f"{path.name} line {number}: expected 'Label: value', got {line!r}")
            continue
        label = name.strip()
        fields.setdefault(label, value.strip())
    return fields


def _check_declaration(bag_dir: Path, problems: list[str]) -> None:
    fields = _read_tag_file(bag_dir / "bagit.txt", problems)
    if fields is None:
        problems.append("bagit.txt is missing: this folder is not a BagIt bag")
        return
    version = fields.get("BagIt-Version")
    if version not in _VERSIONS:
        problems.append(f"bagit.txt: BagIt-Version {version!r} is not one of 0.93 to 1.0")
    encoding = fields.get("Tag-File-Character-Encoding", "").upper().replace("_", "-")
    if encoding != "UTF-8":
        problems.append(
            f"bagit.txt: Tag-File-Character-Encoding is {encoding or 'missing'!r}; "
            "cratebridge reads UTF-8 bags only"
        )


def _read_bag_info(bag_dir: Path, problems: list[str]) -> dict[str, str]:
    return _read_tag_file(bag_dir / "bag-info.txt", problems) or {}


def read_bag_info(bag_dir: Path) -> dict[str, str]:
    """``bag-info.txt`` of the bag in ``bag_dir`` as read, without verifying anything.

    Unreadable or malformed lines are skipped here; :func:`verify_bag` reports them.
    """
    return _read_bag_info(bag_dir, [])


def _check_fetch(bag_dir: Path, problems: list[str]) -> None:
    fetch = bag_dir / "fetch.txt"
    if fetch.is_file() and fetch.stat().st_size > 0:
        problems.append(
            "fetch.txt lists files to download; nothing is downloaded in a TRE, "
            "so put those files in the bag's payload"
        )


# -- manifests -----------------------------------------------------------------------------


def _read_manifests(bag_dir: Path, problems: list[str]) -> _Manifests:
    manifests = _Manifests()
    for path in sorted(bag_dir.iterdir()):
        match = _MANIFEST.match(path.name)
        if not match or not path.is_file():
            continue
        algorithm = match.group(2).lower()
        if algorithm not in _ALGORITHMS:
            problems.append(f"{path.name}: unknown checksum algorithm {algorithm!r}")
            continue
        target = manifests.tag if match.group(1) else manifests.payload
        target[algorithm] = _parse_manifest(path, is_tag=bool(match.group(1)), problems=problems)
    return manifests


def _parse_manifest(path: Path, *, is_tag: bool, problems: list[str]) -> dict[str, str]:
    entries: dict[str, str] = {}
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{path.name}: cannot be read as UTF-8 ({exc})")
        return entries
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        match = _LINE.match(line)
        if not match:
            problems.append(f"{path.name} line {number}: expected '<checksum> <path>'")
            continue
        rel = _manifest_path(match.group(2), path.name, number, is_tag, problems)
        if rel is not None:
            entries[rel] = match.group(1).lower()
    return entries


def _manifest_path(
    raw: str, manifest: str, number: int, is_tag: bool, problems: list[str]
) -> str | None:
    decoded = raw.strip()
    if "%" in decoded:
        decoded = _ENCODED.sub(lambda m: _DECODE[m.group(0)], decoded)
    parts = decoded.split("/")
    if decoded.startswith("/") or "\\" in decoded or ".." in parts or _DRIVE.match(decoded):
        problems.append(f"{manifest} line {number}: path {raw!r} points outside the bag")
        return None
    # As PurePosixPath would print it (no empty or '.' parts), without building one a line.
    rel = "/".join(part for part in parts if part and part != ".") or "."
    if not is_tag and not rel.startswith("data/"):
        problems.append(f"{manifest} line {number}: payload path {raw!r} is not under data/")
        return None
    return rel


def _check_algorithms(manifests: _Manifests, required: Iterable[str], problems: list[str]) -> None:
    if not manifests.payload:
        problems.append("no payload manifest (manifest-<algorithm>.txt) in the bag")
        return
    for algorithm in required:
        if algorithm not in manifests.payload:
            problems.append(
                f"manifest-{algorithm}.txt is missing; Five Safes crates need {algorithm} "
                f"checksums (found: {', '.join(sorted(manifests.payload))})"
            )


# -- payload -------------------------------------------------------------------------------


def _payload_files(bag_dir: Path, problems: list[str]) -> dict[str, int]:
    """Every regular file under ``data/`` with its size; links and special files are problems."""
    data = bag_dir / "data"
    files: dict[str, int] = {}
    if not data.is_dir():
        problems.append("data/ is missing: a bag keeps its payload in data/")
        return files
    for rel, entry in _files_under(data, bag_dir, problems):
        if entry.is_symlink() or not entry.is_file(follow_symlinks=False):
            problems.append(f"{rel}: is a link or special file; payloads hold regular files")
            continue
        files[rel] = entry.stat(follow_symlinks=False).st_size
    return files


def _files_under(
    top: Path, bag_dir: Path, problems: list[str], *, skip: str | None = None
) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """Every entry under ``top`` that is not a folder (links included, never followed),
    with its path in the bag; ``skip`` names a folder of ``top`` left out. A stack, not
    recursion, so a deep tree costs memory per folder, not a Python frame. Paths are
    joined as text: this runs once per file."""
    first = top.relative_to(bag_dir).as_posix()
    root = str(top)
    stack = [(root, "" if first == "." else f"{first}/")]
    while stack:
        folder, prefix = stack.pop()
        try:
            with os.scandir(folder) as scan:
                entries = sorted(scan, key=lambda e: e.name, reverse=True)
        except OSError as exc:
            problems.append(f"{prefix or './'}: cannot be listed ({exc.strerror})")
            continue
        for entry in entries:
            if folder == root and entry.name == skip:
                continue
            if entry.is_dir(follow_symlinks=False):
                stack.append((entry.path, f"{prefix}{entry.name}/"))
            else:
                yield f"{prefix}{entry.name}", entry


def _check_tag_files(bag_dir: Path, manifests: _Manifests, problems: list[str]) -> None:
    """Every file beside ``data/`` is listed in every tag manifest; a bag without one may
    hold only the standard tag files there. Tag manifests do not list themselves."""
    for rel, entry in _files_under(bag_dir, bag_dir, problems, skip="data"):
        match = _MANIFEST.match(rel)
        if match and match.group(1):
            continue
        if entry.is_symlink() or not entry.is_file(follow_symlinks=False):
            problems.append(f"{rel}: is a link or special file; a bag holds regular files")
        elif manifests.tag:
            for algorithm, entries in sorted(manifests.tag.items()):
                if rel not in entries:
                    problems.append(
                        f"{rel}: beside data/ but not listed in tagmanifest-{algorithm}.txt; "
                        "put it in data/ and the payload manifest, or remove it"
                    )
        elif not match and rel not in _STANDARD_TAG_FILES:
            problems.append(
                f"{rel}: beside data/ and covered by no manifest (the bag has no tag "
                "manifest); put it in data/ and the payload manifest, or remove it"
            )


def _check_completeness(
    manifests: _Manifests, payload: Mapping[str, int], problems: list[str]
) -> None:
    for algorithm, entries in sorted(manifests.payload.items()):
        name = f"manifest-{algorithm}.txt"
        for rel in sorted(set(payload) - set(entries)):
            problems.append(f"{rel}: in the payload but not listed in {name}")
        for rel in sorted(set(entries) - set(payload)):
            problems.append(f"{rel}: listed in {name} but missing from the bag")


def _check_digests(
    bag_dir: Path,
    manifests: _Manifests,
    problems: list[str],
    known: Mapping[str, str],
    payload: Mapping[str, int],
) -> None:
    """Compare every listed file's checksums; a payload file's sha-512 in ``known`` is used
    as it is, without reading the file (only files found in the payload, never tag files)."""
    wanted: dict[str, dict[str, str]] = {}  # path -> algorithm -> expected
    for group, prefix in ((manifests.payload, "manifest"), (manifests.tag, "tagmanifest")):
        for algorithm, entries in group.items():
            for rel, digest in entries.items():
                if prefix == "tagmanifest" and not (bag_dir / rel).is_file():
                    problems.append(f"{rel}: listed in tagmanifest-{algorithm}.txt but missing")
                    continue
                wanted.setdefault(rel, {})[algorithm] = digest
    # A payload file the walk found is a regular file: no need to ask the disk again.
    present = {
        rel: algs for rel, algs in wanted.items() if rel in payload or (bag_dir / rel).is_file()
    }

    def from_unpack(rel: str, expected: Mapping[str, str]) -> str | None:
        digest = known.get(rel) if rel in payload and "sha512" in expected else None
        return None if digest is None else digest.lower()

    # Only files with an algorithm still to compute go to the pool (in order), so a
    # payload whose sha-512 is all known costs neither a read nor a future per file.
    to_hash = (
        (rel, [a for a in expected if a != "sha512" or from_unpack(rel, expected) is None])
        for rel, expected in present.items()
    )
    with ThreadPoolExecutor(max_workers=_HASH_THREADS) as pool:
        hashed = pool.map(
            lambda item: _hash_file(bag_dir / item[0], item[1]),
            [(rel, algorithms) for rel, algorithms in to_hash if algorithms],
        )
        for rel, expected in present.items():
            unpacked = from_unpack(rel, expected)
            actual: dict[str, str] | OSError = {}
            if unpacked is None or len(expected) > 1:
                actual = next(hashed)
            if unpacked is not None and not isinstance(actual, OSError):
                actual = {**actual, "sha512": unpacked}
            _compare(rel, expected, actual, problems)


def _hash_file(path: Path, algorithms: Iterable[str]) -> dict[str, str] | OSError:
    hashers = {algorithm: hashlib.new(algorithm) for algorithm in algorithms}
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    try:
        with open(path, "rb", buffering=0) as stream:
            while size := stream.readinto(buffer):
                chunk = view[:size]
                for hasher in hashers.values():
                    hasher.update(chunk)
    except OSError as exc:
        return exc
    return {algorithm: hasher.hexdigest() for algorithm, hasher in hashers.items()}


def _compare(
    rel: str, expected: Mapping[str, str], actual: dict[str, str] | OSError, problems: list[str]
) -> None:
    if isinstance(actual, OSError):
        problems.append(f"{rel}: cannot be read ({actual.strerror})")
        return
    for algorithm, digest in sorted(expected.items()):
        if actual[algorithm] != digest:
            problems.append(
                f"{rel}: {algorithm} checksum mismatch, manifest says {digest}, "
                f"file has {actual[algorithm]}"
            )


def _check_oxum(
    bag_info: Mapping[str, str], payload: Mapping[str, int], problems: list[str]
) -> None:
    oxum = bag_info.get("Payload-Oxum")
    if oxum is None:
        return
    match = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", oxum)
    if not match:
        problems.append(f"bag-info.txt: Payload-Oxum {oxum!r} is not '<octets>.<files>'")
        return
    octets, count = int(match.group(1)), int(match.group(2))
    actual_octets, actual_count = sum(payload.values()), len(payload)
    if (octets, count) != (actual_octets, actual_count):
        problems.append(
            f"bag-info.txt: Payload-Oxum says {octets} bytes in {count} files, "
            f"the payload has {actual_octets} bytes in {actual_count} files"
        )

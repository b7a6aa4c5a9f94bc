"""``cratebridge verify``: re-run a result crate's request and compare its outputs with the record.

The result crate is untrusted input like a request: it is unpacked by the same
intake, its request is rebuilt in a private folder (the action back to
``PotentialActionStatus``, outputs, logs and provenance removed) and run
through :func:`cratebridge.pipeline.run`; both crates are then read by the one
reader below and compared output by output (sha-512) and step by step (image id).
"""

from __future__ import annotations

import copy
import enum
import json
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote

from cratebridge.config import Config, load_config
from cratebridge.engines.interface import ProgressEvent
from cratebridge.engines.record import RunStatus
from cratebridge.engines.registry import Registry
from cratebridge.errors import (
    CrateRejected,
    MetadataError,
    OutputsDiffer,
    UnsupportedCrate,
    UsageError,
    WorkflowFailed,
)
from cratebridge.intake import IntakeLimits, open_crate, verify_bag
from cratebridge.intake.parse import CrateGraph, Entity, ids, load_graph, types
from cratebridge.intake.unpack import METADATA_NAME, safe_relative_path
from cratebridge.pipeline import RunOutcome, new_run_id, run
from cratebridge.provenance.files import hash_file
from cratebridge.provenance.fivesafes import OWN_ID_PREFIX
from cratebridge.provenance.package import write_result

__all__ = ["ImageChange", "OutputCheck", "OutputStatus", "VerifyOutcome", "VerifyStatus",
           "verify"]

_SCHEMA = "http://schema.org/"
_POTENTIAL = _SCHEMA + "PotentialActionStatus"
_COMPLETED = _SCHEMA + "CompletedActionStatus"
_FAILED = _SCHEMA + "FailedActionStatus"
_FIVE_SAFES = ("https://w3id.org/5s-crate/", "https://w3id.org/trusted-wfrun-crate/")
_SHA512 = re.compile(r"^[0-9a-f]{128}$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
# what `run` adds to the request's CreateAction
_RUN_KEYS = ("startTime", "endTime", "result", "error", "subjectOf", "additionalProperty")
_PREVIEW = "ro-crate-preview.html"


class OutputStatus(enum.Enum):
    IDENTICAL = "identical"
    DIFFERENT = "different"
    MISSING = "missing"  # recorded, not made by the re-run
    EXTRA = "extra"  # made by the re-run only


class VerifyStatus(enum.Enum):
    IDENTICAL = "identical"
    DIFFERENT = "different"  # an output or a step's image differs (exit 7)
    FAILED = "failed"  # the re-run itself failed (exit 1)


@dataclass(frozen=True)
class OutputCheck:
    """One output: a file's path in the crate (``kind`` "file"), or a value's parameter name.

    ``recorded`` and ``new`` are sha-512 digests for files, JSON text for values.
    """

    path: str
    kind: str
    status: OutputStatus
    recorded: str | None
    new: str | None


@dataclass(frozen=True)
class ImageChange:
    """A step whose image's local id in the re-run is not the recorded one."""

    step: str
    image: str
    recorded_id: str
    new_id: str


@dataclass(frozen=True)
class VerifyOutcome:
    """What ``cratebridge verify`` found; ``kept`` is the verify folder when it was kept."""

    result: Path
    status: VerifyStatus
    outputs: tuple[OutputCheck, ...]
    images: tuple[ImageChange, ...]
    rerun: RunOutcome
    rerun_result: Path | None
    kept: Path | None

    @property
    def exit_code(self) -> int:
        if self.status is VerifyStatus.IDENTICAL:
            return 0
        failed = self.status is VerifyStatus.FAILED
        return WorkflowFailed.exit_code if failed else OutputsDiffer.exit_code

    def check(self) -> None:
        """Raise :class:`OutputsDiffer` or :class:`WorkflowFailed` unless identical."""
        where = str(self.rerun_result) if self.rerun_result else None
        if self.status is VerifyStatus.FAILED:
            raise WorkflowFailed(f"the re-run failed: {self.rerun.record.error}",
                                 result_path=where)
        if self.status is VerifyStatus.DIFFERENT:
            named = [o.path for o in self.outputs if o.status is not OutputStatus.IDENTICAL]
            named += [f"image of step {i.step}" for i in self.images]
            raise OutputsDiffer(f"not reproduced: {', '.join(named)}", result_path=where)

    def to_json(self) -> dict[str, Any]:
        """The document ``cratebridge verify --json`` prints."""
        record = self.rerun.record
        return {
            "status": self.status.value, "exit_code": self.exit_code, "result": str(self.result),
            "outputs": [_output_json(o) for o in self.outputs],
            "images": [{"step": i.step, "image": i.image, "recorded_id": i.recorded_id,
                        "new_id": i.new_id} for i in self.images],
            "rerun": {"run_id": self.rerun.run_id, "status": record.status.value,
                      "error": record.error, "run_dir": str(self.rerun.run_dir),
                      "result": str(self.rerun_result) if self.rerun_result else None},
            "kept": str(self.kept) if self.kept else None,
        }


def _output_json(check: OutputCheck) -> dict[str, Any]:
    word = "sha512" if check.kind == "file" else "value"
    return {"path": check.path, "kind": check.kind, "status": check.status.value,
            f"recorded_{word}": check.recorded, f"new_{word}": check.new}


# -- reading a result crate ---------------------------------------------------------------


@dataclass(frozen=True)
class _Result:
    """A result crate as read: its outer action, outputs, and each step's images."""

    root: Path
    graph: CrateGraph
    action: Entity
    status: str | None
    outputs: Mapping[str, tuple[str, str]]  # path or name -> (kind, sha512 or JSON text)
    images: Mapping[tuple[str, str], frozenset[str]]  # (step, image) -> image ids
    generated: tuple[str, ...]  # entities `run` added: outputs, logs, provenance, labels
    run_folders: tuple[str, ...] = ()  # the run crates' folders (subjectOf the action)


def _read(root: Path, limits: IntakeLimits) -> _Result:
    """Read the result crate unpacked at ``root``; refuse what `run` cannot have written."""
    graph = load_graph(root / METADATA_NAME, max_bytes=limits.max_metadata_bytes)
    if not any(c.startswith(_FIVE_SAFES) for c in ids(graph.root.get("conformsTo"))):
        raise UnsupportedCrate(
            "not the result of a Five Safes request (the root does not conform to "
            "https://w3id.org/5s-crate/); verify re-runs Five Safes result crates only",
            where=graph.where(graph.root_id))
    action = _outer_action(graph)
    outputs: dict[str, tuple[str, str]] = {}
    for rid in ids(action.get("result")):
        outputs.update(_output(graph, root, rid))
    about = str(action["@id"])
    logs = [e for e, n in graph.entities.items() if "File" in types(n)
            and about in ids(n.get("about")) and e not in ids(action.get("object"))]
    folders = ids(action.get("subjectOf"))
    inner = [m for f in folders for m in ids((graph.get(f) or {}).get("subjectOf"))]
    generated = (*ids(action.get("result")), *logs, *folders, *inner,
                 *ids(action.get("additionalProperty")))
    return _Result(root, graph, action, _status(action), outputs,
                   _images(graph, root, folders, limits), generated, tuple(folders))


def _outer_action(graph: CrateGraph) -> Entity:
    main = ids(graph.root.get("mainEntity"))
    actions = [e for e in graph.entities.values() if "CreateAction" in types(e)
               and (not main or main[0] in ids(e.get("instrument")))]
    done = [a for a in actions if _status(a) in (_COMPLETED, _FAILED)]
    if len(done) > 1:
        raise MetadataError(f"{len(done)} finished CreateActions run the workflow; a result "
                            "crate has one", where=graph.source)
    if done:
        return done[0]
    if any(_status(a) in (None, _POTENTIAL) for a in actions):
        raise UnsupportedCrate(
            "this is a request crate, not a result crate: its CreateAction has not run "
            "(PotentialActionStatus) and records no outputs; run it with `cratebridge run` "
            "and verify the result crate that writes", where=graph.source)
    raise MetadataError("no finished CreateAction (CompletedActionStatus) with the workflow "
                        "as instrument: not a result crate", where=graph.source)


def _status(action: Entity) -> str | None:
    found = ids(action.get("actionStatus"))
    return found[0].replace("https://schema.org/", _SCHEMA) if found else None


def _local(graph: CrateGraph, root: Path, entity_id: str) -> Path:
    """The path of a local data entity inside ``root``; an id that would leave it is refused."""
    where = graph.where(entity_id)
    if _SCHEME.match(entity_id) or entity_id.startswith(("#", "_:")):
        raise MetadataError("a recorded file must be a file of the crate", where=where)
    paths = []
    for name in dict.fromkeys((unquote(entity_id), entity_id)):  # the URI's path; or as is
        rel = safe_relative_path(name.rstrip("/"), where=where)
        if not rel.parts or rel == PurePosixPath(METADATA_NAME):
            raise MetadataError("a recorded file cannot be the crate itself", where=where)
        paths.append(root / str(rel))
    return next((p for p in paths if p.exists()), paths[0])


def _output(graph: CrateGraph, root: Path, rid: str) -> Iterator[tuple[str, tuple[str, str]]]:
    """One recorded output: a file with its sha-512, a folder's files, or a value."""
    entity = graph.require(rid, "output")
    kinds = types(entity)
    if "PropertyValue" in kinds:
        name = str(entity.get("name") or rid)
        yield name, ("value", json.dumps(entity.get("value"), sort_keys=True))
        return
    if not kinds & {"File", "Dataset"}:
        raise MetadataError("an output must be a File, a Dataset or a PropertyValue",
                            where=graph.where(rid))
    path = _local(graph, root, rid)
    if not (path.is_file() or (path.is_dir() and "Dataset" in kinds)):
        raise CrateRejected("the recorded output is not in the crate; verify needs the "
                            "result crate as cratebridge wrote it", where=graph.where(rid))
    if path.is_dir():  # a folder's files have no sha512 of their own: those of the crate
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            yield file.relative_to(root).as_posix(), ("file", hash_file(file).sha512)
        return
    want = entity.get("sha512")
    if not isinstance(want, str) or not _SHA512.match(want):
        raise MetadataError("the output has no sha512, so there is nothing to compare it with",
                            where=graph.where(rid))
    if hash_file(path).sha512 != want:
        raise CrateRejected("the file's sha512 is not the one recorded: the result crate was "
                            "changed after it was written; verify needs it as cratebridge "
                            "wrote it", where=graph.where(rid))
    yield path.relative_to(root).as_posix(), ("file", want)


def _images(graph: CrateGraph, root: Path, folders: list[str], limits: IntakeLimits,
            ) -> dict[tuple[str, str], frozenset[str]]:
    """Each step's images and their local ids, from the nested provenance crate.

    A step is named by its ``HowToStep`` (the ControlAction's instrument).
    """
    found: dict[tuple[str, str], set[str]] = {}
    for folder in folders:
        meta = _local(graph, root, folder) / METADATA_NAME
        if not meta.is_file():
            continue
        inner = load_graph(meta, max_bytes=limits.max_metadata_bytes,
                           label=f"{folder.rstrip('/')}/{METADATA_NAME}")
        steps = {o: str((inner.get(i) or {}).get("name") or i)
                 for c in inner.entities.values() if "ControlAction" in types(c)
                 for o in ids(c.get("object")) for i in ids(c.get("instrument"))[:1]}
        for aid, action in inner.entities.items():
            for image_id in ids(action.get("containerImage"))[:1]:
                image = inner.get(image_id) or {}
                key = (steps.get(aid) or str(action.get("name") or aid), _image_name(image))
                sha = image.get("sha256")
                found.setdefault(key, set()).add(f"sha256:{sha}" if sha else "unknown")
    return {k: frozenset(v) for k, v in found.items()}


def _image_name(image: Entity) -> str:
    name, tag, registry = image.get("name"), image.get("tag"), image.get("registry")
    text = f"{name}:{tag}" if tag else str(name)
    return text if registry in (None, "docker.io") else f"{registry}/{text}"


# -- the request, rebuilt -----------------------------------------------------------------


def _rebuild_request(found: _Result) -> None:
    """Turn the unpacked result at ``found.root`` back into its request, in place."""
    graph, root = found.graph, found.root
    keep = {*ids(found.action.get("object")), *ids(graph.root.get("mainEntity"))}
    doomed = [e for e in found.generated if e in graph.entities and not _SCHEME.match(e)
              and not e.startswith(("#", "_:"))]
    for entity_id in doomed:
        path = _local(graph, root, entity_id)
        if entity_id in found.run_folders and any(
                unquote(k).startswith(unquote(entity_id)) for k in keep):
            # the run crate's folder holds the request's files too: keep them, drop the
            # run crate's own metadata and page (its other files are the request's or
            # the run's records, harmless beside a request)
            for made in (METADATA_NAME, _PREVIEW):
                (path / made).unlink(missing_ok=True)
            continue
        for kept in keep:
            if _overlap(unquote(entity_id), unquote(kept)):
                raise MetadataError(f"the recorded {entity_id!r} overlaps the request's "
                                    f"{kept!r}: not a result crate cratebridge wrote",
                                    where=graph.where(entity_id))
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        _prune(path.parent, root)
    # what the run added of its own (checks, the disclosure check to come) goes too
    gone = set(found.generated) | {e for e in graph.entities if e.startswith(OWN_ID_PREFIX)}
    document = copy.deepcopy(graph.document)
    listed = document["@graph"]
    assert isinstance(listed, list)  # load_graph checked it
    nodes = [n for n in listed if isinstance(n, dict) and n["@id"] not in gone]
    for node in nodes:
        if node["@id"] == found.action["@id"]:
            for key in _RUN_KEYS:
                node.pop(key, None)
            node["actionStatus"] = _POTENTIAL
        elif node["@id"] == graph.root_id:
            for key in ("hasPart", "mentions"):
                if key in node:
                    node[key] = [{"@id": p} for p in ids(node[key]) if p not in gone]
    document["@graph"] = nodes
    if (root / _PREVIEW).is_file():  # the result's page, not the request's
        (root / _PREVIEW).unlink()
    (root / METADATA_NAME).write_text(json.dumps(document, indent=2), encoding="utf-8")


def _overlap(one: str, other: str) -> bool:
    a, b = one.rstrip("/") + "/", other.rstrip("/") + "/"
    return a.startswith(b) or b.startswith(a)


def _prune(folder: Path, root: Path) -> None:
    """Remove the folders that removing a file left empty, up to ``root``."""
    while folder != root and folder.is_relative_to(root) and folder.is_dir() \
            and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent


# -- verify -------------------------------------------------------------------------------


def verify(result: Path, out: Path | None = None, *, engine: str | None = None,
           config: Config | Path | None = None, registry: Registry | None = None,
           progress: Callable[[ProgressEvent], None] | None = None) -> VerifyOutcome:
    """Re-run the request of the result crate ``result``; compare outputs and images.

    The re-run's result crate is written at ``out`` (a folder or ``.zip``);
    without ``out``, in the verify folder (``runs_dir/verify-<id>/result-crate``).
    The verify folder is removed when everything is identical and kept
    otherwise. Raises :class:`UsageError`, :class:`CrateRejected` (the result
    is not a result crate of a Five Safes request, is unsafe, or was changed
    after it was written), and whatever :func:`cratebridge.pipeline.run` raises.
    """
    cfg = config if isinstance(config, Config) else load_config(config)
    result = Path(result).absolute()
    if not result.exists():
        raise UsageError("no such file or folder", where=str(result))
    if out is not None:
        _check_out(Path(out), result)
    folder = cfg.runs_dir / f"verify-{new_run_id()}"
    folder.mkdir(parents=True, mode=0o700)
    try:
        recorded = _intake(result, folder, cfg)
        target = Path(out).absolute() if out is not None else folder / "result-crate"
        rerun = run(folder / "request", target, engine=engine, config=cfg, registry=registry,
                    progress=progress, labels={"verify-of": _label(result)})
        fresh = _read_rerun(rerun, folder / "rerun", cfg.intake)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    outputs = _compare(recorded.outputs, fresh.outputs if fresh else {})
    images = _image_changes(recorded.images, fresh.images if fresh else {})
    if rerun.status is not RunStatus.COMPLETED:
        status = VerifyStatus.FAILED
    elif images or any(o.status is not OutputStatus.IDENTICAL for o in outputs):
        status = VerifyStatus.DIFFERENT
    else:
        status = VerifyStatus.IDENTICAL
    kept: Path | None = folder
    if status is VerifyStatus.IDENTICAL:
        shutil.rmtree(folder, ignore_errors=True)
        kept = None
    written = rerun.result if out is not None or kept else None
    return VerifyOutcome(result, status, outputs, images, rerun, written, kept)


def _label(result: Path) -> str:  # a label is printable (pipeline checks it)
    return "".join(c for c in result.name if c.isprintable())[:1024] or "result"


def _check_out(out: Path, result: Path) -> None:
    if out.resolve().is_relative_to(result.resolve()):
        raise UsageError("--out would overwrite the result crate being verified; write the "
                         "re-run's result crate elsewhere", where=str(out))
    if out.is_dir() and any(out.iterdir()):
        raise UsageError("the result folder exists and is not empty", where=str(out))


def _intake(result: Path, folder: Path, cfg: Config) -> _Result:
    """Unpack and check the result; write its request, rebuilt, to ``folder/request``."""
    opened = open_crate(result, folder / "result", cfg.intake)
    bag_info = verify_bag(opened.bag_dir, known=opened.digests) if opened.bag_dir else {}
    found = _read(opened.root, cfg.intake)
    if found.status == _FAILED:
        raise UnsupportedCrate(
            f"the recorded run failed ({found.action.get('error')}): there are no outputs "
            "to reproduce", where=found.graph.where(str(found.action["@id"])))
    if not found.outputs:
        raise UnsupportedCrate("the recorded run has no outputs (its CreateAction has no "
                               "result): there is nothing to compare",
                               where=found.graph.where(str(found.action["@id"])))
    _rebuild_request(found)
    write_result(opened.root, folder / "request", bagit=opened.bagit, bag_info=bag_info)
    shutil.rmtree(folder / "result")
    return found


def _read_rerun(rerun: RunOutcome, dest: Path, limits: IntakeLimits) -> _Result | None:
    """The re-run's result crate, read as the recorded one was; a failed run's may be partial."""
    try:
        return _read(open_crate(rerun.result, dest, limits).root, limits)
    except CrateRejected:
        if rerun.status is RunStatus.COMPLETED:
            raise
        return None
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def _compare(recorded: Mapping[str, tuple[str, str]],
             new: Mapping[str, tuple[str, str]]) -> tuple[OutputCheck, ...]:
    checks = []
    for key in {**recorded, **new}:  # the recorded ones first, in their order
        was, now = recorded.get(key), new.get(key)
        status = (OutputStatus.EXTRA if was is None else OutputStatus.MISSING if now is None
                  else OutputStatus.IDENTICAL if was == now else OutputStatus.DIFFERENT)
        kind = (was or now or ("file", ""))[0]
        checks.append(OutputCheck(key, kind, status, was[1] if was else None,
                                  now[1] if now else None))
    return tuple(checks)


def _image_changes(recorded: Mapping[tuple[str, str], frozenset[str]],
                   new: Mapping[tuple[str, str], frozenset[str]]) -> tuple[ImageChange, ...]:
    changes = []
    for key in sorted(recorded.keys() & new.keys()):  # a step that did not run is no change
        if recorded[key] != new[key]:
            changes.append(ImageChange(key[0], key[1], ", ".join(sorted(recorded[key])),
                                       ", ".join(sorted(new[key]))))
    return tuple(changes)

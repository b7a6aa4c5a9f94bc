"""The events file of an instrumented CWL engine, and the copies of what its jobs made.

Both drivers (cwltool's, :mod:`cratebridge_cwl.driver`, and Toil's,
:mod:`cratebridge_cwl.toil_driver`) write one JSON line per job event through an
:class:`EventLog`, and keep each job's output files (hard links, or copies
across file systems) as soon as the job ends, because the engines delete
intermediate outputs at the end of a workflow.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = ["EventLog", "now"]


class EventLog:
    """Appends job events as JSON lines; keeps a copy of every file a job made."""

    def __init__(self, events: Path, keep: Path) -> None:
        self.events = events
        self.keep = keep
        self.lock = threading.Lock()
        self.kept: dict[tuple[int, int], str] = {}
        self.runs: dict[str, int] = {}

    def nth_run(self, step: str) -> int:
        """How many jobs of step ``step`` (a path) this log has seen, this one included."""
        with self.lock:
            self.runs[step] = self.runs.get(step, 0) + 1
            return self.runs[step]

    def write(self, entry: dict[str, Any]) -> None:
        with self.lock, self.events.open("a") as out:
            out.write(json.dumps(entry) + "\n")

    def keep_outputs(self, job: str, value: Any) -> Any:
        """Hard-link output files under keep/<job name>/ and point the record there."""
        if isinstance(value, list):
            return [self.keep_outputs(job, v) for v in value]
        if not isinstance(value, dict):
            return value
        if value.get("class") in ("File", "Directory"):
            path = _path_of(value)
            if path is None or not os.path.exists(path):
                return value
            target = _free(self.keep / job, os.path.basename(path))
            target.parent.mkdir(parents=True, exist_ok=True)
            _link_tree(Path(path), target)
            self._remember(Path(path), target)
            out = {"class": value["class"], "path": str(target), "origin": path}
            if "secondaryFiles" in value:
                out["secondaryFiles"] = self.keep_outputs(job, value["secondaryFiles"])
            return out
        return {k: self.keep_outputs(job, v) for k, v in value.items()}

    def _remember(self, source: Path, kept: Path) -> None:
        for src, dst in ((source, kept),) if source.is_file() else (
                (p, kept / p.relative_to(source)) for p in source.rglob("*") if p.is_file()):
            st = src.stat()
            self.kept[(st.st_dev, st.st_ino)] = str(dst)

    def describe_inputs(self, value: Any) -> Any:
        """Input values with files given as host paths (a kept copy when one exists)."""
        if isinstance(value, list):
            return [self.describe_inputs(v) for v in value]
        if not isinstance(value, dict):
            return value
        if value.get("class") in ("File", "Directory"):
            path = _path_of(value)
            if path and os.path.isfile(path):
                st = os.stat(path)
                path = self.kept.get((st.st_dev, st.st_ino), path)
            return {"class": value["class"], "path": path}
        return {k: self.describe_inputs(v) for k, v in value.items()}


def _path_of(value: dict[str, Any]) -> str | None:
    location = value.get("location") or value.get("path")
    if not isinstance(location, str):
        return None
    if location.startswith("file://"):
        return unquote(urlsplit(location).path)
    return location if location.startswith("/") else None


def _free(folder: Path, name: str) -> Path:
    """``folder/name``, or ``folder/N/name`` when a job keeps two outputs of one name
    (an ExpressionTool passing on files from several steps, two globbed folders)."""
    target, number = folder / name, 1
    while os.path.lexists(target):
        number += 1
        target = folder / str(number) / name
    return target


def _link_tree(source: Path, target: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, target, copy_function=_link_or_copy, dirs_exist_ok=True)
    else:
        _link_or_copy(str(source), str(target))


def _link_or_copy(src: str, dst: str) -> None:
    src = os.path.realpath(src)  # a step output may be a (relative) symlink: keep its target
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def now() -> str:
    return datetime.now(UTC).isoformat()

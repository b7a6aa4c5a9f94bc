"""Reading a run's ledger: one JSON line per container, refusal or Slurm job of its broker."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cratebridge.engines.record import ContainerRecord

__all__ = ["NODES", "LedgerEntry", "append", "ledger_lines", "now", "read_ledger",
           "refusal_note"]

#: The folder, beside a run's ledger, holding one folder per Slurm job that had a
#: broker of its own on its node (:mod:`cratebridge.containers.jobroom`), each with
#: its ledger at ``broker/ledger.jsonl``.
NODES = "nodes"

#: how many different refusals a run's error quotes
REFUSALS_SHOWN = 3


@dataclass(frozen=True)
class LedgerEntry:
    """One container; ``end`` and ``exit_code`` are None while it runs (or when the run was killed).

    ``stderr_cut``: bytes cut from the middle of its ``stderr`` log (the log cap).
    """

    token: str
    container: ContainerRecord
    start: datetime
    end: datetime | None
    exit_code: int | None
    stderr: Path | None
    labels: dict[str, str]
    stderr_cut: int = 0


@dataclass(frozen=True)
class Ledger:
    entries: tuple[LedgerEntry, ...]
    refusals: tuple[str, ...]

    def by_token(self) -> dict[str, LedgerEntry]:
        return {e.token: e for e in self.entries}


def append(path: Path, entry: Mapping[str, object]) -> None:
    """Add ``entry`` to the ledger ``path`` as one JSON line (a new ledger is 0600), never
    through a link. Raises :class:`OSError`; the caller serialises its own writers."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, (json.dumps(entry) + "\n").encode())
    finally:
        os.close(fd)


def now() -> str:
    """The time a ledger line gives: UTC, ISO 8601."""
    return datetime.now(UTC).isoformat()


def refusal_note(refusals: tuple[str, ...]) -> str:
    """``sandbox refused: A; B; C`` (the first :data:`REFUSALS_SHOWN` different ones, in
    the order they came) for a run's error, or ``""`` when the broker refused nothing."""
    if not refusals:
        return ""
    return "sandbox refused: " + "; ".join(list(dict.fromkeys(refusals))[:REFUSALS_SHOWN])


def ledger_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The lines of the run's ledger ``path``, then those of its jobs' brokers, job by job."""
    for one in (path, *sorted(path.parent.glob(f"{NODES}/*/broker/ledger.jsonl"))):
        if not one.is_file():
            continue
        for line in one.read_text().splitlines():
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if isinstance(data, dict):
                yield data


def read_ledger(path: Path) -> Ledger:
    """Every container of a run, in the order they started; refusals apart.

    The broker writes a line before it starts a container, another once Docker
    has named it and a last when it ends: the later line of a token replaces the
    earlier. The ledgers of the run's Slurm jobs that had brokers of their own
    (``[slurm] broker = "node"``) are read with it.
    """
    entries: dict[str, LedgerEntry] = {}
    refusals: list[str] = []
    for data in ledger_lines(path):
        if "refused" in data:
            refusals.append(str(data["refused"]))
            continue
        if "token" not in data:
            continue  # not a container: a Slurm submission
        ended = "end" in data
        entries[data["token"]] = LedgerEntry(
            token=data["token"],
            container=ContainerRecord(image=data["image"], image_id=data.get("image_id"),
                                      container_id=data.get("container_id")),
            start=datetime.fromisoformat(data["start"]),
            end=datetime.fromisoformat(data["end"]) if ended else None,
            exit_code=int(data["exit_code"]) if ended else None,
            stderr=Path(data["stderr"]) if data.get("stderr") else None,
            labels=dict(data.get("labels", {})),
            stderr_cut=int(data.get("stderr_cut", 0)),
        )
    ordered = sorted(entries.values(), key=lambda e: e.start)  # jobs' ledgers interleave
    return Ledger(tuple(ordered), tuple(refusals))

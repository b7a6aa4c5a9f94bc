"""Reading a run's ledger: one JSON line per container, refusal or Slurm job of its broker."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cratebridge.engines.record import ContainerRecord

__all__ = ["LedgerEntry", "read_ledger", "refusal_note"]

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


def refusal_note(refusals: tuple[str, ...]) -> str:
    """``sandbox refused: A; B; C`` (the first :data:`REFUSALS_SHOWN` different ones, in
    the order they came) for a run's error, or ``""`` when the broker refused nothing."""
    if not refusals:
        return ""
    return "sandbox refused: " + "; ".join(list(dict.fromkeys(refusals))[:REFUSALS_SHOWN])


def read_ledger(path: Path) -> Ledger:
    """Every container of a run, in the order they started; refusals apart.

    The broker writes a line before it starts a container, another once Docker
    has named it and a last when it ends: the later line of a token replaces the
    earlier.
    """
    entries: dict[str, LedgerEntry] = {}
    refusals: list[str] = []
    if not path.exists():
        return Ledger((), ())
    for line in path.read_text().splitlines():
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
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
    return Ledger(tuple(entries.values()), tuple(refusals))

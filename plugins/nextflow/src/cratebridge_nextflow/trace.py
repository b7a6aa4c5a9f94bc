"""Reading Nextflow's trace file: tab-separated, a header row, ``-`` for a missing value."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["TraceRow", "read_trace"]

_MISSING = "-"


@dataclass(frozen=True)
class TraceRow:
    """One task as the trace records it (times in UTC)."""

    task_id: str
    hash: str
    native_id: str | None
    process: str
    tag: str | None
    name: str
    status: str
    exit: int | None
    container: str | None
    submit: datetime | None
    start: datetime | None
    complete: datetime | None
    workdir: Path | None

    @property
    def failed(self) -> bool:
        return self.status in ("FAILED", "ABORTED")


def _time(value: str | None) -> datetime | None:
    """Epoch milliseconds (``trace.raw``), or the default local ``yyyy-MM-dd HH:mm:ss.SSS``."""
    if value is None:
        return None
    if value.isdigit():
        return datetime.fromtimestamp(int(value) / 1000, UTC)
    try:
        return datetime.strptime(value, "%Y-%m-%d %H:%M:%S.%f").astimezone(UTC)
    except ValueError:
        return None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def read_trace(path: Path) -> list[TraceRow]:
    """Every complete row of the trace (a row cut short by a kill is skipped)."""
    if not path.is_file():
        return []
    lines = path.read_text(errors="replace").splitlines()
    if not lines:
        return []
    header = lines[0].split("\t")
    rows = []
    for line in lines[1:]:
        cells = line.split("\t")
        if len(cells) != len(header):
            continue
        data = {k: (None if v == _MISSING else v) for k, v in zip(header, cells, strict=True)}
        rows.append(TraceRow(
            task_id=data.get("task_id") or "", hash=data.get("hash") or "",
            native_id=data.get("native_id"), process=data.get("process") or "",
            tag=data.get("tag"), name=data.get("name") or data.get("process") or "",
            status=data.get("status") or "", exit=_int(data.get("exit")),
            container=data.get("container"), submit=_time(data.get("submit")),
            start=_time(data.get("start")), complete=_time(data.get("complete")),
            workdir=Path(str(data["workdir"])) if data.get("workdir") else None,
        ))
    return rows

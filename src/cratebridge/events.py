"""What a run tells a TRE agent while it goes: typed events, and their JSON lines.

A run emits, in order: ``accepted`` (the run id, the crate, the caller's
labels), a ``stage`` as each begins (``intake``, ``plan``, ``execute``,
``package``), ``step`` events as the engine reports steps starting and
ending, then, once the run's record is made, a ``step`` event per step
execution with its final status, image and exit code, an ``output`` per
output written, and ``finished`` with the status, the result crate's path
and the error. A run refused before it starts ends with ``refused`` (the
error and its exit code) instead. ``cratebridge run --events FILE`` writes
them as JSON lines; the Python API hands them to a callback.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

__all__ = ["KINDS", "EventLog", "RunEvent"]

#: Every kind of event, in the order a run emits them.
KINDS = ("accepted", "stage", "step", "output", "finished", "refused")


@dataclass(frozen=True)
class RunEvent:
    """One thing that happened to a run.

    ``step`` events carry ``step`` (the execution's name), ``state``
    (``started``, ``finished``, ``failed``; or the final ``completed`` /
    ``failed`` once recorded) and, when recorded, ``image`` and
    ``exit_code``; ``output`` events a ``path`` and ``parameter``;
    ``finished`` the ``status``, ``path`` (the result crate) and ``error``;
    ``refused`` the ``error`` and ``exit_code``.
    """

    kind: str
    run_id: str
    time: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    stage: str | None = None
    step: str | None = None
    state: str | None = None
    image: str | None = None
    exit_code: int | None = None
    parameter: str | None = None
    path: str | None = None
    status: str | None = None
    error: str | None = None
    labels: dict[str, str] | None = None
    detail: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The event as a JSON object, without the fields it does not use."""
        return {k: v for k, v in asdict(self).items() if v is not None}


class EventLog:
    """Writes each event as one JSON line to a stream, flushed at once (a TRE agent tails it)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def __call__(self, event: RunEvent) -> None:
        self.stream.write(json.dumps(event.to_json(), default=str) + "\n")
        self.stream.flush()


def fan_out(*listeners: Callable[[RunEvent], None] | None) -> Callable[[RunEvent], None]:
    """One listener calling each given one; a failing listener never stops the run."""
    chosen = [listener for listener in listeners if listener is not None]

    def emit(event: RunEvent) -> None:
        for listener in chosen:
            try:
                listener(event)
            except Exception:  # an agent's callback or a closed pipe is not the run's failure
                continue

    return emit

"""Progress of a CWL run for the terminal, from the events its driver writes (both engines)."""

from __future__ import annotations

import json
from pathlib import Path

from cratebridge.engines.interface import ProgressEvent, RunContext

__all__ = ["JOB_EVENTS", "JobProgress"]

#: The events of a job; the others (``entered``: a run of a nested workflow) are no job's.
JOB_EVENTS = ("started", "finished")


class JobProgress:
    """Turns the job events written to ``events`` since the last call into progress events.

    Reads on from where it stopped, a whole line at a time (the engine may be
    writing the next one), so a long run's file is read once, not once a tick.
    """

    def __init__(self, events: Path, context: RunContext) -> None:
        self.events = events
        self.context = context
        self.offset = 0

    def __call__(self) -> None:
        try:
            with self.events.open("rb") as stream:
                stream.seek(self.offset)
                new = stream.read()
        except OSError:
            return
        complete = new[:new.rfind(b"\n") + 1]
        self.offset += len(complete)
        for line in complete.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if not isinstance(event, dict) or event.get("event") not in JOB_EVENTS:
                continue
            kind = event["event"] if event.get("status", "success") == "success" else "failed"
            self.context.progress(ProgressEvent(kind, str(event.get("name"))))

"""The terminal's progress of a CWL run, read from the driver's events as they are written."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from cratebridge.engines.interface import ProgressEvent, RunContext
from cratebridge_cwl.progress import JobProgress


def _line(**event: Any) -> str:
    return json.dumps(event) + "\n"


def test_each_job_event_is_reported_once_as_it_is_written(tmp_path: Path) -> None:
    seen: list[ProgressEvent] = []
    events = tmp_path / "events.jsonl"
    progress = JobProgress(events, cast(RunContext, SimpleNamespace(progress=seen.append)))
    progress()  # no file yet: nothing, and no error
    events.write_text(_line(event="started", token="a", name="rev")
                      + _line(event="entered", step="sub", runs=["0:x"], time="t")
                      + '{"event": "finished", "token": "a", "na')  # still being written
    progress()
    assert seen == [ProgressEvent("started", "rev")]  # not the nested run, not half a line
    with events.open("a") as out:
        out.write('me": "rev", "status": "success"}\n'
                  + _line(event="finished", token="b", name="sort", status="permanentFail"))
    progress()
    progress()  # read on from where it stopped: nothing twice
    assert seen == [ProgressEvent("started", "rev"), ProgressEvent("finished", "rev"),
                    ProgressEvent("failed", "sort")]

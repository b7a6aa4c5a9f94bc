"""Where a demo run's wall time goes: each phase of ``cratebridge run`` against cwltool alone.

Runs the demo request through the pipeline (in this process, as ``cratebridge
run`` does after its imports), then the same workflow through cratebridge's
instrumented cwltool (``cratebridge_cwl.driver``) on the host, with no room and
no broker: the bare engine, with job events. Rounds alternate. Each phase is
timed from what the run itself writes: the pipeline's stage events, the jobs'
``started``/``finished`` events, the broker ledger's container start and end.

    start -> first job   the host's start, intake, the room, cwltool's reading
                         of the workflow (twice with cratebridge: plan and run)
    job -> container     a job's start to its ``docker run`` (image checks)
    container -> job end a container's exit to cwltool's end of the job
    last job -> end      cwltool's exit, the records, the result crate

The host's own imports, before the pipeline starts, are timed apart (the
import of :mod:`cratebridge.pipeline`, once). No target: this is where issue
17's demo overhead comes from, phase by phase.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from _common import PYTHON, main_guard
from overhead import CRATE, demo_workload


def _when(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _jobs(events: Path) -> list[tuple[float, float, str]]:
    """(start, end, token) of each job, in the order they started."""
    lines = [json.loads(line) for line in events.read_text().splitlines() if line.strip()]
    ends = {e["token"]: _when(e["end"]) for e in lines if e.get("event") == "finished"}
    return sorted((_when(e["time"]), ends.get(e["token"], float("nan")), e["token"])
                  for e in lines if e.get("event") == "started")


def _containers(ledger: Path) -> dict[str, tuple[float, float]]:
    found = {}
    for line in ledger.read_text().splitlines():
        entry = json.loads(line)
        if "token" in entry and "end" in entry:
            found[entry["token"]] = (_when(entry["start"]), _when(entry["end"]))
    return found


def through_cratebridge(scratch: Path) -> dict[str, float]:
    from cratebridge.config import load_config
    from cratebridge.events import RunEvent
    from cratebridge.pipeline import run

    runs = scratch / "runs"
    config = scratch / "cratebridge.toml"
    config.write_text(f'[run]\nruns_dir = "{runs}"\nkeep_runs = true\n')
    stages: dict[str, float] = {}

    def heard(event: RunEvent) -> None:
        if event.kind == "stage" and event.stage:
            stages[event.stage] = time.time()

    begun = time.time()
    run(CRATE, scratch / "result.zip", config=load_config(config), events=heard)
    ended = time.time()
    (run_dir,) = runs.iterdir()
    jobs = _jobs(run_dir / "work" / "events.jsonl")
    containers = _containers(run_dir / "broker" / "ledger.jsonl")
    ran = [(job, containers[job[2]]) for job in jobs if job[2] in containers]
    return {
        "start -> first job": jobs[0][0] - begun,
        "  of which intake and set-up": stages["plan"] - begun,
        "  of which the plan (room, reading)": stages["execute"] - stages["plan"],
        "  of which the plan to the first job": jobs[0][0] - stages["execute"],
        "job -> container (sum)": sum(c[0] - j[0] for j, c in ran),
        "container -> job end (sum)": sum(j[1] - c[1] for j, c in ran),
        "jobs, first start to last end": max(j[1] for j in jobs) - jobs[0][0],
        "last job -> end": ended - max(j[1] for j in jobs),
        "  of which the result crate": ended - stages["package"],
        "total": ended - begun,
    }


def bare(scratch: Path, folder: Path, job: Path) -> dict[str, float]:
    out = scratch / "bare"
    out.mkdir()
    events = out / "events.jsonl"
    begun = time.time()
    subprocess.run([PYTHON, "-m", "cratebridge_cwl.driver", f"--root={folder}",
                    "--events", str(events), "--keep", str(out / "steps"), "--",
                    "--disable-pull", "--quiet", "--outdir", str(out / "outputs"),
                    str(folder / "workflow.cwl"), str(job)],
                   cwd=out, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    ended = time.time()
    jobs = _jobs(events)
    return {"start -> first job": jobs[0][0] - begun,
            "jobs, first start to last end": max(j[1] for j in jobs) - jobs[0][0],
            "last job -> end": ended - max(j[1] for j in jobs),
            "total": ended - begun}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    started = time.perf_counter()  # after main_guard compiled the sources, as installed
    import cratebridge.pipeline  # noqa: F401
    imported = time.perf_counter() - started
    seen: dict[str, list[dict[str, float]]] = {"cratebridge": [], "bare": []}
    with tempfile.TemporaryDirectory(prefix="cb-timeline-") as tmp:
        scratch = Path(tmp)
        _crate, folder, job = demo_workload(scratch / "demo")
        for index in range(args.rounds + 1):  # the first round warms up, unmeasured
            for way in (("cratebridge", "bare") if index % 2 else ("bare", "cratebridge")):
                where = scratch / f"{way}-{index}"
                where.mkdir()
                figures = through_cratebridge(where) if way == "cratebridge" \
                    else bare(where, folder, job)
                if index:
                    seen[way].append(figures)
                shutil.rmtree(where, ignore_errors=True)
    print(f"timeline of the demo, median of {args.rounds} rounds (seconds); "
          f"importing cratebridge.pipeline took {imported:.2f} s before them")
    print(f"  {'phase':40} {'cratebridge':>12} {'cwltool alone':>14}")
    for phase in seen["cratebridge"][0]:
        mine = statistics.median(f[phase] for f in seen["cratebridge"])
        theirs: Any = statistics.median(f[phase] for f in seen["bare"]) \
            if phase in seen["bare"][0] else ""
        print(f"  {phase:40} {mine:12.2f} {theirs if theirs == '' else f'{theirs:14.2f}':>14}")
    return 0


if __name__ == "__main__":
    main_guard(main)

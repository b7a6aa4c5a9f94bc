"""What a Slurm job runs: one job's container, or a group's Snakemake, through the shim.

Submitted by the ``cratebridge-slurm`` executor as ``python -m
cratebridge_snakemake.jobstep SPEC.json``. The spec holds the ``docker run``
command (the same as the local executor's), the shim and the sandbox file, so
the job needs nothing from its environment; the job runs on a node that
shares the run folder (here: this machine). It appends a ``finished`` event
with the Slurm job id and exits with the container's status, which Slurm
records and Snakemake's Slurm plugin reads back with ``sacct``.

A group job (jobs joined by ``pipe()`` or ``service()`` outputs, or by
``group:``) is one Slurm job whose spec holds a ``command`` instead: Snakemake
itself, for the group's jobs (``--target-jobs ... --mode remote``), with the
local ``cratebridge`` executor, as Snakemake's Slurm plugin runs a group with
its ``slurm-jobstep`` executor. That Snakemake prepares each job when its
turn comes (its inputs are made by the group's earlier jobs), runs the jobs a
pipe or a service joins at once, each in its container through the same
shim, and writes each job's events, with the Slurm job id. The Slurm job
exits with its status.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cratebridge.containers.shim import BROKER_ENV
from cratebridge_snakemake.jobs import EventLog, now, slurm_job

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m cratebridge_snakemake.jobstep SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(args[0]).read_text())
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([spec["shim_dir"], env.get("PATH", "/usr/bin:/bin")])
    env[BROKER_ENV] = spec["sandbox"]
    if "command" in spec:  # a group: its Snakemake runs the jobs and writes their events
        return subprocess.call(["/bin/sh", "-c", spec["command"]], env=env,
                               stdin=subprocess.DEVNULL, cwd=spec["workdir"])
    events = EventLog(Path(spec["events"]))
    start = now()
    argv_ = [spec["docker"], *spec["argv"][1:]]
    with Path(spec["stdout"]).open("wb") as stdout:
        code = subprocess.call(argv_, env=env, stdout=stdout, stdin=subprocess.DEVNULL,
                               cwd=spec["workdir"])
    events.write("finished", token=spec["token"], jobid=spec["jobid"], rule=spec["rule"],
                 start=start, end=now(), exit_code=code,
                 status="success" if code == 0 else "failed", **slurm_job())
    return code


if __name__ == "__main__":
    sys.exit(main())

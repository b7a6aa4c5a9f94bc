"""What a Slurm job runs: one job's container through the sandbox shim, then its event.

Submitted by the ``cratebridge-slurm`` executor as ``python -m
cratebridge_snakemake.jobstep SPEC.json``. The spec holds the ``docker run``
command (the same as the local executor's), the shim and the sandbox file, so
the job needs nothing from its environment; the job runs on a node that
shares the run folder (here: this machine). It appends a ``finished`` event
with the Slurm job id and exits with the container's status, which Slurm
records and Snakemake's Slurm plugin reads back with ``sacct``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cratebridge.containers.shim import BROKER_ENV
from cratebridge_snakemake.jobs import EventLog, now

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
    events = EventLog(Path(spec["events"]))
    start = now()
    argv_ = [spec["docker"], *spec["argv"][1:]]
    with Path(spec["stdout"]).open("wb") as stdout:
        code = subprocess.call(argv_, env=env, stdout=stdout, stdin=subprocess.DEVNULL,
                               cwd=spec["workdir"])
    events.write("finished", token=spec["token"], jobid=spec["jobid"], rule=spec["rule"],
                 start=start, end=now(), exit_code=code,
                 status="success" if code == 0 else "failed",
                 native_id=os.environ.get("SLURM_JOB_ID"), host=os.uname().nodename)
    return code


if __name__ == "__main__":
    sys.exit(main())

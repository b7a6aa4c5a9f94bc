"""A Slurm job's room: ``python -m cratebridge.containers.jobroom SPEC``.

The broker submits this, never the engine's script itself (see
:mod:`cratebridge.containers.scheduler`). On the node it rebuilds the run's
room from the broker's spec (written in the broker's folder, which the engine
cannot see or change), and runs the engine's script inside it with the
engine's environment plus the job's ``SLURM_*`` variables; its exit status is
the job's. Slurm's signals stop the room.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from cratebridge.containers.confine import Room

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m cratebridge.containers.jobroom SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(args[0]).read_text())
    room = Room.from_json(spec["room"])
    env = {**spec["env"], **{k: v for k, v in os.environ.items() if k.startswith("SLURM")}}
    script = spec["script"]
    # as sbatch would: by the script's own #! line (Nextflow's is bash), else sh
    argv = [script] if spec.get("shebang") else ["/bin/sh", script]
    with room.command(argv, env, Path(spec["cwd"]), hand_over=False) as (command, fds):
        proc = subprocess.Popen(command, env={}, pass_fds=fds, start_new_session=True)

        def stop(signum: int, frame: object) -> None:
            try:
                os.killpg(proc.pid, signum)
            except ProcessLookupError:
                pass

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, stop)
        return proc.wait()


if __name__ == "__main__":
    sys.exit(main())

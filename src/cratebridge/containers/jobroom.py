"""A Slurm job's room: ``python -m cratebridge.containers.jobroom SPEC``.

The broker submits this, never the engine's script itself (see
:mod:`cratebridge.containers.scheduler`). On the node it rebuilds the run's
room from the broker's spec (written in the broker's folder, which the engine
cannot see or change), and runs the engine's script inside it with the
engine's environment plus the job's ``SLURM_*`` variables; its exit status is
the job's. Slurm's signals stop the room.

With ``[slurm] broker = "node"`` the spec carries the run's container policy,
and the job starts a broker of its own, on its node, for the room to reach
(:func:`node_broker`): the same policy, that node's Docker, a ledger in the
job's own folder (``nodes/job-<id>/`` in the run's broker folder, read with the
run's ledger), and its own owner label, so that what the job leaves is removed
by the job, on its node.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from cratebridge.containers.broker import Broker
from cratebridge.containers.confine import Room
from cratebridge.containers.ledger import NODES
from cratebridge.containers.reaper import guard, remove_owned_containers
from cratebridge.containers.sandbox import Sandbox, owner_id

__all__ = ["main", "node_broker"]


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
    cwd = Path(spec["cwd"])
    if not spec.get("node_broker"):
        return _run(room, argv, env, cwd)
    job = os.environ.get("SLURM_JOB_ID") or Path(args[0]).stem
    with node_broker(spec["node_broker"], job) as socket:
        return _run(replace(room, socket=socket), argv, env, cwd)


@contextmanager
def node_broker(node: Mapping[str, Any], job: str) -> Iterator[Path]:
    """Serve a broker for job ``job`` on this node while the block runs; yield its socket.

    ``node``: the run's policy (:meth:`Sandbox.to_json`) and the step uid and gid.
    The job's folder (``<run broker folder>/nodes/job-<id>/``) is laid out as a
    run's, so its reaper finds the job's pinned mounts; the broker looks up
    every image on this node's Docker and holds it to the same approved list.
    Whatever container of the job's is still there when the block ends is removed.
    """
    run = Sandbox.from_json(node["sandbox"])
    folder = run.ledger.parent / NODES / f"job-{job}"
    sandbox = replace(run, ledger=folder / "broker" / "ledger.jsonl", owner=owner_id())
    (folder / "broker").mkdir(parents=True, exist_ok=True)
    socket = folder / "broker" / "docker.sock"
    broker = Broker(sandbox, socket, int(node["uid"]), int(node["gid"]))
    try:
        with guard(sandbox, folder), broker.serving():
            yield socket
    finally:
        remove_owned_containers(sandbox.docker, sandbox.run_id, sandbox.owner)


def _run(room: Room, argv: list[str], env: dict[str, str], cwd: Path) -> int:
    with room.command(argv, env, cwd, hand_over=False) as (command, fds):
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

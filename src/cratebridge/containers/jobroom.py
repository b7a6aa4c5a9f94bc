"""A Slurm job's room: ``python -m cratebridge.containers.jobroom SPEC``.

The broker submits this, never the engine's script itself (see
:mod:`cratebridge.containers.scheduler`). On the node it rebuilds the run's
room from the broker's spec (written in the broker's folder, which the engine
cannot see or change), and runs the engine's script inside it with the
engine's environment plus the job's ``SLURM_*`` variables; its exit status is
the job's. Slurm's signals stop the room. With ``[slurm] broker = "host"`` (the
room reaches the run's broker, a unix socket on cratebridge's host) a job that
Slurm placed on another host is refused, saying why, in the job's ledger.

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
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from cratebridge.containers.broker import Broker
from cratebridge.containers.confine import Room
from cratebridge.containers.ledger import NODES, append, now
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
    job = os.environ.get("SLURM_JOB_ID") or Path(args[0]).stem
    if not spec.get("node_broker"):
        away = _away_from_broker(spec.get("broker_host"))
        if away:
            _refuse(Path(spec["ledger"]), job, away)
            return 125
        return _run(room, argv, env, cwd)
    with node_broker(spec["node_broker"], job) as door:
        return _run(replace(room, socket=door), argv, env, cwd)


def _away_from_broker(broker_host: str | None) -> str | None:
    """Why a job with ``[slurm] broker = "host"`` cannot run here: the run's broker is a
    unix socket on the host cratebridge runs on, which no other host can reach."""
    here = socket.gethostname()
    if broker_host is None or broker_host == here:
        return None
    return (f"Slurm job on {here}: with [slurm] broker = \"host\" every job must run on "
            f"{broker_host}, where cratebridge and its broker run; set [slurm] broker = "
            "\"node\" (each job starts a broker on its own node) or keep the jobs on "
            f"{broker_host} (a partition of that node alone)")


def _refuse(ledger: Path, job: str, reason: str) -> None:
    """Say why on the job's standard error, and as a refusal in the job's own ledger
    (read with the run's, so the run's error quotes it)."""
    print(f"cratebridge: refused: {reason}", file=sys.stderr)
    folder = ledger.parent / NODES / f"job-{job}" / "broker"
    folder.mkdir(parents=True, exist_ok=True)
    append(folder / "ledger.jsonl", {"refused": reason, "time": now()})


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
    sandbox = replace(run, ledger=folder / "broker" / "ledger.jsonl", owner=owner_id(),
                      slurm_job=job)
    (folder / "broker").mkdir(parents=True, exist_ok=True)
    door = folder / "broker" / "docker.sock"
    broker = Broker(sandbox, door, int(node["uid"]), int(node["gid"]))
    try:
        with guard(sandbox, folder), broker.serving():
            yield door
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

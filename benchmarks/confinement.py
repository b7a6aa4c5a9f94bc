"""What the two walls add to a run: starting a room, and a docker call through the broker.

Alternating rounds in one process, each against its own baseline:
- a room: ``python -c pass`` bare, and the same in a real :class:`Room`
  (bubblewrap, setpriv, the generated /etc, every bind);
- a docker call: ``docker version`` with the real client, and through a real
  broker with the client a confined engine uses.
A run starts two rooms (the plan's reading of the workflow, then the engine)
and, for the three-step demo on cwltool, makes five docker calls: an image
inspect for each of its two images and a run per step (counted at the broker
on 2026-12-03; cwltool starts ``docker stats`` only for a step that lasts over
a second, and none of the demo's does). The added wall time per run is
estimated from the two medians as ``2 x room + 5 x call``. Target: at most
0.15 s per run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import PYTHON, CannotMeasure, main_guard, median, verdict

from cratebridge.containers.broker import Broker
from cratebridge.containers.confine import Room
from cratebridge.containers.sandbox import Sandbox, find_docker

ROOMS_PER_RUN = 2
CALLS_PER_RUN = 5
TARGET = 0.15


def _time(argv: list[str], **kw: object) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          check=False, **kw)  # type: ignore[call-overload]
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise CannotMeasure(f"{argv[:3]} exited {done.returncode}: {done.stderr[-500:]!r}")
    return elapsed


def room_cost(folder: Path, rounds: int) -> tuple[float, float]:
    for name in ("work", "tmp", "sandbox"):
        (folder / name).mkdir()
    room = Room(uid=1000, gid=1000, etc=folder / "sandbox" / "etc", tmp=folder / "tmp",
                writable=(folder / "work",))
    room.write_etc()
    bare, confined = [], []
    for _ in range(rounds):
        bare.append(_time([PYTHON, "-c", "pass"]))
        with room.command([PYTHON, "-c", "pass"], {}, folder / "work") as (argv, fds):
            confined.append(_time(argv, pass_fds=fds, env={}))
    return median(bare), median(confined)


def call_cost(folder: Path, rounds: int) -> tuple[float, float]:
    docker = find_docker()
    if docker is None:
        raise CannotMeasure("no docker client on PATH")
    (folder / "broker").mkdir()
    sandbox = Sandbox(run_id="bench", docker=docker, ledger=folder / "broker" / "ledger.jsonl",
                      writable=(folder / "work",), readable=(folder,))
    short = Path(tempfile.mkdtemp(prefix="cb-bench-"))  # the client connects by this path
    socket = short / "docker.sock"
    env = sandbox.engine_env(short, short)  # the very client an engine's PATH has
    client = [str(short / "bin" / "docker"), "version"]
    direct, brokered = [], []
    try:
        with Broker(sandbox, socket, os.getuid(), os.getgid()).serving():
            for _ in range(rounds):
                direct.append(_time([docker, "version"]))
                brokered.append(_time(client, env=env))
    finally:
        shutil.rmtree(short, ignore_errors=True)
    return median(direct), median(brokered)


def run() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    opts = parser.parse_args()
    if os.geteuid() != 0:
        raise CannotMeasure("the room drops to its uid from root: run as root")
    folder = Path(tempfile.mkdtemp(prefix="cb-bench-confine-"))
    try:
        bare, confined = room_cost(folder, opts.rounds)
        direct, brokered = call_cost(folder, opts.rounds)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    room, call = confined - bare, brokered - direct
    added = ROOMS_PER_RUN * room + CALLS_PER_RUN * call
    print(f"python -c pass: bare {bare * 1000:.1f} ms, in a room {confined * 1000:.1f} ms "
          f"(ratio {confined / bare:.2f}, +{room * 1000:.1f} ms)")
    print(f"docker version: direct {direct * 1000:.1f} ms, through the broker "
          f"{brokered * 1000:.1f} ms (ratio {brokered / direct:.2f}, +{call * 1000:.1f} ms)")
    print(f"per run ({ROOMS_PER_RUN} rooms, {CALLS_PER_RUN} docker calls): +{added:.3f} s")
    print(verdict(added <= TARGET, f"the confinement adds {added:.3f} s per run "
                                    f"(target <= {TARGET} s)"))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main_guard(run)

"""What a killed run leaves behind is removed: by its reaper at once, by ``cleanup`` later.

A run's engine dies with cratebridge (its room is killed with it), but its step
containers, its Slurm jobs and the bind mounts its broker pinned would not: a
``kill -9`` or the OOM killer gives cratebridge no chance to stop them. So
while a run executes, :func:`guard` keeps a reaper (``python -m
cratebridge.containers.reaper_watch``, which imports this module only when it
must reap) in a session of its own, holding the read end
of a pipe whose write end only cratebridge holds. A run that ends writes
``done`` first and the reaper just exits; when the pipe closes without it,
the run's process is gone, and the reaper removes the run's containers (by
its run and owner labels), cancels the Slurm jobs its broker submitted (from
the ledger) and releases its pinned mounts, notes what it removed in the
ledger, and exits.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from cratebridge.containers.ledger import append, now
from cratebridge.containers.mounts import release_pins
from cratebridge.containers.reaper_watch import DONE
from cratebridge.containers.sandbox import OWNER_LABEL, RUN_LABEL, Sandbox, labelled_containers
from cratebridge.exits import wait_exit

__all__ = ["LastWords", "Removed", "RunRemains", "after_death", "dies_with_us", "guard", "reap",
           "reaping", "remove_owned_containers", "submitted_jobs"]

#: Seconds to wait before each sweep for containers: a ``docker run`` killed with
#: cratebridge may still have its container created (and started) by the daemon.
SWEEPS = (0.0, 1.0, 2.0)
COMMAND_TIMEOUT = 60.0
#: ``setpriv`` (util-linux) runs a program that gets SIGKILL when its parent dies.
SETPRIV = shutil.which("setpriv", path=os.environ.get("PATH", "") + ":/usr/bin:/bin")


@dataclass(frozen=True)
class Removed:
    """What a clean-up removed: container ids, Slurm job ids, released mount points.

    ``left``: containers docker did not remove in time (``"?"``: it did not even list them).
    """

    containers: tuple[str, ...] = ()
    slurm_jobs: tuple[str, ...] = ()
    mounts: tuple[str, ...] = ()
    left: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.containers or self.slurm_jobs or self.mounts)

    def to_json(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class RunRemains:
    """Where to find what a run may leave: its containers' labels, its folder and ledger."""

    run_id: str
    owner: str
    docker: str
    run_dir: Path
    ledger: Path

    @classmethod
    def of(cls, sandbox: Sandbox, run_dir: Path) -> RunRemains:
        return cls(sandbox.run_id, sandbox.owner, sandbox.docker, run_dir, sandbox.ledger)

    def to_json(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, str]) -> RunRemains:
        return cls(data["run_id"], data["owner"], data["docker"], Path(data["run_dir"]),
                   Path(data["ledger"]))


def dies_with_us(argv: list[str]) -> list[str]:
    """``argv`` run so that it is killed when the thread that starts it dies (setpriv).

    For the broker's docker clients: a client outliving a killed cratebridge
    would only wait on a container its reaper removes.
    """
    if SETPRIV is None:
        return argv
    return [SETPRIV, "--pdeathsig", "KILL", "--", *argv]


@dataclass(frozen=True)
class LastWords:
    """What the reaper does after reaping a killed run: ``module.last_words(payload)``.

    The payload travels through the reaper's pipe and stays in its memory,
    never on disk. The reaper knows nothing of what it means (the finisher
    writes the killed run's result crate with it).
    """

    module: str
    payload: bytes


@contextmanager
def guard(sandbox: Sandbox, run_dir: Path,
          last_words: LastWords | None = None) -> Iterator[None]:
    """Keep a reaper for the run while the block runs; it acts only if this process dies.

    When the block ends (normally or by an exception) the run's own clean-up
    has run: on a normal end the reaper is told so and exits at once; after
    an exception it removes whatever is left, as after a kill. Either way the
    pins of the run's mounts still there are released (a broker thread cut
    short by a signal leaves its own).
    """
    remains = RunRemains.of(sandbox, run_dir)
    read, write = os.pipe()  # not inheritable: the reaper gets the read end as its stdin only
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cratebridge.containers.reaper_watch",
             json.dumps(remains.to_json())],
            stdin=read, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/",
            start_new_session=True)
    except BaseException:
        os.close(write)
        raise
    finally:
        os.close(read)
    ended = False
    try:
        _say(write, last_words)
        yield
        ended = True
    finally:
        try:
            if ended:
                os.write(write, DONE)
        finally:
            os.close(write)
        if os.geteuid() == 0:
            release_pins(run_dir)
        if ended:
            try:
                wait_exit(proc, 10)
            except subprocess.TimeoutExpired:
                pass  # it exits on its own; never hold the run up for it


def _say(pipe: int, last_words: LastWords | None) -> None:
    """The reaper's first words: its last words' module and payload, each length-prefixed."""
    parts = (last_words.module.encode(), last_words.payload) if last_words else (b"", b"")
    data = b"".join(len(part).to_bytes(8, "big") + part for part in parts)
    view = memoryview(data)
    try:
        while view:  # the reaper reads as we write: a payload past the pipe's size is fine
            view = view[os.write(pipe, view):]
    except OSError:
        pass  # the reaper is gone already: the run goes on without one


def reap(remains: RunRemains) -> Removed:
    """Remove the containers, Slurm jobs and pinned mounts of a run whose process is gone."""
    containers: list[str] = []
    jobs: list[str] = []
    mounts: list[str] = []
    for number, delay in enumerate(SWEEPS):
        time.sleep(delay)
        found = remove_owned_containers(remains.docker, remains.run_id, remains.owner)
        containers += [c for c in found if c not in containers]
        if os.geteuid() == 0:
            mounts += release_pins(remains.run_dir)
        if number == 0:
            jobs = _cancel_jobs(remains.ledger)
        elif not found:
            break  # nothing new after a pause: no client is creating one any more
    removed = Removed(tuple(containers), tuple(jobs), tuple(mounts))
    _note(remains.ledger, removed)
    return removed


def remove_owned_containers(docker: str, run_id: str, owner: str) -> list[str]:
    """Remove the containers of run ``run_id`` that broker ``owner`` started; their ids.

    Nothing (an empty list) when Docker cannot be asked in time.
    """
    try:
        return remove_labelled(docker, f"{RUN_LABEL}={run_id}", f"{OWNER_LABEL}={owner}")
    except (OSError, subprocess.SubprocessError):
        return []


def remove_labelled(docker: str, *labels: str) -> list[str]:
    """Remove the containers carrying every label given (``key=value``); their ids. The
    removal is bounded by :data:`COMMAND_TIMEOUT`; raises when Docker cannot be asked."""
    found = labelled_containers(docker, *labels)
    if found:
        subprocess.run([docker, "rm", "-f", *found], capture_output=True, check=False,
                       timeout=COMMAND_TIMEOUT)
    return found


def submitted_jobs(ledger: Path) -> list[str]:
    """The Slurm jobs a run's broker submitted, from its ledger."""
    jobs: list[str] = []
    try:
        lines = ledger.read_text(errors="replace").splitlines()
    except OSError:
        return jobs
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by the kill
        job = entry.get("slurm_job") if isinstance(entry, dict) else None
        if job and entry.get("exit_code") == 0 and str(job) not in jobs:
            jobs.append(str(job))
    return jobs


def _cancel_jobs(ledger: Path) -> list[str]:
    jobs = submitted_jobs(ledger)
    scancel = shutil.which("scancel")
    if not jobs or scancel is None:
        return []
    try:
        subprocess.run([scancel, *jobs], capture_output=True, check=False,
                       timeout=COMMAND_TIMEOUT)
    except (OSError, subprocess.SubprocessError):
        return []
    return jobs


def _note(ledger: Path, removed: Removed) -> None:
    """A line in the run's ledger saying what the reaper removed (if the folder is still there)."""
    with contextlib.suppress(OSError):
        append(ledger, {"reaped": removed.to_json(), "time": now()})


def reaping(run_id: str) -> bool:
    """Whether run ``run_id``'s reaper is alive (on this host): after its run died, it
    may still be removing the run's containers and writing the run's crate.

    Each reaper is ``python -m cratebridge.containers.reaper_watch REMAINS-JSON``,
    and its remains name its run.
    """
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        if len(argv) >= 4 and argv[-4:-2] == [b"-m", b"cratebridge.containers.reaper_watch"]:
            try:
                if json.loads(argv[-2]).get("run_id") == run_id:
                    return True
            except (ValueError, AttributeError):
                continue
    return False


def after_death(remains: str, module: str, payload: bytes) -> int:
    """Reap a run that died without saying ``done``, then run its last words if it had any.

    ``remains`` is :meth:`RunRemains.to_json` as JSON; called by
    :mod:`cratebridge.containers.reaper_watch`, which waited for the run.
    """
    reap(RunRemains.from_json(json.loads(remains)))
    if module:
        try:
            importlib.import_module(module).last_words(payload)
        except Exception:
            pass  # nobody to tell: the run's process is gone (the finisher logs its own)
    return 0

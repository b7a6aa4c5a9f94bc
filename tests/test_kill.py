"""``kill -9`` of a run leaves nothing running for long; clean-ups keep to their runs folder.

Real Docker, the real CLI, a real broker and (where it answers) the real
one-node Slurm cluster. The reaper's work is checked without calling
``cleanup``: after the kill, the test only watches.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cratebridge.containers.mounts import release_stale
from cratebridge.containers.sandbox import (
    OWNER_LABEL,
    RUN_LABEL,
    labelled_containers,
    owner_id,
    runs_label,
)
from cratebridge.testing import RequestSpec, ValueInput, ZipLayout, write_request_zip

REPO = Path(__file__).resolve().parent.parent
SLEEP = REPO / "fixtures" / "workflows" / "cwl" / "sleep"
IMAGE = "cratebridge/busybox:1"
GONE_WITHIN = 10.0  # seconds from the kill until nothing of the run is left

pytestmark = pytest.mark.docker
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="the room and the pins need root")


def sleep_crate(tmp_path: Path, seconds: int) -> Path:
    spec = RequestSpec(workflow_dir=SLEEP, main_workflow="workflow.cwl",
                       inputs=(ValueInput("seconds", seconds),), name="Sleep request")
    return write_request_zip(spec, tmp_path / f"sleep-{seconds}.zip", ZipLayout.FOLDER)


def config(folder: Path, runs: Path) -> Path:
    path = folder / f"cratebridge-{uuid.uuid4().hex[:6]}.toml"
    path.write_text(f'[run]\nruns_dir = "{runs}"\n')
    return path


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cratebridge.cli", *args]


# -- processes, as /proc shows them -----------------------------------------------------------

def processes() -> dict[int, tuple[int, str, str]]:
    """Every live process: pid -> (parent pid, start time, command line). Zombies left out."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rpartition(")")[2].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
        except OSError:
            continue
        if stat[0] not in ("Z", "X"):
            found[int(entry.name)] = (int(stat[1]), stat[19], cmdline)
    return found


def descendants(pid: int) -> dict[tuple[int, str], str]:
    """(pid, start time) -> command line of every process below ``pid``."""
    table = processes()
    found: dict[tuple[int, str], str] = {}
    parents = {pid}
    while parents:
        children = {p for p, (ppid, _, _) in table.items() if ppid in parents}
        found.update({(p, table[p][1]): table[p][2] for p in children})
        parents = children
    return found


def left_of(tree: dict[tuple[int, str], str], *markers: str) -> list[str]:
    """Processes of ``tree`` still alive, and any naming one of ``markers``."""
    table = processes()
    alive = [f"{p} {cmd}" for (p, start), cmd in tree.items()
             if p in table and table[p][1] == start]
    named = [f"{p} {cmd}" for p, (_, _, cmd) in table.items()
             if p != os.getpid() and any(m in cmd for m in markers)]
    return sorted(set(alive + named))


def wait_until(check: Callable[[], list[str]], timeout: float) -> tuple[list[str], float]:
    """Poll ``check`` until it finds nothing; what it last found, and the time taken."""
    started = time.monotonic()
    while True:
        found = check()
        elapsed = time.monotonic() - started
        if not found or elapsed > timeout:
            return found, elapsed
        time.sleep(0.1)


def containers_of(*labels: str) -> list[str]:
    return labelled_containers("docker", *labels, check=True)


def reaped(ledger: Path) -> list[dict[str, list[str]]]:
    lines = [json.loads(line) for line in ledger.read_text().splitlines() if line.strip()]
    return [line["reaped"] for line in lines if "reaped" in line]


@pytest.fixture(autouse=True)
def docker_up(docker_available: bool) -> None:
    """Every test here needs the Docker daemon."""


# -- 1. kill -9 of `cratebridge run` ----------------------------------------------------------

def sleeping_run(tmp_path: Path, cfg: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``cratebridge run`` of a step sleeping a minute, once its container runs; its owner label."""
    proc = subprocess.Popen(cli("run", str(sleep_crate(tmp_path, 60)), "--out",
                                str(tmp_path / "r.zip"), "--config", str(cfg)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    owner = f"{OWNER_LABEL}={owner_id(proc.pid)}"
    found, _ = wait_until(lambda: [] if containers_of(owner) else ["none yet"], 90)
    if found:
        proc.kill()
        proc.wait()
        raise AssertionError("no step container started")
    return proc, owner


def clean_up(proc: subprocess.Popen[bytes], owner: str, runs: Path) -> None:
    """Whatever a failed test left: the run's process, its containers, its pins."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    ids = containers_of(owner)
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=False)
    release_stale(runs)  # what the reaper should have released: pytest must remove it


@as_root
def test_kill_9_of_a_run_leaves_no_process_no_container_and_a_failed_result(
        tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    proc, owner = sleeping_run(tmp_path, config(tmp_path, runs))
    try:
        (run_dir,) = runs.iterdir()
        tree = descendants(proc.pid)
        assert any("bwrap" in cmd for cmd in tree.values()), tree  # the engine's room
        assert any("cratebridge.containers.reaper" in cmd for cmd in tree.values()), tree
        started = containers_of(f"{RUN_LABEL}={run_dir.name}")
        assert started

        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

        def left() -> list[str]:
            return [f"container {c}" for c in containers_of(f"{RUN_LABEL}={run_dir.name}")] \
                + left_of(tree, str(runs), run_dir.name)

        found, elapsed = wait_until(left, GONE_WITHIN)
        assert not found, f"still there {elapsed:.1f}s after the kill: {found}"
        print(f"nothing of the run left {elapsed:.2f}s after SIGKILL")
        (note,) = reaped(run_dir / "broker" / "ledger.jsonl")
        assert set(started) <= set(note["containers"])
        # nothing is lost: the reaper wrote the killed run's result crate where --out said
        result = tmp_path / "r.zip"
        found, _ = wait_until(lambda: [] if result.is_file() else ["no result yet"], GONE_WITHIN)
        assert not found, "the killed run has no result crate"
        action, steps = killed_result(result, tmp_path / "unpacked")
        assert action["actionStatus"] == "http://schema.org/FailedActionStatus"
        assert "cratebridge was killed" in action["error"]
        assert [s["actionStatus"] for s in steps] == ["http://schema.org/FailedActionStatus"]
        assert "was stopped before it finished" in steps[0]["error"]
    finally:
        clean_up(proc, owner, runs)


def killed_result(result: Path, dest: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The outer CreateAction of a Five Safes result zip, and its run crate's step actions."""
    from cratebridge.intake import open_crate

    root = open_crate(result, dest).root
    outer = json.loads((root / "ro-crate-metadata.json").read_text())["@graph"]
    inner = json.loads((root / "provenance" / "ro-crate-metadata.json").read_text())["@graph"]
    action = next(e for e in outer if e.get("@type") == "CreateAction")
    steps = [e for e in inner if e.get("@type") == "CreateAction"
             and str(e["@id"]).startswith("#step-run-")]
    return action, steps


# -- 1b. the reaper itself: a broker's owner killed, for containers, pins and Slurm jobs ------

OWNER = r"""
import os, sys, time
from pathlib import Path
from cratebridge.containers.broker import Broker
from cratebridge.containers.confine import Room
from cratebridge.containers.reaper import guard
from cratebridge.containers.sandbox import Sandbox, find_docker

run, sock, scheduler = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] or None
if sys.argv[4] == "client":  # every docker run by the client, not through the API
    import cratebridge.containers.broker as broker_module
    broker_module.local_api = lambda env=None: None
folders = {n: run / n for n in ("work", "tmp", "sandbox", "broker", "request")}
for folder in folders.values():
    folder.mkdir(parents=True, exist_ok=True)
os.chown(folders["work"], 1000, 1000)
sandbox = Sandbox(run_id=run.name, docker=find_docker() or "docker",
                  ledger=folders["broker"] / "ledger.jsonl", writable=(folders["work"],),
                  readable=(run,), room_tmp=folders["tmp"], scheduler=scheduler,
                  runs_dir=run.parent)
room = Room(uid=1000, gid=1000, etc=folders["sandbox"] / "etc", tmp=folders["tmp"],
            readable=(folders["request"],), writable=(folders["work"],),
            broker=folders["sandbox"])
room.write_etc()
sandbox.engine_env(folders["sandbox"], folders["sandbox"])
with guard(sandbox, run), Broker(sandbox, sock, os.getuid(), os.getgid(), room=room).serving():
    print("ready", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def owner(tmp_path: Path) -> Iterator[Callable[..., tuple[subprocess.Popen[str], Path,
                                                         dict[str, str]]]]:
    """Start a process that owns a run and its broker, as cratebridge does; the run's folder.

    Also the environment in which a client (the engine's ``docker`` or ``sbatch``)
    reaches its broker. ``way``: how the broker runs a step's container, through
    the daemon's API or (``client``) with a docker client of its own.
    """
    short = Path(tempfile.mkdtemp(prefix="cb-"))  # a socket's path is short
    started: list[subprocess.Popen[str]] = []
    runs: list[Path] = []

    def start(scheduler: str | None,
              way: str = "api") -> tuple[subprocess.Popen[str], Path, dict[str, str]]:
        run = tmp_path / "runs" / f"kill-{uuid.uuid4().hex[:8]}"
        proc = subprocess.Popen([sys.executable, "-c", OWNER, str(run), str(short / "s.sock"),
                                 scheduler or "", way], stdout=subprocess.PIPE, text=True)
        started.append(proc)
        runs.append(run)
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        env = {"PATH": f"{run / 'sandbox' / 'bin'}:{os.environ['PATH']}",
               "CRATEBRIDGE_BROKER": str(short / "s.sock")}
        return proc, run, env

    try:
        yield start
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for run in runs:
            ids = containers_of(f"{RUN_LABEL}={run.name}")
            if ids:
                subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=False)
            release_stale(run.parent)
        shutil.rmtree(short, ignore_errors=True)


def mounts_under(folder: Path) -> list[str]:
    with open("/proc/self/mountinfo") as info:
        return [line.split()[4] for line in info if line.split()[4].startswith(f"{folder}/")]


@as_root
@pytest.mark.parametrize("way", ["api", "client"])
def test_the_reaper_removes_a_killed_owners_containers_clients_and_pins(
        owner: Callable[..., tuple[subprocess.Popen[str], Path, dict[str, str]]], way: str
) -> None:
    proc, run, env = owner(None, way)
    client = subprocess.Popen(["docker", "run", "--rm", "-v", f"{run / 'work'}:/w", IMAGE,
                               "sleep", "300"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        found, _ = wait_until(lambda: [] if containers_of(f"{RUN_LABEL}={run.name}")
                              else ["none yet"], 60)
        assert not found, "the step container did not start"
        tree = descendants(proc.pid)
        # the broker's own docker client, only when it runs the step with one
        clients = [cmd for cmd in tree.values() if f"{RUN_LABEL}={run.name}" in cmd]
        assert bool(clients) == (way == "client"), tree
        assert mounts_under(run), "the broker pinned no mount"
        started = containers_of(f"{RUN_LABEL}={run.name}")

        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

        def left() -> list[str]:
            return [f"container {c}" for c in containers_of(f"{RUN_LABEL}={run.name}")] \
                + [f"mount {m}" for m in mounts_under(run)] + left_of(tree, run.name)

        found, elapsed = wait_until(left, GONE_WITHIN)
        assert not found, f"still there {elapsed:.1f}s after the kill: {found}"
        (note,) = reaped(run / "broker" / "ledger.jsonl")
        assert set(started) <= set(note["containers"]) and note["mounts"]
        assert client.wait(timeout=30) != 0  # the engine's client saw its broker go
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()


def in_queue(job: str) -> list[str]:
    listed = subprocess.run(["squeue", "-h", "-j", job, "-o", "%i %T"], capture_output=True,
                            text=True, check=False)
    return listed.stdout.split("\n")[:1] if listed.stdout.strip() else []


@pytest.mark.slurm
@as_root
def test_the_reaper_cancels_a_killed_runs_slurm_jobs(
        slurm: bool,
        owner: Callable[[str | None], tuple[subprocess.Popen[str], Path, dict[str, str]]]
) -> None:
    proc, run, env = owner("slurm")
    done = subprocess.run(["sbatch", "--parsable", "-J", "kill-test", "--wrap", "sleep 300"],
                          env=env, cwd=run / "work", capture_output=True, text=True,
                          check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    job = done.stdout.strip().split(";")[0]
    try:
        assert in_queue(job), "the job is not queued"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        found, elapsed = wait_until(lambda: in_queue(job) + left_of({}, run.name), 30)
        assert not found, f"still there {elapsed:.1f}s after the kill: {found}"
        (note,) = reaped(run / "broker" / "ledger.jsonl")
        assert note["slurm_jobs"] == [job]
    finally:
        subprocess.run(["scancel", job], capture_output=True, check=False)


# -- 2. cleanup keeps to its own runs folder ---------------------------------------------------

def labelled_sleeper(tag: str, runs: Path, owner: str) -> str:
    """A container labelled as a run of ``runs`` owned by ``owner``, as a broker labels it."""
    done = subprocess.run(
        ["docker", "run", "-d", "--network=none", f"--label=org.cratebridge.test={tag}",
         f"--label={RUN_LABEL}=test-{uuid.uuid4().hex[:8]}", f"--label={OWNER_LABEL}={owner}",
         f"--label={runs_label(runs)}", IMAGE, "sleep", "300"],
        capture_output=True, text=True, check=True)
    return done.stdout.strip()[:12]


def test_cleanup_touches_only_its_own_runs_folder(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex
    a, b = tmp_path / "A" / "runs", tmp_path / "B" / "runs"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    dead = f"{socket.gethostname()}:999999999"  # above any pid_max: no such process
    try:
        a_dead = labelled_sleeper(tag, a, dead)
        a_live = labelled_sleeper(tag, a, owner_id())  # this test's process: alive
        b_dead = labelled_sleeper(tag, b, dead)
        b_live = labelled_sleeper(tag, b, owner_id())

        def cleanup(*args: str, runs: Path = a) -> dict[str, list[str]]:
            done = subprocess.run(cli("cleanup", "--json", "--config",
                                      str(config(tmp_path, runs)), *args),
                                  capture_output=True, text=True, check=True)
            doc: dict[str, list[str]] = json.loads(done.stdout)
            return doc

        def present() -> set[str]:
            return set(containers_of(f"org.cratebridge.test={tag}"))

        assert cleanup()["removed"] == [a_dead]
        assert present() == {a_live, b_dead, b_live}
        # --all, through a link to the same folder: every container of A, none of B
        (tmp_path / "link").symlink_to(a)
        doc = cleanup("--all", runs=tmp_path / "link")
        assert doc["removed"] == [a_live] and doc["mounts"] == []
        assert present() == {b_dead, b_live}
    finally:
        ids = containers_of(f"org.cratebridge.test={tag}")
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=False)


# -- 3. a clean run: its reaper was there, and is gone ----------------------------------------

@as_root
def test_the_reaper_of_a_clean_run_exits_with_it(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    proc = subprocess.Popen(cli("run", str(sleep_crate(tmp_path, 0)), "--out",
                                str(tmp_path / "r.zip"), "--config", str(config(tmp_path, runs))),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: set[int] = set()
    while proc.poll() is None:
        seen.update(p for p, (_, _, cmd) in processes().items()
                    if "cratebridge.containers.reaper" in cmd and str(runs) in cmd)
        time.sleep(0.05)
    assert proc.wait() == 0, proc.stderr.read() if proc.stderr else ""
    assert seen, "no reaper ran beside the run"
    assert left_of({}, str(runs)) == []  # the run's reaper exited with it
    (run_dir,) = runs.iterdir()
    ledger = run_dir / "broker" / "ledger.jsonl"
    assert reaped(ledger) == []  # it did nothing
    assert mounts_under(run_dir) == []
    # its containers carried the runs folder's label (the ledger keeps their arguments)
    argv = [json.loads(line).get("argv") or [] for line in ledger.read_text().splitlines()]
    assert any(f"--label={runs_label(runs)}" in a for a in argv)


# -- 4. the reaper killed too: the next run of the same runs folder sweeps --------------------

@as_root
def test_when_the_reaper_dies_too_the_next_run_of_the_folder_removes_the_remains(
        tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    cfg = config(tmp_path, runs)
    proc, owner = sleeping_run(tmp_path, cfg)
    try:
        (run_dir,) = runs.iterdir()
        tree = descendants(proc.pid)
        (reaper,) = [p for (p, _), cmd in tree.items() if "cratebridge.containers.reaper" in cmd]
        os.kill(reaper, signal.SIGKILL)  # as a `kill -9 -1` or the OOM killer would
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        # the engine's room (and a docker client of the broker's) die with cratebridge,
        # reaper or not
        found, _ = wait_until(lambda: left_of(tree), 5)
        assert not found, found
        assert containers_of(owner) and mounts_under(run_dir)  # nobody removed them
        nxt = subprocess.run(cli("run", str(sleep_crate(tmp_path, 0)), "--out",
                                 str(tmp_path / "r2.zip"), "--config", str(cfg)),
                             capture_output=True, text=True, check=False)
        assert nxt.returncode == 0, nxt.stderr
        assert containers_of(owner) == [] and mounts_under(run_dir) == []
    finally:
        clean_up(proc, owner, runs)


# -- 5. a stuck container of a dead run never delays the next run ------------------------------

HANG = 120  # seconds the stand-in docker hangs on removing the stuck container


def test_a_stuck_stale_container_does_not_delay_the_next_run(tmp_path: Path) -> None:
    """The sweep of a dead run's containers runs beside the new run, each docker call bounded.

    A stand-in ``docker`` (a wrapper, named as such) passes every call to the
    real client but hangs on removing the stuck container, as a daemon call
    blocked by an orphaned client did. The same run without a stale container
    is the baseline: the stuck one may cost a few seconds at most.
    """
    runs = tmp_path / "runs"
    runs.mkdir()
    tag = uuid.uuid4().hex
    hang = f"{HANG}.{int(tag[:4], 16) % 1000:03d}"  # a duration only this test's sleep has
    real = shutil.which("docker")
    assert real is not None
    wrapper_dir = tmp_path / "stand-in-docker"
    wrapper_dir.mkdir()
    wrapper = wrapper_dir / "docker"
    env = {**os.environ, "PATH": f"{wrapper_dir}{os.pathsep}{os.environ['PATH']}"}
    cfg = config(tmp_path, runs)

    def timed_run(name: str) -> float:
        started = time.monotonic()
        done = subprocess.run(cli("run", str(sleep_crate(tmp_path / name, 0)), "--out",
                                  str(tmp_path / f"{name}.zip"), "--config", str(cfg)),
                              capture_output=True, text=True, env=env, timeout=HANG, check=False)
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        return time.monotonic() - started

    stuck = ""
    try:
        for name in ("baseline", "with-stuck"):
            (tmp_path / name).mkdir()
        wrapper.write_text(f'#!/bin/sh\nexec {real} "$@"\n')
        wrapper.chmod(0o755)
        baseline = timed_run("baseline")
        stuck = labelled_sleeper(tag, runs, f"{socket.gethostname()}:999999999")
        wrapper.write_text(f'#!/bin/sh\n# stand-in: hangs on removing {stuck}\n'
                           f'case "$*" in *"rm -f {stuck}"*) exec sleep {hang} ;; esac\n'
                           f'exec {real} "$@"\n')
        took = timed_run("with-stuck")
        assert took < baseline + 5, f"the run waited for the sweep: {took:.1f}s vs {baseline:.1f}s"
        # the sweep runs beside the run: on a loaded machine it may reach the stuck
        # container only after the run has ended
        found, _ = wait_until(lambda: [] if subprocess.run(
            ["pgrep", "-f", f"sleep {hang}"], capture_output=True, check=False).returncode == 0
            else ["no hanging stand-in yet"], 30)
        assert not found, "the stand-in never hung: the test proves nothing"
    finally:
        subprocess.run(["pkill", "-f", f"sleep {hang}"], check=False)
        if stuck:
            subprocess.run([real, "rm", "-f", stuck], capture_output=True, check=False)


def test_a_living_reaper_is_found_by_its_run(tmp_path: Path) -> None:
    """What the service asks before it records a killed run: is its reaper still at work?"""
    from cratebridge.containers.reaper import RunRemains, reaping

    run_id = f"reaping-{uuid.uuid4().hex[:8]}"
    remains = RunRemains(run_id, "vm:1", "docker", tmp_path / run_id, tmp_path / "ledger.jsonl")
    watch = subprocess.Popen([sys.executable, "-m", "cratebridge.containers.reaper_watch",
                              json.dumps(remains.to_json())], stdin=subprocess.PIPE)
    try:
        # Popen returns while the kernel is still in the reaper's execve (its file
        # descriptors closed, its argv not yet in place: /proc shows an empty cmdline)
        deadline = time.monotonic() + 10
        while not (found := reaping(run_id)) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert found
        assert not reaping(run_id + "-other") and not reaping(run_id[:-1])
    finally:
        assert watch.stdin is not None
        # no last words, then "done": the run ended well, the reaper exits doing nothing
        watch.stdin.write(bytes(16) + b"done\n")
        watch.stdin.close()
        watch.wait(10)
    assert not reaping(run_id)

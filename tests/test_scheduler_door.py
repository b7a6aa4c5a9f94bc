"""The broker's Slurm door: its allow-lists as data, and a confined engine submitting for real."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cratebridge.containers.broker import Broker
from cratebridge.containers.confine import BROKER_DIR, Room
from cratebridge.containers.hardening import Refused
from cratebridge.containers.ledger import NODES, read_ledger
from cratebridge.containers.sandbox import (
    SLURM_JOB_LABEL,
    Sandbox,
    find_docker,
    labelled_containers,
)
from cratebridge.containers.scheduler import (
    authorise_query,
    authorise_sbatch,
    authorise_scancel,
    directives,
)


def test_sbatch_keeps_resources_and_takes_the_rest_over() -> None:
    got = authorise_sbatch(["-J", "job", "-p", "debug", "--mem=256", "--cpus-per-task=1",
                            "--export=ALL,X=1", "-o", "/w/%j.out", "-D", "/w",
                            "--parsable", "--wrap=exec echo hi"])
    assert got.flags == ["-J", "job", "-p", "debug", "--mem=256", "--cpus-per-task=1",
                         "--parsable"]
    assert got.script == "#!/bin/sh\nexec echo hi\n" and got.output == "/w/%j.out"
    assert got.export == ["X=1"]


@pytest.mark.parametrize("args, reason", [
    (["--uid=0", "--wrap=id"], "--uid is not allowed"),
    (["--get-user-env", "--wrap=id"], "--get-user-env is not allowed"),
    (["--container=/x", "--wrap=id"], "--container is not allowed"),
    (["-M", "other", "--wrap=id"], "-M is not allowed"),
    (["--wrap=id", "script.sh"], "a script and --wrap together"),
    (["script.sh", "arg"], "script arguments are not allowed"),
    ([], "give a script or --wrap"),
])
def test_sbatch_outside_the_list_is_refused(args: list[str], reason: str) -> None:
    with pytest.raises(Refused, match=reason):
        authorise_sbatch(args)


def test_sbatch_lines_in_a_script_are_read() -> None:
    script = "#!/bin/bash\n#SBATCH -J x\n#SBATCH --uid=0\n# comment\necho hi\n#SBATCH -p y\n"
    assert directives(script) == ["-J", "x", "--uid=0"]
    with pytest.raises(Refused, match="--uid is not allowed"):
        authorise_sbatch([*directives(script), "/w/job.sh"])


def test_scancel_names_only_this_runs_jobs() -> None:
    assert authorise_scancel(["12", "13_4", "--clusters=all", "-s", "TERM"], {"12", "13"}) == \
        ["scancel", "-s", "TERM", "12", "13_4"]
    with pytest.raises(Refused, match="99 is not a job of this run"):
        authorise_scancel(["12", "99"], {"12"})
    for filters in (["-u", "root"], ["--state=RUNNING"], ["--name=x"]):
        with pytest.raises(Refused, match="is not allowed"):
            authorise_scancel(filters, {"12"})


def test_queries_only_read() -> None:
    assert authorise_query("squeue", ["-h", "-o", "%i"]) == ["squeue", "-h", "-o", "%i"]
    assert authorise_query("scontrol", ["show", "job", "1"])[1] == "show"
    # the broker submits: a query for the room's user asks for the submitter's jobs
    assert authorise_query("squeue", ["-u", "engine", "--user=engine", "-uengine"], "engine",
                           "root") == ["squeue", "-u", "root", "--user=root", "-uroot"]
    for tool, args in (("scontrol", ["update", "jobid=1", "priority=1"]),
                       ("scontrol", ["reboot"]), ("sacctmgr", ["-i", "add", "user", "x"])):
        with pytest.raises(Refused, match="only"):
            authorise_query(tool, args)


# -- for real: a confined engine's sbatch on the one-node cluster ---------------------------

@pytest.fixture
def slurm_run(tmp_path: Path, slurm: bool) -> Iterator[tuple[Room, Path, Path, Broker]]:
    yield from _door(tmp_path)


@pytest.fixture
def node_slurm_run(tmp_path: Path, slurm: bool) -> Iterator[tuple[Room, Path, Path, Broker]]:
    yield from _door(tmp_path, slurm_broker="node")


def _door(tmp_path: Path, slurm_broker: str = "host") -> Iterator[tuple[Room, Path, Path,
                                                                        Broker]]:
    run = tmp_path / "run"
    folders = {n: run / n for n in ("work", "tmp", "sandbox", "broker", "request")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    run.chmod(0o700)
    sandbox = Sandbox(run_id=f"door-{uuid.uuid4().hex[:8]}", docker=find_docker() or "docker",
                      ledger=folders["broker"] / "ledger.jsonl", writable=(folders["work"],),
                      readable=(run,), room_tmp=folders["tmp"], scheduler="slurm",
                      slurm_broker=slurm_broker)
    room = Room(uid=1000, gid=1000, etc=folders["sandbox"] / "etc", tmp=folders["tmp"],
                readable=(folders["request"],), writable=(folders["work"],),
                broker=folders["sandbox"])
    room.write_etc()
    env = sandbox.engine_env(folders["sandbox"], BROKER_DIR)
    broker = Broker(sandbox, folders["sandbox"] / "docker.sock", 1000, 1000, room=room)
    with broker.serving():
        yield room, folders["work"], Path(env["PATH"].split(":")[0]), broker


SUBMITTER = r"""
import json, os, subprocess, sys, time
work = sys.argv[1]
def run(*argv, **kw):
    done = subprocess.run(list(argv), capture_output=True, text=True, **kw)
    return {"argv": list(argv), "code": done.returncode, "out": done.stdout.strip(),
            "err": done.stderr.strip()}
found = {}
found["sbatch"] = run("sbatch", "--parsable", "-J", "door-test", "-o", f"{work}/job-%j.out",
                      "--wrap", f"id -u > {work}/job-uid; "
                      f"tail -n +3 /proc/net/dev | cut -d: -f1 > {work}/job-net; "
                      f"touch {os.environ['HOST_MARKER']} 2>/dev/null; "
                      f"cat {os.environ['HOST_SECRET']} > {work}/job-secret 2>&1; true")
job = found["sbatch"]["out"].split(";")[0]
for _ in range(120):
    if os.path.exists(f"{work}/job-uid"):
        break
    time.sleep(0.5)
time.sleep(1)
found["uid"] = open(f"{work}/job-uid").read().strip() if os.path.exists(f"{work}/job-uid") else None
found["net"] = open(f"{work}/job-net").read().split() if os.path.exists(f"{work}/job-net") else None
found["squeue"] = run("squeue", "-h", "-j", job)
found["scancel_foreign"] = run("scancel", "1")
found["scontrol_update"] = run("scontrol", "update", f"jobid={job}", "priority=1")
found["sbatch_uid"] = run("sbatch", "--uid=0", "--wrap", "id")
found["stdin"] = run("sbatch", "--parsable", "/dev/stdin",
                     input="#!/bin/sh\n#SBATCH --get-user-env\nid\n")
# a script by a relative path, run by its own #! line (bash), as Nextflow submits
with open(f"{work}/job.sh", "w") as script:
    script.write("#!/bin/bash\n#SBATCH -J rel\n[[ -n $BASH_VERSION ]] && echo bash > "
                 f"{work}/job-shell\n")
found["relative"] = run("sbatch", "job.sh", cwd=work)
for _ in range(120):
    if os.path.exists(f"{work}/job-shell"):
        break
    time.sleep(0.5)
found["shell"] = open(f"{work}/job-shell").read().strip() \
    if os.path.exists(f"{work}/job-shell") else None
print(json.dumps(found))
"""


@pytest.mark.slurm
@pytest.mark.skipif(os.geteuid() != 0, reason="the room drops to its uid from root")
def test_a_confined_engine_submits_through_the_door(
        slurm_run: tuple[Room, Path, Path, Broker], tmp_path: Path) -> None:
    room, work, bin_dir, broker = slurm_run
    host = Path(tempfile.mkdtemp(prefix="cb-door-host-"))
    try:
        secret = host / "secret.txt"
        secret.write_text("HOST-SECRET-DOOR")
        secret.chmod(0o644)
        marker = host / "pwned"
        env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CRATEBRIDGE_BROKER":
               str(BROKER_DIR / "docker.sock"), "HOST_MARKER": str(marker),
               "HOST_SECRET": str(secret), "HOME": str(work)}
        with room.command([sys.executable, "-c", SUBMITTER, str(work)], env, work) \
                as (argv, fds):
            done = subprocess.run(argv, pass_fds=fds, env={}, capture_output=True, text=True,
                                  check=False, timeout=180)
        assert done.returncode == 0, done.stderr
        seen = json.loads(done.stdout)
        assert seen["sbatch"]["code"] == 0, seen["sbatch"]
        job = seen["sbatch"]["out"].split(";")[0]
        assert job in broker.jobs
        # the job ran in a room of its own: the step uid, no network, no host files
        assert seen["uid"] == "1000" and seen["net"] == ["lo"]
        assert not marker.exists()
        assert "HOST-SECRET-DOOR" not in (work / "job-secret").read_text()
        assert seen["squeue"]["code"] == 0
        assert seen["relative"]["code"] == 0 and seen["shell"] == "bash"
        for refused in ("scancel_foreign", "scontrol_update", "sbatch_uid", "stdin"):
            assert seen[refused]["code"] == 125 and "refused" in seen[refused]["err"], refused
        ledger = [json.loads(line) for line in broker.sandbox.ledger.read_text().splitlines()]
        assert any(e.get("slurm_job") == job for e in ledger)
        assert sum("refused" in e for e in ledger) == 4
    finally:
        shutil.rmtree(host, ignore_errors=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the job is gone when the run ends
        listed = subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True,
                                check=False)
        if job not in listed.stdout:
            break
        time.sleep(1)


NODE_JOB = r"""
import json, os, subprocess, sys, time
work = sys.argv[1]
job = subprocess.run(["sbatch", "--parsable", "-J", "node-broker", "-o", f"{work}/job-%j.out",
                      "--wrap", f"stat -L -c %i /run/cratebridge/docker.sock > {work}/socket; "
                      f"docker run --rm {sys.argv[2]} echo from-the-node > {work}/ran; "
                      f"docker run --rm --privileged {sys.argv[2]} true 2> {work}/privileged; "
                      f"sbatch --wrap true > {work}/nested 2>&1; echo $? >> {work}/nested; "
                      f"touch {work}/done"],
                     capture_output=True, text=True)
for _ in range(240):
    if os.path.exists(f"{work}/done"):
        break
    time.sleep(0.5)
print(json.dumps({"job": job.stdout.strip().split(";")[0], "err": job.stderr}))
"""


@pytest.mark.slurm
@pytest.mark.docker
@pytest.mark.skipif(os.geteuid() != 0, reason="the room drops to its uid from root")
def test_a_job_with_a_broker_on_its_node_reaches_only_that_broker(
        node_slurm_run: tuple[Room, Path, Path, Broker]) -> None:
    """``[slurm] broker = "node"``: the job's room sees its own broker's socket where the
    run's would be; that broker holds the same policy and keeps its own ledger."""
    room, work, bin_dir, broker = node_slurm_run
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CRATEBRIDGE_BROKER":
           str(BROKER_DIR / "docker.sock"), "HOME": str(work)}
    with room.command([sys.executable, "-c", NODE_JOB, str(work), "cratebridge/busybox:1"],
                      env, work) as (argv, fds):
        done = subprocess.run(argv, pass_fds=fds, env={}, capture_output=True, text=True,
                              check=False, timeout=180)
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)["job"]
    assert job in broker.jobs, done.stdout
    assert (work / "done").exists(), (work / f"job-{job}.out").read_text()
    # not the run broker's socket: the job's own, on its node
    assert int((work / "socket").read_text()) != broker.socket_path.stat().st_ino
    assert (work / "ran").read_text().strip() == "from-the-node"
    assert "refused" in (work / "privileged").read_text()
    nested = (work / "nested").read_text()
    assert nested.splitlines()[-1] == "125" and "cannot submit jobs" in nested
    run_ledger = broker.sandbox.ledger
    assert not [line for line in run_ledger.read_text().splitlines() if '"token"' in line]
    node = run_ledger.parent / "nodes" / f"job-{job}" / "broker"
    merged = read_ledger(run_ledger)
    assert [e.container.image for e in merged.entries] == ["cratebridge/busybox:1"]
    assert merged.entries[0].container.image_id
    assert merged.entries[0].stderr is not None and node in merged.entries[0].stderr.parents
    assert any("privileged" in r for r in merged.refusals), merged.refusals
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (node / "docker.sock").exists():
        time.sleep(0.5)  # the job's broker ends with the job
    assert not (node / "docker.sock").exists()


@pytest.mark.slurm
@pytest.mark.docker
@pytest.mark.skipif(os.geteuid() != 0, reason="the room drops to its uid from root")
def test_a_cancelled_job_removes_the_containers_its_node_broker_started(
        node_slurm_run: tuple[Room, Path, Path, Broker]) -> None:
    room, work, bin_dir, broker = node_slurm_run
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CRATEBRIDGE_BROKER":
           str(BROKER_DIR / "docker.sock"), "HOME": str(work)}
    submit = ["sbatch", "--parsable", "-J", "node-cancel", "-o", f"{work}/job-%j.out", "--wrap",
              "docker run --rm cratebridge/busybox:1 sleep 300"]
    with room.command(submit, env, work) as (argv, fds):
        done = subprocess.run(argv, pass_fds=fds, env={}, capture_output=True, text=True,
                              check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    job = done.stdout.strip().split(";")[0]
    label = f"label=org.cratebridge.run={broker.sandbox.run_id}"

    def running() -> list[str]:
        return subprocess.run(["docker", "ps", "-aq", "--filter", label], capture_output=True,
                              text=True, check=True).stdout.split()

    deadline = time.monotonic() + 60
    while not running() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert running(), (work / f"job-{job}.out").read_text()
    subprocess.run(["scancel", job], check=True)
    deadline = time.monotonic() + 30
    while running() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not running()


# -- the node's epilog: what a job killed whole left -----------------------------------


def _mount_points(part: str) -> list[str]:
    """This mount namespace's mount points whose path holds ``part``."""
    points = (line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines())
    return [point for point in points if part in point]


@pytest.mark.docker
@pytest.mark.skipif(os.geteuid() != 0, reason="pinned mounts need root, as the epilog has")
def test_the_epilog_removes_only_its_jobs_containers_and_pinned_mounts(
        tmp_path: Path, docker_available: bool) -> None:
    job, other = (str(4_000_000_000 + uuid.uuid4().int % 1_000_000_000) for _ in range(2))
    docker = find_docker() or "docker"
    started = {one: subprocess.run(
        [docker, "run", "-d", "--network=none", f"--label={SLURM_JOB_LABEL}={one}",
         "cratebridge/busybox:1", "sleep", "300"],
        capture_output=True, text=True, check=True).stdout.strip() for one in (job, other)}
    source = tmp_path / "data"
    source.mkdir()
    points = [tmp_path / "run" / "broker" / "nodes" / f"job-{one}" / "broker" / "mounts" / "p"
              for one in (job, other)]
    try:
        for point in points:
            point.mkdir(parents=True)
            subprocess.run(["mount", "--bind", str(source), str(point)], check=True)
        done = subprocess.run([sys.executable, "-m", "cratebridge.containers.epilog"],
                              env={"SLURM_JOB_ID": job, "PATH": os.environ["PATH"]},
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        assert "removed 1 container(s)" in done.stderr and "released 1 pinned" in done.stderr
        assert not labelled_containers(docker, f"{SLURM_JOB_LABEL}={job}")
        assert labelled_containers(docker, f"{SLURM_JOB_LABEL}={other}")  # another job's
        assert _mount_points(f"/job-{job}/") == [] and _mount_points(f"/job-{other}/")
    finally:
        subprocess.run([docker, "rm", "-f", *started.values()], capture_output=True,
                       check=False)
        for point in points:
            subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)


@pytest.mark.slurm
@pytest.mark.docker
@pytest.mark.skipif(os.geteuid() != 0, reason="the room drops to its uid from root")
def test_a_job_killed_whole_leaves_no_container_and_no_pinned_mount(
        node_slurm_run: tuple[Room, Path, Path, Broker]) -> None:
    """Every process of the job killed at once, its reaper too, as a cluster with
    ``proctrack/cgroup`` kills a job's cgroup: the node's epilog (slurm.conf
    ``Epilog``) removes the container the job's broker started and the mount it
    pinned. This cluster's ``proctrack/linuxproc`` does not follow the reaper into
    its own session, so the test kills the reaper first, then ``scancel -s KILL
    --full``; the job's ledger shows the reaper never acted."""
    room, work, bin_dir, _ = node_slurm_run
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CRATEBRIDGE_BROKER":
           str(BROKER_DIR / "docker.sock"), "HOME": str(work)}
    submit = ["sbatch", "--parsable", "-J", "node-kill", "-o", f"{work}/job-%j.out", "--wrap",
              f"docker run --rm -v {work}:/w cratebridge/busybox:1 sleep 300"]
    with room.command(submit, env, work) as (argv, fds):
        done = subprocess.run(argv, pass_fds=fds, env={}, capture_output=True, text=True,
                              check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    job = done.stdout.strip().split(";")[0]
    docker = find_docker() or "docker"

    def left() -> tuple[list[str], list[str]]:
        return (labelled_containers(docker, f"{SLURM_JOB_LABEL}={job}"),
                _mount_points(f"/broker/nodes/job-{job}/broker/mounts/"))

    deadline = time.monotonic() + 60
    while not all(left()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert all(left()), (work / f"job-{job}.out").read_text()
    folder = f"/{NODES}/job-{job}/"
    reaper = subprocess.run(["pkill", "-KILL", "-f", f"reaper_watch .*{folder}"], check=False)
    assert reaper.returncode == 0, "the job's reaper was not found"
    subprocess.run(["scancel", "-s", "KILL", "--full", job], check=True)
    deadline = time.monotonic() + 60
    while any(left()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left() == ([], [])
    ledger = work.parent / "broker" / NODES / f"job-{job}" / "broker" / "ledger.jsonl"
    assert '"reaped"' not in ledger.read_text()  # the epilog removed them, not the reaper

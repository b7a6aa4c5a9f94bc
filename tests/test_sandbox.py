"""The two walls: the engine's room, and the broker that is its only door to Docker.

The broker tests talk to a real broker through the real client (the ``docker``
a confined engine sees) and start real containers; the room tests start real
bubblewrap confinements and look from inside.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cratebridge.containers import broker as broker_module
from cratebridge.containers.broker import Broker
from cratebridge.containers.confine import Room
from cratebridge.containers.dockerapi import DockerAPI, local_api
from cratebridge.containers.hardening import Refused, authorise
from cratebridge.containers.ledger import read_ledger, refusal_note
from cratebridge.containers.sandbox import RUN_LABEL, Limits, Sandbox, find_docker

IMAGE = "cratebridge/busybox:1"


def sandbox_for(tmp_path: Path, **kw: object) -> Sandbox:
    run = tmp_path / "run"
    work = run / "work"
    (run / "broker").mkdir(parents=True, exist_ok=True)
    work.mkdir(exist_ok=True)
    return Sandbox(run_id=f"test-{tmp_path.name}", docker=find_docker() or "docker",
                   ledger=run / "broker" / "ledger.jsonl", writable=(work,), readable=(run,),
                   room_tmp=run / "tmp", limits=Limits(memory="128m", cpus=0.5, pids=32),
                   **kw)  # type: ignore[arg-type]


# -- the policy, as data ---------------------------------------------------------------------

def test_engine_flags_are_replaced_by_the_hardening(tmp_path: Path) -> None:
    sb = sandbox_for(tmp_path)
    allowed = authorise(["run", "-i", "--net=host", "--user=0:0", "--memory=64g", "--cpus=8",
                         f"--mount=type=bind,source={sb.writable[0]},target=/out",
                         "--cidfile=/tmp/x", "cratebridge/busybox:1", "sh", "-c", "echo hi"], sb)
    argv = list(allowed.argv)
    assert argv[-4:] == [IMAGE, "sh", "-c", "echo hi"] and argv[-5] == "--"
    flags = argv[: argv.index("--")]
    for dropped in ("--net=host", "--user=0:0", "--memory=64g", "--cpus=8", "--cidfile=/tmp/x"):
        assert dropped not in flags
    for wanted in ("--network=none", "--cap-drop=ALL", "--security-opt=no-new-privileges",
                   "--user=1000:1000", "--memory=128m", "--pids-limit=32", "--read-only",
                   "--pull=never", f"--label={RUN_LABEL}={sb.run_id}",
                   f"--mount=type=bind,source={sb.writable[0]},target=/out"):
        assert wanted in flags
    assert allowed.interactive and allowed.image_id and allowed.image_id.startswith("sha256:")


@pytest.mark.parametrize("argv, reason", [
    (["run", "--privileged", IMAGE, "true"], "--privileged is not allowed"),
    (["run", "--cap-add=SYS_ADMIN", IMAGE, "true"], "--cap-add is not allowed"),
    (["run", "--security-opt", "seccomp=unconfined", IMAGE, "true"], "--security-opt"),
    (["run", "--pid=host", IMAGE, "true"], "--pid is not allowed"),
    (["run", "--device=/dev/sda", IMAGE, "true"], "--device is not allowed"),
    (["run", "--volumes-from=other", IMAGE, "true"], "--volumes-from is not allowed"),
    (["run", "-v", "/:/host", IMAGE, "true"], "outside the run's folder"),
    (["run", "-v", "/var/run/docker.sock:/s", IMAGE, "true"], "outside the run's folder"),
    (["run", "--mount=type=volume,source=v,target=/v", IMAGE, "true"], "only bind and tmpfs"),
    (["run", "-v", "named:/v", IMAGE, "true"], "named volumes are not allowed"),
    (["run", "--label=org.cratebridge.run=other", IMAGE, "true"], "set by cratebridge only"),
    # a job's label: the node's epilog removes the containers that carry it
    (["run", "--label", "org.cratebridge.slurm_job=1", IMAGE, "true"], "set by cratebridge only"),
    (["-H", "unix:///var/run/docker.sock", "ps"], "option -H is not allowed"),
    (["--context=host", "run", IMAGE, "true"], "option --context is not allowed"),
    (["pull", "alpine"], "'docker pull' is not allowed"),
    (["-l", "error", "pull", "alpine"], "'docker pull' is not allowed"),
    (["image", "pull", "alpine"], "'docker image pull' is not allowed"),
    (["build", "."], "'docker build' is not allowed"),
    (["load"], "'docker load' is not allowed"),
    (["create", IMAGE], "'docker create' is not allowed"),
    (["container", "create", IMAGE], "'docker container create' is not allowed"),
    (["start", "abc"], "'docker start' is not allowed"),
    (["exec", "abc", "sh"], "'docker exec' is not allowed"),
    (["run", "no-such/image:404", "true"], "never pulls"),
    (["kill", "not-ours"], "not a container of this run"),
])
def test_requests_outside_the_policy_are_refused(tmp_path: Path, argv: list[str],
                                                 reason: str) -> None:
    with pytest.raises(Refused, match=reason.replace("(", r"\(")):
        authorise(argv, sandbox_for(tmp_path))


def test_bare_env_flags_take_the_engines_values_and_the_command_is_untouched(
        tmp_path: Path) -> None:
    allowed = authorise(["run", "-e", "A", "--env", "B", "-e", "C=3", "--cidfile", "c.id", IMAGE,
                         "echo", "-e", "2", "--cidfile", "x"], sandbox_for(tmp_path), {"A": "1"})
    argv = list(allowed.argv)
    assert "-e=A=1" in argv and "-e=C=3" in argv and not any("B" in a for a in argv)
    assert argv[argv.index("--") + 1:] == [IMAGE, "echo", "-e", "2", "--cidfile", "x"]
    assert allowed.cidfile == "c.id"  # the client writes it, with the engine's rights


@pytest.mark.parametrize("prefix", [["-l", "error"], ["--log-level=error"], ["-D"], []])
@pytest.mark.parametrize("run", [["run"], ["container", "run"]])
def test_global_options_and_container_run_are_hardened_alike(
        tmp_path: Path, prefix: list[str], run: list[str]) -> None:
    allowed = authorise([*prefix, *run, "--network", "host", "-it", IMAGE, "id"],
                        sandbox_for(tmp_path))
    assert allowed.argv[0] == "run" and "--network=none" in allowed.argv
    assert "--network=host" not in allowed.argv and "-t" not in allowed.argv


def test_a_mount_through_a_symlink_is_resolved_on_the_host(tmp_path: Path) -> None:
    sb = sandbox_for(tmp_path)
    (sb.writable[0] / "etc").symlink_to("/etc")
    with pytest.raises(Refused, match="outside the run's folder"):
        authorise(["run", "-v", f"{sb.writable[0]}/etc:/x", IMAGE, "true"], sb)


def test_engine_tmp_is_the_runs_tmp_folder(tmp_path: Path) -> None:
    sb = sandbox_for(tmp_path)
    assert sb.room_tmp is not None
    (sb.room_tmp / "job").mkdir(parents=True)
    allowed = authorise(["run", "-v", "/tmp/job:/job", IMAGE, "true"], sb)
    assert f"--mount=type=bind,source={sb.room_tmp / 'job'},target=/job,readonly" \
        in allowed.argv


def test_a_mount_outside_work_is_read_only(tmp_path: Path) -> None:
    sb = sandbox_for(tmp_path)
    inputs = tmp_path / "run" / "request"
    inputs.mkdir()
    allowed = authorise(["run", "-v", f"{inputs}:/in:rw", IMAGE, "true"], sb)
    assert f"--mount=type=bind,source={inputs},target=/in,readonly" in allowed.argv


# -- the broker, for real ------------------------------------------------------------------

@pytest.fixture
def broker(tmp_path: Path) -> Iterator[tuple[Sandbox, Path]]:
    sb = sandbox_for(tmp_path)
    short = Path(tempfile.mkdtemp(prefix="cb-"))  # the client connects by path: keep it short
    socket = short / "docker.sock"
    try:
        with Broker(sb, socket, os.getuid(), os.getgid()).serving():
            yield sb, socket
    finally:
        sb.stop_all()
        shutil.rmtree(short, ignore_errors=True)


def client(socket: Path, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    """The ``docker`` a confined engine runs, pointed at the broker."""
    env = {"PATH": os.environ["PATH"], "CRATEBRIDGE_BROKER": str(socket)}
    return subprocess.run([sys.executable, "-m", "cratebridge.containers.shim", *args],
                          env=env, capture_output=True, text=True, check=False,
                          **kw)  # type: ignore[call-overload]


def test_the_broker_stops_listening_as_its_block_ends(tmp_path: Path) -> None:
    """Leaving ``serving()`` ends the broker's thread at once (no poll to wait out),
    removes its socket, and a later client finds no door."""
    sb = sandbox_for(tmp_path)
    short = Path(tempfile.mkdtemp(prefix="cb-"))
    sock = short / "docker.sock"
    try:
        with Broker(sb, sock, os.getuid(), os.getgid()).serving():
            assert sock.exists()
            assert [t for t in threading.enumerate() if t.name == "cratebridge-broker"]
        assert not [t for t in threading.enumerate() if t.name == "cratebridge-broker"]
        assert not sock.exists()
        done = client(sock, "version")
        assert done.returncode != 0
    finally:
        shutil.rmtree(short, ignore_errors=True)


@pytest.mark.docker
def test_refusals_reach_the_engine_and_the_ledger(broker: tuple[Sandbox, Path],
                                                  docker_available: bool) -> None:
    sb, socket = broker
    for command in (["pull", "alpine"], ["-l", "error", "pull", "x"], ["image", "pull", "x"],
                    ["run", "--privileged", IMAGE, "true"]):
        done = client(socket, *command)
        assert done.returncode == 125 and "refused" in done.stderr
    refusals = read_ledger(sb.ledger).refusals
    assert len(refusals) == 4
    assert sb.containers() == []
    # a run's error quotes the first three different ones, in order
    note = refusal_note(refusals + refusals)
    assert note.startswith("sandbox refused: ") and note.count("; ") == 2, note
    assert note.removeprefix("sandbox refused: ").split("; ") == list(dict.fromkeys(refusals))[:3]
    assert refusal_note(()) == ""


@pytest.mark.docker
def test_an_image_inspect_is_answered_from_the_daemon_as_the_client_answers(
        broker: tuple[Sandbox, Path], docker_available: bool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``docker inspect IMAGE`` (cwltool asks it before each step) is answered from
    the daemon's socket, not by starting the client; what the engine reads is what
    the client would print, and its exit code the client's. One with a ``--format``
    is the client's to answer."""
    if local_api() is None:
        pytest.skip("the daemon here is not a local socket")
    sb, socket = broker
    started: list[list[str]] = []
    start = Broker._start

    def recording(self: Broker, sock: Any, allowed: Any, argv: list[str], *args: Any,
                  **kwargs: Any) -> int:
        started.append(list(argv))  # what the broker starts a client for
        return start(self, sock, allowed, argv, *args, **kwargs)

    monkeypatch.setattr(Broker, "_start", recording)
    for asked, names in ((["inspect", IMAGE], [IMAGE]),
                         (["image", "inspect", IMAGE, "cratebridge/python:3.11"],
                          [IMAGE, "cratebridge/python:3.11"]),
                         (["image", "inspect", "no/such-image:0"], ["no/such-image:0"]),
                         (["image", "inspect", IMAGE, "no/such-image:0"],
                          [IMAGE, "no/such-image:0"])):
        done = client(socket, *asked)
        bare = subprocess.run([sb.docker, "image", "inspect", "--", *names],
                              capture_output=True, text=True, check=False)
        assert (done.returncode, done.stdout) == (bare.returncode, bare.stdout), asked
        assert ("No such image: no/such-image:0" in done.stderr) == bool(bare.returncode)
    assert started == []  # no client started for any of them
    formatted = client(socket, "inspect", "--format", "{{.Id}}", IMAGE)
    assert formatted.returncode == 0 and formatted.stdout.startswith("sha256:")
    assert len(started) == 1 and "--format={{.Id}}" in started[0]


PROBE = r"""
set +e
echo "uid=$(id -u)"
grep -E '^(CapEff|NoNewPrivs)' /proc/self/status
echo "interfaces=$(ls /sys/class/net | tr '\n' ' ')"
echo "connect=$(nc -w 2 172.17.0.1 2375 </dev/null 2>&1)"
echo x > /input/data.txt 2>/dev/null; echo "write_input=$?"
echo x > /etc/owned 2>/dev/null; echo "write_root=$?"
echo x > /out/ok.txt; echo "write_out=$?"
chown 0 /out/ok.txt 2>/dev/null; echo "chown=$?"
mknod /tmp/dev c 1 3 2>/dev/null; echo "mknod=$?"
cat; echo
"""


@pytest.mark.docker
def test_probe_from_inside_a_step_container(broker: tuple[Sandbox, Path],
                                            docker_available: bool, tmp_path: Path) -> None:
    sb, socket = broker
    inputs = tmp_path / "run" / "request"
    inputs.mkdir()
    (inputs / "data.txt").write_text("precious\n")
    out = sb.writable[0] / "out"
    out.mkdir()
    os.chown(out, 1000, 1000)  # in a run, the room hands its writable folders to the uid
    done = client(socket, "-l", "error", "container", "run", "-i", "--rm", "--user=0:0",
                  "--net=host", "-v", f"{inputs}:/input", "-v", f"{out}:/out",
                  "--label=org.cratebridge.step=probe", IMAGE, "sh", "-c", PROBE,
                  input="from stdin")
    assert done.returncode == 0, done.stderr
    seen = dict(line.split("=", 1) for line in done.stdout.split("\n") if "=" in line)
    caps = {k: v for k, v in (line.split(":\t") for line in done.stdout.splitlines()
                              if line.startswith(("CapEff", "NoNewPrivs")))}
    assert seen["uid"] == "1000"
    assert caps["CapEff"].strip("0") == "" and caps["NoNewPrivs"].strip() == "1"
    assert seen["interfaces"].split() == ["lo"]
    assert "Network is unreachable" in seen["connect"]
    assert seen["write_input"] != "0" and seen["write_root"] != "0"
    assert seen["write_out"] == "0"
    assert seen["chown"] != "0" and seen["mknod"] != "0"
    assert "from stdin" in done.stdout  # standard input reaches the container
    assert (inputs / "data.txt").read_text() == "precious\n"
    entry = read_ledger(sb.ledger).entries[0]
    assert entry.token == "probe" and entry.exit_code == 0
    assert entry.container.image_id and entry.container.image_id.startswith("sha256:")


@pytest.mark.docker
def test_a_running_container_is_hardened_and_dies_with_its_client(
        broker: tuple[Sandbox, Path], docker_available: bool, tmp_path: Path) -> None:
    sb, socket = broker
    cidfile = tmp_path / "cid"
    env = {"PATH": os.environ["PATH"], "CRATEBRIDGE_BROKER": str(socket)}
    proc = subprocess.Popen([sys.executable, "-m", "cratebridge.containers.shim", "run",
                             "--rm", f"--cidfile={cidfile}", IMAGE, "sleep", "30"], env=env)
    try:
        for _ in range(100):
            if cidfile.exists() and sb.containers():
                break
            time.sleep(0.1)
        ids = sb.containers()
        assert ids, "the container did not start"
        assert cidfile.read_text().startswith(ids[0])  # the client wrote the engine's cidfile
        info = json.loads(subprocess.run([sb.docker, "inspect", ids[0]], capture_output=True,
                                         text=True, check=True).stdout)[0]
        host = info["HostConfig"]
        assert host["NetworkMode"] == "none"
        assert host["CapDrop"] == ["ALL"]
        assert "no-new-privileges" in host["SecurityOpt"]
        assert host["ReadonlyRootfs"] is True
        assert host["Memory"] == 128 * 1024 * 1024 and host["PidsLimit"] == 32
        assert host["NanoCpus"] == 500_000_000
        assert info["Config"]["User"] == "1000:1000"
        # queries about this run's containers are allowed; about others, refused
        assert client(socket, "inspect", ids[0]).returncode == 0
        assert client(socket, "ps", "-q").stdout.split() == [ids[0][:12]]
    finally:
        proc.kill()  # the engine's client goes: the broker removes its container
        proc.wait(30)
    for _ in range(100):
        if not sb.containers():
            break
        time.sleep(0.1)
    assert sb.containers() == []


def test_client_imports_next_to_nothing() -> None:
    code = ("import sys; import cratebridge.containers.shim; "
            "heavy = [m for m in ('cratebridge.containers.sandbox', "
            "'cratebridge.containers.hardening', 'dataclasses', 'subprocess') "
            "if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- the room ------------------------------------------------------------------------------

ROOM_PROBE = r"""
import json, os, socket
status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines())
def exists(p):
    return os.path.exists(p)
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
    "caps": status["CapEff"].strip(), "nnp": status["NoNewPrivs"].strip(),
    "interfaces": [n for _, n in socket.if_nameindex()],
    "etc_passwd": open("/etc/passwd").read(),
    "etc": sorted(os.listdir("/etc")),
    "root_listing": sorted(os.listdir("/")),
    "runs": sorted(os.listdir(os.environ["RUNS"])),
    "docker_sock": exists("/var/run/docker.sock") or exists("/run/docker.sock"),
    "host_root_home": sorted(os.listdir("/root")) if exists("/root") else None,
    "pid1": open("/proc/1/cmdline").read().split("\0")[0],
    "write_request": os.access(os.environ["REQUEST"], os.W_OK),
    "write_work": os.access(os.environ["WORK"], os.W_OK),
    "tmp": sorted(os.listdir("/tmp")),
}))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="the room drops to its uid from root")
def test_probe_from_inside_the_room(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    run, other = runs / "this-run", runs / "other-run"
    for folder in (run / "request", run / "work", run / "tmp", run / "sandbox", other):
        folder.mkdir(parents=True)
    (other / "secret.txt").write_text("other run's data")
    (run / "tmp" / "engine-tmp").write_text("")
    room = Room(uid=1000, gid=1000, etc=run / "sandbox" / "etc", tmp=run / "tmp",
                readable=(run / "request",), writable=(run / "work",))
    room.write_etc()
    env = {"RUNS": str(runs), "REQUEST": str(run / "request"), "WORK": str(run / "work"),
           "PATH": "/usr/bin:/bin"}
    with room.command([sys.executable, "-c", ROOM_PROBE], env, run / "work") as (argv, fds):
        done = subprocess.run(argv, pass_fds=fds, env={}, capture_output=True, text=True,
                              check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert (seen["uid"], seen["gid"], seen["groups"]) == (1000, 1000, [])
    assert int(seen["caps"], 16) == 0 and seen["nnp"] == "1"
    assert seen["interfaces"] == ["lo"]
    host_users = {line.split(":")[0] for line in Path("/etc/passwd").read_text().splitlines()}
    room_users = {line.split(":")[0] for line in seen["etc_passwd"].splitlines()}
    assert room_users <= {"root", "engine", "nobody"} and room_users != host_users
    assert "shadow" not in seen["etc"] and "hosts" in seen["etc"]
    assert seen["runs"] == ["this-run"]  # no other run
    assert seen["docker_sock"] is False
    assert seen["host_root_home"] in (None, [".pyenv"])  # at most the Python runtime
    assert seen["pid1"].endswith("bwrap")
    assert seen["write_request"] is False and seen["write_work"] is True
    # the run's own tmp folder, not the host's (and the mount points leading to this
    # test's run folder, itself under /tmp)
    leading = {p.parts[2] for p in (run, *room.runtime) if p.parts[1:2] == ("tmp",)}
    assert set(seen["tmp"]) - leading == {"engine-tmp"}


@pytest.mark.skipif(os.geteuid() != 0, reason="the room drops to its uid from root")
def test_the_room_dies_with_its_parent(tmp_path: Path) -> None:
    run = tmp_path / "run"
    for folder in (run / "work", run / "tmp", run / "sandbox"):
        folder.mkdir(parents=True)
    room = Room(uid=1000, gid=1000, etc=run / "sandbox" / "etc", tmp=run / "tmp",
                writable=(run / "work",))
    room.write_etc()
    marker = run / "work" / "alive"
    script = f"import time\nwhile True:\n    open({str(marker)!r}, 'w').write(str(time.time()))\n" \
             "    time.sleep(0.1)\n"
    with room.command([sys.executable, "-c", script], {}, run / "work") as (argv, fds):
        # a parent that starts the room, then is killed with SIGKILL
        parent = subprocess.Popen(
            [sys.executable, "-c", "import subprocess, sys, time; "
             f"subprocess.Popen({argv!r}, pass_fds={fds!r}, env={{}}); time.sleep(60)"],
            pass_fds=fds)
        for _ in range(100):
            if marker.exists():
                break
            time.sleep(0.1)
        parent.kill()
        parent.wait()
    time.sleep(1)
    before = marker.stat().st_mtime
    time.sleep(1)
    assert marker.stat().st_mtime == before, "the engine outlived cratebridge"


# -- pinned mount sources ------------------------------------------------------------------

@pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root")
def test_a_mount_source_is_pinned_and_a_symlink_on_its_path_refused(tmp_path: Path) -> None:
    from cratebridge.containers.mounts import Pinned, pin_mounts

    run = tmp_path / "run"
    (run / "work" / "out").mkdir(parents=True)
    (run / "work" / "out" / "f.txt").write_text("inside")
    (run / "work" / "swapped").symlink_to("/etc")
    pinned = Pinned(run / "broker" / "mounts" / "c1")
    try:
        argv = pin_mounts([f"--mount=type=bind,source={run}/work/out,target=/o,readonly"],
                          pinned, (run,))
        source = argv[0].split("source=")[1].split(",")[0]
        assert source.startswith(str(run / "broker" / "mounts"))
        assert argv[0].endswith(",target=/o,readonly")
        assert (Path(source) / "f.txt").read_text() == "inside"  # the very folder
        # a folder swapped for a symlink after the check is not followed
        for sneaky in (f"{run}/work/swapped", f"{run}/work/swapped/passwd"):
            with pytest.raises(OSError):
                pin_mounts([f"--mount=type=bind,source={sneaky},target=/x"], pinned, (run,))
        with pytest.raises(PermissionError, match="outside the run's folder"):
            pin_mounts(["--mount=type=bind,source=/etc,target=/x"], pinned, (run,))
    finally:
        pinned.release()
    assert not (run / "broker" / "mounts" / "c1").exists()
    assert (run / "work" / "out" / "f.txt").read_text() == "inside"


def test_the_broker_closes_on_what_is_not_its_protocol(broker: tuple[Sandbox, Path]) -> None:
    """An HTTP request (the real docker client) or a huge frame length: closed, not read."""
    import socket as sockets

    _, path = broker
    for junk in (b"HEAD /_ping HTTP/1.1\r\nHost: docker\r\n\r\n", b"\x00\xff\xff\xff\xff"):
        with sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(path))
            sock.sendall(junk)
            try:
                answer = sock.recv(100)
            except ConnectionResetError:  # closed with our bytes unread
                answer = b""
            assert answer == b""  # the broker hung up at once, without waiting for more


@pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root")
def test_pins_of_a_killed_broker_are_released_by_the_next_run(tmp_path: Path) -> None:
    from cratebridge.containers.mounts import OWNER_FILE, Pinned, pin_mounts, release_stale

    runs = tmp_path / "runs"
    dead, alive = runs / "dead-run", runs / "live-run"
    pins = []
    for run, owner in ((dead, "nohost-that-exists:1"), (alive, None)):
        (run / "work" / "out").mkdir(parents=True)
        (run / "broker").mkdir()
        from cratebridge.containers.sandbox import owner_id

        (run / "broker" / OWNER_FILE).write_text(owner or owner_id())
        pinned = Pinned(run / "broker" / "mounts" / "c")
        pin_mounts([f"--mount=type=bind,source={run}/work/out,target=/o"], pinned, (run,))
        pins.append(pinned)
    # a dead owner on this host: a pid that cannot exist
    (dead / "broker" / OWNER_FILE).write_text(f"{__import__('socket').gethostname()}:999999999")
    try:
        released = release_stale(runs)
        assert released == [str(dead / "broker" / "mounts" / "c" / "0")]
        points = {line.split()[4] for line in Path("/proc/self/mountinfo").open()}
        assert str(dead / "broker" / "mounts" / "c" / "0") not in points
        assert str(alive / "broker" / "mounts" / "c" / "0") in points  # its broker lives
    finally:
        for pinned in pins:
            pinned.release()


@pytest.mark.docker
@pytest.mark.parametrize("way", ["client", "api"])
def test_the_ledger_names_a_step_before_docker_is_asked_to_start_it(
        tmp_path: Path, docker_available: bool, monkeypatch: pytest.MonkeyPatch,
        way: str) -> None:
    """A run killed between the container's creation and its id being read still knows the
    step: a wrapper around the real docker (or the API's create) copies the ledger as it
    stood when it was called."""
    seen = tmp_path / "ledger-as-docker-started"
    ledger = tmp_path / "run" / "broker" / "ledger.jsonl"
    sb = sandbox_for(tmp_path)
    if way == "client":
        monkeypatch.setattr(broker_module, "local_api", lambda env=None: None)
        wrapper = tmp_path / "docker-noting-the-ledger"
        wrapper.write_text("#!/bin/sh\n"
                           f'case "$*" in *--cidfile=*) cp {ledger} {seen} ;; esac\n'
                           f'exec {find_docker() or "docker"} "$@"\n')
        wrapper.chmod(0o755)
        sb = replace(sb, docker=str(wrapper))
    else:
        if local_api() is None:
            pytest.skip("the daemon here is not a local socket")
        create = DockerAPI.create_container

        def noting(self: DockerAPI, *args: Any, **kwargs: Any) -> Any:
            shutil.copyfile(ledger, seen)
            return create(self, *args, **kwargs)

        monkeypatch.setattr(DockerAPI, "create_container", noting)
    short = Path(tempfile.mkdtemp(prefix="cb-"))
    try:
        with Broker(sb, short / "docker.sock", os.getuid(), os.getgid()).serving():
            done = client(short / "docker.sock", "run", "--rm",
                          "--label=org.cratebridge.step=early", IMAGE, "true")
    finally:
        sb.stop_all()
        shutil.rmtree(short, ignore_errors=True)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in seen.read_text().splitlines()]
    assert [(line["token"], "end" in line) for line in lines] == [("early", False)]
    (entry,) = read_ledger(sb.ledger).entries  # and the later lines complete it
    assert entry.token == "early" and entry.exit_code == 0 and entry.container.container_id


@pytest.mark.docker
def test_stop_all_returns_only_when_its_containers_are_gone(
        tmp_path: Path, docker_available: bool) -> None:
    """Another removal of the same container under way (the broker stopping the
    step the engine left) makes Docker answer ``rm -f`` at once, before the
    container is gone: the run's own sweep must still wait for it."""
    sb = sandbox_for(tmp_path)
    # a container slow to die: its shell ignores SIGTERM, so `docker rm -f` has to kill it
    started = [subprocess.run([sb.docker, "run", "-d", f"--label={RUN_LABEL}={sb.run_id}", IMAGE,
                               "sh", "-c", "trap '' TERM; sleep 60"],
                              capture_output=True, text=True, check=True).stdout.strip()[:12]
               for _ in range(3)]
    try:
        others = [subprocess.Popen([sb.docker, "rm", "-f", cid], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL) for cid in started]
        removed = sb.stop_all()
        assert sb.containers() == [], "stop_all returned while its containers still existed"
        assert set(removed) <= set(started)
        for other in others:
            other.wait(60)
    finally:
        subprocess.run([sb.docker, "rm", "-f", *started], capture_output=True, check=False)


def test_a_sandbox_travels_as_json_to_a_jobs_broker(tmp_path: Path) -> None:
    sandbox = Sandbox(run_id="r1", docker="/usr/bin/docker", ledger=tmp_path / "ledger.jsonl",
                      writable=(tmp_path / "work",), readable=(tmp_path, Path("/data/ds1")),
                      room_tmp=tmp_path / "tmp", user="1001:1002",
                      limits=Limits(memory="1g", cpus=0.5, pids=64, disk=None),
                      approved_images=("cratebridge/*@sha256:" + "a" * 64,), owner="h:1",
                      scheduler="slurm", runs_dir=tmp_path.parent, slurm_broker="node")
    again = Sandbox.from_json(json.loads(json.dumps(sandbox.to_json())))
    assert again == sandbox
    assert again.docker_args() == sandbox.docker_args()
    plain = replace(sandbox, room_tmp=None, runs_dir=None, scheduler=None)
    assert Sandbox.from_json(json.loads(json.dumps(plain.to_json()))) == plain


def test_the_ledgers_of_jobs_brokers_are_read_with_the_runs(tmp_path: Path) -> None:
    """``[slurm] broker = "node"``: each job's broker keeps its own ledger under
    ``nodes/``; a run's ledger is all of them, containers in the order they started."""
    def line(token: str, second: int, **more: object) -> str:
        return json.dumps({"token": token, "image": "img", "start":
                           f"2026-01-01T00:00:{second:02d}+00:00", **more}) + "\n"

    run = tmp_path / "ledger.jsonl"
    run.write_text(json.dumps({"slurm_job": "7", "argv": [], "exit_code": 0}) + "\n"
                   + line("a", 1))
    for job, token, second in (("7", "b", 3), ("8", "c", 2)):
        node = tmp_path / "nodes" / f"job-{job}" / "broker" / "ledger.jsonl"
        node.parent.mkdir(parents=True)
        node.write_text(line(token, second) + json.dumps({"refused": f"no {job}"}) + "\n"
                        + line(token, second, end=f"2026-01-01T00:00:{second + 1:02d}+00:00",
                               exit_code=0) + '{"cut sho')
    ledger = read_ledger(run)
    assert [e.token for e in ledger.entries] == ["a", "c", "b"]
    assert [e.exit_code for e in ledger.entries] == [None, 0, 0]
    assert ledger.refusals == ("no 7", "no 8")
    assert read_ledger(tmp_path / "nodes" / "ledger.jsonl").entries == ()  # none there

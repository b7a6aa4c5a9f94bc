"""A step's ``docker run`` through the daemon's API is the ``docker`` client's run.

Each test does the same thing both ways, with the real client and through the
API, on the real daemon, and compares: the container each creates (its
configuration, as ``docker inspect`` shows it), and what the engine gets from a
run through a real broker (output, errors, exit code).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_sandbox import IMAGE, sandbox_for

from cratebridge.containers import broker as broker_module
from cratebridge.containers.apirun import ContainerProcess, RunSpec, run_spec
from cratebridge.containers.broker import Broker
from cratebridge.containers.dockerapi import DockerAPI, local_api
from cratebridge.containers.hardening import RunState, authorise
from cratebridge.containers.ledger import read_ledger
from cratebridge.containers.sandbox import Sandbox

pytestmark = pytest.mark.docker

CONFIG = ("User", "Env", "Cmd", "Entrypoint", "WorkingDir", "Labels", "OpenStdin", "StdinOnce",
          "AttachStdin", "AttachStdout", "AttachStderr", "Tty", "Hostname", "StopSignal",
          "StopTimeout", "Image")
HOST = ("Mounts", "Tmpfs", "NetworkMode", "CapDrop", "SecurityOpt", "Memory", "MemorySwap",
        "NanoCpus", "PidsLimit", "ReadonlyRootfs", "AutoRemove", "Init", "Binds")


@pytest.fixture
def api(docker_available: bool) -> DockerAPI:
    found = local_api()
    if found is None:
        pytest.skip("the daemon here is not a local socket")
    return found


def inspect(docker: str, name: str) -> dict[str, Any]:
    info = json.loads(subprocess.run([docker, "inspect", name], capture_output=True,
                                     text=True, check=True).stdout)[0]
    # the order of distinct variables means nothing: docker 20.10's client passes them
    # through a Go map (a different order each time); a repeated name keeps its last value
    info["Config"]["Env"] = sorted(info["Config"]["Env"] or [])
    return {"Config": {k: info["Config"].get(k) for k in CONFIG},
            "HostConfig": {k: info["HostConfig"].get(k) for k in HOST}}


def test_every_flag_the_policy_keeps_makes_the_same_container(
        tmp_path: Path, api: DockerAPI) -> None:
    sb = sandbox_for(tmp_path)
    work = sb.writable[0]
    (work / "in").mkdir()
    (work / "out").mkdir()
    allowed = authorise(
        ["run", "-i", "--rm", "--init", "-w", "/out", "-e", "A=0", "-e", "A=1",
         "--env=B=two words", "-e", "C=3", "--entrypoint", "/bin/sh",
         "--label", "org.cratebridge.step=same", "-l", "bare",
         "-v", f"{work / 'in'}:/in:ro", "--mount", f"type=bind,source={work / 'out'},target=/out",
         "--tmpfs", "/scratch:size=16m", "--stop-signal", "SIGINT", "--stop-timeout", "7",
         "--hostname", "step", "--user", "0", "--memory", "1g", IMAGE, "-c", "echo 'x y'"],
        RunState(sb))
    argv = list(allowed.argv)
    spec = run_spec(argv)
    assert spec is not None and spec.interactive and spec.auto_remove
    names = [f"cb-api-test-{os.getpid()}-{way}" for way in ("client", "api")]
    try:
        created = subprocess.run([sb.docker, "create", f"--name={names[0]}", *argv[1:]],
                                 capture_output=True, text=True, check=False)
        assert created.returncode == 0, created.stderr
        cid, error = api.create_container(spec.body, names[1])
        assert cid is not None, error
        by_client, by_api = (inspect(sb.docker, name) for name in names)
    finally:
        subprocess.run([sb.docker, "rm", "-f", *names], capture_output=True, check=False)
    assert by_api == by_client
    assert by_api["HostConfig"]["Memory"] == 128 * 1024 * 1024  # the policy's, not the engine's
    assert by_api["Config"]["User"] == "1000:1000"


@pytest.mark.parametrize("argv", [
    ["run", "--cap-add=NET_ADMIN", IMAGE, "true"],  # refused by the policy, not translated
    ["run", "--mount=type=bind,source=/a,target=/b,bind-propagation=shared", "--", IMAGE],
    ["run", "--memory=lots", "--", IMAGE],
    ["run", "--rm=maybe", "--", IMAGE],
    ["run", "--network=host", "--", IMAGE],
    ["ps", "--", IMAGE],
])
def test_what_it_does_not_know_goes_to_the_client(argv: list[str]) -> None:
    assert run_spec(argv) is None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[tuple[Sandbox, Path]]:
    sb = sandbox_for(tmp_path)
    short = Path(tempfile.mkdtemp(prefix="cb-"))
    try:
        with Broker(sb, short / "docker.sock", os.getuid(), os.getgid()).serving():
            yield sb, short / "docker.sock"
    finally:
        sb.stop_all()
        shutil.rmtree(short, ignore_errors=True)


RUNS = [
    (["sh", "-c", "echo out; echo err >&2; exit 3"], b""),
    (["sh", "-c", "cat; echo done >&2"], b"from the engine\n" * 5000),
    (["sh", "-c", "head -c 1000000 /dev/zero | tr '\\0' x; echo"], b""),
    (["no-such-command"], b""),  # the client's 127
    (["/etc/passwd"], b""),  # the client's 126
    (["sh", "-c", "exec 1>&-; echo no stdout; exit 255"], b""),
]


def refusal(stderr: bytes) -> bytes:
    """A step's standard error, with the daemon's refusal as every client version says it.

    The container's own output is kept whole. When the daemon refuses the run, the
    message is the daemon's; what the client adds to it differs by version (docker
    20.10 adds a full stop, and may log that its wait was cancelled; 28 adds a hint)."""
    first = stderr.partition(b"\n")[0]
    if first.startswith(b"docker: Error response from daemon: "):
        return first.rstrip(b".") + b"\n"
    return stderr


@pytest.mark.parametrize("remove", [True, False])
@pytest.mark.parametrize("command,stdin", RUNS)
def test_a_run_through_the_api_answers_as_the_client(
        broker: tuple[Sandbox, Path], api: DockerAPI, monkeypatch: pytest.MonkeyPatch,
        command: list[str], stdin: bytes, remove: bool) -> None:
    sb, socket_path = broker
    env = {"PATH": os.environ["PATH"], "CRATEBRIDGE_BROKER": str(socket_path)}
    seen = {}
    through_api: list[str] = []

    class Recording(ContainerProcess):
        def __init__(self, api: DockerAPI, spec: RunSpec) -> None:
            through_api.append(spec.body["Labels"]["org.cratebridge.step"])
            super().__init__(api, spec)

    for way in ("client", "api"):
        if way == "client":
            monkeypatch.setattr(broker_module, "local_api", lambda env=None: None)
        else:
            monkeypatch.undo()
            monkeypatch.setattr(broker_module, "ContainerProcess", Recording)
        done = subprocess.run(
            [sys.executable, "-m", "cratebridge.containers.shim", "run", "-i",
             *(["--rm"] if remove else []), f"--label=org.cratebridge.step={way}", IMAGE,
             *command],
            env=env, input=stdin, capture_output=True, check=False, timeout=120)
        seen[way] = (done.returncode, done.stdout, refusal(done.stderr))
    assert through_api == ["api"]
    assert seen["api"] == seen["client"]
    entries = {e.token: e for e in read_ledger(sb.ledger).entries}
    assert entries["api"].exit_code == entries["client"].exit_code == seen["api"][0]
    assert entries["api"].container.container_id  # recorded, as the client's
    if remove:
        assert sb.containers() == []  # both gone


class StandInAPI:
    """A stand-in for the daemon's API (not the real one): each call answers as scripted,
    and the attached stream is one end of a socket pair the test writes frames into."""

    def __init__(self, waited: tuple[int | None, str], start_error: str = "") -> None:
        self.waited = waited
        self.start_error = start_error
        self.calls: list[str] = []
        self.container_end, self.stream = socket.socketpair()

    def create_container(self, body: dict[str, Any], name: str | None) -> tuple[str, str]:
        self.calls.append("create")
        return "c0ffee", ""

    def attach(self, container: str, stdin: bool) -> socket.socket:
        self.calls.append("attach")
        return self.stream

    def start(self, container: str) -> str:
        self.calls.append("start")
        if not self.start_error:  # the container writes one frame on stdout and ends
            self.container_end.sendall(b"\1\0\0\0" + (3).to_bytes(4, "big") + b"hi\n")
            self.container_end.close()
        return self.start_error

    def begin_wait(self, container: str,
                   condition: str) -> Callable[[], tuple[int | None, str]]:
        self.calls.append(f"wait {condition}")
        return lambda: self.waited

    def remove(self, container: str) -> None:
        self.calls.append("remove")


@pytest.mark.parametrize("waited,code,said", [
    ((0, ""), 0, b""),
    ((3, ""), 3, b""),
    ((0, "removal of container c0ffee is already in progress"), 125,
     b"Error waiting for container: removal of container c0ffee is already in progress\n"),
    ((None, "No such container: c0ffee"), 125,
     b"Error waiting for container: No such container: c0ffee\n"),
])
def test_a_wait_that_fails_ends_as_the_clients_with_125_and_says_why(
        waited: tuple[int | None, str], code: int, said: bytes) -> None:
    """The client, when the daemon's wait carries an error: "Error waiting for
    container: ..." on stderr, after the output, and exit 125 (stand-in API)."""
    stand_in = StandInAPI(waited)
    proc = ContainerProcess(stand_in, RunSpec({}, None, False, True))  # type: ignore[arg-type]
    assert proc.wait(10) == code
    assert (proc.stdout.read(), proc.stderr.read()) == (b"hi\n", said)
    assert stand_in.calls == ["create", "attach", "wait removed", "start"]


def test_a_refused_start_says_the_start_error_not_the_wait() -> None:
    stand_in = StandInAPI((None, "No such container: c0ffee"), start_error="no such image")
    proc = ContainerProcess(stand_in, RunSpec({}, None, False, True))  # type: ignore[arg-type]
    assert proc.wait(10) == 125
    assert proc.stderr.read().startswith(b"docker: Error response from daemon: no such image\n")
    assert stand_in.calls[-1] == "remove"

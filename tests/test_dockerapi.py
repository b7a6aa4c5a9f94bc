"""The daemon's socket, as cratebridge asks it about images and containers (``dockerapi``).

Which daemon counts as local is checked on environments alone; what the real
daemon answers is checked against the ``docker`` client's own answers (real
Docker); a fake daemon (a socket that answers with fixed bytes, named as
such) shows what a broken answer gives.
"""

from __future__ import annotations

import socket
import subprocess
import threading
from pathlib import Path

import pytest

from cratebridge.containers import dockerapi
from cratebridge.containers.dockerapi import DockerAPI, local_api
from cratebridge.containers.sandbox import find_docker, image_id


def _listening(path: Path) -> socket.socket:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)
    return server


def test_only_a_local_socket_is_asked_and_a_chosen_context_goes_to_the_client(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with _listening(tmp_path / "d.sock"):
        assert local_api({"DOCKER_HOST": f"unix://{tmp_path}/d.sock"}) is not None
        # a remote daemon, a socket that is not there, a context: the client decides
        assert local_api({"DOCKER_HOST": "tcp://10.0.0.1:2376"}) is None
        assert local_api({"DOCKER_HOST": "ssh://user@host"}) is None
        assert local_api({"DOCKER_HOST": f"unix://{tmp_path}/none.sock"}) is None
        monkeypatch.setattr(dockerapi, "DEFAULT_SOCKET", str(tmp_path / "d.sock"))
        config = tmp_path / "config"
        config.mkdir()
        assert local_api({"HOME": str(tmp_path), "DOCKER_CONFIG": str(config)}) is not None
        assert local_api({"DOCKER_CONTEXT": "remote", "DOCKER_CONFIG": str(config)}) is None
        (config / "config.json").write_text('{"currentContext": "remote"}')
        assert local_api({"DOCKER_CONFIG": str(config)}) is None
        (config / "config.json").write_text('{"currentContext": "default"}')
        assert local_api({"DOCKER_CONFIG": str(config)}) is not None


def _fake_daemon(path: Path, answer: bytes) -> threading.Thread:
    """A fake daemon: answers every request on ``path`` with ``answer``, then closes."""
    server = _listening(path)

    def serve() -> None:
        with server:
            for _ in range(2):
                conn, _ = server.accept()
                with conn:
                    conn.recv(1 << 16)
                    conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_a_socket_that_does_not_answer_in_http_is_an_error_naming_it(tmp_path: Path) -> None:
    _fake_daemon(tmp_path / "fake.sock", b"not http at all")
    api = DockerAPI(str(tmp_path / "fake.sock"))
    with pytest.raises(OSError, match=r"fake\.sock gave no HTTP answer to GET /images/x/json"):
        api.image("x")
    _fake_daemon(tmp_path / "fake2.sock", b"HTTP/1.0 500 Internal Server Error\r\n\r\n{}")
    with pytest.raises(OSError, match="docker image inspect x: the daemon answered 500"):
        DockerAPI(str(tmp_path / "fake2.sock")).image("x")


@pytest.mark.docker
def test_the_socket_and_the_client_agree_on_images(docker_available: bool) -> None:
    api = local_api()
    docker = find_docker()
    if api is None or docker is None:
        pytest.skip("the daemon here is not a local socket")
    # names that a router would read as another path name no image
    for name in ("../containers/json", "a/../../info", "a//b", "x?all=1", "x#y"):
        assert api.image(name) is None
        assert image_id(docker, name) is None
    for image in ("cratebridge/busybox:1", "cratebridge/python:3.11", "no/such-image:0"):
        client = subprocess.run([docker, "image", "inspect", "--format", "{{.Id}}", image],
                                capture_output=True, text=True, check=False)
        expected = client.stdout.strip() if client.returncode == 0 else None
        found = api.image(image)
        assert (found or {}).get("Id") == expected
        assert image_id(docker, image) == expected
    assert expected is None


@pytest.mark.docker
def test_a_probe_container_is_never_started_and_is_removed(docker_available: bool) -> None:
    api = local_api()
    if api is None:
        pytest.skip("the daemon here is not a local socket")
    container = api.create("cratebridge/busybox:1", {"org.cratebridge.test": "probe"})
    assert container is not None
    try:
        state = subprocess.run(["docker", "inspect", "--format",
                                "{{.State.Status}} {{.HostConfig.NetworkMode}} "
                                "{{index .Config.Labels \"org.cratebridge.test\"}}", container],
                               capture_output=True, text=True, check=True).stdout.split()
        assert state == ["created", "none", "probe"]
        assert api.is_executable(container, "/bin/sh")
        assert not api.is_executable(container, "/etc/passwd")  # not executable
        assert not api.is_executable(container, "/bin")  # a folder
        assert not api.is_executable(container, "/no/such/file")
        assert api.read(container, "/etc/passwd") is not None
        assert api.read(container, "/bin") is None
    finally:
        api.remove(container)
    gone = subprocess.run(["docker", "inspect", container], capture_output=True, check=False)
    assert gone.returncode != 0
    assert api.create("no/such-image:0", {}) is None
    assert api.create("Not A Reference", {}) is None


@pytest.mark.docker
@pytest.mark.parametrize("condition", ["next-exit", "removed"])
def test_a_wait_is_in_place_before_the_start_so_a_quick_end_is_seen(
        docker_available: bool, condition: str) -> None:
    """begin_wait returns when the daemon has the wait (not when it ends): a container
    started after it and ending at once still gives its exit code, with either condition."""
    api = local_api()
    if api is None:
        pytest.skip("the daemon here is not a local socket")
    body = {"Image": "cratebridge/busybox:1", "Cmd": ["sh", "-c", "exit 7"],
            "Labels": {"org.cratebridge.test": "wait"},
            "HostConfig": {"NetworkMode": "none", "AutoRemove": condition == "removed"}}
    container, error = api.create_container(body, None)
    assert container is not None, error
    try:
        result = api.begin_wait(container, condition)  # returns though nothing ran yet
        assert api.start(container) == ""
        subprocess.run(["docker", "wait", container], capture_output=True, check=False)
        assert result() == (7, "")
    finally:
        api.remove(container)
    assert api.begin_wait(container, "next-exit")() == (None, f"No such container: {container}")


@pytest.mark.docker
def test_the_sweeps_find_the_same_containers_by_socket_and_by_client(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, docker_available: bool) -> None:
    api = local_api()
    if api is None:
        pytest.skip("the daemon here is not a local socket")
    from cratebridge.containers import sandbox
    from cratebridge.containers.sandbox import (
        OWNER_LABEL,
        RUN_LABEL,
        labelled_containers,
        runs_label,
        stale_containers,
    )

    run_id = f"dockerapi-test-{tmp_path.name}"
    runs = tmp_path / "runs"
    dead = "no-such-host-here:1"  # another host's owner counts as alive
    gone = f"{socket.gethostname()}:999999999"  # no such pid: its owner is gone
    made = [api.create("cratebridge/busybox:1", {
        RUN_LABEL: run_id, OWNER_LABEL: owner, **dict([runs_label(runs).split("=", 1)])})
        for owner in (dead, gone)]
    try:
        def sweeps() -> tuple[list[str], list[str], list[str], set[str]]:
            box = sandbox.Sandbox(run_id, "docker", tmp_path / "ledger", ())
            return (sorted(labelled_containers("docker", f"{RUN_LABEL}={run_id}")),
                    sorted(stale_containers("docker", runs)),
                    sorted(stale_containers("docker", runs, everything=True)),
                    box.container_names())

        by_socket = sweeps()
        monkeypatch.setattr("cratebridge.containers.dockerapi.local_api",
                            lambda *a, **k: None)
        assert sweeps() == by_socket
        short = sorted(str(c)[:12] for c in made)
        assert by_socket[0] == short and by_socket[2] == short
        assert by_socket[1] == [str(made[1])[:12]]
        assert {str(c) for c in made} <= by_socket[3]
    finally:
        for container in made:
            if container:
                api.remove(container)

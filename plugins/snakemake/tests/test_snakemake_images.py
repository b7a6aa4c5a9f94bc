"""Looking into step images without running them: the daemon's socket and the client agree.

Real Docker, real images (``make images``): each question is asked through
the daemon's socket (the usual way) and through the ``docker`` client (the
way for a daemon that is not a local socket), and must get the same answer:
programs found through links (Debian's ``/usr/bin/sh`` is a link to dash),
programs missing, Snakemake's version, an image that is not here.
"""

from __future__ import annotations

import pytest

from cratebridge.containers.sandbox import find_docker
from cratebridge_snakemake import images
from cratebridge_snakemake.engine import default_python_image


@pytest.mark.docker
def test_socket_and_client_find_the_same_programs(
        monkeypatch: pytest.MonkeyPatch, docker_available: bool) -> None:
    docker = find_docker()
    assert docker is not None
    if images.local_api() is None:
        pytest.skip("the daemon here is not a local socket")
    wanted = ("cratebridge/busybox:1", "cratebridge/python:3.11", default_python_image(),
              "no/such-image:0")

    def answers() -> list[tuple[str | None, ...]]:
        return [(images.find_program(docker, image, "bash"),
                 images.find_program(docker, image, "sh"),
                 images.find_program(docker, image, "python3"),
                 images.find_snakemake(docker, image)) for image in wanted]

    by_socket = answers()
    monkeypatch.setattr(images, "local_api", lambda: None)
    assert answers() == by_socket
    busybox, debian, snakemake, absent = by_socket
    assert busybox[:3] == (None, "/bin/sh", None)
    assert debian[:3] == ("/usr/bin/bash", "/usr/bin/sh", "/usr/bin/python3")
    assert snakemake[3] == default_python_image().rpartition(":")[2]
    assert absent == (None, None, None, None)

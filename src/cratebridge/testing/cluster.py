"""Whether the local Slurm cluster answers (scripts/setup-slurm, scripts/start-slurm),
and its second node, a host of its own to its jobs (scripts/start-second-node)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "TWO_HOSTS",
    "SecondNode",
    "containers_created",
    "containers_left",
    "has_image",
    "job_nodes",
    "second_node",
    "shared_folder",
    "slurm_down",
]

TWO_HOSTS = "twohosts"  # the partition of this host's node and the second node


def slurm_down() -> str | None:
    """None when Slurm takes jobs here; otherwise why not, and what to run."""
    if shutil.which("sbatch") is None:
        return "Slurm is not installed: run scripts/setup-slurm"
    try:
        done = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                              timeout=20, check=False)
        accounting = subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True,
                                    timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "sinfo or sacct does not answer: run scripts/start-slurm"
    if done.returncode != 0 or accounting.returncode != 0 or \
            not any(s in ("idle", "mixed", "allocated") for s in done.stdout.split()):
        return ("the local Slurm cluster is not running (no idle node in sinfo, or sacct "
                "fails): run scripts/start-slurm")
    return None


@dataclass(frozen=True)
class SecondNode:
    """The second node: its name (its jobs' hostname) and its own Docker daemon's socket."""

    name: str
    docker: Path = Path("/run/docker-node2/docker.sock")

    @property
    def docker_host(self) -> str:
        """``DOCKER_HOST`` for a ``docker`` command that talks to the second node's daemon."""
        return f"unix://{self.docker}"


def second_node() -> SecondNode | str:
    """The second node when it and this host's node both take jobs in the partition
    ``twohosts``; otherwise why not, and what to run."""
    reason = slurm_down()
    if reason:
        return reason
    node = SecondNode(f"{socket.gethostname().split('.')[0]}-2")
    try:
        done = subprocess.run(["sinfo", "-h", "-N", "-p", TWO_HOSTS, "-o", "%N %T"],
                              capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "sinfo does not answer: run scripts/start-slurm"
    states = dict(line.split() for line in done.stdout.splitlines() if len(line.split()) == 2)
    if len(states) < 2 or node.name not in states or not all(
            state in ("idle", "mixed", "allocated") for state in states.values()):
        return (f"the partition {TWO_HOSTS} has no idle second node {node.name} "
                f"({done.stdout.strip() or done.stderr.strip() or 'nothing listed'}): run "
                "scripts/setup-slurm and scripts/start-slurm")
    if not node.docker.is_socket():
        return f"the second node's Docker is not running ({node.docker}): run scripts/start-slurm"
    return node


@contextmanager
def shared_folder() -> Iterator[Path]:
    """A scratch folder both nodes see at the same path (the second node's /tmp is its
    own), for a run's runs folder: under /var/tmp, removed when the block ends."""
    folder = Path(tempfile.mkdtemp(prefix="cb-two-hosts-", dir="/var/tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def job_nodes(job_ids: list[str]) -> dict[str, str]:
    """The node each of these Slurm jobs ran on, as ``sacct`` lists them."""
    done = subprocess.run(["sacct", "-X", "-n", "-P", "-j", ",".join(job_ids),
                           "--format=JobID,NodeList"], capture_output=True, text=True,
                          timeout=60, check=True)
    return dict(line.split("|", 1) for line in done.stdout.splitlines() if line.strip())


def _docker(docker_host: str | None, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    if docker_host:
        env["DOCKER_HOST"] = docker_host
    return subprocess.run(["docker", *args], capture_output=True, text=True, env=env,
                          timeout=60, check=True).stdout


def has_image(image: str, docker_host: str | None = None) -> bool:
    """Whether one Docker daemon (the default one, or ``docker_host``'s) has ``image``."""
    try:
        _docker(docker_host, "image", "inspect", image)
    except subprocess.CalledProcessError:
        return False
    return True


def containers_created(run_id: str, since: float,
                       docker_host: str | None = None) -> dict[str, dict[str, str]]:
    """The containers of the run ``run_id`` that one Docker daemon (the default one, or
    ``docker_host``'s) created since ``since`` (a Unix time): each id with its labels."""
    lines = _docker(docker_host, "events", "--since", f"{int(since)}",
                    "--until", f"{int(time.time()) + 1}", "--filter", "type=container",
                    "--filter", "event=create", "--filter", f"label=org.cratebridge.run={run_id}",
                    "--format", "{{json .Actor}}").splitlines()
    actors = [json.loads(line) for line in lines]
    return {actor["ID"]: actor["Attributes"] for actor in actors}


def containers_left(run_id: str, docker_host: str | None = None) -> list[str]:
    """The containers of the run ``run_id`` that one Docker daemon still has."""
    return _docker(docker_host, "ps", "-aq", "--filter",
                   f"label=org.cratebridge.run={run_id}").split()

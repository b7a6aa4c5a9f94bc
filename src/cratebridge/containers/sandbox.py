"""One run's container policy (:class:`Sandbox`), the image policy and the Docker helpers.

The confined engine reaches Docker only through the run's broker
(:mod:`cratebridge.containers.broker`), which applies this policy through
:mod:`cratebridge.containers.hardening`; the same rules hold for cwltool,
Toil, Snakemake and Nextflow, whatever docker arguments each engine sends.
"""

from __future__ import annotations

import fnmatch
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from cratebridge.containers import client
from cratebridge.containers.shim import BROKER_ENV, SLURM_TOOLS
from cratebridge.errors import PolicyRefused

__all__ = [
    "BROKER_ENV",
    "OWNER_LABEL",
    "RUNS_LABEL",
    "RUN_LABEL",
    "SLURM_JOB_LABEL",
    "STEP_LABEL",
    "ImagePolicy",
    "Limits",
    "Sandbox",
    "client_env",
    "find_docker",
    "image_id",
    "labelled_containers",
    "owner_alive",
    "owner_id",
    "remove_stale_containers",
    "runs_label",
    "stale_containers",
]

RUN_LABEL = "org.cratebridge.run"
STEP_LABEL = "org.cratebridge.step"
OWNER_LABEL = "org.cratebridge.owner"
#: The runs folder a run belongs to: clean-ups touch only their own folder's containers.
RUNS_LABEL = "org.cratebridge.runs"
#: The Slurm job whose own broker started the container, on the job's node.
SLURM_JOB_LABEL = "org.cratebridge.slurm_job"
# What the real Docker and Slurm clients get from our environment: nothing of the engine's.
CLIENT_ENV = ("PATH", "DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY",
              "SLURM_CONF")
SYSTEM_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


@dataclass(frozen=True)
class ImagePolicy:
    """Which local images steps may use. Empty ``approved``: any image present locally.

    Each pattern is an fnmatch pattern on the image name, optionally pinned to
    a local image id as ``pattern@sha256:...``.
    """

    approved: tuple[str, ...] = ()

    def allows(self, image: str, image_id: str | None) -> bool:
        try:
            self.check(image, image_id)
        except PolicyRefused:
            return False
        return True

    def check(self, image: str, image_id: str | None) -> None:
        """Raise PolicyRefused unless ``image`` (with local id ``image_id``) is approved."""
        if not self.approved:
            return
        for pattern in self.approved:
            name_pattern, _, pinned = pattern.partition("@")
            if fnmatch.fnmatchcase(image, name_pattern):
                if pinned and pinned != image_id:
                    raise PolicyRefused(
                        f"image {image} is approved only at {pinned}, but the local "
                        f"image is {image_id}",
                        rule=f"images.approved: {pattern}",
                        where=f"image {image}",
                    )
                return
        raise PolicyRefused(
            f"image {image} is not on the operator's approved list",
            rule="images.approved",
            where=f"image {image}",
        )


@dataclass(frozen=True)
class Limits:
    """Resource limits (the operator's ``[limits]``).

    ``memory``, ``cpus`` and ``pids`` hold per step container; ``disk`` is the
    run's budget in bytes for everything it writes in its folder (work, the
    steps' ``/tmp``, logs, outputs; ``None``: no budget); ``log_bytes`` caps
    each stored log (an engine's output, a step's stderr): past it, the head
    and the tail are kept and the log says how much was cut.
    """

    memory: str = "2g"
    cpus: float = 1.0
    pids: int = 256
    disk: int | None = 20 * 1024**3
    log_bytes: int = 16 * 1024**2


@dataclass(frozen=True)
class Sandbox:
    """One run's container policy, as the broker enforces it.

    ``writable`` are the only host folders a container may mount read-write
    (the engine's work folders inside the run folder); ``readable`` the others
    it may mount, read-only (the run's folder, operator-mapped datasets);
    nothing else can be mounted. ``room_tmp`` is the host folder the confined
    engine sees as ``/tmp``. ``approved_images`` are fnmatch patterns,
    optionally ``pattern@sha256:digest`` pins; an empty tuple means any image
    already present locally. ``ledger`` is written by the broker only, in a
    folder the engine cannot see. ``runs_dir`` is the runs folder the run
    belongs to, labelled on every container (see :func:`runs_label`); without
    it, no clean-up of a runs folder ever finds this run's containers.
    ``slurm_broker``: where a Slurm job's containers start: ``"host"`` through
    this run's broker, ``"node"`` through a broker the job starts on its node
    (see :mod:`cratebridge.containers.jobroom`). ``slurm_job``: that job, for the
    policy of its own broker; labelled on its containers, so that the node's Slurm
    epilog finds what a killed job left (:mod:`cratebridge.containers.epilog`).
    """

    run_id: str
    docker: str
    ledger: Path
    writable: tuple[Path, ...]
    readable: tuple[Path, ...] = ()
    room_tmp: Path | None = None
    user: str = "1000:1000"
    limits: Limits = field(default_factory=Limits)
    approved_images: tuple[str, ...] = ()
    owner: str = field(default_factory=lambda: owner_id())
    scheduler: str | None = None  # "slurm": the broker's Slurm door is open
    runs_dir: Path | None = None
    slurm_broker: str = "host"
    slurm_job: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The policy as JSON data, for a Slurm job's broker to enforce the same (``"node"``)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["limits"] = asdict(self.limits)
        for name in ("ledger", "room_tmp", "runs_dir"):
            data[name] = None if data[name] is None else str(data[name])
        for name in ("writable", "readable"):
            data[name] = [str(p) for p in data[name]]
        data["approved_images"] = list(self.approved_images)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Sandbox:
        def path(name: str) -> Path | None:
            return None if data.get(name) is None else Path(str(data[name]))

        return cls(**{**data, "ledger": Path(str(data["ledger"])), "room_tmp": path("room_tmp"),
                      "runs_dir": path("runs_dir"), "limits": Limits(**data["limits"]),
                      "writable": tuple(Path(p) for p in data["writable"]),
                      "readable": tuple(Path(p) for p in data["readable"]),
                      "approved_images": tuple(data["approved_images"])})

    @property
    def mountable(self) -> tuple[Path, ...]:
        return (*self.writable, *self.readable)

    def host_path(self, path: Path) -> Path:
        """A path as the confined engine wrote it, on the host (its ``/tmp`` is ``room_tmp``)."""
        tmp = Path("/tmp")
        if self.room_tmp is not None and (path == tmp or tmp in path.parents) \
                and not any(p == path or p in path.parents for p in self.mountable):
            return self.room_tmp / path.relative_to(tmp)
        return path

    def engine_env(self, folder: Path, room_folder: Path) -> dict[str, str]:
        """Put a ``docker`` that talks to the broker in ``folder``; the engine's PATH and socket.

        ``folder`` is seen in the room as ``room_folder``, which holds the broker's
        ``docker.sock``. The PATH is fixed, not the caller's: the broker's client
        first, then our own programs and the system's (all inside the room).
        """
        (folder / "bin").mkdir(parents=True, exist_ok=True)
        bin_dir = Path(sys.executable).parent
        # engines call it several times a step: the compiled client when it is built
        target = folder / "bin" / "cratebridge-client"
        client.install(target, client.compiled())
        for name in ("docker", *(SLURM_TOOLS if self.scheduler == "slurm" else ())):
            link = folder / "bin" / name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target.name)
        path = os.pathsep.join(dict.fromkeys([str(room_folder / "bin"), str(bin_dir),
                                              *SYSTEM_PATH]))
        return {"PATH": path, BROKER_ENV: str(room_folder / "docker.sock")}

    def container_names(self) -> set[str]:
        """Ids (full and short) and names of this run's containers."""
        listed = _listed(f"{RUN_LABEL}={self.run_id}")
        if listed is not None:
            return {part for c in listed
                    for part in (c["Id"], c["Id"][:12],
                                 *(str(n).lstrip("/") for n in c.get("Names") or ()))} - {""}
        out = subprocess.run(
            [self.docker, "ps", "-a", "--no-trunc", "--filter",
             f"label={RUN_LABEL}={self.run_id}", "--format", "{{.ID}} {{.Names}}"],
            capture_output=True, text=True, check=False)
        names: set[str] = set()
        for line in out.stdout.splitlines():
            cid, _, name = line.partition(" ")
            names.update({cid, cid[:12], name.strip()})
        names.discard("")
        return names

    def docker_args(self) -> list[str]:
        """The hardening flags the shim adds to every ``docker run``."""
        return [
            "--network=none",
            "--cap-drop=ALL",
            "--security-opt=no-new-privileges",
            f"--user={self.user}",
            f"--memory={self.limits.memory}",
            f"--memory-swap={self.limits.memory}",
            f"--cpus={self.limits.cpus}",
            f"--pids-limit={self.limits.pids}",
            f"--label={RUN_LABEL}={self.run_id}",
            f"--label={OWNER_LABEL}={self.owner}",
            *([f"--label={runs_label(self.runs_dir)}"] if self.runs_dir is not None else []),
            *([f"--label={SLURM_JOB_LABEL}={self.slurm_job}"] if self.slurm_job else []),
        ]

    def containers(self) -> list[str]:
        """Ids of containers of this run still present (running or not)."""
        return labelled_containers(self.docker, f"{RUN_LABEL}={self.run_id}")

    def stop_all(self, patience: float = 30.0) -> list[str]:
        """Kill and remove every container of this run; returns their ids.

        Returns once Docker lists none of them any more (or after ``patience``
        seconds): a ``docker rm -f`` that meets a removal already under way (the
        broker stopping the same step) answers at once, before the container is
        gone, and the run must not end while its containers still exist.
        """
        removed: list[str] = []
        end = time.monotonic() + patience
        while True:
            ids = self.containers()
            if not ids or time.monotonic() > end:
                return removed
            if removed:  # still listed after a first removal: give Docker a moment
                time.sleep(0.1)
            removed += [cid for cid in ids if cid not in removed]
            subprocess.run([self.docker, "rm", "-f", *ids], capture_output=True, check=False)


def labelled_containers(docker: str, *labels: str, check: bool = False) -> list[str]:
    """Ids of the containers (running or not) carrying every label given (``key[=value]``).

    ``check``: raise when docker cannot answer, instead of returning none.
    """
    listed = _listed(*labels)
    if listed is not None:
        return [str(c["Id"])[:12] for c in listed]
    filters = [arg for label in labels for arg in ("--filter", f"label={label}")]
    out = subprocess.run([docker, "ps", "-aq", *filters], capture_output=True, text=True,
                         check=check)
    return out.stdout.split()


def _listed(*labels: str, timeout: float = 60.0) -> list[dict[str, Any]] | None:
    """The containers with every label given, from the daemon's socket when it is local.

    None when it is not, or fails: the caller then asks the client. Raises
    :class:`subprocess.TimeoutExpired` when it does not answer in ``timeout``.
    """
    from cratebridge.containers.dockerapi import local_api  # not for every importer of ours

    api = local_api(timeout=timeout)
    if api is None:
        return None
    try:
        return api.containers(*labels)
    except TimeoutError as exc:
        raise subprocess.TimeoutExpired(["docker", "ps", *labels], timeout) from exc
    except OSError:
        return None


def owner_id(pid: int | None = None) -> str:
    """``host:pid`` of the cratebridge process that owns a run's containers."""
    return f"{socket.gethostname()}:{pid or os.getpid()}"


def owner_alive(owner: str) -> bool:
    """Whether the owning process still runs (an owner on another host counts as alive).

    A killed process its parent has not yet waited for (a zombie) is gone.
    """
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{int(pid)}/stat").read_text().rpartition(")")[2].split()[:1]
    except OSError:
        return True
    return state not in (["Z"], ["X"])


def runs_label(runs_dir: Path) -> str:
    """``org.cratebridge.runs=<runs folder>``, the folder's real path (links resolved)."""
    return f"{RUNS_LABEL}={os.path.realpath(runs_dir)}"


#: Seconds any one docker call of a stale-container sweep may take: a container
#: the daemon cannot remove in time (a stuck or paused one) is left and reported.
SWEEP_TIMEOUT = 10.0


def stale_containers(docker: str, runs_dir: Path, everything: bool = False,
                     timeout: float = SWEEP_TIMEOUT) -> list[str]:
    """Containers of runs of ``runs_dir`` whose owning process is gone (or all of them).

    Only containers labelled with this runs folder are ever considered: never
    another folder's runs, live or dead, nor a container without the label.
    Raises :class:`subprocess.TimeoutExpired` when docker does not answer in time.
    """
    listed = _listed(RUN_LABEL, runs_label(runs_dir), timeout=timeout)
    if listed is not None:
        return [str(c["Id"])[:12] for c in listed
                if everything or not owner_alive(str((c.get("Labels") or {}).get(OWNER_LABEL, "")))]
    out = subprocess.run(
        [docker, "ps", "-a", "--filter", f"label={RUN_LABEL}",
         "--filter", f"label={runs_label(runs_dir)}",
         "--format", f'{{{{.ID}}}} {{{{.Label "{OWNER_LABEL}"}}}}'],
        capture_output=True, text=True, check=False, timeout=timeout,
    )
    found = []
    for line in out.stdout.splitlines():
        cid, _, owner = line.partition(" ")
        if everything or not owner_alive(owner.strip()):
            found.append(cid)
    return found


def remove_stale_containers(docker: str, runs_dir: Path, everything: bool = False,
                            timeout: float = SWEEP_TIMEOUT) -> tuple[list[str], list[str]]:
    """Remove the containers :func:`stale_containers` finds: those removed, and those left.

    Each docker call is bounded by ``timeout``; a container not removed in time
    (or when docker cannot even list them: ``["?"]``) is left, for the caller
    to report.
    """
    try:
        found = stale_containers(docker, runs_dir, everything, timeout)
    except subprocess.TimeoutExpired:
        return [], ["?"]
    removed: list[str] = []
    left: list[str] = []
    for cid in found:
        try:
            done = subprocess.run([docker, "rm", "-f", cid], capture_output=True, check=False,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            left.append(cid)
            continue
        (removed if done.returncode == 0 else left).append(cid)
    return removed, left


def client_env() -> dict[str, str]:
    """The environment the Docker and Slurm clients get from ours (:data:`CLIENT_ENV`)."""
    return {k: os.environ[k] for k in CLIENT_ENV if k in os.environ}


def find_docker() -> str | None:
    """The real docker client, never our own shim."""
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(folder) / "docker"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            if candidate.resolve().name != "cratebridge-docker":
                return str(candidate)
    return None


def image_id(docker: str, image: str) -> str | None:
    """The local image id (``sha256:...``) of ``image``, or None when it is not here.

    Asked on the daemon's socket when it is local, else (or when that fails)
    with the ``docker`` client.
    """
    from cratebridge.containers.dockerapi import local_api  # not for every importer of ours

    api = local_api()
    if api is not None:
        try:
            found = api.image(image)
        except OSError:
            pass
        else:
            return str(found["Id"]) if found and found.get("Id") else None
    out = subprocess.run(
        [docker, "image", "inspect", "--format", "{{.Id}}", image],
        capture_output=True, text=True, check=False,
    )
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None

"""Looking into a step image without running it: is the program a workflow asks for there?

Used at plan time for ``shell.executable(...)``: a job's command runs under
that program in its rule's image, so an image without it is refused before
anything runs; and for ``run:`` / ``script:`` rules, whose image must hold
``python3`` and the engine's own Snakemake version. The executor (never the
room) creates a container that is never started, reads the files from it
and removes it, through the daemon's socket when it is local
(:mod:`cratebridge.containers.dockerapi`: no process a question),
else with the ``docker`` client (``docker cp``: a process a question); the
container carries the run's labels, so a plan killed half-way leaves nothing
that the run's sweeps would not remove.
"""

from __future__ import annotations

import json
import posixpath
import re
import subprocess
import tarfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from cratebridge.containers.dockerapi import DockerAPI, local_api

__all__ = ["DEFAULT_PATH", "find_program", "find_snakemake"]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_TIMEOUT = 60.0
# Where a Python finds Snakemake, besides the image's PYTHONPATH: Debian's, the python
# images' and conda's site folders.
_SITE_FOLDERS = ("/usr/lib/python3/dist-packages",
                 *(f"{prefix}/lib/python3.{minor}/site-packages"
                   for minor in range(14, 7, -1) for prefix in ("/usr/local", "/opt/conda")))
_VERSION = re.compile(r"""^__version__\s*=\s*["']([^"']+)["']""", re.MULTILINE)


def find_snakemake(docker: str, image: str, labels: Sequence[str] = ()) -> str | None:
    """The Snakemake version a ``python3`` on the image's ``PATH`` would import, or None.

    Looks for ``snakemake/__init__.py`` in the image's ``PYTHONPATH`` folders,
    then in the usual site folders; ``"unknown"`` when it is there without a
    readable version. None also when the image has no ``python3``.
    """
    with _probe(docker, image, labels) as probe:
        if probe is None:
            return None
        env = probe.env()
        if not any(probe.is_executable(posixpath.join(folder, "python3"))
                   for folder in _folders(env.get("PATH", DEFAULT_PATH))):
            return None
        for folder in (*_folders(env.get("PYTHONPATH", "")), *_SITE_FOLDERS):
            text = probe.read(posixpath.join(folder, "snakemake", "__init__.py"))
            if text is not None:
                found = _VERSION.search(text)
                return found.group(1) if found else "unknown"
    return None


def find_program(docker: str, image: str, name: str, labels: Sequence[str] = ()) -> str | None:
    """Where ``name`` is on the image's ``PATH`` (an executable file), or None.

    ``labels`` are ``--label=...`` flags for the probe container. Raises
    :class:`OSError` or :class:`subprocess.SubprocessError` when docker fails.
    """
    if "/" in name:
        return None
    with _probe(docker, image, labels) as probe:
        if probe is None:
            return None
        # the folders of the image's PATH: Docker resolves an entrypoint the same way
        for folder in _folders(probe.env().get("PATH", DEFAULT_PATH)):
            path = posixpath.join(folder, name)
            if probe.is_executable(path):
                return path
    return None


class _Probe(Protocol):
    def env(self) -> dict[str, str]: ...

    def is_executable(self, path: str) -> bool: ...

    def read(self, path: str) -> str | None: ...


@contextmanager
def _probe(docker: str, image: str, labels: Sequence[str]) -> Iterator[_Probe | None]:
    """A container of ``image`` that never starts (None if it cannot be created); removed after.

    Asked through the daemon's socket when it is local, else with the client.
    """
    api = local_api()
    if api is None:
        with _client_probe(docker, image, labels) as probe:
            yield probe
        return
    pairs = (label.removeprefix("--label=").partition("=") for label in labels)
    container = api.create(image, {key: value for key, _, value in pairs})
    if container is None:
        yield None
        return
    try:
        yield _ApiProbe(api, image, container)
    finally:
        api.remove(container)


@dataclass(frozen=True)
class _ApiProbe:
    api: DockerAPI
    image: str
    container: str

    def env(self) -> dict[str, str]:
        found = self.api.image(self.image) or {}
        return _env_of((found.get("Config") or {}).get("Env"))

    def is_executable(self, path: str) -> bool:
        return self.api.is_executable(self.container, path)

    def read(self, path: str) -> str | None:
        return self.api.read(self.container, path)


@contextmanager
def _client_probe(docker: str, image: str, labels: Sequence[str]) -> Iterator[_Probe | None]:
    created = subprocess.run(
        [docker, "create", "--pull=never", "--network=none", *labels, "--entrypoint=", image,
         "cratebridge-probe"], capture_output=True, text=True, check=False, timeout=_TIMEOUT)
    if created.returncode != 0:
        yield None
        return
    container = created.stdout.strip()
    try:
        yield _ClientProbe(docker, image, container)
    finally:
        subprocess.run([docker, "rm", "-f", container], capture_output=True, check=False,
                       timeout=_TIMEOUT)


@dataclass(frozen=True)
class _ClientProbe:
    """The same questions through the ``docker`` client: a daemon that is not a local socket."""

    docker: str
    image: str
    container: str

    def env(self) -> dict[str, str]:
        out = subprocess.run([self.docker, "image", "inspect", "--format", "{{json .Config.Env}}",
                              self.image], capture_output=True, text=True, check=False,
                             timeout=_TIMEOUT)
        try:
            return _env_of(json.loads(out.stdout) if out.returncode == 0 else None)
        except json.JSONDecodeError:
            return {}

    def is_executable(self, path: str) -> bool:
        """Whether ``path`` (links followed inside the image) is an executable file."""
        member = self._first(path)
        return member is not None and member[0].isfile() and bool(member[0].mode & 0o111)

    def read(self, path: str, limit: int = 1 << 20) -> str | None:
        """A small regular file of the container (links followed), or None."""
        member = self._first(path, limit)
        if member is None or not member[0].isfile() or member[0].size > limit:
            return None
        return member[1]

    def _first(self, path: str, limit: int = 0) -> tuple[tarfile.TarInfo, str | None] | None:
        """The first member of ``docker cp -L``'s archive of ``path``, its text up to ``limit``."""
        with subprocess.Popen([self.docker, "cp", "-L", f"{self.container}:{path}", "-"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
            try:
                if proc.stdout is None:
                    return None
                with tarfile.open(fileobj=proc.stdout, mode="r|") as archive:
                    member = archive.next()
                    if member is None:
                        return None
                    text = None
                    if limit and member.isfile() and member.size <= limit:
                        stream = archive.extractfile(member)
                        text = stream.read().decode("utf-8", "replace") if stream else None
                    return member, text
            except tarfile.TarError:
                return None
            finally:
                proc.kill()


def _env_of(env: object) -> dict[str, str]:
    items = env if isinstance(env, list) else []
    return dict(e.split("=", 1) for e in items if isinstance(e, str) and "=" in e)


def _folders(value: str) -> list[str]:
    return [folder for folder in value.split(":") if folder.startswith("/")]

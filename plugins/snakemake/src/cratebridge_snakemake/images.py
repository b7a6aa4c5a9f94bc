"""Looking into a step image without running it: is the program a workflow asks for there?

Used at plan time for ``shell.executable(...)``: a job's command runs under
that program in its rule's image, so an image without it is refused before
anything runs; and for ``run:`` / ``script:`` rules, whose image must hold
``python3`` and the engine's own Snakemake version. The executor (never the
room) creates a container that is never started, reads the files from it
with ``docker cp`` and removes it; the container carries the run's labels, so
a plan killed half-way leaves nothing that the run's sweeps would not remove.
"""

from __future__ import annotations

import json
import posixpath
import re
import subprocess
import tarfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

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
    with _probe(docker, image, labels) as container:
        if container is None:
            return None
        env = _image_env(docker, image)
        if not any(_is_executable(docker, container, posixpath.join(folder, "python3"))
                   for folder in _folders(env.get("PATH", DEFAULT_PATH))):
            return None
        for folder in (*_folders(env.get("PYTHONPATH", "")), *_SITE_FOLDERS):
            text = _read(docker, container, posixpath.join(folder, "snakemake", "__init__.py"))
            if text is not None:
                found = _VERSION.search(text)
                return found.group(1) if found else "unknown"
    return None


@contextmanager
def _probe(docker: str, image: str, labels: Sequence[str]) -> Iterator[str | None]:
    """A container of ``image`` that never starts (None if it cannot be created); removed after."""
    created = subprocess.run(
        [docker, "create", "--pull=never", "--network=none", *labels, "--entrypoint=", image,
         "cratebridge-probe"], capture_output=True, text=True, check=False, timeout=_TIMEOUT)
    if created.returncode != 0:
        yield None
        return
    container = created.stdout.strip()
    try:
        yield container
    finally:
        subprocess.run([docker, "rm", "-f", container], capture_output=True, check=False,
                       timeout=_TIMEOUT)


def _image_env(docker: str, image: str) -> dict[str, str]:
    out = subprocess.run([docker, "image", "inspect", "--format", "{{json .Config.Env}}", image],
                         capture_output=True, text=True, check=False, timeout=_TIMEOUT)
    try:
        env = json.loads(out.stdout) if out.returncode == 0 else None
    except json.JSONDecodeError:
        env = None
    return dict(e.split("=", 1) for e in env or () if isinstance(e, str) and "=" in e)


def _folders(value: str) -> list[str]:
    return [folder for folder in value.split(":") if folder.startswith("/")]


def _read(docker: str, container: str, path: str, limit: int = 1 << 20) -> str | None:
    """A small regular file of the container (links followed), or None."""
    with subprocess.Popen([docker, "cp", "-L", f"{container}:{path}", "-"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
        try:
            if proc.stdout is None:
                return None
            with tarfile.open(fileobj=proc.stdout, mode="r|") as archive:
                member = archive.next()
                if member is None or not member.isfile() or member.size > limit:
                    return None
                stream = archive.extractfile(member)
                return stream.read().decode("utf-8", "replace") if stream else None
        except tarfile.TarError:
            return None
        finally:
            proc.kill()


def find_program(docker: str, image: str, name: str, labels: Sequence[str] = ()) -> str | None:
    """Where ``name`` is on the image's ``PATH`` (an executable file), or None.

    ``labels`` are ``--label=...`` flags for the probe container. Raises
    :class:`OSError` or :class:`subprocess.SubprocessError` when docker fails.
    """
    if "/" in name:
        return None
    with _probe(docker, image, labels) as container:
        if container is None:
            return None
        # the folders of the image's PATH: Docker resolves an entrypoint the same way
        for folder in _folders(_image_env(docker, image).get("PATH", DEFAULT_PATH)):
            path = posixpath.join(folder, name)
            if _is_executable(docker, container, path):
                return path
    return None


def _is_executable(docker: str, container: str, path: str) -> bool:
    """Whether ``path`` (links followed inside the image) is an executable file."""
    with subprocess.Popen([docker, "cp", "-L", f"{container}:{path}", "-"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
        try:
            if proc.stdout is None:
                return False
            with tarfile.open(fileobj=proc.stdout, mode="r|") as archive:
                member = archive.next()
                return member is not None and member.isfile() and bool(member.mode & 0o111)
        except tarfile.TarError:
            return False
        finally:
            proc.kill()

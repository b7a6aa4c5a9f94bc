"""Looking into a step image without running it: is the program a workflow asks for there?

Used at plan time for ``shell.executable(...)``: a job's command runs under
that program in its rule's image, so an image without it is refused before
anything runs. The executor (never the room) creates a container that is never
started, reads the program from it with ``docker cp`` and removes it; the
container carries the run's labels, so a plan killed half-way leaves nothing
that the run's sweeps would not remove.
"""

from __future__ import annotations

import json
import posixpath
import subprocess
import tarfile
from collections.abc import Sequence

__all__ = ["DEFAULT_PATH", "find_program"]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_TIMEOUT = 60.0


def find_program(docker: str, image: str, name: str, labels: Sequence[str] = ()) -> str | None:
    """Where ``name`` is on the image's ``PATH`` (an executable file), or None.

    ``labels`` are ``--label=...`` flags for the probe container. Raises
    :class:`OSError` or :class:`subprocess.SubprocessError` when docker fails.
    """
    if "/" in name:
        return None
    created = subprocess.run(
        [docker, "create", "--pull=never", "--network=none", *labels, "--entrypoint=", image,
         "cratebridge-probe"], capture_output=True, text=True, check=False, timeout=_TIMEOUT)
    if created.returncode != 0:
        return None
    container = created.stdout.strip()
    try:
        for folder in _image_path(docker, image):
            path = posixpath.join(folder, name)
            if _is_executable(docker, container, path):
                return path
        return None
    finally:
        subprocess.run([docker, "rm", "-f", container], capture_output=True, check=False,
                       timeout=_TIMEOUT)


def _image_path(docker: str, image: str) -> list[str]:
    """The folders of the image's ``PATH`` (Docker resolves an entrypoint the same way)."""
    out = subprocess.run([docker, "image", "inspect", "--format", "{{json .Config.Env}}", image],
                         capture_output=True, text=True, check=False, timeout=_TIMEOUT)
    try:
        env = json.loads(out.stdout) if out.returncode == 0 else None
    except json.JSONDecodeError:
        env = None
    value = next((e[5:] for e in env or () if isinstance(e, str) and e.startswith("PATH=")),
                 DEFAULT_PATH)
    return [folder for folder in value.split(":") if folder.startswith("/")]


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

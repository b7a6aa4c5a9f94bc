"""The broker's client compiled from ``client.c``: the ``docker`` a confined engine runs.

Engines start their ``docker`` for every container, and a scatter starts hundreds.
:mod:`cratebridge.containers.shim` is that client in Python, which costs about
8 ms of CPU to start; ``client.c`` is the same client in C, under 1 ms. The
sandbox puts the compiled one in the engine's room when it was built from the
``client.c`` beside this module (its name carries the source's digest, so a
stale build is never used), and the Python one otherwise.

``python -m cratebridge.containers.client`` builds it (``make setup`` does) with
the system's C compiler: static, so it needs nothing in the room but itself.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from cratebridge.containers import shim

SOURCE = Path(__file__).with_name("client.c")
FLAGS = ("-O2", "-s", "-Wall", "-Wextra", "-Werror", "-pthread")


class BuildError(RuntimeError):
    """The compiler is missing or refused the source; the Python client serves."""


def built_path(source: Path = SOURCE) -> Path:
    """Where the client built from ``source`` as it is now lives (beside it)."""
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    return source.with_name(f"cratebridge-client-{digest}")


def compiled(source: Path = SOURCE) -> Path | None:
    """The client built from this very ``source``, or None when it is not built."""
    try:
        path = built_path(source)
    except OSError:
        return None
    return path if os.access(path, os.X_OK) else None


def build(source: Path = SOURCE, compiler: str | None = None) -> Path:
    """Compile ``source`` (static if the C library allows, else dynamic); its path.

    Written under a temporary name and renamed: a run starting meanwhile sees
    the whole program or none.
    """
    target = built_path(source)
    cc = compiler or os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise BuildError("no C compiler (cc) on PATH; install gcc, or runs keep the Python "
                         "client")
    fd, partial = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        errors = ""
        for link in (("-static",), ()):
            done = subprocess.run([cc, *FLAGS, *link, "-o", partial, str(source)],
                                  capture_output=True, text=True, check=False)
            if done.returncode == 0:
                break
            errors = done.stderr.strip()
        else:
            raise BuildError(f"{cc} could not build {source}:\n{errors}")
        os.chmod(partial, 0o755)
        os.replace(partial, target)
    finally:
        Path(partial).unlink(missing_ok=True)
    for old in target.parent.glob("cratebridge-client-*"):  # builds of older sources
        if old != target:
            old.unlink(missing_ok=True)
    return target


def install(target: Path, program: Path | None) -> None:
    """The client at ``target``: a copy of the compiled ``program``, or (None) the
    Python one as a script of its own, in isolated mode and without ``site``."""
    target.unlink(missing_ok=True)
    if program is not None:
        shutil.copyfile(program, target)
    else:
        target.write_text(f"#!{sys.executable} -IS\n" + Path(shim.__file__).read_text())
    target.chmod(0o755)


def main() -> int:
    existing = compiled()
    if existing is not None:
        print(f"cratebridge client: {existing} (up to date)")
        return 0
    try:
        print(f"cratebridge client: built {build()}")
    except (BuildError, OSError) as exc:
        print(f"cratebridge client: not built ({exc}); runs use the Python client",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The demo and test images, built locally from Debian's own files: nothing is pulled.

``cratebridge images build`` runs these recipes (``make setup`` calls it), so a
pip user can build the same images as a checkout of the repository.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import tarfile
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cratebridge.errors import CratebridgeError, EngineUnavailable, UsageError
from cratebridge.image_layers import add_file, add_tree, distribution_files, host_libraries

__all__ = [
    "BUSYBOX",
    "BUSYBOX_DOCKERFILE",
    "BuiltImage",
    "BusyboxImage",
    "DebootstrapImage",
    "ImageState",
    "Need",
    "Recipe",
    "Runner",
    "SnakemakeImage",
    "SubprocessRunner",
    "build",
    "default_recipes",
    "docker_client",
    "snakemake_image",
    "status",
]

#: Debian's static BusyBox (package ``busybox-static``).
BUSYBOX = Path("/bin/busybox")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
PATH_ENV = "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

BUSYBOX_DOCKERFILE = """\
# cratebridge/busybox:1 -- a static BusyBox on an empty base, built offline.
# `cratebridge images build` puts Debian's /bin/busybox (package busybox-static)
# beside this file before `docker build`.
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "mkdir", "-p", "/tmp", "/usr/bin", "/sbin", "/usr/sbin", "/etc"]
RUN ["/bin/busybox", "--install", "-s", "/bin"]
# World-writable sticky /tmp so a non-root user (e.g. uid 1000) can work here.
RUN ["/bin/busybox", "chmod", "1777", "/tmp"]
RUN ["/bin/busybox", "sh", "-c", "echo 'root:x:0:0:root:/root:/bin/sh' > /etc/passwd && \
echo 'user:x:1000:1000:user:/tmp:/bin/sh' >> /etc/passwd && echo 'root:x:0:' > /etc/group && \
echo 'user:x:1000:' >> /etc/group"]
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CMD ["/bin/sh"]
"""


class Runner(Protocol):
    """Runs one command of a recipe; raises :class:`CratebridgeError` when it fails."""

    def __call__(self, argv: Sequence[str], *, feed: Sequence[str] | None = None) -> None:
        """Run ``argv``; with ``feed``, that command's standard output is ``argv``'s input.

        Standard output is discarded (``--json`` keeps stdout for its document);
        standard error reaches the user, so a long debootstrap shows its progress.
        """


class SubprocessRunner:
    """The real :class:`Runner`: each command a subprocess, as the old shell scripts ran them."""

    def __call__(self, argv: Sequence[str], *, feed: Sequence[str] | None = None) -> None:
        try:
            if feed is None:
                code = subprocess.run(argv, stdout=subprocess.DEVNULL, check=False).returncode
            else:
                code = self._pipe(feed, argv)
        except OSError as exc:
            raise CratebridgeError(f"cannot run {argv[0]}: {exc.strerror}",
                                   where=" ".join(argv[:2])) from None
        if code != 0:
            raise CratebridgeError(f"{' '.join(argv)} failed with exit code {code} (its "
                                   "messages are above)", where=argv[0])

    @staticmethod
    def _pipe(feed: Sequence[str], argv: Sequence[str]) -> int:
        with subprocess.Popen(feed, stdout=subprocess.PIPE) as producer:
            consumer = subprocess.run(argv, stdin=producer.stdout, stdout=subprocess.DEVNULL,
                                      check=False)
        # the consumer's failure first: it makes the producer die of SIGPIPE
        if consumer.returncode == 0 and producer.returncode != 0:
            raise CratebridgeError(f"{' '.join(feed)} failed with exit code "
                                   f"{producer.returncode}", where=feed[0])
        return consumer.returncode


@dataclass(frozen=True)
class Need:
    """A file or program a recipe needs on the host, and the Debian package that brings it."""

    what: str
    package: str

    def found(self) -> bool:
        if self.what.startswith("/"):
            return os.access(self.what, os.X_OK)
        return shutil.which(self.what) is not None

    def check(self) -> None:
        """Raise :class:`EngineUnavailable` (exit 5) naming the package to install."""
        if not self.found():
            raise EngineUnavailable(f"{self.what} not found; install it with: "
                                    f"apt-get install -y {self.package}", where=self.what)

    def to_json(self) -> dict[str, Any]:
        return {"what": self.what, "package": self.package, "found": self.found()}


class Recipe(ABC):
    """How to build one image (and tag its aliases) with a local Docker daemon, offline."""

    name: str
    aliases: tuple[str, ...] = ()
    summary: str = ""

    @property
    @abstractmethod
    def needs(self) -> tuple[Need, ...]:
        """What must be on the host; :meth:`build` checks it first."""

    @abstractmethod
    def build(self, docker: str, tag: str, run: Runner) -> None:
        """Build the image as ``tag`` through ``run``; must never pull from a registry.

        May raise :class:`EngineUnavailable` (a need is missing) or
        :class:`CratebridgeError` (a command failed).
        """


@dataclass(frozen=True)
class BusyboxImage(Recipe):
    """``cratebridge/busybox:1``: Debian's static BusyBox on ``FROM scratch``."""

    busybox: Path = BUSYBOX
    name: str = "cratebridge/busybox:1"
    summary: str = "static BusyBox on an empty base (seconds)"

    @property
    def needs(self) -> tuple[Need, ...]:
        return (Need(str(self.busybox), "busybox-static"),)

    def build(self, docker: str, tag: str, run: Runner) -> None:
        for need in self.needs:
            need.check()
        with tempfile.TemporaryDirectory(prefix="cratebridge-busybox-") as ctx:
            (Path(ctx) / "Dockerfile").write_text(BUSYBOX_DOCKERFILE)
            shutil.copy(self.busybox, Path(ctx) / "busybox")
            # --pull=false: FROM scratch needs no registry; never try one.
            run([docker, "build", "--pull=false", "-q", "-t", tag, ctx])


#: Left out of the root filesystem: not needed at run time (as the old script did).
TRIMMED = ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*", "usr/share/doc/*",
           "usr/share/man/*", "usr/share/locale/*")


@dataclass(frozen=True)
class DebootstrapImage(Recipe):
    """``cratebridge/python:3.11`` (also ``cratebridge/bash:1``): a Debian bookworm minbase.

    The root filesystem has python3-minimal, bash and procps, a world-writable
    ``/tmp`` and a plain ``python``; ``docker import`` makes it an image.
    """

    name: str = "cratebridge/python:3.11"
    aliases: tuple[str, ...] = ("cratebridge/bash:1",)
    summary: str = "Debian bookworm minbase with python3-minimal (minutes; needs a mirror)"
    suite: str = "bookworm"
    include: tuple[str, ...] = ("python3-minimal", "procps")
    mirror: str | None = None  # default: $DEBIAN_MIRROR, else deb.debian.org
    workdir: Path = Path("/var/tmp")

    @property
    def needs(self) -> tuple[Need, ...]:
        return (Need("debootstrap", "debootstrap"),)

    def build(self, docker: str, tag: str, run: Runner) -> None:
        for need in self.needs:
            need.check()
        mirror = self.mirror or os.environ.get("DEBIAN_MIRROR") or DEFAULT_MIRROR
        root = Path(tempfile.mkdtemp(prefix="cratebridge-rootfs.", dir=self.workdir))
        try:
            run(["debootstrap", "--variant=minbase", f"--include={','.join(self.include)}",
                 self.suite, str(root), mirror])
            _finish_rootfs(root)
            run([docker, "import", "-c", PATH_ENV, "-c", 'CMD ["/bin/bash"]', "-", tag],
                feed=["tar", "-C", str(root), "-c", "."])
        finally:
            shutil.rmtree(root, ignore_errors=True)


def _finish_rootfs(root: Path) -> None:
    for folder in ("tmp", "var/tmp"):
        (root / folder).chmod(0o1777)
    for pattern in TRIMMED:
        for path in root.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    # python3-minimal installs python3.11; give callers a plain `python` too.
    python = root / "usr/bin/python"
    python.unlink(missing_ok=True)
    python.symlink_to("python3")


def default_recipes(busybox: Path | None = None) -> tuple[Recipe, ...]:
    """The images the demo and the tests use, in build order; BusyBox from ``busybox``.

    ``cratebridge/snakemake:<version>`` is among them when Snakemake is installed
    in this environment (cratebridge-snakemake), after the python image it is built on.
    """
    snakemake = snakemake_image()
    return (BusyboxImage(busybox=busybox or BUSYBOX), DebootstrapImage(),
            *((snakemake,) if snakemake else ()))


def snakemake_image() -> SnakemakeImage | None:
    """The recipe for this environment's Snakemake, or None when it is not installed.

    Reads the installed distribution's metadata; Snakemake is never imported.
    """
    try:
        version = importlib.metadata.version("snakemake")
    except importlib.metadata.PackageNotFoundError:
        return None
    return SnakemakeImage(name=f"cratebridge/snakemake:{version}", version=version)


@dataclass(frozen=True)
class SnakemakeImage(Recipe):
    """``cratebridge/snakemake:<version>``: the Snakemake of this environment, in a step image.

    Built on ``cratebridge/python:3.11`` (whose python3-minimal lacks most of the
    standard library): the host's Python 3.11 standard library and the installed
    Snakemake with every distribution it needs (and the installed ``optional``
    ones), at their installed versions, copied from this environment (nothing is
    downloaded), the host libraries their extension modules load, all
    byte-compiled in the image, and ``PYTHONPATH`` set. Jobs of ``run:`` and
    ``script:`` rules run Snakemake's own per-job command in it (docs/snakemake.md).
    """

    name: str = "cratebridge/snakemake"
    version: str = ""
    summary: str = ("cratebridge/python:3.11 with this environment's Snakemake and the host's "
                    "Python 3.11 standard library (a minute; offline)")
    base: str = "cratebridge/python:3.11"
    stdlib: Path = Path("/usr/lib/python3.11")
    distribution: str = "snakemake"
    #: Added (with what they require) when installed here: Snakefiles often import
    #: pandas (Snakemake's own ``Paramspace`` needs it); pygments is Snakemake's
    #: ``reports`` extra. A job's Snakemake reads the whole Snakefile again.
    optional: tuple[str, ...] = ("pandas", "pygments")
    workdir: Path = Path("/var/tmp")

    @property
    def needs(self) -> tuple[Need, ...]:
        # a folder: Need checks absolute paths for the execute bit
        return (Need(str(self.stdlib / "json"), "libpython3.11-stdlib"),)

    def build(self, docker: str, tag: str, run: Runner) -> None:
        from cratebridge.containers.sandbox import image_id

        for need in self.needs:
            need.check()
        if image_id(docker, self.base) is None:
            raise EngineUnavailable(f"{tag} is built on {self.base}, which is not present; "
                                    f"build it first: cratebridge images build {self.base}",
                                    where=self.base)
        name = f"cratebridge-build-{uuid.uuid4().hex[:12]}"
        with tempfile.TemporaryDirectory(prefix="cratebridge-snakemake-",
                                         dir=self.workdir) as folder:
            archive = Path(folder) / "layer.tar"
            with tarfile.open(archive, "w") as tar:
                modules = add_tree(tar, self.stdlib, self.stdlib.relative_to("/").as_posix(),
                                   skip=STDLIB_SKIPPED)
                for source, relative in distribution_files(self.distribution,
                                                           optional=self.optional):
                    add_file(tar, source, f"{SITE_DIR.lstrip('/')}/{relative}")
                    modules.append(source)
                for library in host_libraries(modules):
                    # the file a soname link points to, under the soname
                    add_file(tar, library.resolve(), f"{HOST_LIBS.lstrip('/')}/{library.name}")
            # Run once, as root, with no network: add the host libraries the image lacks
            # (Debian bookworm both sides), name uid 1000, and byte-compile what was
            # copied in (a step's root is read-only).
            run([docker, "create", "--name", name, "--network=none", "--pull=never",
                 "--user=0", self.base, "sh", "-c", _FINISH_SCRIPT])
            try:
                run([docker, "cp", "-", f"{name}:/"], feed=["cat", str(archive)])
                run([docker, "start", "-a", name])
                run([docker, "commit", "-c", f"ENV PYTHONPATH={SITE_DIR}",
                     "-c", "ENV GIT_PYTHON_REFRESH=quiet", "-c", 'CMD ["/bin/bash"]',
                     "-c", f"LABEL {SNAKEMAKE_LABEL}={self.version}", name, tag])
            finally:
                run([docker, "rm", "-f", name])


#: Where the distributions go in the image (``PYTHONPATH``).
SITE_DIR = "/opt/cratebridge/site-packages"
#: The label naming the Snakemake version a :class:`SnakemakeImage` holds.
SNAKEMAKE_LABEL = "org.cratebridge.snakemake.version"
#: Left out of the standard library: its own tests, build configuration and bytecode.
STDLIB_SKIPPED = ("test", "__pycache__", "config-3.11-x86_64-linux-gnu", "idle_test")
#: Not byte-compiled (``compileall -x``): test data written to fail to compile.
COMPILE_SKIPPED = r"/(tests?|idle_test)/"
#: Where the host's shared libraries wait until the image is finished.
HOST_LIBS = "/opt/cratebridge/host-libs"
_FINISH_SCRIPT = f"""set -eu
for lib in {HOST_LIBS}/*; do
  name=${{lib##*/}}
  if [ -e /lib/x86_64-linux-gnu/$name ] || [ -e /usr/lib/x86_64-linux-gnu/$name ]; then
    rm "$lib"
  else
    mv "$lib" /usr/lib/x86_64-linux-gnu/
  fi
done
rmdir {HOST_LIBS}
# the default step user has a name (Snakemake asks for it), as in cratebridge/busybox:1
grep -q '^[^:]*:[^:]*:1000:' /etc/passwd || echo 'user:x:1000:1000:user:/tmp:/bin/sh' >> /etc/passwd
grep -q '^[^:]*:[^:]*:1000:' /etc/group || echo 'user:x:1000:' >> /etc/group
python3 -m compileall -q -j0 -x '{COMPILE_SKIPPED}' {SITE_DIR} /usr/lib/python3.11
"""


@dataclass(frozen=True)
class ImageState:
    """One image name the package can build: what it needs, and whether it is here."""

    name: str
    tag: str
    recipe: str
    summary: str
    needs: tuple[Need, ...]
    image_id: str | None

    @property
    def present(self) -> bool:
        return self.image_id is not None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "tag": self.tag, "built_by": self.recipe,
                "summary": self.summary, "needs": [n.to_json() for n in self.needs],
                "present": self.present, "image_id": self.image_id}


@dataclass(frozen=True)
class BuiltImage:
    """What :func:`build` did for one recipe: ``built``, ``rebuilt`` or ``present``."""

    name: str
    tag: str
    action: str
    image_id: str | None
    aliases: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "tag": self.tag, "action": self.action,
                "image_id": self.image_id, "aliases": list(self.aliases)}


def docker_client() -> str:
    """The docker client, once the daemon answers; :class:`EngineUnavailable` otherwise."""
    from cratebridge.containers.sandbox import find_docker

    docker = find_docker()
    if docker is None:
        raise EngineUnavailable("no docker client on PATH; install it with: apt-get install "
                                "-y docker.io", where="docker")
    try:
        done = subprocess.run([docker, "version", "--format", "{{.Server.Version}}"],
                              capture_output=True, text=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        done = None
    if done is None or done.returncode != 0:
        why = " ".join((done.stderr if done else "no answer in 30 s").split())[:300]
        raise EngineUnavailable(f"the Docker daemon is not running or not reachable ({why}); "
                                "start it (e.g. `systemctl start docker`, or "
                                "scripts/start-dockerd in a checkout)", where="docker")
    return docker


def status(docker: str, names: Sequence[str] = (), *, prefix: str = "",
           recipes: Sequence[Recipe] | None = None) -> list[ImageState]:
    """Each name the recipes build (aliases included; or those ``names``), present or not.

    ``prefix`` goes before every tag, as for :func:`build`.
    """
    from cratebridge.containers.sandbox import image_id

    rows = []
    for recipe in _chosen(recipes or default_recipes(), names):
        for name in (recipe.name, *recipe.aliases):
            if names and name not in names:
                continue
            summary = recipe.summary if name == recipe.name else f"a tag of {recipe.name}"
            rows.append(ImageState(name=name, tag=prefix + name, recipe=recipe.name,
                                   summary=summary, needs=recipe.needs,
                                   image_id=image_id(docker, prefix + name)))
    return rows


def build(docker: str, names: Sequence[str] = (), *, force: bool = False, prefix: str = "",
          recipes: Sequence[Recipe] | None = None, run: Runner | None = None,
          progress: Callable[[str], None] | None = None) -> list[BuiltImage]:
    """Build the missing images (those ``names`` name, or all); ``force`` rebuilds them.

    ``prefix`` goes before every tag (``test/`` builds ``test/cratebridge/busybox:1``),
    so an image in use is never replaced. Aliases are tagged every time.
    """
    from cratebridge.containers.sandbox import image_id

    run = run or SubprocessRunner()
    done = []
    for recipe in _chosen(recipes or default_recipes(), names):
        tag = prefix + recipe.name
        before = image_id(docker, tag)
        if before is None or force:
            if progress:
                progress(f"building {tag}: {recipe.summary}")
            recipe.build(docker, tag, run)
        aliases = tuple(prefix + alias for alias in recipe.aliases)
        for alias in aliases:
            run([docker, "tag", tag, alias])
        action = "present" if before is not None and not force else \
            "rebuilt" if before is not None else "built"
        done.append(BuiltImage(recipe.name, tag, action, image_id(docker, tag), aliases))
    return done


def _chosen(recipes: Sequence[Recipe], names: Sequence[str]) -> list[Recipe]:
    """The recipes building ``names`` (a name or an alias), in build order; all for none."""
    if not names:
        return list(recipes)
    known = {n: r for r in recipes for n in (r.name, *r.aliases)}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(f"no recipe for {', '.join(unknown)}; known images: "
                         f"{', '.join(known)}", where="cratebridge images")
    wanted = {known[n].name for n in names}
    return [r for r in recipes if r.name in wanted]

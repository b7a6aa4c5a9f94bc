"""The engine's room: every engine process runs inside a bubblewrap confinement.

A workflow language is code chosen by the submitter (a Snakefile is Python,
CWL has JavaScript, Nextflow is Groovy), so the engine evaluating it must not
run with the executor's rights. :class:`Room` describes what a confined engine
sees and :meth:`Room.command` wraps an engine command in ``bwrap``:

- its own PID, mount, IPC, UTS and network namespaces (loopback only), a new
  session, killed when cratebridge dies;
- the run's unprivileged uid (never root), no capabilities, no new privileges;
- its runtime read-only (``/usr``, the Python environment, the engine's own
  program), a generated ``/etc`` holding nothing of the host's but what the
  runtime needs to start (the loader cache, ``alternatives``);
- the run's folder: the request read-only, work/outputs/logs writable, the
  run's ``tmp`` folder as ``/tmp``; nothing else of the host: not ``/root``,
  not other runs, not the Docker socket.

Every bind is opened here, as the executor, and handed to bwrap as a file
descriptor: the path is resolved once, on this side, and the engine's uid never
needs to traverse a folder (the run folder is 0700). Containers are reached only
through the run's broker (:mod:`cratebridge.containers.broker`), whose socket
is bound in next to the ``docker`` client stand-in.
"""

from __future__ import annotations

import os
import shutil
import site
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from cratebridge.errors import EngineUnavailable

__all__ = ["BROKER_DIR", "ROOM_USER", "Room", "find_bwrap", "python_runtime"]

# Host /etc entries the runtime needs to start; none holds a secret or a setting of
# the host's (no passwd, no hosts, no resolv.conf: those are generated).
RUNTIME_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime",
               "java-17-openjdk", "java-21-openjdk", "ssl/openssl.cnf")
# Debian's merged /usr: these are symlinks into /usr on the host and in the room.
USR_LINKS = ("bin", "sbin", "lib", "lib64")
HOSTNAME = "cratebridge"
#: The engine's user name in the room's /etc/passwd.
ROOM_USER = "engine"
#: Where the room sees its ``broker`` folder (the broker's socket, the engine's ``docker``).
BROKER_DIR = Path("/run/cratebridge")


def find_bwrap() -> str:
    """The bubblewrap program, or EngineUnavailable saying how to install it."""
    found = shutil.which("bwrap", path=os.environ.get("PATH", "") + ":/usr/bin:/bin")
    if found is None:
        raise EngineUnavailable("bubblewrap (bwrap) is not installed; every engine runs "
                                "confined by it: apt-get install bubblewrap", where="bwrap")
    return found


def python_runtime() -> tuple[Path, ...]:
    """The folders this Python needs read-only: its prefixes and the paths its .pth files add."""
    found: list[Path] = [Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix)]
    for folder in site.getsitepackages():
        for pth in sorted(Path(folder).glob("*.pth")):
            for line in pth.read_text(errors="replace").splitlines():
                line = line.strip()
                if line.startswith("/") and Path(line).is_dir():
                    found.append(Path(line))
    return _outermost(found)


def _outermost(paths: Sequence[Path]) -> tuple[Path, ...]:
    """Existing folders outside /usr, without those inside another of them."""
    real = sorted({Path(os.path.realpath(p)) for p in paths if Path(p).exists()})
    kept: list[Path] = []
    for path in real:
        if path == Path("/usr") or Path("/usr") in path.parents:
            continue
        if not any(k == path or k in path.parents for k in kept):
            kept.append(path)
    return tuple(kept)


def _leading_folders(paths: Sequence[Path]) -> list[Path]:
    """The folders above ``paths`` that a room must create, outermost first."""
    fixed = {Path("/"), Path("/tmp"), Path("/usr"), Path("/etc")}
    found = {parent for path in paths for parent in path.parents} - fixed - set(paths)
    return sorted((f for f in found if not any(x in f.parents for x in fixed - {Path("/")})
                   or Path("/tmp") in f.parents), key=lambda p: (len(p.parts), p))


@dataclass(frozen=True)
class Room:
    """What one run's engine sees, and the uid it runs as.

    ``readable`` and ``writable`` are host folders bound at their own path (so
    the engine's paths are the host's, and the broker can resolve them);
    ``tmp`` is bound as ``/tmp``; ``programs`` are extra read-only runtime
    folders (an engine program outside /usr and the Python environment);
    ``etc`` is the generated ``/etc``; ``broker`` is the host folder seen
    read-only at :data:`BROKER_DIR` (a short path: a unix socket's cannot be long);
    ``socket``, when given, is the host socket the room sees as that folder's
    ``docker.sock`` instead of the run broker's own (a Slurm job's broker on its node).
    """

    uid: int
    gid: int
    etc: Path
    tmp: Path
    readable: tuple[Path, ...] = ()
    writable: tuple[Path, ...] = ()
    broker: Path | None = None
    socket: Path | None = None
    programs: tuple[Path, ...] = ()
    runtime: tuple[Path, ...] = field(default_factory=python_runtime)

    def to_json(self) -> dict[str, object]:
        """The room as JSON data, to build the same room elsewhere (a Slurm job's)."""
        return {"uid": self.uid, "gid": self.gid, "etc": str(self.etc), "tmp": str(self.tmp),
                "broker": str(self.broker) if self.broker else None,
                "socket": str(self.socket) if self.socket else None,
                **{name: [str(p) for p in getattr(self, name)]
                   for name in ("readable", "writable", "programs", "runtime")}}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Room:
        def paths(name: str) -> tuple[Path, ...]:
            value = data.get(name, [])
            return tuple(Path(str(p)) for p in value) if isinstance(value, list) else ()

        broker, socket = data.get("broker"), data.get("socket")
        return cls(uid=int(str(data["uid"])), gid=int(str(data["gid"])),
                   etc=Path(str(data["etc"])), tmp=Path(str(data["tmp"])),
                   broker=Path(str(broker)) if broker else None,
                   socket=Path(str(socket)) if socket else None, readable=paths("readable"),
                   writable=paths("writable"), programs=paths("programs"),
                   runtime=paths("runtime"))

    def with_programs(self, *paths: Path) -> Room:
        """The same room with more read-only runtime folders (an engine's own program)."""
        return replace(self, programs=_outermost([*self.programs, *paths]))

    def write_etc(self) -> None:
        """Generate the room's ``/etc``: an entry for its uid and nothing of the host's."""
        self.etc.mkdir(parents=True, exist_ok=True)
        files = {
            "passwd": f"root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n"
                      f"{ROOM_USER}:x:{self.uid}:{self.gid}:cratebridge engine:/nonexistent:"
                      "/bin/sh\n"
                      "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
            "group": f"root:x:0:\nengine:x:{self.gid}:\nnogroup:x:65534:\n",
            "hosts": f"127.0.0.1 localhost {HOSTNAME}\n::1 localhost {HOSTNAME}\n",
            "hostname": f"{HOSTNAME}\n",
            "nsswitch.conf": "passwd: files\ngroup: files\nhosts: files\n",
            "resolv.conf": "",
        }
        for name, text in files.items():
            (self.etc / name).write_text(text)
            (self.etc / name).chmod(0o644)
        for name in RUNTIME_ETC:  # mount points for the runtime's own entries
            host, here = Path("/etc") / name, self.etc / name
            if host.is_dir():
                here.mkdir(parents=True, exist_ok=True)
            elif host.exists():
                here.parent.mkdir(parents=True, exist_ok=True)
                here.touch()
        self.etc.chmod(0o755)

    def hand_over(self) -> None:
        """Give the room's uid what the executor put in its writable folders."""
        for top in (*self.writable, self.tmp):
            for folder, dirs, files in os.walk(top):
                for name in (folder, *(os.path.join(folder, n) for n in (*dirs, *files))):
                    try:
                        st = os.lstat(name)
                        if (st.st_uid, st.st_gid) != (self.uid, self.gid):
                            os.lchown(name, self.uid, self.gid)
                    except FileNotFoundError:
                        pass  # removed meanwhile by the engine

    def sweep_links(self) -> list[str]:
        """Remove every symlink the room left that leads, on the host, outside what it saw.

        A link means one thing in the room and another to the executor (``/proc/self``,
        ``/etc/passwd``, ``/tmp``...): once the engine is gone, the host reads the
        room's files, and must never be led by them outside the run. Returns the
        links removed (as ``path -> target``).
        """
        seen = [Path(os.path.realpath(p)) for p in (*self.readable, *self.writable, self.tmp)]
        removed = []
        for top in (*self.writable, self.tmp):
            for folder, dirs, files in os.walk(top):
                for name in (*dirs, *files):
                    path = os.path.join(folder, name)
                    if not os.path.islink(path):
                        continue
                    real = Path(os.path.realpath(path))
                    if not any(real == r or r in real.parents for r in seen):
                        removed.append(f"{path} -> {os.readlink(path)}")
                        os.unlink(path)
        return removed

    @contextmanager
    def command(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path,
                hand_over: bool = True) -> Iterator[tuple[list[str], tuple[int, ...]]]:
        """``argv`` wrapped in bwrap, and the descriptors to pass; closed on exit.

        ``hand_over``: first give the room's uid what the executor wrote in its
        writable folders (not for a Slurm job's room: the engine wrote them).

        The caller starts the returned command with ``pass_fds`` set to the
        descriptors, an empty environment and any working folder: bwrap sets
        the engine's environment (exactly ``env``) and folder (``cwd``).
        """
        fds: list[int] = []
        as_root = os.geteuid() == 0
        if as_root and hand_over:
            self.hand_over()

        def bind(kind: str, source: Path, dest: Path) -> list[str]:
            if not as_root:  # an unprivileged bwrap binds by path, in a user namespace
                return [kind.removesuffix("-fd"), str(source), str(dest)]
            fd = os.open(source, os.O_PATH | os.O_CLOEXEC)
            fds.append(fd)
            return [kind, str(fd), str(dest)]

        try:
            args = [find_bwrap(), "--unshare-pid", "--unshare-net", "--unshare-ipc",
                    "--unshare-uts", "--unshare-cgroup-try", "--hostname", HOSTNAME,
                    "--die-with-parent", "--new-session", "--clearenv"]
            args += bind("--bind-fd", self.tmp, Path("/tmp"))
            args += bind("--ro-bind-fd", Path("/usr"), Path("/usr"))
            for link in USR_LINKS:
                if os.path.islink(f"/{link}"):
                    args += ["--symlink", os.readlink(f"/{link}"), f"/{link}"]
            args += bind("--ro-bind-fd", self.etc, Path("/etc"))
            for name in RUNTIME_ETC:
                if os.path.exists(f"/etc/{name}"):
                    args += bind("--ro-bind-fd", Path(f"/etc/{name}"), Path(f"/etc/{name}"))
            args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/dev/shm"]
            # bwrap would make the folders leading to a bind 0700 root: the uid could not
            # pass them. Make them first, traversable.
            bound = (*self.runtime, *self.programs, *self.readable, *self.writable)
            for folder in _leading_folders(bound):
                args += ["--perms", "0755", "--dir", str(folder)]
            for path in (*self.runtime, *self.programs, *self.readable):
                args += bind("--ro-bind-fd", path, path)
            for path in self.writable:
                args += bind("--bind-fd", path, path)
            if self.broker is not None:
                args += ["--perms", "0755", "--dir", str(BROKER_DIR.parent)]
                args += bind("--ro-bind-fd", self.broker, BROKER_DIR)
                if self.socket is not None:  # over the run broker's, which it hides
                    args += bind("--ro-bind-fd", self.socket, BROKER_DIR / "docker.sock")
            for key, value in env.items():
                args += ["--setenv", key, value]
            args += ["--chdir", str(cwd), "--"]
            if as_root:
                # bwrap sets up the namespaces as root; setpriv then becomes the run's
                # unprivileged uid with every capability gone before the engine starts.
                args += ["/usr/bin/setpriv", f"--reuid={self.uid}", f"--regid={self.gid}",
                         "--clear-groups", "--inh-caps=-all", "--ambient-caps=-all",
                         "--bounding-set=-all", "--no-new-privs", "--"]
            else:
                args[1:1] = ["--unshare-user", "--disable-userns", "--cap-drop", "ALL"]
            args += argv
            yield args, tuple(fds)
        finally:
            for fd in fds:
                os.close(fd)

"""The one hardening policy for step containers: what a ``docker`` request may become.

The broker (:mod:`cratebridge.containers.broker`) hands every request from a
confined engine to :func:`authorise`, which either refuses it or returns the
exact ``docker`` argument list the broker will run. Nothing here trusts the
engine's arguments: commands, global options and ``docker run`` flags are
allow-lists; the flags the policy owns (network, user, limits) are replaced by
the sandbox's; bind sources are resolved on the host side and must lie inside
the run's folder (writable only inside its work folders); images must be local
and approved; containers named by the engine must belong to this run.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cratebridge.containers.sandbox import RUN_LABEL, ImagePolicy, Sandbox, image_id

__all__ = ["Authorised", "Refused", "RunState", "authorise"]


class Refused(Exception):
    """The request is outside the policy; the message goes to the engine's stderr."""


@dataclass(frozen=True)
class Authorised:
    """A request the broker may run: the docker arguments and what to record.

    ``container`` is set for ``docker run``: the image, its local id and labels.
    """

    argv: tuple[str, ...]
    command: str
    program: str | None = None  # the Docker client when None
    image: str | None = None
    image_id: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    interactive: bool = False
    names: tuple[str, ...] = ()  # ``--name`` given to a container
    cidfile: str | None = None  # where the engine wants the container id (its own side)


# Global options an engine may give before the command; they change nothing here.
GLOBAL_BOOLEANS = {"-D", "--debug"}
GLOBAL_VALUED = {"-l", "--log-level"}

# ``docker run`` flags kept as given (after their own checks below).
KEPT_BOOLEANS = {"-i", "--interactive", "--rm", "--init", "-t", "--tty"}
KEPT_VALUED = {"-w", "--workdir", "-e", "--env", "--name", "--entrypoint", "--label", "-l",
               "-v", "--volume", "--mount", "--tmpfs", "--stop-signal", "--stop-timeout",
               "--hostname", "-h"}
# Flags the policy owns: the engine's value is dropped and the sandbox's used.
POLICY_BOOLEANS = {"--read-only"}
POLICY_VALUED = {"--network", "--net", "--user", "-u", "--memory", "-m", "--memory-swap",
                 "--memory-reservation", "--cpus", "--cpu-shares", "-c", "--cpuset-cpus",
                 "--pids-limit", "--shm-size", "--log-driver", "--log-opt", "--ulimit",
                 "--cidfile"}
BOOLEANS = KEPT_BOOLEANS | POLICY_BOOLEANS
VALUED = KEPT_VALUED | POLICY_VALUED

# Queries and stops: each command's own flags (booleans, valued); each names images or
# containers of this run only.
QUERY_FLAGS: dict[str, tuple[set[str], set[str]]] = {
    "inspect": ({"-s", "--size"}, {"-f", "--format", "--type"}),
    "kill": (set(), {"-s", "--signal"}),
    "stop": (set(), {"-t", "--time", "-s", "--signal"}),
    "rm": ({"-f", "--force"}, set()),
    "wait": (set(), set()),
    "stats": ({"--no-stream", "--no-trunc", "-a", "--all"}, {"--format"}),
    "logs": ({"-f", "--follow", "-t", "--timestamps", "--details"},
             {"--tail", "-n", "--since", "--until"}),
    "ps": ({"-a", "--all", "-q", "--quiet", "--no-trunc", "-s", "--size", "-l", "--latest"},
           {"--format", "-f", "--filter", "-n", "--last"}),
    "images": ({"-a", "--all", "-q", "--quiet", "--no-trunc", "--digests"},
               {"--format", "-f", "--filter"}),
    "image inspect": (set(), {"-f", "--format"}),
    "version": (set(), {"-f", "--format"}),
}
ON_CONTAINERS = {"kill", "stop", "rm", "wait", "stats", "logs", "inspect"}


@dataclass
class RunState:
    """What the broker knows of its run: the sandbox, the containers it started, image ids.

    ``containers`` (ids, short ids, names) is None when nobody keeps count: then
    Docker is asked. Image ids are looked up once per run.
    """

    sandbox: Sandbox
    containers: set[str] | None = None
    images: dict[str, str | None] = field(default_factory=dict)

    def image_id(self, name: str) -> str | None:
        if name not in self.images:
            self.images[name] = image_id(self.sandbox.docker, name)
        return self.images[name]

    def ours(self) -> set[str]:
        if self.containers is None:
            return self.sandbox.container_names()
        return self.containers


def authorise(argv: list[str], target: Sandbox | RunState,
              env: Mapping[str, str] | None = None) -> Authorised:
    """The docker arguments to run for an engine's ``docker ARGV``, or :class:`Refused`.

    ``env`` is the engine's environment, where a bare ``-e NAME`` takes its value.
    """
    state = target if isinstance(target, RunState) else RunState(target)
    args = _strip_globals(argv)
    if not args:
        raise Refused("no docker command given")
    command, rest = args[0], args[1:]
    if command in ("container", "image") and rest:
        return _authorise_group(command, rest[0], rest[1:], state, env or {})
    handlers: dict[str, Callable[[list[str], RunState], Authorised]] = {
        "run": lambda rest, state: _run(rest, state, env or {}), "ps": _ps,
        "images": _images, "version": _plain("version"),
    }
    if command in handlers:
        return handlers[command](rest, state)
    if command in ON_CONTAINERS:
        return _on_containers(command, rest, state)
    raise Refused(f"'docker {command}' is not allowed inside a cratebridge run (allowed: "
                  f"run, ps, images, version, {', '.join(sorted(ON_CONTAINERS))})")


def _strip_globals(argv: list[str]) -> list[str]:
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        name = argv[i].partition("=")[0]
        if name in GLOBAL_BOOLEANS:
            i += 1
        elif name in GLOBAL_VALUED:
            i += 1 if "=" in argv[i] else 2
        else:
            raise Refused(f"docker option {name} is not allowed inside a cratebridge run")
    return argv[i:]


def _authorise_group(group: str, command: str, rest: list[str], state: RunState,
                     env: Mapping[str, str]) -> Authorised:
    if group == "container" and command in ("run", "ps", "ls", *ON_CONTAINERS):
        return authorise(["ps" if command == "ls" else command, *rest], state, env)
    if group == "image" and command in ("inspect", "ls"):
        if command == "ls":
            return _images(rest, state)
        flags, names = _split(rest, *QUERY_FLAGS["image inspect"], "image inspect")
        return Authorised(("image", "inspect", *flags, "--", *names), "image inspect")
    raise Refused(f"'docker {group} {command}' is not allowed inside a cratebridge run")


def _plain(command: str) -> Callable[[list[str], RunState], Authorised]:
    def handler(rest: list[str], state: RunState) -> Authorised:
        flags, extra = _split(rest, *QUERY_FLAGS[command], command)
        if extra:
            raise Refused(f"docker {command} takes no arguments")
        return Authorised((command, *flags), command)
    return handler


def _split(args: list[str], booleans: set[str], valued: set[str],
           command: str) -> tuple[list[str], list[str]]:
    """Split into (flags in ``--name=value`` form, positional arguments); unknown flags refused."""
    flags: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return flags, args[i + 1:]
        if not arg.startswith("-") or arg == "-":
            return flags, args[i:]
        if not arg.startswith("--") and len(arg) > 2 and "=" not in arg \
                and all(f"-{c}" in booleans for c in arg[1:]):
            flags += [f"-{c}" for c in arg[1:]]  # combined short booleans such as -it
            i += 1
            continue
        name, eq, value = arg.partition("=")
        if name in booleans and not eq:
            flags.append(name)
        elif name in valued:
            if not eq:
                i += 1
                if i >= len(args):
                    raise Refused(f"docker {command}: {name} has no value")
                value = args[i]
            flags.append(f"{name}={value}")
        elif name in booleans:
            flags.append(f"{name}={value}")
        else:
            raise Refused(f"docker {command}: option {name} is not allowed inside a "
                          "cratebridge run")
        i += 1
    return flags, []


def _ps(rest: list[str], state: RunState) -> Authorised:
    flags, extra = _split(rest, *QUERY_FLAGS["ps"], "ps")
    if extra:
        raise Refused("docker ps takes no arguments")
    return Authorised(("ps", *flags, f"--filter=label={RUN_LABEL}={state.sandbox.run_id}"),
                      "ps")


def _images(rest: list[str], state: RunState) -> Authorised:
    flags, names = _split(rest, *QUERY_FLAGS["images"], "images")
    return Authorised(("images", *flags, "--", *names), "images")


def _on_containers(command: str, rest: list[str], state: RunState) -> Authorised:
    flags, names = _split(rest, *QUERY_FLAGS[command], command)
    if not names:
        raise Refused(f"docker {command}: no container named")
    ours = state.ours()
    if command == "inspect":
        images = [n for n in names if n not in ours and state.image_id(n) is not None]
        if len(images) == len(names):
            return Authorised(("image", "inspect", *flags, "--", *names), "image inspect")
    strangers = [n for n in names if n not in ours]
    if strangers:
        raise Refused(f"docker {command}: {', '.join(strangers)} is not a container of this "
                      "run")
    return Authorised((command, *flags, "--", *names), command)


def _run(rest: list[str], state: RunState, env: Mapping[str, str]) -> Authorised:
    flags, positional = _split(rest, BOOLEANS, VALUED, "run")
    if not positional:
        raise Refused("docker run: no image given")
    image, command = positional[0], positional[1:]
    kept: list[str] = []
    names: list[str] = []
    cidfile = None
    labels: dict[str, str] = {}
    interactive = False
    mounts_tmp = False
    for flag in flags:
        name, _, value = flag.partition("=")
        if name == "--cidfile":
            cidfile = value
        if name in POLICY_BOOLEANS or name in POLICY_VALUED:
            continue
        if name in ("-i", "--interactive"):
            interactive = True
        if name == "--name":
            names.append(value)
        if name in ("-t", "--tty"):
            continue  # no terminal reaches a step
        if name in ("-e", "--env") and "=" not in value:
            if value not in env:
                continue  # as docker does: a variable the engine does not have is not set
            flag = f"{name}={value}={env[value]}"
        if name in ("--label", "-l"):
            key, _, val = value.partition("=")
            if key.startswith("org.cratebridge.") and key != "org.cratebridge.step":
                raise Refused(f"docker run: label {key} is set by cratebridge only")
            labels[key] = val
        if name in ("-v", "--volume", "--mount"):
            flag, target = _bind(name, value, state)
            mounts_tmp = mounts_tmp or target == "/tmp"
        if name == "--tmpfs":
            mounts_tmp = mounts_tmp or value.split(":")[0] == "/tmp"
            flag = f"--tmpfs={_tmpfs(value)}"
        kept.append(flag)
    local_id = state.image_id(image)
    if local_id is None:
        if state.sandbox.slurm_job:  # a Slurm job's own broker, on its node
            raise Refused(f"image {image} is not in the Docker of node {socket.gethostname()} "
                          f"(Slurm job {state.sandbox.slurm_job}); cratebridge never pulls. "
                          "Load the approved image into every node's Docker first")
        raise Refused(f"image {image} is not present locally; cratebridge never pulls. "
                      "Load the approved image into the TRE's Docker first")
    if not ImagePolicy(state.sandbox.approved_images).allows(image, local_id):
        raise Refused(f"image {image} ({local_id}) is not approved by the operator's policy")
    hardened = [*state.sandbox.docker_args(), "--read-only", "--pull=never"]
    if not mounts_tmp:
        hardened.append("--tmpfs=/tmp:rw,nosuid,nodev,size=256m,mode=1777")
    return Authorised(("run", *kept, *hardened, "--", image, *command), "run", image=image,
                      image_id=local_id, labels=labels, interactive=interactive,
                      names=tuple(names), cidfile=cidfile)


def _tmpfs(value: str) -> str:
    target, _, options = value.partition(":")
    kept = [o for o in options.split(",") if o and o.partition("=")[0] in ("size", "mode")]
    return ":".join([target, ",".join(["rw", "nosuid", "nodev", "noexec", *kept])])


def _bind(name: str, value: str, state: RunState) -> tuple[str, str]:
    """A bind mount in ``--mount`` form with its host source; and its target.

    The source is resolved on the host side (the engine's ``/tmp`` is the run's
    tmp folder); it must lie inside the run's folder or a mapped dataset, and
    is writable only inside the sandbox's writable folders.
    """
    if name == "--mount":
        fields: dict[str, str] = {}
        for part in value.split(","):
            key, eq, val = part.partition("=")
            fields[key] = val if eq else "true"
        kind = fields.get("type", "volume")
        if kind == "tmpfs":
            target = fields.get("target") or fields.get("destination") or fields.get("dst", "")
            return f"--tmpfs={_tmpfs(target)}", target
        if kind != "bind":
            raise Refused(f"docker run: only bind and tmpfs mounts are allowed, not {value}")
        source = fields.get("source") or fields.get("src") or ""
        target = fields.get("target") or fields.get("destination") or fields.get("dst") or ""
        readonly = any(fields.get(k) in ("true", "1") for k in ("readonly", "ro"))
    else:
        pieces = value.split(":")
        if len(pieces) < 2:
            raise Refused(f"docker run: volume {value} needs SOURCE:TARGET")
        source, target = pieces[0], pieces[1]
        readonly = "ro" in (pieces[2].split(",") if len(pieces) > 2 else [])
    if not source.startswith("/"):
        raise Refused(f"docker run: mount source {source!r} is not an absolute path in the "
                      "run's folder (named volumes are not allowed)")
    if not target.startswith("/") or any(c in target for c in ",\n"):
        raise Refused(f"docker run: mount target {target!r} is not an absolute path")
    host = Path(os.path.realpath(state.sandbox.host_path(Path(source))))
    if not _inside(host, state.sandbox.mountable):
        raise Refused(f"docker run: mount source {source} is outside the run's folder")
    if not host.exists():
        raise Refused(f"docker run: mount source {source} does not exist")
    writable = not readonly and _inside(host, state.sandbox.writable)
    spec = f"type=bind,source={host},target={target}" + ("" if writable else ",readonly")
    if any(c in str(host) for c in ",\n"):
        raise Refused(f"docker run: mount source {source} has a comma or a newline")
    return f"--mount={spec}", target


def _inside(path: Path, roots: tuple[Path, ...]) -> bool:
    real_roots = [Path(os.path.realpath(r)) for r in roots]
    return any(path == r or r in path.parents for r in real_roots)

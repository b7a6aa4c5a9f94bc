"""What the ``docker`` shim does to a ``docker run`` (see :mod:`cratebridge.containers.shim`).

Every ``docker run`` is rewritten: the engine's own network, privilege, user and
limit flags are dropped, the sandbox's are added, every bind mount outside the
run's writable folders is made read-only, and the image must be present
locally and approved. Each container is recorded in the run's ledger (one
JSON line: image, image id, container id, times, exit code, labels, stderr log).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from cratebridge.containers.sandbox import RUN_LABEL, STEP_LABEL, ImagePolicy, Sandbox, image_id
from cratebridge.containers.shim import REFUSED

__all__ = ["REFUSED", "Refused", "ledger", "now", "rewrite_run", "run"]


# ``docker run`` flags that take no value; every other ``--flag`` takes one.
BOOLEAN_FLAGS = {"-i", "-t", "-d", "-P", "--interactive", "--tty", "--detach", "--rm",
                 "--read-only", "--init", "--privileged", "--publish-all", "--no-healthcheck",
                 "--oom-kill-disable", "--sig-proxy", "--disable-content-trust", "-q", "--quiet"}

# Flags the sandbox owns: the engine's values are dropped and the sandbox's used.
DROPPED = {"--net", "--network", "--network-alias", "--user", "-u", "--privileged",
           "--cap-add", "--cap-drop", "--security-opt", "--memory", "-m", "--memory-swap",
           "--cpus", "--pids-limit", "--pid", "--ipc", "--uts", "--userns", "--cgroupns",
           "--device", "--volumes-from", "--add-host", "--dns", "-p", "--publish",
           "--publish-all", "-P", "--pull", "--runtime", "--gpus", "--group-add",
           "--cgroup-parent", "--oom-kill-disable", "--sysctl"}


class Refused(Exception):
    """The shim will not run this; the message goes to the engine's stderr."""


def _split_flag(arg: str) -> tuple[str, str | None]:
    if arg.startswith("--") and "=" in arg:
        name, _, value = arg.partition("=")
        return name, value
    return arg, None


def _parse_run(args: list[str]) -> tuple[list[tuple[str, str | None]], str, list[str]]:
    """Split ``docker run`` arguments into (flags, image, command)."""
    flags: list[tuple[str, str | None]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("-") or arg == "-":
            return flags, arg, args[i + 1:]
        name, value = _split_flag(arg)
        if value is None and name not in BOOLEAN_FLAGS:
            if name.startswith("-") and not name.startswith("--") and len(name) > 2:
                # combined short booleans such as -it
                flags.extend((f"-{c}", None) for c in name[1:])
                i += 1
                continue
            i += 1
            if i >= len(args):
                raise Refused(f"docker run: flag {name} has no value")
            value = args[i]
        flags.append((name, value))
        i += 1
    raise Refused("docker run: no image given")


def _inside(path: Path, roots: tuple[Path, ...]) -> bool:
    real = Path(os.path.realpath(path))
    return any(real == r or r in real.parents for r in roots)


def _mount(name: str, value: str, sandbox: Sandbox, writable_out: list[Path]) -> str:
    """Force read-only on a bind mount unless its source is a writable run folder."""
    roots = tuple(Path(os.path.realpath(p)) for p in sandbox.writable)
    if name == "--mount":
        parts = [p for p in value.split(",") if p]
        fields = dict(p.partition("=")[::2] for p in parts)
        if fields.get("type", "volume") != "bind":
            if fields.get("type") == "tmpfs":
                return value
            raise Refused(f"docker run: only bind and tmpfs mounts are allowed, not {value}")
        source = fields.get("source") or fields.get("src") or ""
        ro = "readonly" in fields or fields.get("readonly") in ("true", "1") \
            or "ro" in fields
        if not ro and _inside(Path(source), roots):
            writable_out.append(Path(source))
            return value
        kept = [p for p in parts if p.partition("=")[0] not in ("readonly", "ro")]
        return ",".join([*kept, "readonly"])
    # -v / --volume SRC:DST[:OPTS]
    pieces = value.split(":")
    source = pieces[0]
    if not source.startswith("/"):
        raise Refused(f"docker run: named volumes are not allowed ({value})")
    opts = pieces[2].split(",") if len(pieces) > 2 else []
    if "ro" not in opts and _inside(Path(source), roots):
        writable_out.append(Path(source))
        return value
    opts = [o for o in opts if o not in ("rw", "ro")] + ["ro"]
    return ":".join([pieces[0], pieces[1], ",".join(opts)])


def rewrite_run(args: list[str], sandbox: Sandbox) -> tuple[list[str], str, dict[str, str],
                                                             list[Path]]:
    """The hardened ``docker run`` argument list; also the image, labels, writable mounts."""
    flags, image, command = _parse_run(args)
    out: list[str] = []
    labels: dict[str, str] = {}
    writable: list[Path] = []
    mounts_tmp = False
    for name, value in flags:
        if name in DROPPED:
            continue
        if name in ("-v", "--volume", "--mount") and value is not None:
            value = _mount(name, value, sandbox, writable)
            target = value.split("target=")[-1].split(",")[0] if name == "--mount" \
                else value.split(":")[1]
            mounts_tmp = mounts_tmp or target == "/tmp"
        if name in ("--label", "-l") and value is not None:
            key, _, val = value.partition("=")
            if key == RUN_LABEL:
                continue
            labels[key] = val
        if name == "--tmpfs" and value is not None:
            mounts_tmp = mounts_tmp or value.split(":")[0] == "/tmp"
        out.append(name if value is None else f"{name}={value}")
    hardened = sandbox.docker_args()
    if "--read-only" not in out and "--read-only=true" not in out:
        hardened.append("--read-only")
    if not mounts_tmp:
        hardened.append("--tmpfs=/tmp:rw,nosuid,nodev,size=256m,mode=1777")
    return [*out, *hardened, image, *command], image, labels, writable


def _own(paths: list[Path], user: str) -> None:
    """Give the container user the writable folders it was handed (inside the run only)."""
    uid, _, gid = user.partition(":")
    if os.geteuid() != 0:
        return
    for top in paths:
        for folder, dirs, files in os.walk(top):
            for name in [folder, *(os.path.join(folder, n) for n in dirs + files)]:
                try:
                    os.chown(name, int(uid), int(gid or uid), follow_symlinks=False)
                except OSError:
                    pass


def now() -> str:
    return datetime.now(UTC).isoformat()


def ledger(sandbox: Sandbox, entry: dict[str, object]) -> None:
    line = json.dumps(entry) + "\n"
    fd = os.open(sandbox.ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _tee(src: object, sinks: list[object]) -> None:
    for chunk in iter(lambda: src.read1(65536), b""):  # type: ignore[attr-defined]
        for sink in sinks:
            sink.write(chunk)  # type: ignore[attr-defined]
            sink.flush()  # type: ignore[attr-defined]


def run(args: list[str], sandbox: Sandbox) -> int:
    """Run one hardened container in the foreground; record it in the ledger."""
    argv, image, labels, writable = rewrite_run(args, sandbox)
    local_id = image_id(sandbox.docker, image)
    if local_id is None:
        raise Refused(f"image {image} is not present locally; cratebridge never pulls. "
                      "Load the approved image into the TRE's Docker first")
    if not ImagePolicy(sandbox.approved_images).allows(image, local_id):
        raise Refused(f"image {image} ({local_id}) is not approved by the operator's policy")
    _own(writable, sandbox.user)
    if not any(a.startswith("--cidfile") for a in argv):
        cid_dir = tempfile.mkdtemp(prefix="cid-", dir=sandbox.ledger.parent)
        argv.insert(0, f"--cidfile={cid_dir}/cid")
    cidfile = next(a.split("=", 1)[1] for a in argv if a.startswith("--cidfile"))
    token = labels.get(STEP_LABEL) or f"c{time.time_ns()}"
    logs = sandbox.ledger.parent / "stderr"
    logs.mkdir(exist_ok=True)
    stderr_log = logs / f"{token}.stderr.log"
    started = now()
    proc = subprocess.Popen([sandbox.docker, "run", *argv], stderr=subprocess.PIPE)

    def stop(signum: int, frame: object) -> None:
        cid = Path(cidfile).read_text().strip() if Path(cidfile).exists() else None
        if cid:
            subprocess.run([sandbox.docker, "kill", cid], capture_output=True, check=False)
        proc.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    with stderr_log.open("wb") as log:
        assert proc.stderr is not None
        tee = threading.Thread(target=_tee, args=(proc.stderr, [log, sys.stderr.buffer]))
        tee.start()
        code = proc.wait()
        tee.join()
    cid = Path(cidfile).read_text().strip() if Path(cidfile).exists() else None
    ledger(sandbox, {
        "token": token, "image": image, "image_id": local_id, "container_id": cid,
        "start": started, "end": now(), "exit_code": code, "labels": labels,
        "stderr": str(stderr_log), "argv": [sandbox.docker, "run", *argv],
    })
    return code

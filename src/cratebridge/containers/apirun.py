"""A step's ``docker run`` through the daemon's API, as the ``docker`` client would do it.

The broker runs what the policy authorised for an engine's ``docker run``. The
``docker`` client it used to start for that is a Go program costing about
17 ms of CPU per container; a scatter of hundreds of jobs pays it hundreds of
times. When the daemon is a local socket (:func:`~cratebridge.containers.dockerapi.local_api`)
and every flag of the authorised command is one :func:`run_spec` translates,
the broker does what the client does instead: create the container, attach
to it, ask for its exit, start it, and pass its output on. Anything else
(another flag, a remote daemon) still goes to the client.

:class:`ContainerProcess` looks like the ``subprocess.Popen`` of a ``docker
run`` (``stdin``, ``stdout``, ``stderr``, ``poll``, ``wait``, ``kill``), so the
broker streams, records and stops both the same way. Errors read as the
client's, with its exit codes: 125 for the daemon's refusal, 126 and 127 for
a command that cannot be executed or found.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from cratebridge.containers.dockerapi import DockerAPI

__all__ = ["ContainerProcess", "RunSpec", "run_spec"]

# go-units' RAMInBytes: a number, an optional binary unit, an optional "i" and "b"
_SIZE = re.compile(r"^(\d+(?:\.\d+)*) ?([kmgtp])?i?b?$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_TRUE, _FALSE = ("", "true", "1"), ("false", "0")


@dataclass(frozen=True)
class RunSpec:
    """The create request of a ``docker run``: its body, name, and how to attach."""

    body: dict[str, Any]
    name: str | None
    interactive: bool
    auto_remove: bool


def run_spec(argv: Sequence[str]) -> RunSpec | None:
    """The API's create request for an authorised ``run FLAGS... -- IMAGE [COMMAND...]``.

    None when a flag is not one translated here: the ``docker`` client runs it.
    Flags come as :func:`~cratebridge.containers.hardening.authorise` writes them
    (``--name=value``; bind mounts as ``--mount=type=bind,...``).
    """
    if len(argv) < 3 or argv[0] != "run" or "--" not in argv:
        return None
    split = list(argv).index("--")
    flags, image, command = argv[1:split], argv[split + 1], list(argv[split + 2:])
    config: dict[str, Any] = {
        "Image": image, "Cmd": command or None, "Env": [], "Labels": {},
        "AttachStdin": False, "AttachStdout": True, "AttachStderr": True,
        "OpenStdin": False, "StdinOnce": False, "Tty": False}
    host: dict[str, Any] = {"Mounts": [], "Tmpfs": {}, "CapDrop": [], "SecurityOpt": []}
    name = None
    for flag in flags:
        key, eq, value = flag.partition("=")
        if key in ("-i", "--interactive", "--rm", "--init", "--read-only"):
            if value.lower() not in (*_TRUE, *_FALSE) or (eq and not value):
                return None
            on = value.lower() in _TRUE
            if key in ("-i", "--interactive"):
                config.update(AttachStdin=on, OpenStdin=on, StdinOnce=on)
            else:
                host[{"--rm": "AutoRemove", "--init": "Init",
                      "--read-only": "ReadonlyRootfs"}[key]] = on
            continue
        if not eq:
            return None
        if key in ("-e", "--env"):  # a name given twice keeps its last value, as docker's
            variable = value.partition("=")[0]
            config["Env"] = [e for e in config["Env"] if e.partition("=")[0] != variable]
            config["Env"].append(value)
        elif key in ("--label", "-l"):
            label, _, text = value.partition("=")
            config["Labels"][label] = text
        elif key in ("-w", "--workdir"):
            config["WorkingDir"] = value
        elif key == "--name":
            name = value
        elif key == "--entrypoint":
            config["Entrypoint"] = [value]
        elif key in ("--hostname", "-h"):
            config["Hostname"] = value
        elif key == "--stop-signal":
            config["StopSignal"] = value
        elif key == "--stop-timeout" and value.lstrip("-").isdigit():
            config["StopTimeout"] = int(value)
        elif key == "--user":
            config["User"] = value
        elif key == "--mount":
            mount = _bind(value)
            if mount is None:
                return None
            host["Mounts"].append(mount)
        elif key == "--tmpfs":
            target, _, options = value.partition(":")
            host["Tmpfs"][target] = options
        elif key == "--network" and value == "none":
            host["NetworkMode"] = "none"
        elif key == "--cap-drop":
            host["CapDrop"].append(value)
        elif key == "--security-opt":
            host["SecurityOpt"].append(value)
        elif key in ("--memory", "--memory-swap") and (size := _bytes(value)) is not None:
            host["Memory" if key == "--memory" else "MemorySwap"] = size
        elif key == "--cpus" and (nano := _nano_cpus(value)) is not None:
            host["NanoCpus"] = nano
        elif key == "--pids-limit" and value.lstrip("-").isdigit():
            host["PidsLimit"] = int(value)
        elif key == "--pull" and value == "never":
            pass  # the API's create never pulls
        else:
            return None
    config["HostConfig"] = host
    return RunSpec(config, name, bool(config["OpenStdin"]), bool(host.get("AutoRemove")))


def _bind(value: str) -> dict[str, Any] | None:
    fields: dict[str, str] = {}
    for part in value.split(","):
        key, eq, text = part.partition("=")
        fields[key] = text if eq else "true"
    if fields.get("type") != "bind" or not {"source", "target"} <= set(fields) \
            or not set(fields) <= {"type", "source", "target", "readonly"} \
            or fields.get("readonly", "true") not in ("true", "1"):
        return None
    return {"Type": "bind", "Source": fields["source"], "Target": fields["target"],
            "ReadOnly": "readonly" in fields}


def _bytes(value: str) -> int | None:
    match = _SIZE.match(value)
    if match is None:
        return None
    return int(float(match[1]) * _UNITS[(match[2] or "").lower()])


def _nano_cpus(value: str) -> int | None:
    try:
        cpus = float(value)
    except ValueError:
        return None
    return round(cpus * 1e9) if cpus >= 0 else None


def status_code(message: str) -> int:
    """The ``docker`` client's exit code for a run the daemon refused (``toStatusError``)."""
    if "executable file not found" in message or "no such file or directory" in message:
        return 127
    if "permission denied" in message or "is a directory" in message:
        return 126
    return 125


class _Input:
    """The container's standard input: the attached socket's sending half."""

    def __init__(self, sock: socket.socket | None) -> None:
        self.sock = sock
        self.closed = sock is None

    def write(self, data: bytes) -> None:
        if self.sock is not None and not self.closed:
            self.sock.sendall(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if not self.closed and self.sock is not None:
            self.closed = True
            try:
                self.sock.shutdown(socket.SHUT_WR)  # the daemon closes the container's stdin
            except OSError:
                pass


class ContainerProcess:
    """One container run through the API, looking like the ``Popen`` of a ``docker run``.

    Created, attached to, waited for and started by the constructor (as the
    client does, in that order). When the daemon refuses, the "process" has
    already ended: its standard error says why, as the client would, and its
    exit code is the client's. ``cid`` is the container's id once created.
    """

    def __init__(self, api: DockerAPI, spec: RunSpec) -> None:
        self.api = api
        self.cid: str | None = None
        self.returncode: int | None = None
        self._done = threading.Event()
        self._code: int | None = None
        self._wait_error = ""
        out_read, self._out = os.pipe()
        err_read, self._err = os.pipe()
        self.stdout: BinaryIO = os.fdopen(out_read, "rb")
        self.stderr: BinaryIO = os.fdopen(err_read, "rb")
        self.stdin: _Input = _Input(None)
        try:
            self._begin(spec)
        except OSError as exc:  # the daemon went away mid-way: nothing of it is left
            if self.cid is not None:
                try:
                    api.remove(self.cid)
                except OSError:
                    pass
            self._fail(f"cannot reach the daemon: {exc}", 125)

    def _begin(self, spec: RunSpec) -> None:
        cid, error = self.api.create_container(spec.body, spec.name)
        if cid is None:
            return self._fail(error, status_code(error))
        self.cid = cid
        stream = self.api.attach(cid, spec.interactive)
        try:
            if spec.interactive:
                self.stdin = _Input(stream)
            # the wait is in place before the start, as the client's: a quick end is seen
            waited = self.api.begin_wait(cid, "removed" if spec.auto_remove else "next-exit")
            waiting = threading.Thread(target=self._wait, args=(waited,), daemon=True)
            waiting.start()
            error = self.api.start(cid)
        except BaseException:
            stream.close()
            raise
        if error:
            stream.close()
            self.api.remove(cid)
            waiting.join()
            return self._fail(error, status_code(error))
        threading.Thread(target=self._demux, args=(stream, waiting), daemon=True).start()

    def _fail(self, message: str, code: int) -> None:
        os.write(self._err, f"docker: Error response from daemon: {message}\n\n"
                            "Run 'docker run --help' for more information\n".encode())
        self._code = code
        self._close_outputs()
        self._done.set()

    def _wait(self, waited: Callable[[], tuple[int | None, str]]) -> None:
        try:
            code, error = waited()
        except OSError as exc:
            code, error = None, str(exc)
        if code is None or error:  # as the client: it says so, and exits 125
            self._wait_error = f"Error waiting for container: {error or 'no exit code'}\n"
            code = 125
        self._code = code

    def _demux(self, stream: socket.socket, waiting: threading.Thread) -> None:
        """The attached stream's frames to the two pipes, then the exit code."""
        buffered = stream.makefile("rb")
        try:
            while len(head := buffered.read(8)) == 8:
                size = int.from_bytes(head[4:], "big")
                payload = buffered.read(size)
                if head[0] in (1, 2):
                    _write_all(self._out if head[0] == 1 else self._err, payload)
                if len(payload) < size:
                    break
        except OSError:
            pass
        finally:
            buffered.close()
            stream.close()
            waiting.join()
            if self._wait_error and self._err >= 0:
                _write_all(self._err, self._wait_error.encode())
            self._close_outputs()
            self._done.set()

    def _close_outputs(self) -> None:
        """Once: the readers then see the end of the output."""
        fds, self._out, self._err = (self._out, self._err), -1, -1
        for fd in fds:
            if fd >= 0:
                os.close(fd)

    def poll(self) -> int | None:
        if self._done.is_set():
            self.returncode = self._code
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._done.wait(timeout)
        code = self.poll()
        if code is None:
            raise TimeoutError("the container is still running")
        return code

    def kill(self) -> None:
        """Remove the container at once (its output and wait then end)."""
        if self.cid is not None and not self._done.is_set():
            try:
                self.api.remove(self.cid)
            except OSError:
                pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BrokenPipeError:
            return

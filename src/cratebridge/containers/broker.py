"""The run's broker: the confined engine's only door to Docker.

One per run, serving a unix socket that is bound into the engine's room (see
:mod:`cratebridge.containers.confine`). Each connection is one ``docker``
invocation of the engine's (:mod:`cratebridge.containers.shim` speaks the
protocol): the broker asks :func:`~cratebridge.containers.hardening.authorise`
what it may become, runs that on the host side (a step's ``docker run``
through the daemon's API when it can, :mod:`cratebridge.containers.apirun`;
anything else with the real Docker client), streams standard input and
output, reports the exit status and records every container, and every
refusal, in the run's ledger, which the engine cannot see. When the engine's
client goes away, the container it started is killed. A Slurm command goes
through the run's Slurm door (:mod:`cratebridge.containers.slurmdoor`).
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from cratebridge.budget import CappedLog
from cratebridge.containers.apirun import ContainerProcess, RunSpec, run_spec
from cratebridge.containers.confine import Room
from cratebridge.containers.dockerapi import DockerAPI, local_api
from cratebridge.containers.hardening import Authorised, Refused, RunState, authorise
from cratebridge.containers.ledger import append, now
from cratebridge.containers.mounts import OWNER_FILE, Pinned, pin_mounts
from cratebridge.containers.reaper import dies_with_us
from cratebridge.containers.sandbox import STEP_LABEL, Sandbox, client_env
from cratebridge.containers.shim import (
    CID,
    EXIT,
    REQUEST,
    STDERR,
    STDIN,
    STDOUT,
    read_frame,
    send_frame,
)
from cratebridge.containers.slurmdoor import SlurmDoor

__all__ = ["Broker"]

MAX_CONNECTIONS = 64  # docker and Slurm calls of one run at once
REQUEST_TIMEOUT = 30.0  # seconds a client may take to say what it wants
#: What runs an engine's docker command: the client, or a container through the API.
Started = subprocess.Popen[bytes] | ContainerProcess


class Broker:
    """Serves one run's socket in a background thread; a context manager."""

    def __init__(self, sandbox: Sandbox, socket_path: Path, uid: int, gid: int,
                 room: Room | None = None, images: Mapping[str, str] | None = None) -> None:
        """``room``: the engine's, rebuilt for each Slurm job (with ``sandbox.scheduler``).

        ``images``: image ids the plan looked up and the policy checked, by name
        (the broker looks up any other once, when a step first names it).
        """
        self.sandbox = sandbox
        self.socket_path = socket_path
        self.uid, self.gid = uid, gid
        self.room = room
        self.folder = sandbox.ledger.parent
        self.lock = threading.Lock()
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        # the containers it started (ids, short ids, names) and the image ids it looked up
        self.started: set[str] = set()
        self.state = RunState(sandbox, containers=self.started, images=dict(images or {}))
        self.slurm = SlurmDoor(sandbox, socket_path, room, uid, gid, self.ledger, self._run)

    @property
    def jobs(self) -> set[str]:
        """The Slurm jobs this run submitted."""
        return self.slurm.jobs

    @contextmanager
    def serving(self) -> Iterator[Broker]:
        """Listen while the block runs; every container still running afterwards is stopped."""
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / OWNER_FILE).write_text(self.sandbox.owner)  # for a later clean-up
        if self.socket_path.exists() or self.socket_path.is_symlink():
            self.socket_path.unlink()
        broker = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                broker.handle(self.request)

        # A socket's path is short (108 bytes): bind through a descriptor of its folder.
        folder_fd = os.open(self.socket_path.parent, os.O_PATH | os.O_DIRECTORY)
        try:
            server = socketserver.ThreadingUnixStreamServer(
                f"/proc/self/fd/{folder_fd}/{self.socket_path.name}", Handler)
        finally:
            os.close(folder_fd)
        server.daemon_threads = True
        os.chown(self.socket_path, self.uid, self.gid)
        os.chmod(self.socket_path, 0o600)
        wake_read, wake_write = os.pipe()
        thread = threading.Thread(target=_serve_until_woken, args=(server, wake_read),
                                  name="cratebridge-broker", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            os.write(wake_write, b"x")  # the loop ends at once (no polling to wait out)
            thread.join()
            for fd in (wake_read, wake_write):
                os.close(fd)
            server.server_close()
            self.socket_path.unlink(missing_ok=True)
            self.slurm.cancel_jobs()

    # -- one connection -------------------------------------------------------

    def handle(self, sock: socket.socket) -> None:
        if not self.slots.acquire(blocking=False):
            return  # too many at once: the engine's client sees the door close
        try:
            sock.settimeout(REQUEST_TIMEOUT)  # a request, then it may take its time
            frame = read_frame(sock)
            sock.settimeout(None)
            if frame is not None and frame[0] == REQUEST:
                self._answer(sock, frame[1])
        except (TimeoutError, OSError):
            return
        finally:
            self.slots.release()

    def _answer(self, sock: socket.socket, payload: bytes) -> None:
        try:
            request = json.loads(payload)
            argv = [str(a) for a in request["argv"]]
            tool = str(request.get("tool", "docker"))
            cwd = str(request.get("cwd") or "")
            env = {str(k): str(v) for k, v in dict(request.get("env") or {}).items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            return self._refuse(sock, [], "malformed request")
        try:
            if tool == "docker":
                code = self._run(sock, authorise(argv, self.state, env))
            else:
                code = self.slurm.answer(sock, tool, argv, cwd, env)
        except Refused as refused:
            return self._refuse(sock, [tool, *argv], str(refused))
        except OSError:
            return  # the engine's client went away mid-answer
        try:
            send_frame(sock, EXIT, str(code).encode())
        except OSError:
            pass

    def _refuse(self, sock: socket.socket, argv: list[str], reason: str) -> None:
        self.ledger({"refused": reason, "argv": argv, "time": now()})
        try:
            send_frame(sock, STDERR, f"cratebridge-docker: refused: {reason}\n".encode())
            send_frame(sock, EXIT, b"125")
        except OSError:
            pass

    def _run(self, sock: socket.socket, allowed: Authorised) -> int:
        if allowed.command == "image inspect" and allowed.program is None:
            answered = self._inspect_images(sock, allowed.argv)
            if answered is not None:
                return answered
        argv = [allowed.program or self.sandbox.docker, *allowed.argv]
        token = allowed.labels.get(STEP_LABEL) or f"c{time.time_ns()}"
        log_path = self.folder / "stderr" / f"{token}.stderr.log"
        pinned = Pinned(self.folder / "mounts" / f"{token}-{time.time_ns()}")
        try:
            try:
                pinned_argv = pin_mounts(argv, pinned, self.sandbox.mountable)
            except OSError as exc:
                raise Refused(f"docker run: a mount source is not a folder of this run "
                              f"({exc})") from None
            cid_dir = None
            spec = self._through_api(allowed, pinned_argv)
            if allowed.command == "run" and spec is None:  # the client writes the id here
                cid_dir = tempfile.mkdtemp(prefix="cid-", dir=self.folder)
                for one in (argv, pinned_argv):
                    one.insert(2, f"--cidfile={cid_dir}/cid")
            return self._start(sock, allowed, pinned_argv, cid_dir, token, log_path,
                               recorded=argv, spec=spec)
        finally:
            pinned.release()

    @staticmethod
    def _through_api(allowed: Authorised, argv: list[str]) -> tuple[DockerAPI, RunSpec] | None:
        """For a ``docker run`` the daemon's API can do as the client would (a local
        daemon, every flag one :func:`run_spec` knows): the API and the request."""
        if allowed.command != "run" or allowed.program is not None:
            return None
        api = local_api(client_env())
        spec = run_spec(argv[1:]) if api is not None else None
        return None if api is None or spec is None else (api, spec)

    def _start(self, sock: socket.socket, allowed: Authorised, argv: list[str],
               cid_dir: str | None, token: str, log_path: Path, recorded: list[str],
               spec: tuple[DockerAPI, RunSpec] | None = None) -> int:
        """Run ``argv`` (with the client, or through the API as ``spec`` says); the
        ledger records ``recorded`` (the mounts' real sources)."""
        started = now()
        first: dict[str, object] = {
            "token": token, "image": allowed.image, "image_id": allowed.image_id,
            "start": started, "labels": allowed.labels, "stderr": str(log_path)}
        if allowed.command == "run":
            # before docker can create the container: a run killed from here on still
            # knows the step was started, though the container has no id yet
            self.ledger(first)
        proc: Started
        if spec is not None:
            proc = ContainerProcess(*spec)
        else:
            # its own session (the terminal's ^C is cratebridge's to handle), yet killed
            # with it
            proc = subprocess.Popen(dies_with_us(argv), env=client_env(),
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True)
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        send = threading.Lock()
        gone = threading.Event()
        cid: list[str] = []  # known once the container is created
        if allowed.command == "run":
            log_path.parent.mkdir(exist_ok=True)
            log: CappedLog | None = CappedLog(log_path, self.sandbox.limits.log_bytes)
        else:
            log = None
        pumps = [threading.Thread(target=self._pump_out, args=(proc.stdout, sock, STDOUT, send,
                                                                None, gone)),
                 threading.Thread(target=self._pump_out, args=(proc.stderr, sock, STDERR, send,
                                                                log, gone))]
        for pump in pumps:
            pump.start()
        threading.Thread(target=self._pump_in, args=(sock, proc, allowed.interactive, gone,
                                                     cid), daemon=True).start()
        if allowed.command == "run":
            found = proc.cid if isinstance(proc, ContainerProcess) else \
                self._wait_cid(Path(cid_dir) / "cid", proc) if cid_dir else None
            if found:
                cid.append(found)
                self.started.update({found, found[:12], *allowed.names})
                self.ledger({**first, "container_id": found})  # the step's container, named
                try:
                    if allowed.cidfile:
                        with send:
                            send_frame(sock, CID,  # as the client reads it
                                       os.fsencode(f"{found}\n{allowed.cidfile}"))
                except OSError:
                    gone.set()
            if gone.is_set():  # the client went before the container was known
                self._stop(proc, found)
        code = proc.wait()
        for pump in pumps:
            pump.join()
        if log is not None:
            log.close()
        if allowed.command == "run":
            self.ledger({
                "token": token, "image": allowed.image, "image_id": allowed.image_id,
                "container_id": cid[0] if cid else None, "start": started, "end": now(),
                "exit_code": code, "labels": allowed.labels, "stderr": str(log_path), "argv": argv,
                "stderr_cut": log.cut if log is not None else 0,
            })
        if gone.is_set():
            raise OSError("client gone")
        return code

    @staticmethod
    def _inspect_images(sock: socket.socket, argv: tuple[str, ...]) -> int | None:
        """``docker image inspect -- NAME...`` answered from the daemon's socket, as the
        client prints it; None (the client is to answer) for one with flags, or when
        the daemon is not a local socket. cwltool asks it once for each image it
        runs; the client is a Go program that costs about 20 ms of CPU to start
        (see :mod:`cratebridge.containers.dockerapi`)."""
        if argv[:3] != ("image", "inspect", "--"):
            return None
        api = local_api(client_env())
        if api is None:
            return None
        try:
            found, errors = api.inspect_images(argv[3:])
        except (OSError, ValueError):
            return None
        send_frame(sock, STDOUT, (json.dumps(found, indent=4) + "\n").encode())
        for error in errors:
            send_frame(sock, STDERR, f"Error response from daemon: {error}\n".encode())
        return 1 if errors else 0

    def _wait_cid(self, path: Path, proc: subprocess.Popen[bytes]) -> str | None:
        while proc.poll() is None and not path.exists():
            time.sleep(0.02)
        for _ in range(50):
            text = path.read_text().strip() if path.exists() else ""
            if text:
                return text
            if proc.poll() is not None:
                return None
            time.sleep(0.02)
        return None

    def _stop(self, proc: Started, cid: str | None) -> None:
        if cid:
            subprocess.run([self.sandbox.docker, "rm", "-f", cid], capture_output=True,
                           check=False)
        if proc.poll() is None:
            proc.kill()

    @staticmethod
    def _pump_out(stream: IO[bytes], sock: socket.socket, channel: int, send: threading.Lock,
                  log: CappedLog | None, gone: threading.Event) -> None:
        """Pass a container's output on to the engine's client.

        Its standard error is also kept in the step's log; past the log cap the
        engine gets a note instead of the rest, which only the step's log keeps.
        """
        for chunk in iter(lambda: stream.read1(65536), b""):  # type: ignore[attr-defined]
            if log is not None:
                was_passed = log.passed
                log.write(chunk)
                if log.passed:
                    if was_passed:
                        continue
                    chunk = (b"\ncratebridge: this step's standard error passed the log cap; "
                             b"the rest is kept (head and tail) in the step's log only\n")
            if gone.is_set():
                continue
            try:
                with send:
                    send_frame(sock, channel, chunk)
            except OSError:
                gone.set()

    def _pump_in(self, sock: socket.socket, proc: Started, interactive: bool,
                 gone: threading.Event, cid: list[str]) -> None:
        """Standard input to the container; when the client goes, stop what it started."""
        assert proc.stdin is not None
        if not interactive:
            proc.stdin.close()
        while True:
            try:
                frame = read_frame(sock)
            except OSError:
                frame = None
            if frame is None:
                gone.set()
                if proc.poll() is None:
                    self._stop(proc, cid[0] if cid else None)
                return
            channel, payload = frame
            if channel != STDIN or not interactive or proc.stdin.closed:
                continue
            try:
                if payload:
                    proc.stdin.write(payload)
                    proc.stdin.flush()
                else:
                    proc.stdin.close()
            except OSError:
                pass

    def ledger(self, entry: dict[str, object]) -> None:
        with self.lock:
            append(self.sandbox.ledger, entry)


def _serve_until_woken(server: socketserver.UnixStreamServer, wake: int) -> None:
    """Take the engine's connections until a byte arrives on ``wake``."""
    with selectors.DefaultSelector() as selector:
        selector.register(server.fileno(), selectors.EVENT_READ)
        selector.register(wake, selectors.EVENT_READ)
        while True:
            ready = {key.fd for key, _ in selector.select()}
            if wake in ready:
                return
            server.handle_request()  # ready: it accepts without waiting

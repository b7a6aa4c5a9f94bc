"""The run's broker: the confined engine's only door to Docker.

One per run, serving a unix socket that is bound into the engine's room (see
:mod:`cratebridge.containers.confine`). Each connection is one ``docker``
invocation of the engine's (:mod:`cratebridge.containers.shim` speaks the
protocol): the broker asks :func:`~cratebridge.containers.hardening.authorise`
what it may become, runs that with the real Docker client on the host side,
streams standard input and output, reports the exit status and records every
container, and every refusal, in the run's ledger, which the engine cannot
see. When the engine's client goes away, the container it started is killed.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from cratebridge.containers.hardening import Authorised, Refused, authorise
from cratebridge.containers.sandbox import STEP_LABEL, Sandbox
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

__all__ = ["Broker", "now"]

# What the Docker client itself gets from our environment: nothing of the engine's.
CLIENT_ENV = ("PATH", "DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY")


def now() -> str:
    return datetime.now(UTC).isoformat()


class Broker:
    """Serves one run's socket in a background thread; a context manager."""

    def __init__(self, sandbox: Sandbox, socket_path: Path, uid: int, gid: int) -> None:
        self.sandbox = sandbox
        self.socket_path = socket_path
        self.uid, self.gid = uid, gid
        self.folder = sandbox.ledger.parent
        self.lock = threading.Lock()
        self._server: socketserver.ThreadingUnixStreamServer | None = None

    @contextmanager
    def serving(self) -> Iterator[Broker]:
        """Listen while the block runs; every container still running afterwards is stopped."""
        self.folder.mkdir(parents=True, exist_ok=True)
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
        self._server = server
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                  name="cratebridge-broker", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            self.socket_path.unlink(missing_ok=True)

    # -- one connection -------------------------------------------------------

    def handle(self, sock: socket.socket) -> None:
        frame = read_frame(sock)
        if frame is None or frame[0] != REQUEST:
            return
        try:
            argv = [str(a) for a in json.loads(frame[1])["argv"]]
        except (ValueError, KeyError, TypeError):
            return self._refuse(sock, [], "malformed request")
        try:
            allowed = authorise(argv, self.sandbox)
        except Refused as refused:
            return self._refuse(sock, argv, str(refused))
        try:
            code = self._run(sock, allowed)
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
        env = {k: os.environ[k] for k in CLIENT_ENV if k in os.environ}
        argv = [self.sandbox.docker, *allowed.argv]
        cid_dir = None
        if allowed.command == "run":
            cid_dir = tempfile.mkdtemp(prefix="cid-", dir=self.folder)
            argv.insert(2, f"--cidfile={cid_dir}/cid")
        token = allowed.labels.get(STEP_LABEL) or f"c{time.time_ns()}"
        log_path = self.folder / "stderr" / f"{token}.stderr.log"
        started = now()
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        send = threading.Lock()
        gone = threading.Event()
        cid: list[str] = []  # known once the container is created
        if allowed.command == "run":
            log_path.parent.mkdir(exist_ok=True)
            log: IO[bytes] | None = log_path.open("wb")
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
        if cid_dir is not None:
            found = self._wait_cid(Path(cid_dir) / "cid", proc)
            if found:
                cid.append(found)
                try:
                    with send:
                        send_frame(sock, CID, found.encode())
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
            })
        if gone.is_set():
            raise OSError("client gone")
        return code

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

    def _stop(self, proc: subprocess.Popen[bytes], cid: str | None) -> None:
        if cid:
            subprocess.run([self.sandbox.docker, "rm", "-f", cid], capture_output=True,
                           check=False)
        if proc.poll() is None:
            proc.kill()

    @staticmethod
    def _pump_out(stream: IO[bytes], sock: socket.socket, channel: int, send: threading.Lock,
                  log: IO[bytes] | None, gone: threading.Event) -> None:
        for chunk in iter(lambda: stream.read1(65536), b""):  # type: ignore[attr-defined]
            if log is not None:
                log.write(chunk)
                log.flush()
            if gone.is_set():
                continue
            try:
                with send:
                    send_frame(sock, channel, chunk)
            except OSError:
                gone.set()

    def _pump_in(self, sock: socket.socket, proc: subprocess.Popen[bytes], interactive: bool,
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
        line = (json.dumps(entry) + "\n").encode()
        with self.lock:
            fd = os.open(self.sandbox.ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)

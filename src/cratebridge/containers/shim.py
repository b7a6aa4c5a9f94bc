"""``cratebridge-docker``: the ``docker`` a confined engine sees; a client of the run's broker.

It holds no policy and parses nothing: it sends its arguments, folder and
environment to the broker's socket (``$CRATEBRIDGE_BROKER``), streams
standard input to it and the container's output back, and exits with the
status the broker reports. One thing is done on this side, because only this
side may: the ``--cidfile`` the engine asked for is written here, with the
engine's rights. Engines call it several times per step, so it imports next
to nothing.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
import threading

BROKER_ENV = "CRATEBRIDGE_BROKER"
#: Slurm commands this client stands in for on an engine's PATH (the broker's Slurm door).
SLURM_TOOLS = ("sbatch", "squeue", "sacct", "scancel", "scontrol", "sinfo", "sshare",
               "sacctmgr")

# Frames, both ways: a channel byte, a 4-byte length, the payload.
REQUEST, STDIN, STDOUT, STDERR, EXIT, CID = range(6)
HEADER = struct.Struct(">BI")

__all__ = [
    "BROKER_ENV",
    "CID",
    "EXIT",
    "HEADER",
    "MAX_FRAME",
    "REQUEST",
    "SLURM_TOOLS",
    "STDERR",
    "STDIN",
    "STDOUT",
    "main",
    "read_frame",
    "send_frame",
]


def send_frame(sock: socket.socket, channel: int, payload: bytes) -> None:
    sock.sendall(HEADER.pack(channel, len(payload)) + payload)


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


#: The largest frame either side accepts; a larger one ends the conversation.
MAX_FRAME = 4 * 1024 * 1024


def read_frame(sock: socket.socket) -> tuple[int, bytes] | None:
    """The next frame, or None when the other side has gone (or sent one too large)."""
    head = _read_exactly(sock, HEADER.size)
    if head is None:
        return None
    channel, size = HEADER.unpack(head)
    if size > MAX_FRAME:
        return None
    payload = _read_exactly(sock, size) if size else b""
    return None if payload is None else (channel, payload)


def _pump_stdin(sock: socket.socket) -> None:
    try:
        while chunk := os.read(0, 65536):
            send_frame(sock, STDIN, chunk)
        send_frame(sock, STDIN, b"")
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    address = os.environ.get(BROKER_ENV)
    if not address:
        print("cratebridge-docker: CRATEBRIDGE_BROKER is not set; this docker works only "
              "inside a cratebridge run", file=sys.stderr)
        return 125
    tool = os.path.basename(sys.argv[0]) if argv is None else "docker"
    request = {"argv": args, "tool": tool if tool in SLURM_TOOLS else "docker",
               "cwd": os.getcwd(), "env": dict(os.environ)}
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    here = os.getcwd()
    try:
        # by its folder: a socket's path is limited to 108 bytes, a run folder's is not
        os.chdir(os.path.dirname(address) or ".")
        sock.connect(os.path.basename(address))
        os.chdir(here)
    except OSError as exc:
        print(f"cratebridge-docker: the run's container broker does not answer ({exc}); "
              "no container can start now", file=sys.stderr)
        return 125
    # Stopping this client stops the container: the broker kills it when we go.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: os._exit(128 + signum))
    send_frame(sock, REQUEST, json.dumps(request).encode())
    threading.Thread(target=_pump_stdin, args=(sock,), daemon=True).start()
    while (frame := read_frame(sock)) is not None:
        channel, payload = frame
        if channel in (STDOUT, STDERR):
            os.write(1 if channel == STDOUT else 2, payload)
        elif channel == CID:  # the engine asked for --cidfile: written with its rights
            cid = json.loads(payload)
            with open(cid["cidfile"], "x", encoding="ascii") as handle:
                handle.write(cid["id"])
        elif channel == EXIT:
            return int(payload or b"125")
    print("cratebridge-docker: the broker closed the connection", file=sys.stderr)
    return 125


if __name__ == "__main__":
    sys.exit(main())

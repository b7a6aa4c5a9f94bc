"""``cratebridge-docker``: the ``docker`` a confined engine sees; a client of the run's broker.

It holds no policy: it sends its arguments to the broker's socket
(``$CRATEBRIDGE_BROKER``), streams standard input to it and the container's
output back, and exits with the status the broker reports. Only two things
are done on this side, because only this side has them: ``-e NAME`` takes its
value from the engine's environment, and ``--cidfile`` is written here, with
the engine's rights, from the container id the broker reports. Engines call it
several times per step, so it imports next to nothing.
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


def _prepare(args: list[str]) -> tuple[list[str], str | None]:
    """Values for bare ``-e NAME``, and ``--cidfile`` taken out (written here)."""
    out: list[str] = []
    cidfile = None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-e", "--env") and i + 1 < len(args) and "=" not in args[i + 1]:
            out += [arg, f"{args[i + 1]}={os.environ.get(args[i + 1], '')}"]
            i += 2
            continue
        if arg == "--cidfile" and i + 1 < len(args):
            cidfile = args[i + 1]
            i += 2
            continue
        if arg.startswith("--cidfile="):
            cidfile = arg.partition("=")[2]
            i += 1
            continue
        out.append(arg)
        i += 1
    return out, cidfile


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
    request: dict[str, object] = {"argv": args}
    cidfile = None
    if tool in SLURM_TOOLS:
        request.update(tool=tool, cwd=os.getcwd(), env=dict(os.environ))
    else:
        args, cidfile = _prepare(args)
        request["argv"] = args
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
        elif channel == CID and cidfile:
            with open(cidfile, "x", encoding="ascii") as handle:
                handle.write(payload.decode("ascii"))
        elif channel == EXIT:
            return int(payload or b"125")
    print("cratebridge-docker: the broker closed the connection", file=sys.stderr)
    return 125


if __name__ == "__main__":
    sys.exit(main())

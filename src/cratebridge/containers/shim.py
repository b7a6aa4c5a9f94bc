"""``cratebridge-docker``: the ``docker`` a confined engine sees; a client of the run's broker.

It holds no policy and parses nothing: it sends its arguments, folder and
environment to the broker's socket (``$CRATEBRIDGE_BROKER``), streams
standard input to it and the container's output back, and exits with the
status the broker reports. One thing is done on this side, because only this
side may: the ``--cidfile`` the engine asked for is written here, with the
engine's rights. Engines call it several times per step, so it imports only
modules built into the interpreter (``json``, ``socket``, ``signal`` and
``threading`` would pull in ``re`` and ``enum``: two thirds of its start-up),
and writes its one JSON request itself.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # signal.py itself imports enum
import _socket
import _thread
import os
import sys
from _struct import Struct

BROKER_ENV = "CRATEBRIDGE_BROKER"
#: Slurm commands this client stands in for on an engine's PATH (the broker's Slurm door).
SLURM_TOOLS = ("sbatch", "squeue", "sacct", "scancel", "scontrol", "sinfo", "sshare",
               "sacctmgr")

# Frames, both ways: a channel byte, a 4-byte length, the payload.
REQUEST, STDIN, STDOUT, STDERR, EXIT, CID = range(6)
HEADER = Struct(">BI")

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


def send_frame(sock: _socket.socket, channel: int, payload: bytes) -> None:
    sock.sendall(HEADER.pack(channel, len(payload)) + payload)


def _read_exactly(sock: _socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


#: The largest frame either side accepts; a larger one ends the conversation.
MAX_FRAME = 4 * 1024 * 1024


def read_frame(sock: _socket.socket) -> tuple[int, bytes] | None:
    """The next frame, or None when the other side has gone (or sent one too large)."""
    head = _read_exactly(sock, HEADER.size)
    if head is None:
        return None
    channel, size = HEADER.unpack(head)
    if size > MAX_FRAME:
        return None
    payload = _read_exactly(sock, size) if size else b""
    return None if payload is None else (channel, payload)


def _pump_stdin(sock: _socket.socket) -> None:
    try:
        while chunk := os.read(0, 65536):
            send_frame(sock, STDIN, chunk)
        send_frame(sock, STDIN, b"")
    except OSError:
        pass


def json_text(value: object) -> str:
    """``value`` (text, lists, dicts of them) as ASCII JSON that ``json.loads`` reads back."""
    if isinstance(value, str):
        text = value.translate(_ESCAPES)
        if not text.isascii():  # as ensure_ascii: \\uXXXX, surrogate pairs beyond the BMP
            text = "".join(c if c.isascii() else _utf16_escape(ord(c)) for c in text)
        return f'"{text}"'
    if isinstance(value, list):
        return "[" + ", ".join(json_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json_text(str(k))}: {json_text(v)}"
                               for k, v in value.items()) + "}"
    raise TypeError(f"not text, a list or a dict: {type(value).__name__}")


# JSON's escapes: the quote, the backslash and every control character
_ESCAPES = {**{i: f"\\u{i:04x}" for i in range(0x20)}, ord('"'): '\\"', ord("\\"): "\\\\"}


def _utf16_escape(code: int) -> str:
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


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
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
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
    for sig in (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP):
        _signal.signal(sig, lambda signum, frame: os._exit(128 + signum))
    send_frame(sock, REQUEST, json_text(request).encode("ascii"))
    _thread.start_new_thread(_pump_stdin, (sock,))
    while (frame := _next_frame(sock)) is not None:
        channel, payload = frame
        if channel in (STDOUT, STDERR):
            os.write(1 if channel == STDOUT else 2, payload)
        elif channel == CID:  # the engine asked for --cidfile: written with its rights
            # the container's id, a newline, the file (the broker's frame)
            cid, _, cidfile = os.fsdecode(payload).partition("\n")
            _write_cidfile(cidfile, cid)
        elif channel == EXIT:
            return int(payload or b"125")
    print("cratebridge-docker: the broker closed the connection", file=sys.stderr)
    return 125


def _next_frame(sock: _socket.socket) -> tuple[int, bytes] | None:
    """The broker's next frame; None when it has gone, closed or reset (a side closing
    with our last frame unread resets the connection)."""
    try:
        return read_frame(sock)
    except OSError:
        return None


def _write_cidfile(cidfile: str, cid: str) -> None:
    """Put the file in place with the id already in it: an engine polling for the file
    never reads it empty. A file already there is an error, as with ``docker``."""
    partial = f"{cidfile}.{os.getpid()}.partial"
    with open(partial, "x", encoding="ascii") as handle:
        handle.write(cid)
    try:
        os.link(partial, cidfile)
    finally:
        os.unlink(partial)


if __name__ == "__main__":
    sys.exit(main())

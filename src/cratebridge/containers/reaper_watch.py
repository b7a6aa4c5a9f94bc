"""The reaper's process while its run lives: it waits, importing next to nothing.

:func:`cratebridge.containers.reaper.guard` starts ``python -m
cratebridge.containers.reaper_watch REMAINS-JSON`` for every run; almost
always the run ends well and says ``done``, and the process exits. So until
the pipe closes this imports only modules built into the interpreter (the
reaper's own imports, ``subprocess``, ``dataclasses`` and the sandbox, cost
about 70 ms of CPU a run); only a run that died without ``done`` brings in
:mod:`cratebridge.containers.reaper` to reap it.
"""

from __future__ import annotations

import os
import signal
import sys

DONE = b"done\n"


def heard(data: bytes) -> tuple[bytes, bytes, bytes]:
    """What the reaper was told: its last words' module and payload, then the rest.

    Each of the first two is length-prefixed (8 bytes, big-endian), as
    ``reaper._say`` writes them; the rest is ``done`` when the run ended well.
    """
    parts = []
    for _ in range(2):
        size = int.from_bytes(data[:8], "big")
        parts.append(data[8:8 + size])
        data = data[8 + size:]
    return parts[0], parts[1], data


def main(argv: list[str] | None = None) -> int:
    """Wait for the end of standard input; unless it said ``done``, reap."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m cratebridge.containers.reaper_watch REMAINS-JSON",
              file=sys.stderr)
        return 2
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    data = b""
    while chunk := os.read(0, 65536):
        data += chunk
    module, payload, said = heard(data)
    if said == DONE:
        return 0
    from cratebridge.containers import reaper

    return reaper.after_death(args[0], module.decode(), payload)


if __name__ == "__main__":
    sys.exit(main())

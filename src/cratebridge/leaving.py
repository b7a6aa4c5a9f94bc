"""Ending a process that has said all it will, without the interpreter's last sweep of its heap.

When Python exits it clears its modules and collects what was left in
reference cycles, object by object. For an engine that loaded a workflow
language's schemas and documents (cwltool: tens of thousands of objects) that
last collection is most of a tenth of a second, spent after the run is over
and while the host waits for the process to end (``benchmarks/timeline.py``).
:func:`leave` freezes the heap first: the exit handlers still run and the
streams are flushed, but the collector skips what is frozen. Only for a
process's last words: nothing it holds then needs a finaliser to run.
"""

from __future__ import annotations

import gc
import sys
from typing import NoReturn

__all__ = ["leave"]


def leave(code: int | None) -> NoReturn:
    """Flush the standard streams, freeze the heap and exit with ``code``."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or its reader went away: nothing to keep
            pass
    gc.freeze()
    sys.exit(code)

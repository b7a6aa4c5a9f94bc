"""What signals do to a run: the first asks it to stop, a second may cut it short.

SIGTERM, SIGHUP and SIGINT ask the run to stop (:class:`Stop`): the engine's
process group is stopped within a tick and the engine still reports the steps
it started, so the result crate records them. A second signal raises
:class:`~cratebridge.errors.Interrupted` at once, but only where that loses
nothing: while the request is read and planned (no run folder is kept, nothing
ran) and while the engine runs (the pipeline turns it into a failed record and
writes the crate). Between the two, and while the result crate is written, it
is noted and the run goes on to its crate; ``kill -9`` is still there, and the
run's reaper writes the crate then.

A repeated SIGHUP is not a second signal. It says the same thing again: the
terminal or the server is gone, and the kernel sends a dead server's
``PR_SET_PDEATHSIG`` once for each of its threads as they exit, each time the
run is handed to one still alive.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from types import FrameType

from cratebridge.engines.process import Stop
from cratebridge.errors import Interrupted

__all__ = ["SIGNALS", "SignalStop"]

#: The signals that ask a run to stop
SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


class SignalStop:
    """Turns :data:`SIGNALS` into requests on ``stop`` while installed (see the module)."""

    def __init__(self, stop: Stop) -> None:
        self.stop = stop
        self._cut_short = True

    def handle(self, signum: int, frame: FrameType | None = None) -> None:
        """The handler: a first signal asks for the stop; a second may interrupt."""
        name = signal.Signals(signum).name
        if self.stop.request(name):
            return
        if signum == signal.SIGHUP and self.stop.reason == "SIGHUP":
            return  # the same hang-up again
        if not self._cut_short:
            print(f"cratebridge: {name}: already stopping, writing the result crate "
                  "(kill -9 ends it now; the run's reaper then writes the crate)",
                  file=sys.stderr, flush=True)
            return
        raise Interrupted(f"stopped by {name}, a second signal")

    def not_cut_short(self) -> AbstractContextManager[None]:
        """A second signal does not interrupt the block (it is noted on stderr)."""
        return self._cutting_short(False)

    def cut_short(self) -> AbstractContextManager[None]:
        """Inside a :meth:`not_cut_short` block, a part a second signal may interrupt."""
        return self._cutting_short(True)

    @contextmanager
    def _cutting_short(self, allowed: bool) -> Iterator[None]:
        before, self._cut_short = self._cut_short, allowed
        try:
            yield
        finally:
            self._cut_short = before

    @contextmanager
    def installed(self) -> Iterator[SignalStop]:
        """Handle :data:`SIGNALS` inside the block (only the main thread may; elsewhere,
        as for the API called from a worker thread, the block runs without them)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        old = {s: signal.signal(s, self.handle) for s in SIGNALS}
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)

"""The signal handler of a run, alone: a first signal asks, a second may cut the run short.

The whole run under signals (the engine stopped, the crate written) is in
test_run_lifecycle.py.
"""

from __future__ import annotations

import signal
import threading

import pytest

from cratebridge.engines.process import Stop
from cratebridge.errors import Interrupted
from cratebridge.stopsignals import SIGNALS, SignalStop


def test_the_first_signal_asks_for_the_stop_and_names_it() -> None:
    stop = Stop()
    SignalStop(stop).handle(signal.SIGTERM)
    assert stop.is_set() and stop.reason == "SIGTERM"


def test_a_second_signal_interrupts() -> None:
    signals = SignalStop(Stop())
    signals.handle(signal.SIGINT)
    with pytest.raises(Interrupted, match="stopped by SIGINT, a second signal"):
        signals.handle(signal.SIGINT)


def test_a_repeated_hangup_is_the_same_news_not_a_second_signal() -> None:
    """A dead server's PR_SET_PDEATHSIG comes once for each of its threads."""
    signals = SignalStop(Stop())
    for _ in range(5):
        signals.handle(signal.SIGHUP)
    assert signals.stop.reason == "SIGHUP"
    with pytest.raises(Interrupted, match="SIGTERM"):
        signals.handle(signal.SIGTERM)  # another signal after a hang-up is a second one


def test_a_hangup_after_another_stop_is_a_second_signal() -> None:
    signals = SignalStop(Stop())
    signals.stop.request("its time limit")
    with pytest.raises(Interrupted, match="SIGHUP"):
        signals.handle(signal.SIGHUP)


def test_where_nothing_may_be_lost_a_second_signal_is_noted_not_obeyed(
        capsys: pytest.CaptureFixture[str]) -> None:
    signals = SignalStop(Stop())
    signals.handle(signal.SIGTERM)
    with signals.not_cut_short():
        signals.handle(signal.SIGINT)
        assert "SIGINT: already stopping, writing the result crate" in capsys.readouterr().err
        with signals.cut_short(), pytest.raises(Interrupted):
            signals.handle(signal.SIGINT)  # the engine's own stretch
        signals.handle(signal.SIGINT)  # back out of it: noted again
    with pytest.raises(Interrupted):
        signals.handle(signal.SIGINT)  # and outside the block, obeyed


def test_installed_in_the_main_thread_and_restored_after() -> None:
    before = {s: signal.getsignal(s) for s in SIGNALS}
    signals = SignalStop(Stop())
    with signals.installed():
        assert all(signal.getsignal(s) == signals.handle for s in SIGNALS)
    assert {s: signal.getsignal(s) for s in SIGNALS} == before


def test_a_worker_thread_runs_without_handlers() -> None:
    before = {s: signal.getsignal(s) for s in SIGNALS}
    seen: list[object] = []

    def work() -> None:
        with SignalStop(Stop()).installed():
            seen.extend(signal.getsignal(s) for s in SIGNALS)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert seen == list(before.values())


def test_a_run_stopped_before_its_engine_says_what_stopped_it() -> None:
    stop = Stop()
    stop.request("SIGTERM")
    assert stop.before_start == "the run was stopped by SIGTERM before its engine started"
    settled = Stop()
    settled.request("the server's restart", before_start="the server stopped (no crate)")
    assert settled.before_start == "the server stopped (no crate)"
    assert settled.reason == "the server's restart"

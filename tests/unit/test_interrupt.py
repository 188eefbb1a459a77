"""A signal during `run` only asks for a stop; the run raises at the point it chooses."""

from __future__ import annotations

import os
import signal

import pytest

from scheduler.interrupt import Interrupted, StopRequest


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_sets_the_flag_and_check_raises_only_then(sig: signal.Signals) -> None:
    stop = StopRequest()
    before = signal.getsignal(sig)
    with stop.installed():
        stop.check()  # nothing asked yet: no raise
        os.kill(os.getpid(), sig)  # handled here, between bytecodes: no exception
        assert stop.requested
        assert stop.signum == sig
        with pytest.raises(Interrupted):
            stop.check(12345)  # also usable as ingest's progress callback
    assert signal.getsignal(sig) is before


def test_a_second_signal_changes_nothing() -> None:
    stop = StopRequest()
    with stop.installed():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
    assert stop.signum == signal.SIGTERM  # the first one stands

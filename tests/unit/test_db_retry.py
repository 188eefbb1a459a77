"""retry_transient: a restarting database is waited out, other errors are not retried."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from workers.db import is_transient, retry_transient


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


def _down() -> OperationalError:
    return OperationalError("SELECT 1", {}, Exception("the database system is shutting down"))


def test_waits_out_a_restart_then_returns() -> None:
    t = FakeTime()
    calls = {"n": 0}

    def fn() -> str:
        calls["n"] += 1
        if calls["n"] < 4:
            raise _down()
        return "ok"

    assert retry_transient(fn, wait_s=30, sleep=t.sleep, clock=t.clock) == "ok"
    assert calls["n"] == 4
    assert t.slept == [0.1, 0.2, 0.4]  # growing back-off


def test_gives_up_after_the_bound() -> None:
    t = FakeTime()

    def fn() -> None:
        raise _down()

    with pytest.raises(OperationalError):
        retry_transient(fn, wait_s=10, sleep=t.sleep, clock=t.clock)
    assert t.now <= 10
    assert len(t.slept) >= 5


def test_a_real_error_is_not_retried() -> None:
    t = FakeTime()
    calls = {"n": 0}

    def fn() -> None:
        calls["n"] += 1
        raise IntegrityError("INSERT", {}, Exception("duplicate key"))

    with pytest.raises(IntegrityError):
        retry_transient(fn, wait_s=30, sleep=t.sleep, clock=t.clock)
    assert calls["n"] == 1 and not t.slept


def test_transient_kinds() -> None:
    assert is_transient(_down())
    assert not is_transient(IntegrityError("x", {}, Exception("dup")))

"""RFC 3339 formatting and the fake clock."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from emulator.clock import ZERO_TIME, FakeClock, SystemClock, format_time

RFC3339_NS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")


def test_unset_time_is_the_go_zero_time() -> None:
    assert format_time(None) == ZERO_TIME == "0001-01-01T00:00:00Z"


def test_nine_fractional_digits() -> None:
    assert format_time(0.5) == "1970-01-01T00:00:00.500000000Z"
    assert format_time(1752647993.25) == "2025-07-16T06:39:53.250000000Z"


@given(st.floats(min_value=0, max_value=4_000_000_000, allow_nan=False))
def test_any_time_has_the_rfc3339_shape(t: float) -> None:
    assert RFC3339_NS.match(format_time(t))


def test_fake_clock_moves_only_when_told() -> None:
    clock = FakeClock(100.0)
    assert clock.now() == 100.0
    clock.advance(2.5)
    assert clock.now() == 102.5


def test_system_clock_never_goes_back() -> None:
    clock = SystemClock()
    a = clock.now()
    assert clock.now() >= a


def test_system_clock_moves_forward_when_told_and_keeps_running() -> None:
    clock = SystemClock()
    a = clock.now()
    clock.advance(3600)
    b = clock.now()
    assert 3600 <= b - a < 3700 and clock.now() >= b

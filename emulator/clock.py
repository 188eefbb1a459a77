"""Time sources for the emulator (a real clock and a fake one for tests) and RFC 3339 output."""

from __future__ import annotations

import math
import time
from typing import Protocol

ZERO_TIME = "0001-01-01T00:00:00Z"
"""How PiAPI writes a time that is not set yet."""

_NS_PER_S = 1_000_000_000


class Clock(Protocol):
    """Anything that tells the time as float unix seconds, and can be moved forward."""

    def now(self) -> float:
        """Current time in unix seconds."""
        ...

    def advance(self, dt_s: float) -> None:
        """Move the clock forward by `dt_s` seconds."""
        ...


class SystemClock:
    """Wall time read once, then advanced by the monotonic clock so it never jumps back; a
    test may move it forward (`advance`) to skip a wait on long tasks."""

    def __init__(self) -> None:
        self._wall0 = time.time()
        self._mono0 = time.monotonic()

    def now(self) -> float:
        """Current time in unix seconds."""
        return self._wall0 + (time.monotonic() - self._mono0)

    def advance(self, dt_s: float) -> None:
        """Move the clock forward by `dt_s` seconds (`POST /_emulator/advance`): tasks and rate
        windows see that much more time passed; the clock keeps running from there."""
        self._wall0 += dt_s


class FakeClock:
    """A clock that only moves when told to: for deterministic tests."""

    def __init__(self, start: float = 1_750_000_000.0) -> None:
        self.t = start

    def now(self) -> float:
        """Current (fake) time in unix seconds."""
        return self.t

    def advance(self, dt_s: float) -> None:
        """Move the clock forward by `dt_s` seconds."""
        self.t += dt_s


def format_time(t: float | None) -> str:
    """RFC 3339 UTC with 9 fractional digits, or the zero time when `t` is None."""
    if t is None:
        return ZERO_TIME
    sec = math.floor(t)
    ns = round((t - sec) * _NS_PER_S)  # the fraction alone: t * 1e9 would lose digits
    if ns == _NS_PER_S:
        sec, ns = sec + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{ns:09d}Z"

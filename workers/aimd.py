"""Adapting to the account's real limits: AIMD on the request rate and on concurrency.

429s come in two kinds. "Too many requests" lowers the request rate: multiplicatively, to
just under what PiAPI actually accepted over the last window (so the fleet settles below
the limit instead of bouncing off it), then additively back up. "Too many tasks in
flight" lowers the concurrency at once to the number of our tasks PiAPI was running when
it refused, then additively back up. After each decrease the level that failed is
remembered for a while, and increases stop short of it, so probing the limit costs a 429
every few minutes at most. Pure logic over a clock; the dispatcher feeds it the fleet's
counters once a second, and concurrency refusals as soon as it sees them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

WINDOW_S = 10
"""The fleet's counters are read over this many seconds."""
RATE_429_SHARE = 0.10
"""Rate 429s must be at least this share of requests to count as a limit (a few spurious
429s from a busy provider must not throttle the fleet)."""
MIN_RATE_429 = 10
"""...and at least this many: in a quiet window (start-up, after a failover) a handful of
spurious 429s is a large share of few requests, and reading it as the account's limit
collapsed the fleet to a fraction of a request per second for the whole hold (the chaos
run saw 3 of 10 and 6 of 58). A real limit the fleet runs into yields far more."""
DECREASE_FACTOR = 0.9
"""After a decrease, the rate is this share of what PiAPI accepted..."""
FLOOR_FACTOR = 0.7
"""...unless the fleet was not using its budget: then a plain step down to this share."""
BUSY_SHARE = 0.8
"""The fleet counts as using its budget when it sent at least this share of it."""
INCREASE_EVERY_S = 5.0
RATE_STEP_SHARE = 0.05
"""Additive increase: this share of the ceiling (or of the current rate) per step."""
CONC_INCREASE_EVERY_S = 10.0
CONC_REACT_S = 1.0
"""Concurrency refusals within this long of a decrease are the same episode."""
HOLD_S = 120.0
"""For this long after a decrease, increases stop just under the level that failed."""
HOLD_MARGIN = 0.95
MIN_RATE_PER_S = 0.2


@dataclass
class Limits:
    """The effective limits the fleet works within right now."""

    rate_per_s: float | None
    """Requests per second fleet-wide; None: no limit."""
    concurrency: int


class Aimd:
    """The controller: `observe()` once a window, read `limits`."""

    def __init__(self, rate_ceiling: float | None, concurrency: int, now: float) -> None:
        self.rate_ceiling = rate_ceiling
        self.conc_ceiling = concurrency
        self.limits = Limits(rate_ceiling, concurrency)
        self.rate_hold: tuple[float, float] | None = None  # (until, cap)
        self.conc_hold: tuple[float, int] | None = None
        self.last_rate_change = now
        self.last_rate_decrease: float | None = None
        self.last_conc_change = now
        self.rate_decreases = 0
        self.conc_decreases = 0

    def set_concurrency_ceiling(self, ceiling: int, now: float) -> None:
        """The configured or account limit changed."""
        if ceiling != self.conc_ceiling:
            self.conc_ceiling = ceiling
            self.limits.concurrency = min(self.limits.concurrency, ceiling)
            if self.conc_hold is None:
                self.limits.concurrency = ceiling
            self.last_conc_change = now

    def observe(self, now: float, requests: int, rate_429: int) -> Limits:
        """Update the limits from one window's fleet-wide request and rate-429 counts."""
        self._expire_holds(now)
        if rate_429 >= MIN_RATE_429 and rate_429 >= RATE_429_SHARE * max(requests, 1):
            self._decrease_rate(now, requests, rate_429)
        elif now - self.last_rate_change >= INCREASE_EVERY_S:
            self._increase_rate(now)
        if now - self.last_conc_change >= CONC_INCREASE_EVERY_S:
            self._increase_concurrency(now)
        return self.limits

    def concurrency_refused(self, now: float, running: int) -> Limits:
        """PiAPI refused a create for too many tasks in flight while `running` of ours ran:
        at once, come down to that (PiAPI accepted them) and hold there a while."""
        if now - self.last_conc_change < CONC_REACT_S and self.conc_decreases:
            return self.limits
        self._expire_holds(now)
        below = max(1, min(self.limits.concurrency - 1, running))
        self.limits.concurrency = below
        self.conc_hold = (now + HOLD_S, below)
        self.last_conc_change = now
        self.conc_decreases += 1
        return self.limits

    def _expire_holds(self, now: float) -> None:
        if self.rate_hold and now >= self.rate_hold[0]:
            self.rate_hold = None
        if self.conc_hold and now >= self.conc_hold[0]:
            self.conc_hold = None

    def _decrease_rate(self, now: float, requests: int, rate_429: int) -> None:
        if self.last_rate_decrease is not None and now - self.last_rate_decrease < WINDOW_S:
            return  # the last decrease has not shown its effect in a whole window yet
        accepted = max(requests - rate_429, 0) / WINDOW_S
        current = self.limits.rate_per_s
        # When the fleet used its whole budget, PiAPI's limit is what it accepted: go just
        # under that. When it asked for much less (the 429s then come from bursts, not from
        # the rate), what was accepted says nothing about the limit: step down instead.
        target = accepted * DECREASE_FACTOR
        if current is not None:
            busy = requests / WINDOW_S >= BUSY_SHARE * current
            target = min(target, current * DECREASE_FACTOR) if busy else current * FLOOR_FACTOR
        target = max(MIN_RATE_PER_S, target)
        self.limits.rate_per_s = target
        self.rate_hold = (now + HOLD_S, target / DECREASE_FACTOR * HOLD_MARGIN)
        self.last_rate_change = self.last_rate_decrease = now
        self.rate_decreases += 1

    def _increase_rate(self, now: float) -> None:
        rate = self.limits.rate_per_s
        if rate is None:
            return
        self.last_rate_change = now
        if self.rate_ceiling is None and self.rate_hold is None:
            self.limits.rate_per_s = None  # no configured limit: probe by lifting ours
            return
        cap = self.rate_ceiling if self.rate_ceiling is not None else math.inf
        if self.rate_hold is not None:
            cap = min(cap, self.rate_hold[1])
        self.limits.rate_per_s = min(cap, rate + RATE_STEP_SHARE * (self.rate_ceiling or rate))

    def _increase_concurrency(self, now: float) -> None:
        cap = self.conc_ceiling
        if self.conc_hold is not None:
            cap = min(cap, self.conc_hold[1])
        self.limits.concurrency = min(cap, self.limits.concurrency + 1)
        self.last_conc_change = now

"""Counting free slots from PiAPI's own in-flight count, with a safe fallback.

PiAPI frees a concurrency slot the moment a task ends; our database only learns it at the
next poll. Where the account tells how many tasks are in flight (/account/active_tasks),
the dispatcher can refill a slot as soon as PiAPI has freed it, and polls only collect.

The estimate stays an upper bound: PiAPI's count (taken after our own count of creates
that PiAPI may not have seen yet) plus those creates, plus whatever was dispatched since.
A count that is missing, unreadable or implausible (lower than the tasks we created a
moment ago) turns this off and the database count rules, as it would anyway.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Protocol

from sqlalchemy.engine import Engine

from workers import leases
from workers.piapi import PiAPIError

logger = logging.getLogger(__name__)

MAX_INTERVAL_S = 1.0
"""Snapshots are at least this frequent while the account is full."""
FREED_PER_SNAPSHOT = 0.5
"""Snapshots are paced so that each finds about this many freed slots: often enough to
refill a slot soon after its task ends, no more often than tasks end."""
RATE_SMOOTHING = 0.2
RETRY_AFTER_DISABLED_S = 300.0
"""After the count was found missing or implausible, look again this much later."""
YOUNG_S = 0.1
"""Tasks we created less than this long ago are certainly still in flight at PiAPI."""
CHECK_EVERY_S = 1.0
"""How often a snapshot is checked for plausibility against our own recent creates."""


class Account(Protocol):
    """PiAPI's view of the account's in-flight tasks."""

    def active_tasks(self) -> int | None: ...


class RemoteSlots:
    """Estimates in-flight tasks from PiAPI's count, between snapshots and across them."""

    def __init__(self, engine: Engine, account: Account | None,
                 spend: Callable[[str], None] | None, clock: Callable[[], float] = time.time,
                 min_interval_s: float = 0.02) -> None:
        self.engine = engine
        self.account = account
        self.spend = spend
        self.clock = clock
        self.min_interval_s = min_interval_s
        self.interval_s = min_interval_s
        self.disabled_until = -math.inf if account is not None else math.inf
        self.last_at = -math.inf
        self.last_estimate: int | None = None
        self.since_snapshot = 0
        self.snapshots = 0
        self.checked_at = -math.inf
        self.freed_per_s: float | None = None
        self.paced_at = -math.inf

    @property
    def usable(self) -> bool:
        """True while PiAPI's count is in use."""
        return self.account is not None and self.clock() >= self.disabled_until

    def dispatched(self, creates: int) -> None:
        """Creates sent since the last snapshot: PiAPI may not count them yet."""
        self.since_snapshot += creates

    def next_snapshot_in(self, now: float) -> float:
        """Seconds until the next snapshot is worth taking."""
        if not self.usable:
            return MAX_INTERVAL_S
        return max(0.0, self.last_at + self.interval_s - now)

    def estimate(self, now: float, occupancy: leases.Occupancy, limit: int) -> int:
        """In-flight tasks right now: an upper bound, never above the database's count
        unless PiAPI counts tasks the database does not know about."""
        if not self.usable:
            return occupancy.total
        if now - self.last_at < self.interval_s and self.last_estimate is not None:
            return self.last_estimate + self.since_snapshot
        remote = self._snapshot(now)
        if remote is None:
            return occupancy.total
        estimate = remote + occupancy.creating
        self._pace(now, estimate)
        self.last_estimate, self.since_snapshot = estimate, 0
        return estimate

    def _pace(self, now: float, estimate: int) -> None:
        """Learn how fast slots free up and set the snapshot interval from it."""
        if self.last_estimate is not None and now > self.paced_at:
            freed = max(0, self.last_estimate + self.since_snapshot - estimate)
            rate = freed / (now - self.paced_at)
            if self.freed_per_s is None:
                self.freed_per_s = rate
            else:
                self.freed_per_s += RATE_SMOOTHING * (rate - self.freed_per_s)
        self.paced_at = now
        if self.freed_per_s is None:  # nothing learned yet: look often
            self.interval_s = self.min_interval_s
            return
        ideal = FREED_PER_SNAPSHOT / self.freed_per_s if self.freed_per_s > 0 else MAX_INTERVAL_S
        self.interval_s = min(MAX_INTERVAL_S, max(self.min_interval_s, ideal))

    def _snapshot(self, now: float) -> int | None:
        assert self.account is not None
        self.last_at = now
        try:
            if self.spend is not None:
                self.spend("account")
            asked_at = self.clock()
            remote = self.account.active_tasks()
        except PiAPIError as exc:
            logger.warning("could not read PiAPI's in-flight count (%s); counting slots "
                           "from the database", exc)
            self.disabled_until = now + 10.0
            return None
        self.snapshots += 1
        if remote is None:
            self._disable(now, "the account offers no in-flight count")
            return None
        if asked_at - self.checked_at < CHECK_EVERY_S:
            return remote
        self.checked_at = asked_at
        # Tasks whose create had returned before we asked, and too young to have ended.
        young = leases.young_running(self.engine, asked_at - YOUNG_S, asked_at)
        if remote < young:
            self._disable(now, f"PiAPI counts {remote} tasks in flight but {young} were "
                               f"created in the last {YOUNG_S}s")
            return None
        return remote

    def _disable(self, now: float, why: str) -> None:
        logger.warning("not using PiAPI's in-flight count: %s; counting slots from the "
                       "database", why)
        self.disabled_until = now + RETRY_AFTER_DISABLED_S
        self.last_estimate = None

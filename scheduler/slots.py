"""Counting free slots from PiAPI's own in-flight count, with a safe fallback.

PiAPI frees a concurrency slot the moment a task ends; our database only learns it at the
next poll. Where the account tells how many tasks are in flight (/account/active_tasks),
the dispatcher can refill a slot as soon as PiAPI has freed it, and polls only collect.

The estimate stays an upper bound: PiAPI's count (taken after our own count of creates
that PiAPI may not have seen yet) plus those creates, plus whatever was dispatched since.
A count that is missing, unreadable or implausible (lower than the tasks we created a
moment ago) turns this off and the database count rules, as it would anyway.

PiAPI counts per model family, and documents only some families there (flux, kling, luma,
midjourney, music-s, music-u). A model whose family is absent from the answer (Joycaption,
Wan, Hailuo, ...) is not "none in flight": its tasks are counted from the database, and
only the families the answer does report replace our count by PiAPI's. When no model in
flight has a family the endpoint could report, PiAPI is not asked at all.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Protocol

from sqlalchemy.engine import Engine

from workers import leases
from workers.catalog import active_family
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

    def active_task_counts(self) -> dict[str, int] | None: ...


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
        self.covered: frozenset[str] = frozenset()
        """Models whose in-flight tasks the last snapshot counted."""

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
        if not self.usable or not any(active_family(m) for m in occupancy.by_model):
            return occupancy.total
        if now - self.last_at < self.interval_s and self.last_estimate is not None:
            return self.last_estimate + self.since_snapshot + _uncovered(
                occupancy, self.covered)
        counts = self._snapshot(now)
        if counts is None:
            return occupancy.total
        self.covered = frozenset(m for m in occupancy.by_model if active_family(m) in counts)
        # PiAPI's count for the families it reports (other tasks of the account included),
        # plus our creates of those families it may not count yet.
        remote = sum(counts.values()) + sum(occupancy.creating_by_model.get(m, 0)
                                            for m in self.covered)
        self._pace(now, remote)
        self.last_estimate, self.since_snapshot = remote, 0
        return remote + _uncovered(occupancy, self.covered)

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

    def _snapshot(self, now: float) -> dict[str, int] | None:
        assert self.account is not None
        self.last_at = now
        try:
            if self.spend is not None:
                self.spend("account")
            asked_at = self.clock()
            counts = self.account.active_task_counts()
        except PiAPIError as exc:
            logger.warning("could not read PiAPI's in-flight count (%s); counting slots "
                           "from the database", exc)
            self.disabled_until = now + 10.0
            return None
        self.snapshots += 1
        if counts is None:
            self._disable(now, "the account offers no in-flight count")
            return None
        if asked_at - self.checked_at < CHECK_EVERY_S:
            return counts
        self.checked_at = asked_at
        # Tasks whose create had returned before we asked, and too young to have ended.
        young = leases.young_running(self.engine, asked_at - YOUNG_S, asked_at)
        for model, n in young.items():
            family = active_family(model)
            if family is not None and family in counts and counts[family] < n:
                self._disable(now, f"PiAPI counts {counts[family]} {family} tasks in flight "
                                   f"but {n} were created in the last {YOUNG_S}s")
                return None
        return counts

    def _disable(self, now: float, why: str) -> None:
        logger.warning("not using PiAPI's in-flight count: %s; counting slots from the "
                       "database", why)
        self.disabled_until = now + RETRY_AFTER_DISABLED_S
        self.last_estimate = None


def _uncovered(occupancy: leases.Occupancy, covered: frozenset[str]) -> int:
    """Our own count of the tasks PiAPI's answer does not cover."""
    return sum(n for model, n in occupancy.by_model.items() if model not in covered)

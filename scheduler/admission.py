"""Operator controls the dispatcher applies: cancelled batches, deadlines and budgets.

Once a second (the dispatcher's housekeeping) every open batch is looked at: a cancelled
one admits no create and its rows still waiting end cancelled (rows can come back to
waiting after the cancel, for example a create refused); past its deadline likewise,
with the deadline as the reason; with a budget, the number of creates that still fit is
worked out (at most once a second per batch, less often when the look is slow) and spent
by each pass's leases until the next look. A budget that blocks creates while rows wait
pauses the batch (`batches.paused`, shown by `status` and `run`) until a higher budget
allows more.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from sqlalchemy.engine import Engine

from scheduler.status import local_iso
from workers import spending
from workers.leases import OpenBatch
from workers.transitions import operator

logger = logging.getLogger(__name__)

LOOK_COST_FACTOR = 20.0
"""A budget look that took d seconds is not repeated within 20 d (at least a second)."""


class Admission:
    """Which batches may have creates admitted now, and how many."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.clock = clock
        self._room: dict[str, int] = {}
        """Creates still allowed per batch until its next look; absent = no limit."""
        self._next_look: dict[str, float] = {}

    def refresh(self, batches: Iterable[OpenBatch], now: float, epoch: str) -> None:
        """Apply cancels and deadlines; work out what each budget still allows."""
        seen: set[str] = set()
        for batch in batches:
            seen.add(batch.id)
            if batch.budget_usd is not None and batch.cancel_mode is None and (
                    batch.deadline_at is None or now < batch.deadline_at):
                self._budget(batch, now, epoch)
                continue
            if batch.cancel_mode is not None:
                self._room[batch.id] = 0
                operator.sweep_cancelled(self.engine, batch.id, now, batch.cancel_mode)
            elif batch.deadline_at is not None and now >= batch.deadline_at:
                self._room[batch.id] = 0
                operator.sweep_deadline(self.engine, batch.id, now, local_iso(batch.deadline_at))
            else:
                self._room.pop(batch.id, None)
            if batch.paused:  # no budget holds the batch back any more
                spending.set_paused(self.engine, batch.id, None)
        for gone in set(self._room) - seen:
            del self._room[gone]

    def _budget(self, batch: OpenBatch, now: float, epoch: str) -> None:
        assert batch.budget_usd is not None
        started = self.clock()
        if started < self._next_look.get(batch.id, 0.0):
            return
        spend = spending.batch_spend(self.engine, batch.id, now, epoch)
        room = spending.allowance(batch.budget_usd, spend.spent_usd, spend.frozen_usd,
                                  spend.next_usd)
        self._room[batch.id] = room
        took = self.clock() - started
        self._next_look[batch.id] = started + max(1.0, LOOK_COST_FACTOR * took)
        reason = spending.pause_message(spend, batch.budget_usd) \
            if room == 0 and spend.waiting else None
        if reason != batch.paused:
            spending.set_paused(self.engine, batch.id, reason)
            if reason and not batch.paused:
                logger.warning("batch %s paused: %s", batch.id, reason)
            elif batch.paused and not reason:
                logger.info("batch %s: the budget allows more creates again", batch.id)

    def room(self, batch: OpenBatch, wanted: int, now: float) -> int:
        """How many of `wanted` creates the batch may have now."""
        if batch.cancel_mode is not None or (batch.deadline_at is not None
                                             and now >= batch.deadline_at):
            return 0
        allowed = self._room.get(batch.id)
        return wanted if allowed is None else max(0, min(wanted, allowed))

    def took(self, batch_id: str, n: int) -> None:
        """`n` creates of the batch were leased: they come out of its allowance."""
        if batch_id in self._room:
            self._room[batch_id] = max(0, self._room[batch_id] - n)

"""What the processes of a fleet tell each other through Redis, besides Celery messages.

- a wake-up list: a worker that frees a concurrency slot (or a webhook that makes a job due)
  wakes the dispatcher at once instead of at its next timer tick;
- per-second request and 429 counters, from which the dispatcher's AIMD controller adapts;
- the poll mode and the effective limits the dispatcher decided, read by every worker.

Everything here is advisory and rebuilt from scratch if Redis is flushed: the database is
the record.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from workers.polling import PollMode

logger = logging.getLogger(__name__)

WAKE_KEY = "piapi-bulk:wake"
STATS_PREFIX = "piapi-bulk:stats:"
MODE_KEY = "piapi-bulk:poll-mode"
RATE_KEY = "piapi-bulk:rate-eff"
"""Requests per second the token bucket grants fleet-wide right now (AIMD-adjusted)."""
STATS_TTL_S = 300
MODE_CACHE_S = 2.0


@dataclass(frozen=True)
class Window:
    """Request counts over the last few seconds, fleet-wide."""

    seconds: int
    requests: int
    rate_429: int
    conc_429: int


class Fleet:
    """A process's handle on the fleet's shared Redis state."""

    def __init__(self, client: redis.Redis, clock: Callable[[], float] = time.time) -> None:
        self.redis = client
        self.clock = clock
        self._mode: tuple[float, PollMode] | None = None
        self._rate: tuple[float, float | None] | None = None

    # --- wake-ups ---------------------------------------------------------------------
    def wake(self) -> None:
        """Tell the dispatcher there is work to look at now (coalesced: one entry at most)."""
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.lpush(WAKE_KEY, 1)
            pipe.ltrim(WAKE_KEY, 0, 0)
            pipe.execute()
        except redis.RedisError as exc:  # a missed wake-up only delays the next tick
            logger.debug("could not wake the dispatcher: %s", exc)

    def wait(self, timeout_s: float) -> bool:
        """Block until woken or `timeout_s` passes; True when woken."""
        if timeout_s <= 0:
            return False
        got = self.redis.blpop([WAKE_KEY], timeout=max(timeout_s, 0.001))
        if got:
            self.redis.delete(WAKE_KEY)
        return bool(got)

    # --- counters ---------------------------------------------------------------------
    def count(self, requests: int, rate_429: int = 0, conc_429: int = 0) -> None:
        """Add this process's recent PiAPI requests and 429s to the fleet's counters."""
        if not (requests or rate_429 or conc_429):
            return
        key = f"{STATS_PREFIX}{int(self.clock())}"
        try:
            pipe = self.redis.pipeline(transaction=False)
            if requests:
                pipe.hincrby(key, "req", requests)
            if rate_429:
                pipe.hincrby(key, "r429", rate_429)
            if conc_429:
                pipe.hincrby(key, "c429", conc_429)
            pipe.expire(key, STATS_TTL_S)
            pipe.execute()
        except redis.RedisError as exc:
            logger.debug("could not count requests: %s", exc)

    def window(self, seconds: int) -> Window:
        """Fleet-wide counts over the last `seconds` whole seconds."""
        now = int(self.clock())
        pipe = self.redis.pipeline(transaction=False)
        for sec in range(now - seconds, now):
            pipe.hmget(f"{STATS_PREFIX}{sec}", ["req", "r429", "c429"])
        totals = [0, 0, 0]
        for values in pipe.execute():
            for i, v in enumerate(values):
                totals[i] += int(v or 0)
        return Window(seconds, totals[0], totals[1], totals[2])

    # --- poll mode and limits ---------------------------------------------------------
    def set_mode(self, mode: PollMode) -> None:
        """Publish how the fleet learns that tasks ended (set by the dispatcher)."""
        self.redis.set(MODE_KEY, mode.value, ex=60)

    def mode(self) -> PollMode:
        """The published poll mode (cached briefly); EAGER when none is published."""
        now = self.clock()
        if self._mode is not None and now - self._mode[0] < MODE_CACHE_S:
            return self._mode[1]
        try:
            raw = self.redis.get(MODE_KEY)
            value = PollMode(raw.decode()) if isinstance(raw, bytes) else PollMode.EAGER
        except (redis.RedisError, ValueError):
            value = PollMode.EAGER
        self._mode = (now, value)
        return value

    def rate(self) -> float | None:
        """The published effective rate (cached briefly), or None when none is published."""
        now = self.clock()
        if self._rate is not None and now - self._rate[0] < MODE_CACHE_S:
            return self._rate[1]
        try:
            raw = self.redis.get(RATE_KEY)
            value = float(raw) if raw else None
        except (redis.RedisError, ValueError):
            value = None
        self._rate = (now, value)
        return value

    def set_rate(self, per_s: float | None) -> None:
        """Publish the effective fleet-wide request rate (None: no limit)."""
        if per_s is None:
            self.redis.delete(RATE_KEY)
        else:
            self.redis.set(RATE_KEY, f"{per_s:.6f}", ex=600)

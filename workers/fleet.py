"""What the processes of a fleet tell each other through Redis, besides Celery messages.

- a wake-up list: a worker that frees a concurrency slot (or a webhook that makes a job due)
  wakes the dispatcher at once instead of at its next timer tick;
- per-second request and 429 counters, from which the dispatcher's AIMD controller adapts;
- the poll mode and the effective limits the dispatcher decided, read by every worker;
- the batches `piapi-bulk run` processes claimed: a dispatcher that a `run` started creates
  tasks only for claimed batches (a standing fleet serves every open batch).

Everything here is advisory and rebuilt from scratch if Redis is flushed: the database is
the record. The keys, with who writes and reads each, are in `workers/keys.py`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import redis

from workers.keys import (
    CONC_429_KEY,
    LATENCY_KEY,
    LIMITED_KEY,
    MODE_KEY,
    RATE_KEY,
    REQUESTS_KEY,
    RUNS_KEY,
    STATS_PREFIX,
    WAKE_KEY,
)
from workers.metering import RequestTotals
from workers.polling import PollMode

logger = logging.getLogger(__name__)

CLAIM_TTL_S = 30.0
"""A claim lapses this long after its `run` stopped renewing it (killed without cleanup)."""
SHORT_WAIT_S = 0.25
"""Waits shorter than this sleep instead of blocking in Redis (see `Fleet.wait`)."""
STATS_TTL_S = 300
MODE_CACHE_S = 2.0
Metered = tuple[Mapping[str, int], Mapping[str, int]]
"""A `RequestMeter.drain()`: requests by "endpoint status", latency by "endpoint le"."""

# KEYS[1]: this second's counters hash; KEYS[2]: the wake-up list; KEYS[3]: the running
# total of concurrency 429s (the dispatcher reacts to those at its next pass); KEYS[4..6]:
# the request, latency and 429 totals for /metrics (`workers/keys.py`).
# ARGV[1..3]: requests, rate 429s, concurrency 429s to add; ARGV[4]: 1 to wake the
# dispatcher; ARGV[5]: the counters' TTL in seconds; ARGV[6]: how many (field, n) pairs
# for KEYS[4] follow, then those pairs, then (field, n) pairs for KEYS[5] to the end. One
# round trip per message (a redis-py pipeline costs more CPU to build than the commands
# it sends).
_REPORT = """
local names = {'req', 'r429', 'c429'}
local added = false
for i = 1, 3 do
  local n = tonumber(ARGV[i])
  if n > 0 then
    redis.call('HINCRBY', KEYS[1], names[i], n)
    added = true
  end
end
if added then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5])) end
if tonumber(ARGV[3]) > 0 then
  redis.call('INCRBY', KEYS[3], tonumber(ARGV[3]))
  redis.call('HINCRBY', KEYS[6], 'concurrency', tonumber(ARGV[3]))
end
if tonumber(ARGV[2]) > 0 then redis.call('HINCRBY', KEYS[6], 'rate', tonumber(ARGV[2])) end
local split = 6 + 2 * tonumber(ARGV[6])
for i = 7, #ARGV, 2 do
  redis.call('HINCRBY', i <= split and KEYS[4] or KEYS[5], ARGV[i], ARGV[i + 1])
end
if ARGV[4] == '1' then
  redis.call('LPUSH', KEYS[2], 1)
  redis.call('LTRIM', KEYS[2], 0, 0)
end
return 1
"""


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
        self._report = client.register_script(_REPORT)
        self._mode: tuple[float, PollMode] | None = None
        self._rate: tuple[float, float | None] | None = None

    # --- wake-ups ---------------------------------------------------------------------
    def wake(self) -> None:
        """Tell the dispatcher there is work to look at now (coalesced: one entry at most)."""
        self.report(0, wake=True)

    def report(self, requests: int, rate_429: int = 0, conc_429: int = 0,
               wake: bool = False, metered: Metered = ({}, {})) -> None:
        """Add this process's recent PiAPI requests and 429s to the fleet's counters (and
        `metered`, a `RequestMeter.drain()`, to the totals /metrics shows), and wake the
        dispatcher when `wake`. Best effort: losing one only delays a decision."""
        counts, latency = metered
        if not (requests or rate_429 or conc_429 or wake or counts):
            return
        key = f"{STATS_PREFIX}{int(self.clock())}"
        args: list[str | int] = [requests, rate_429, conc_429, int(wake), STATS_TTL_S,
                                 len(counts)]
        for pairs in (counts, latency):
            for name, n in pairs.items():
                args += (name, n)
        try:
            self._report(keys=[key, WAKE_KEY, CONC_429_KEY, REQUESTS_KEY, LATENCY_KEY,
                               LIMITED_KEY], args=args)
        except redis.RedisError as exc:
            logger.debug("could not report to the fleet: %s", exc)

    def wait(self, timeout_s: float) -> bool:
        """Block until woken or `timeout_s` passes; True when woken.

        Redis checks blocking timeouts only about ten times a second, so a short wait is a
        plain sleep (a wake-up arriving meanwhile is found right after it)."""
        if timeout_s <= 0:
            return False
        if timeout_s < SHORT_WAIT_S:
            time.sleep(timeout_s)
            return bool(self.redis.delete(WAKE_KEY))
        got = self.redis.blpop([WAKE_KEY], timeout=timeout_s)
        if got:
            self.redis.delete(WAKE_KEY)
        return bool(got)

    # --- counters ---------------------------------------------------------------------
    def window(self, seconds: int) -> Window:
        """Fleet-wide counts over the last `seconds` whole seconds."""
        now = int(self.clock())
        totals = [0, 0, 0]
        for sec in range(now - seconds, now):
            values = self.redis.hmget(f"{STATS_PREFIX}{sec}", ["req", "r429", "c429"])
            for i, v in enumerate(values):
                totals[i] += int(v or 0)
        return Window(seconds, totals[0], totals[1], totals[2])

    def request_totals(self) -> RequestTotals:
        """The fleet's PiAPI requests by endpoint and status, latency buckets and 429s by
        scope, since this Redis started (read in one MULTI: a message's report changes the
        three together)."""
        pipe = self.redis.pipeline(transaction=True)
        for name in (REQUESTS_KEY, LATENCY_KEY, LIMITED_KEY):
            pipe.hgetall(name)
        decoded = [{k.decode(): int(v) for k, v in found.items()} for found in pipe.execute()]
        return RequestTotals.parse(*decoded)

    def concurrency_refusals(self) -> int:
        """How many creates PiAPI has refused for too many tasks in flight, ever."""
        raw = self.redis.get(CONC_429_KEY)
        return int(raw) if raw else 0

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

    # --- batches claimed by runs ----------------------------------------------------------
    def claim(self, batch_ids: list[str], ttl_s: float = CLAIM_TTL_S) -> None:
        """Claim (or renew the claim on) these batches for `ttl_s` seconds."""
        if batch_ids:
            until = f"{self.clock() + ttl_s:.3f}"
            self.redis.hset(RUNS_KEY, mapping=dict.fromkeys(batch_ids, until))

    def release(self, batch_ids: list[str]) -> None:
        """Drop these claims (the run that made them is ending). Best effort."""
        if not batch_ids:
            return
        try:
            self.redis.hdel(RUNS_KEY, *batch_ids)
        except redis.RedisError as exc:
            logger.debug("could not release claims: %s", exc)

    def claimed(self) -> set[str]:
        """Batches some `run` claims now. Lapsed claims are left in place (deleting them
        here could race a renewal); `release` removes the claims of a run that ends."""
        now = self.clock()
        return {key.decode() if isinstance(key, bytes) else str(key)
                for key, value in self.redis.hgetall(RUNS_KEY).items() if float(value) >= now}

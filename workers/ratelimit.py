"""One request budget for the whole fleet: a token bucket in Redis, shared by every process."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis

logger = logging.getLogger(__name__)

# Both scripts start the same way: ARGV[1] rate, ARGV[2] burst, ARGV[3] tokens wanted;
# the bucket {tokens, ts} in KEYS[1] is refilled for the time since it was last touched.
_REFILL = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
tokens = math.min(burst, tokens + (now - ts) * rate)
"""

# ARGV[1]: refill rate (tokens per second); ARGV[2]: burst (bucket size);
# ARGV[3]: tokens wanted; ARGV[4]: the longest wait (s) a caller accepts to reserve.
# Returns 0 when the tokens are granted now, a positive wait in ms when they are reserved
# for that moment (the caller sleeps and goes), or a negative number -ms when the wait would
# be too long: nothing is reserved and the caller asks again after that long.
# Time comes from the Redis server, so every machine shares one clock.
_TAKE = _REFILL + """
local max_wait = tonumber(ARGV[4])
local after = tokens - want
local wait = 0
if after < 0 then
  wait = -after / rate
  if wait > max_wait then
    redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', now)
    redis.call('EXPIRE', KEYS[1], 3600)
    return -math.ceil(wait * 1000)
  end
end
redis.call('HSET', KEYS[1], 'tokens', after, 'ts', now)
redis.call('EXPIRE', KEYS[1], 3600)
return math.ceil(wait * 1000)
"""

MAX_RESERVE_S = 2.0
"""A caller reserves a future token only this far ahead; beyond it, it waits and asks again."""


class TokenBucket:
    """A Redis token bucket; `acquire()` blocks until a token is ours.

    The rate is given per call, so one bucket follows a rate that changes (AIMD) without
    losing what it has accumulated. It holds a quarter of a second of the rate: a token is
    taken a little before its request leaves (a create's by the dispatcher, before its
    message; a reservation, before its wait), and on a loaded machine those delays vary by
    half a second and more, bunching requests that left the bucket evenly. With half a
    second of burst, a test run at a correct PIAPI_RPM on a machine with three busy loops
    per core met 1-2 of PiAPI's 429s (a one-second bucket) in each of 6 runs; with a
    quarter, none in 6.
    """

    def __init__(
        self,
        client: redis.Redis,
        key: str,
        rate_per_s: float,
        burst_s: float = 0.25,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive")
        self.key = key
        self.rate_per_s = rate_per_s
        self.burst_s = burst_s
        self._script = client.register_script(_TAKE)
        self._sleep = sleep

    def burst(self, rate_per_s: float) -> float:
        """Bucket size at this rate: `burst_s` seconds of it, at least one token."""
        return max(1.0, rate_per_s * self.burst_s)

    def try_acquire(self, tokens: float = 1.0, max_wait_s: float = MAX_RESERVE_S,
                    rate_per_s: float | None = None) -> float:
        """Reserve `tokens`; the wait (s, >= 0) before using them, or -wait when refused."""
        rate = rate_per_s or self.rate_per_s
        ms = int(self._script(keys=[self.key],
                              args=[rate, self.burst(rate), tokens, max_wait_s]))
        return ms / 1000.0

    def acquire(self, tokens: float = 1.0, timeout_s: float = 600.0,
                rate_per_s: float | None = None) -> None:
        """Block until `tokens` are granted; raises TimeoutError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            wait = self.try_acquire(tokens, rate_per_s=rate_per_s)
            if wait >= 0:
                if wait > 0:
                    self._sleep(wait)
                return
            if time.monotonic() - wait > deadline:
                raise TimeoutError(f"no request budget within {timeout_s}s")
            self._sleep(min(-wait, MAX_RESERVE_S))


# KEYS[1]: the bucket hash {tokens, ts}; ARGV: rate, burst, tokens wanted (or, when
# negative, given back). Grants what is there now, never reserving ahead; returns how many
# whole tokens were granted (0 when given back).
_TAKE_NOW = _REFILL + """
local granted = 0
if want < 0 then
  tokens = math.min(burst, tokens - want)
else
  granted = math.max(0, math.min(want, math.floor(tokens)))
  tokens = tokens - granted
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', now)
redis.call('EXPIRE', KEYS[1], 3600)
return granted
"""


SAFETY = 0.97
"""The bucket grants 97% of the configured rate: network jitter can bunch requests on
their way to PiAPI, and a configured limit must never produce a 429 of our own making."""


class Budget:
    """The fleet's request budget: the configured rpm, lowered by AIMD after 429s.

    Workers `spend` one token per request, waiting for it; the dispatcher takes tokens for
    the creates it sends (`take_now`), so a worker never waits for one while it holds a
    create's lease, and creates never leave faster than the budget.
    """

    def __init__(self, client: redis.Redis, key: str, rpm: int,
                 override: Callable[[], float | None] | None = None) -> None:
        self.configured = rpm / 60.0 * SAFETY if rpm > 0 else None
        self.override = override
        self.bucket = TokenBucket(client, key, rate_per_s=self.configured or 1.0)
        self._take_now = client.register_script(_TAKE_NOW)

    def rate(self) -> float | None:
        """Requests per second allowed right now (None: no limit)."""
        lowered = self.override() if self.override else None
        rates = [r for r in (self.configured, lowered) if r]
        return min(rates) if rates else None

    def spend(self, _kind: str = "") -> None:
        """Wait for one token (returns at once when there is no limit)."""
        rate = self.rate()
        if rate is not None:
            self.bucket.acquire(rate_per_s=rate)

    def take_now(self, wanted: int) -> int:
        """Up to `wanted` tokens that are there now (all of them when there is no limit)."""
        rate = self.rate()
        if rate is None or wanted <= 0:
            return max(wanted, 0)
        return int(self._take_now(keys=[self.bucket.key],
                                  args=[rate, self.bucket.burst(rate), wanted]))

    def give_back(self, unused: int) -> None:
        """Return tokens taken with `take_now` and not used."""
        rate = self.rate()
        if rate is not None and unused > 0:
            self._take_now(keys=[self.bucket.key], args=[rate, self.bucket.burst(rate), -unused])

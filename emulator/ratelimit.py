"""A token bucket over all authenticated API requests, sized from the rpm settings."""

from __future__ import annotations

from emulator.clock import Clock
from emulator.config import EmulatorConfig


class TokenBucket:
    """`rate_per_s` tokens a second, holding at most `burst`; starts full."""

    def __init__(self, rate_per_s: float, burst: float, now: float) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.tokens = burst
        self.last = now

    def take(self, now: float) -> float:
        """Take a token: 0.0 when granted, else the seconds until one will be available."""
        if now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate_per_s)
            self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate_per_s


class RateLimiter:
    """The account's request budget: rpm/60 a second, burst max(1, rpm/60 x rpm_burst_s)."""

    def __init__(self, config: EmulatorConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self._key: tuple[float, float] | None = None
        self._bucket: TokenBucket | None = None

    def reset(self) -> None:
        """Forget the bucket (it refills from full)."""
        self._key = None
        self._bucket = None

    def check(self) -> float:
        """0.0 if this request may proceed, else seconds until it could (rpm 0 = no limit)."""
        rpm, burst_s = self.config.rpm, self.config.rpm_burst_s
        if rpm <= 0:
            return 0.0
        now = self.clock.now()
        if self._bucket is None or self._key != (rpm, burst_s):
            rate = rpm / 60.0
            self._bucket = TokenBucket(rate, max(1.0, rate * burst_s), now)
            self._key = (rpm, burst_s)
        return self._bucket.take(now)

"""The token bucket behind --rpm."""

from __future__ import annotations

import pytest

from emulator.clock import FakeClock
from emulator.config import EmulatorConfig
from emulator.ratelimit import RateLimiter, TokenBucket


def test_bucket_grants_burst_then_reports_wait() -> None:
    bucket = TokenBucket(rate_per_s=2.0, burst=3.0, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.25) == pytest.approx(0.25)
    assert bucket.take(0.5) == 0.0


def test_bucket_never_holds_more_than_burst() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=2.0, now=0.0)
    granted = [bucket.take(1000.0) for _ in range(3)]
    assert granted[:2] == [0.0, 0.0]
    assert granted[2] == pytest.approx(1.0)


def test_limiter_off_when_rpm_zero() -> None:
    limiter = RateLimiter(EmulatorConfig(), FakeClock())
    assert all(limiter.check() == 0.0 for _ in range(1000))


def test_limiter_burst_is_at_least_one_and_follows_config_changes() -> None:
    config = EmulatorConfig(rpm=6.0)  # 0.1/s, burst max(1, 0.1) = 1
    clock = FakeClock()
    limiter = RateLimiter(config, clock)
    assert limiter.check() == 0.0
    assert limiter.check() == pytest.approx(10.0)
    config.rpm = 600.0  # 10/s, burst 10: a fresh, full bucket
    assert [limiter.check() for _ in range(10)] == [0.0] * 10
    assert limiter.check() == pytest.approx(0.1)

"""AIMD: backs off on 429s to just under what PiAPI accepted, holds, then recovers."""

from __future__ import annotations

import pytest

from workers.aimd import (
    CONC_INCREASE_EVERY_S,
    HOLD_S,
    INCREASE_EVERY_S,
    MIN_RATE_429,
    WINDOW_S,
    Aimd,
)


def test_steady_traffic_changes_nothing() -> None:
    aimd = Aimd(rate_ceiling=10.0, concurrency=20, now=0.0)
    for t in range(1, 120):
        limits = aimd.observe(float(t), requests=95, rate_429=0)
    assert limits.rate_per_s == 10.0 and limits.concurrency == 20


def test_rate_backs_off_to_just_under_what_was_accepted_then_recovers() -> None:
    # Configured 20/s, but PiAPI accepts only 10/s: half the requests of a window are 429s.
    aimd = Aimd(rate_ceiling=20.0, concurrency=20, now=0.0)
    limits = aimd.observe(10.0, requests=200, rate_429=100)
    assert limits.rate_per_s == pytest.approx(9.0)  # 0.9 x accepted (100 / 10 s)
    # While held, increases stop just under the level that failed.
    t = 10.0
    while t < 10.0 + HOLD_S - INCREASE_EVERY_S:
        t += INCREASE_EVERY_S
        limits = aimd.observe(t, requests=90, rate_429=0)
        assert limits.rate_per_s is not None and limits.rate_per_s <= 9.5 + 1e-9
    # After the hold, additive increase back to the configured ceiling.
    for _ in range(100):
        t += INCREASE_EVERY_S
        limits = aimd.observe(t, requests=90, rate_429=0)
    assert limits.rate_per_s == 20.0


def test_a_few_spurious_429s_do_not_throttle() -> None:
    aimd = Aimd(rate_ceiling=None, concurrency=20, now=0.0)
    limits = aimd.observe(10.0, requests=1000, rate_429=50)  # 5%
    assert limits.rate_per_s is None
    limits = aimd.observe(11.0, requests=10, rate_429=MIN_RATE_429 - 1)
    assert limits.rate_per_s is None


def test_without_a_configured_rate_a_limit_is_learned_and_later_lifted() -> None:
    aimd = Aimd(rate_ceiling=None, concurrency=20, now=0.0)
    limits = aimd.observe(10.0, requests=600, rate_429=300)
    assert limits.rate_per_s == pytest.approx(27.0)
    t = 10.0
    for _ in range(int(HOLD_S / INCREASE_EVERY_S) + 2):
        t += INCREASE_EVERY_S
        limits = aimd.observe(t, requests=270, rate_429=0)
    assert limits.rate_per_s is None


def test_one_decrease_per_window() -> None:
    aimd = Aimd(rate_ceiling=20.0, concurrency=20, now=0.0)
    first = aimd.observe(10.0, requests=200, rate_429=100).rate_per_s
    again = aimd.observe(10.0 + WINDOW_S / 2, requests=200, rate_429=100).rate_per_s
    assert first == again and aimd.rate_decreases == 1


def test_concurrency_settles_just_under_where_piapi_refused() -> None:
    aimd = Aimd(rate_ceiling=None, concurrency=20, now=0.0)
    # PiAPI refused while 8 of ours ran: 8 is what it accepts.
    limits = aimd.concurrency_refused(10.0, running=8)
    assert limits.concurrency == 8
    assert aimd.concurrency_refused(10.5, running=7).concurrency == 8  # same episode
    t = 10.0
    while t < 10.0 + HOLD_S - CONC_INCREASE_EVERY_S:
        t += CONC_INCREASE_EVERY_S
        assert aimd.observe(t, 100, 0).concurrency == 8  # held there
    for _ in range(30):
        t += CONC_INCREASE_EVERY_S
        limits = aimd.observe(t, 100, 0)
    assert limits.concurrency == 20


def test_ceiling_change_applies() -> None:
    aimd = Aimd(rate_ceiling=None, concurrency=20, now=0.0)
    aimd.set_concurrency_ceiling(10, 1.0)
    assert aimd.limits.concurrency == 10


def test_429s_while_asking_little_step_down_instead_of_collapsing() -> None:
    # 429s at 8 requests/s against a 20/s budget are bursts, not the rate: a step down only.
    aimd = Aimd(rate_ceiling=20.0, concurrency=20, now=0.0)
    limits = aimd.observe(10.0, requests=80, rate_429=12)
    assert limits.rate_per_s == pytest.approx(14.0)


@pytest.mark.parametrize(("requests", "rate_429"), [(10, 3), (58, 6), (43, 7)])
def test_a_quiet_window_with_a_few_429s_is_not_a_limit(requests: int, rate_429: int) -> None:
    # Seen in the chaos run right after start-up, a Redis restart and a dispatcher
    # takeover (5% spurious 429s): a large share of few requests, but no limit.
    aimd = Aimd(rate_ceiling=None, concurrency=50, now=0.0)
    assert aimd.observe(10.0, requests=requests, rate_429=rate_429).rate_per_s is None

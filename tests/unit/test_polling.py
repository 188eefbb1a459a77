"""The poll schedule: learned quantiles, a bounded back-off, and the prior before learning."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.polling import (
    MAX_INTERVAL_S,
    MIN_GAP_S,
    MIN_SAMPLES,
    PRIOR_FIRST_MAX_S,
    PRIOR_MAX_INTERVAL_S,
    Durations,
    PollMode,
    expected_gets,
    learned_ages,
    next_poll_age,
    prior_delay_s,
)

# GETs per task each mode may cost on the distribution it learned from, at most.
BOUND = {PollMode.EAGER: 7.0, PollMode.LAZY: 3.0, PollMode.WEBHOOK: 1.0}


def uniform(lo: float, hi: float, n: int = 500, seed: int = 1) -> Durations:
    rng = random.Random(seed)
    return Durations.of([rng.uniform(lo, hi) for _ in range(n)])


def test_quantiles_by_nearest_rank() -> None:
    d = Durations.of([5, 1, 3, 2, 4])
    assert [d.quantile(q) for q in (0.0, 0.2, 0.5, 0.99, 1.0)] == [1, 1, 3, 5, 5]
    assert d.fraction_done_by(3) == 0.6


def test_not_learned_below_min_samples() -> None:
    assert not Durations.of([1.0] * (MIN_SAMPLES - 1)).learned
    assert Durations.of([1.0] * MIN_SAMPLES).learned


def test_prior_schedule_starts_early_and_backs_off_within_bounds() -> None:
    delays = [prior_delay_s(n, prior_s=180) for n in range(40)]
    assert delays[0] == PRIOR_FIRST_MAX_S
    assert delays == sorted(delays)
    assert max(delays) == PRIOR_MAX_INTERVAL_S
    assert prior_delay_s(0, prior_s=0.0) >= MIN_GAP_S


def test_unlearned_kind_uses_the_prior() -> None:
    # Three samples of 0.4 s are too few to learn from: a kind whose prior is 30 s is first
    # looked at after 1 s (5% of it, at most 1 s), then 1.5x further apart each time; in
    # webhook mode, once past the prior's tail (x1.5).
    few = Durations.of([0.4] * 3)
    ages = [0.0]
    for polls in range(4):
        ages.append(next_poll_age(ages[-1], polls, few, 30.0, PollMode.LAZY))
    assert ages[1:] == pytest.approx([1.0, 2.5, 4.75, 8.125])
    assert next_poll_age(0.0, 0, few, 30.0, PollMode.WEBHOOK) == pytest.approx(45.0)


@pytest.mark.parametrize("mode", list(PollMode))
def test_captions_cost_few_gets(mode: PollMode) -> None:
    d = uniform(0.2, 0.6)
    assert expected_gets(d, mode) <= BOUND[mode]


def test_lazy_polls_land_near_the_end() -> None:
    d = uniform(120, 480)
    ages = learned_ages(d, PollMode.LAZY)
    assert ages[0] >= d.quantile(0.85)
    assert expected_gets(d, PollMode.LAZY) <= 1.5


def test_webhook_mode_is_only_a_safety_net() -> None:
    d = uniform(120, 480)
    assert learned_ages(d, PollMode.WEBHOOK) == [pytest.approx(d.quantile(1.0) * 1.5)]


@settings(max_examples=200, deadline=None)
@given(
    samples=st.lists(st.floats(0.01, 10_000, allow_nan=False), min_size=MIN_SAMPLES,
                     max_size=300),
    mode=st.sampled_from(list(PollMode)),
)
def test_learned_schedule_stays_within_its_bound(samples: list[float], mode: PollMode) -> None:
    d = Durations.of(samples)
    ages = learned_ages(d, mode)
    assert ages == sorted(ages) and len(ages) <= 7
    assert expected_gets(d, mode) <= BOUND[mode] + 1e-9
    # Every next poll is later than now, and never further than the back-off cap past the tail.
    age, polls = 0.0, 0
    for _ in range(40):
        nxt = next_poll_age(age, polls, d, 60.0, mode)
        assert nxt > age
        assert nxt - age <= max(MAX_INTERVAL_S, ages[-1]) + 1e-9
        age, polls = nxt, polls + 1


@given(st.integers(0, 200), st.floats(0, 1e6, allow_nan=False))
def test_prior_delay_bounded(polls: int, prior: float) -> None:
    assert MIN_GAP_S <= prior_delay_s(polls, prior) <= PRIOR_MAX_INTERVAL_S

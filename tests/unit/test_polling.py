"""The poll schedule: learned quantiles, a bounded back-off, and the prior before learning."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.polling import (
    EAGER_GAP,
    MAX_EAGER_AGES,
    MAX_INTERVAL_S,
    MIN_GAP_S,
    MIN_SAMPLES,
    MIN_STEP_S,
    PRIOR_FIRST_MAX_S,
    PRIOR_MAX_INTERVAL_S,
    Durations,
    PollMode,
    eager_grid,
    expected_gets,
    learned_ages,
    next_poll_age,
    per_unit_s,
    prior_delay_s,
    stuck_after_s,
    work_units,
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
    # looked at after 0.25 s (5% of it, at most 0.25 s), then 1.5x further apart each time;
    # in webhook mode, once past the prior's tail (x1.5).
    few = Durations.of([0.4] * 3)
    ages = [0.0]
    for polls in range(4):
        ages.append(next_poll_age(ages[-1], polls, few, 30.0, PollMode.LAZY))
    assert ages[1:] == pytest.approx([0.25, 0.625, 1.1875, 2.03125])
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


# A kind learned per unit of work (seconds per 5 s clip), scaled by each row's factor.
PER_UNIT = uniform(60, 240)


@pytest.mark.parametrize("mode", list(PollMode))
@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0, 3.0])
def test_a_rows_learned_schedule_is_its_kinds_times_its_factor(mode: PollMode,
                                                                scale: float) -> None:
    # A 10 s clip (factor 2) is first looked at twice as late as a 5 s one, and so on.
    assert learned_ages(PER_UNIT, mode, scale) == pytest.approx(
        [age * scale for age in learned_ages(PER_UNIT, mode)])
    assert next_poll_age(0.0, 0, PER_UNIT, 180.0, mode, scale) == pytest.approx(
        next_poll_age(0.0, 0, PER_UNIT, 180.0, mode) * scale)


@pytest.mark.parametrize(("mode", "scale", "first_s"), [
    (PollMode.WEBHOOK, 1.0, 45.0),  # the prior's tail, x1.5
    (PollMode.WEBHOOK, 2.0, 90.0),
    (PollMode.EAGER, 1.0, 0.25),  # 5% of the prior, at most 0.25 s: the same for any factor
    (PollMode.EAGER, 0.1, 0.15),  # 5% of a 3 s row
])
def test_a_rows_prior_schedule_is_its_kinds_times_its_factor(mode: PollMode, scale: float,
                                                             first_s: float) -> None:
    assert next_poll_age(0.0, 0, None, 30.0, mode, scale) == pytest.approx(first_s)


@pytest.mark.parametrize(("d", "prior_s", "scale", "limit_s"), [
    (PER_UNIT, 180.0, 1.0, PER_UNIT.quantile(1.0) * 4),  # 4x the longest per unit
    (PER_UNIT, 180.0, 2.0, PER_UNIT.quantile(1.0) * 8),  # ...of a row twice the work
    (PER_UNIT, 180.0, 0.5, PER_UNIT.quantile(1.0) * 2),
    (None, 180.0, 1.0, 1800.0),  # 10x the prior
    (None, 180.0, 3.0, 5400.0),
    (None, 180.0, 0.0, 1800.0),  # a factor not to believe counts as 1
    (None, 180.0, math.nan, 1800.0),
])
def test_the_stuck_limit_scales_with_the_row_like_its_schedule(
        d: Durations | None, prior_s: float, scale: float, limit_s: float) -> None:
    assert stuck_after_s(d, prior_s, scale) == pytest.approx(limit_s)


def test_a_normal_long_row_is_never_stuck_and_its_polls_come_before_the_limit() -> None:
    # Per-unit samples of 5 s and 10 s clips: a 10 s clip as long as its longest sibling
    # is far from its limit, and every poll of it lands before the limit.
    limit = stuck_after_s(PER_UNIT, 180.0, 2.0)
    assert PER_UNIT.quantile(1.0) * 2 * 2 < limit
    assert all(age < limit for age in learned_ages(PER_UNIT, PollMode.WEBHOOK, 2.0))


@pytest.mark.parametrize(("duration_s", "factor", "sample_s"), [
    (200.0, 2.0, 100.0),  # a 10 s clip that took 200 s: 100 s per unit
    (100.0, 1.0, 100.0),
    (30.0, 0.5, 60.0),  # Midjourney turbo
    (100.0, 0.0, 100.0),  # a factor not to believe: the duration as it is
    (100.0, -2.0, 100.0),
    (100.0, math.inf, 100.0),
])
def test_samples_are_recorded_per_unit_of_work(duration_s: float, factor: float,
                                               sample_s: float) -> None:
    assert per_unit_s(duration_s, factor) == pytest.approx(sample_s)
    assert per_unit_s(duration_s, factor) * work_units(factor) == pytest.approx(duration_s)


def test_the_eager_grid_trades_gets_for_slot_time() -> None:
    # Captions of 0.15-0.45 s: polls a gap x the median apart, from one step past the
    # shortest to past the longest; a smaller gap finds ended tasks sooner for more GETs.
    d = uniform(0.15, 0.45)
    curve = []
    for gap in (0.3, EAGER_GAP, 0.1, 0.05):
        ages = learned_ages(d, PollMode.EAGER, gap=gap)
        steps = [b - a for a, b in itertools.pairwise(ages)]
        assert d.quantile(0.0) < ages[0] <= d.quantile(0.0) + gap * d.quantile(0.5) + 1e-9
        assert ages[-1] >= d.quantile(1.0) and max(steps) <= gap * d.quantile(0.5) + 1e-9
        curve.append(expected_gets(d, PollMode.EAGER, gap=gap))
    assert curve == sorted(curve) and curve[0] < 2.5 < curve[1] < 3.5 < curve[2]
    # The other modes keep their few quantile polls whatever the gap.
    assert learned_ages(d, PollMode.LAZY, gap=0.1) == learned_ages(d, PollMode.LAZY)


@settings(max_examples=200, deadline=None)
@given(samples=st.lists(st.floats(0.01, 10_000, allow_nan=False), min_size=MIN_SAMPLES,
                        max_size=300),
       gap=st.floats(0.01, 1.0), scale=st.floats(0.1, 10.0))
def test_the_eager_grid_is_bounded(samples: list[float], gap: float, scale: float) -> None:
    d = Durations.of(samples)
    ages = eager_grid(d, scale, gap)
    assert ages == sorted(ages) and len(ages) <= MAX_EAGER_AGES + 1
    assert ages[0] >= MIN_STEP_S and ages[-1] >= d.quantile(1.0) * scale * (1 - 1e-9)
    age, polls = 0.0, 0
    for _ in range(40):  # every next poll is later, and the back-off takes over at the end
        nxt = next_poll_age(age, polls, d, 60.0, PollMode.EAGER, scale, gap)
        assert nxt > age
        age, polls = nxt, polls + 1

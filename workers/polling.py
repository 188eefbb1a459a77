"""When to poll a running task: learned from how long tasks of its kind take.

A task's duration distribution (per model and task type, from completed tasks) gives the
poll ages: the first GET lands where completion becomes likely, later ones at higher
quantiles, and past the longest duration seen a bounded geometric back-off takes over.
So a task costs a small, bounded number of GETs whatever its length. Before anything is
learned, a prior schedule starts early and backs off, as PiAPI's own CLI does.

Durations are learned per unit of work: each sample is the task's duration divided by
its row's input factor (`workers.expected.input_factor`: a 10 s clip is 2 units of a 5 s
one), and a row's schedule and stuck limit are the per-unit ones times its own factor
(`scale`). So a batch mixing 5 s and 10 s clips of one kind polls each at its own length
instead of both at the mix's.

How eager the schedule is depends on what else tells us a task ended:
- `EAGER`: nothing else does; polls decide when a slot is refilled, so they come often.
- `LAZY`: the account's active-task count refills slots; polls only collect results.
- `WEBHOOK`: PiAPI calls us when a task ends; polls are only a safety net for lost calls.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum


class PollMode(StrEnum):
    """What, besides polls, tells the fleet that a task ended."""

    EAGER = "eager"
    LAZY = "lazy"
    WEBHOOK = "webhook"


QUANTILES: dict[PollMode, tuple[float, ...]] = {
    PollMode.EAGER: (0.25, 0.5, 0.7, 0.85, 0.95, 0.99, 1.0),
    PollMode.LAZY: (0.9, 0.99, 1.0),
    PollMode.WEBHOOK: (1.0,),
}
"""Quantiles of the learned duration at which polls land, in order."""
TAIL_SLACK = {PollMode.EAGER: 1.02, PollMode.LAZY: 1.05, PollMode.WEBHOOK: 1.5}
"""The last quantile poll lands this much after the longest duration seen."""
MIN_SAMPLES = 20
"""Below this many completed tasks, the prior schedule is used."""
MIN_GAP_S = 0.05
"""Two polls of one task are never closer than this."""
BACKOFF_GROWTH = 1.5
MAX_INTERVAL_S = 60.0
"""Past the learned tail, polls back off geometrically up to this interval."""
PRIOR_FIRST_FRACTION = 0.05
PRIOR_FIRST_MAX_S = 0.25
"""Prior schedule: first GET at 5% of the prior duration, at most 0.25 s after the create
(a kind's first tasks may be far shorter than its prior: captions at a benchmark's time
scale; it costs the first wave of a long kind a few more GETs, until it is learned)..."""
PRIOR_MAX_INTERVAL_S = 30.0
"""...then x1.5 per poll, at most 30 s apart."""


@dataclass(frozen=True)
class Durations:
    """Sorted recent durations (seconds from create to end) of one kind of task."""

    samples: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> Durations:
        """From unsorted values; non-finite and negative ones are dropped."""
        return cls(tuple(sorted(v for v in values if math.isfinite(v) and v >= 0)))

    @property
    def learned(self) -> bool:
        """True once there are enough samples to trust the quantiles."""
        return len(self.samples) >= MIN_SAMPLES

    def quantile(self, q: float) -> float:
        """The q-quantile (0..1), by the nearest-rank method."""
        if not self.samples:
            raise ValueError("no samples")
        rank = min(len(self.samples) - 1, max(0, math.ceil(q * len(self.samples)) - 1))
        return self.samples[rank]

    def mean(self) -> float:
        """The mean duration (0 without samples)."""
        return sum(self.samples) / len(self.samples) if self.samples else 0.0

    def fraction_done_by(self, age_s: float) -> float:
        """The share of tasks that had ended by this age."""
        return bisect.bisect_right(self.samples, age_s) / len(self.samples) if self.samples else 0


EAGER_GAP = 0.2
"""The eager schedule's default spacing, a fraction of the kind's median duration (see
`eager_grid`; `PIAPI_BULK_POLL_GAP` sets it, 0 = the quantiles of `QUANTILES`)."""
MIN_STEP_S = 0.01
MAX_EAGER_AGES = 24
"""The eager grid's polls are at least this far apart, and this many at most."""


def eager_grid(d: Durations, scale: float, gap: float) -> list[float]:
    """EAGER poll ages on an even grid, `gap` x the median apart: from one step past the
    shortest duration learned to just past the longest. Where polls alone tell that a task
    ended, a task that ends waits on average half a step for the GET that sees it, so `gap`
    trades GETs for slot time: about (mean - shortest) / step + 1/2 GETs a task, and a slot
    held idle half a step (gap 0.2 on tasks of 0.15-0.45 s: a step of 60 ms or a little
    less, so the last poll lands just past the longest; about 3 GETs, 30 ms)."""
    lo = d.quantile(0.0) * scale
    hi = d.quantile(1.0) * scale * TAIL_SLACK[PollMode.EAGER]
    step = max(MIN_STEP_S, gap * d.quantile(0.5) * scale, (hi - lo) / MAX_EAGER_AGES)
    n = max(1, math.ceil((hi - lo) / step - 1e-9))
    step = (hi - lo) / n  # (evenly, the last one at `hi`)
    return [max(lo + k * step, MIN_STEP_S) for k in range(1, n + 1)]


def learned_ages(d: Durations, mode: PollMode, scale: float = 1.0,
                 gap: float = 0.0) -> list[float]:
    """The poll ages (s after the create) given by the learned quantiles, for a row of
    `scale` units of work (the samples are per unit); EAGER with a `gap`: `eager_grid`."""
    if mode is PollMode.EAGER and gap > 0:
        return eager_grid(d, scale, gap)
    ages: list[float] = []
    quantiles = QUANTILES[mode]
    for q in quantiles:
        age = d.quantile(q) * scale
        if q == quantiles[-1]:
            age *= TAIL_SLACK[mode]
        if ages and age < ages[-1] + MIN_GAP_S:
            continue
        ages.append(max(age, MIN_GAP_S))
    return ages


def next_poll_age(age_s: float, polls: int, d: Durations | None, prior_s: float,
                  mode: PollMode, scale: float = 1.0, gap: float = 0.0) -> float:
    """The age (s since the create) of the next GET, for a task of age `age_s` that has
    been seen running `polls` times, whose row is `scale` units of work (`d` and `prior_s`
    are per unit; `gap`: `eager_grid`'s). Always later than `age_s`."""
    scale = work_units(scale)
    prior_s *= scale
    if d is None or not d.learned:
        if mode is PollMode.WEBHOOK:  # a safety net only: late, then backing off
            return max(age_s + MIN_GAP_S, prior_s * TAIL_SLACK[mode]) if polls == 0 \
                else age_s + prior_delay_s(polls + 8, prior_s)
        return age_s + prior_delay_s(polls, prior_s)
    ages = learned_ages(d, mode, scale, gap)
    near = (min(MIN_GAP_S, ages[1] - ages[0]) if len(ages) > 1 else MIN_GAP_S) / 2
    for age in ages:
        if age > age_s + near:
            return age
    # Past every quantile: bounded geometric back-off from the learned tail.
    tail = ages[-1]
    step = max(MIN_GAP_S, tail * 0.25) * BACKOFF_GROWTH ** max(0, polls - len(ages))
    return age_s + min(MAX_INTERVAL_S, max(step, MIN_GAP_S))


def prior_delay_s(polls: int, prior_s: float) -> float:
    """Wait before GET number `polls + 1` while nothing is learned."""
    first = min(PRIOR_FIRST_MAX_S, max(MIN_GAP_S, prior_s * PRIOR_FIRST_FRACTION))
    return min(PRIOR_MAX_INTERVAL_S, first * BACKOFF_GROWTH ** min(polls, 64))


def expected_gets(d: Durations, mode: PollMode, horizon_polls: int = 64,
                  gap: float = 0.0) -> float:
    """Mean GETs per task this schedule costs on the distribution `d` itself."""
    total = 0.0
    for duration in d.samples:
        age, polls = 0.0, 0
        while polls < horizon_polls:
            age = next_poll_age(age, polls, d, 0.0, mode, gap=gap)
            polls += 1
            if age >= duration:
                break
        total += polls
    return total / len(d.samples) if d.samples else 0.0


STUCK_TAIL_FACTOR = 4.0
"""A task running this many times longer than the longest one learned is stuck..."""
STUCK_PRIOR_FACTOR = 10.0
"""...or, before anything is learned, this many times its prior duration."""


def stuck_after_s(d: Durations | None, prior_s: float, scale: float = 1.0) -> float:
    """Age (s since the create) past which a task that has not ended counts as stuck, for
    a row of `scale` units of work (`d` and `prior_s` are per unit, as for the schedule: a
    10 s clip may run four times the longest 10 s clip, not four times the longest 5 s)."""
    if d is not None and d.learned:
        return d.quantile(1.0) * STUCK_TAIL_FACTOR * work_units(scale)
    return prior_s * STUCK_PRIOR_FACTOR * work_units(scale)


def work_units(factor: float) -> float:
    """A row's input factor as the scale of its schedule: 1 for a factor that is not a
    positive finite number (nothing to believe)."""
    return factor if math.isfinite(factor) and factor > 0 else 1.0


def per_unit_s(duration_s: float, factor: float) -> float:
    """A completed task's duration as a sample of its kind: seconds per unit of work."""
    return duration_s / work_units(factor)

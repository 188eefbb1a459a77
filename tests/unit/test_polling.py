"""The poll schedule: first poll soon, then a bounded geometric back-off."""

from __future__ import annotations

import itertools

from workers.polling import FIRST_POLL_S, MAX_INTERVAL_S, next_poll_delay_s


def test_first_poll() -> None:
    assert next_poll_delay_s(0) == FIRST_POLL_S


def test_grows_and_caps() -> None:
    delays = [next_poll_delay_s(n) for n in range(100)]
    assert all(a <= b for a, b in itertools.pairwise(delays))
    assert max(delays) == MAX_INTERVAL_S


def test_gets_for_a_long_task_are_bounded() -> None:
    # A 3-minute video costs a bounded number of GETs with this schedule.
    elapsed, polls = 0.0, 0
    while elapsed < 180:
        elapsed += next_poll_delay_s(polls)
        polls += 1
    assert polls <= 16

"""The progress line and the end-of-run summary: pace, ETA, in flight within the limit."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.live import RateMeter, describe, in_flight, projected_usd, summary_lines
from scheduler.status import BatchStatus, duration


def status(**counts: int) -> BatchStatus:
    total = sum(counts.values())
    return BatchStatus(id="b1", source="m.jsonl", total=total, counts=dict(counts),
                       consumed_units=counts.get("completed", 0) * 100_000)  # $0.01 a row


@pytest.mark.parametrize(("rows", "limit", "shown"), [
    (dict(running=18), 10, "in flight 10/10 (+8 ending)"),
    (dict(running=4, submitting=2), 10, "in flight 6/10"),
    (dict(running=10), 10, "in flight 10/10"),
    (dict(running=3), None, "in flight 3"),
    ({}, 5, "in flight 0/5"),
])
def test_in_flight_is_never_shown_above_the_limit(rows: dict[str, int], limit: int | None,
                                                   shown: str) -> None:
    assert in_flight(status(**rows), limit) == shown


@given(st.integers(0, 500), st.integers(0, 500), st.integers(1, 100))
def test_in_flight_count_never_passes_the_limit(running: int, submitting: int,
                                                limit: int) -> None:
    text = in_flight(status(running=running, submitting=submitting), limit)
    shown = int(text.split()[2].split("/")[0])
    assert shown == min(running + submitting, limit)


def test_rate_and_eta_over_the_window() -> None:
    meter = RateMeter(window_s=60)
    meter.add(0.0, 0)
    assert meter.per_s() is None  # one sample says nothing
    meter.add(1.0, 10)
    assert meter.per_s() is None  # nor one second
    meter.add(10.0, 100)
    assert meter.per_s() == pytest.approx(10.0)
    assert meter.eta_s(50) == pytest.approx(5.0)
    assert meter.eta_s(0) == 0.0
    for t in range(11, 200):  # the pace halves: the window forgets the old pace
        meter.add(float(t), 100 + (t - 10) * 5)
    assert meter.per_s() == pytest.approx(5.0, rel=0.05)


def test_a_stalled_run_has_no_eta() -> None:
    meter = RateMeter()
    meter.add(0.0, 7)
    meter.add(30.0, 7)
    assert meter.per_s() == 0.0
    assert meter.eta_s(3) is None


def test_the_line_says_pace_eta_and_projected_dollars() -> None:
    meter = RateMeter()
    meter.add(0.0, 0)
    meter.add(60.0, 50)
    line = describe(status(completed=50, queued=40, running=10), 10, meter)
    assert line == ("in flight 10/10 · waiting 40 · done 50 · failed 0 · invalid 0 · "
                    "50 rows/min · ETA 1m00s · $0.50 of ~$1.00")


def test_projection_waits_for_a_paid_row() -> None:
    assert projected_usd(status(queued=10)) is None
    reused_only = status(completed=5, queued=5)
    reused_only.reused = 5
    assert projected_usd(reused_only) is None


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (59.4, "59s"), (61, "1m01s"),
                                                (3600, "1h00m"), (7322, "2h02m"),
                                                (7_380, "2h03m")])
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_summary_says_counts_cost_time_and_where() -> None:
    lines = summary_lines(status(completed=98, failed=2), 125.0, "out.jsonl", 100)
    assert lines == ["100/100 rows finished in 2m05s: completed 98, failed 2; cost $0.98",
                     "results: out.jsonl (100 rows)"]

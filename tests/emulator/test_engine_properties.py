"""Properties of the queue scheduler over random arrivals and durations (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.emulator.conftest import Harness, joy


@settings(max_examples=60, deadline=None)
@given(
    concurrency=st.integers(min_value=1, max_value=4),
    gaps=st.lists(st.floats(min_value=0.0, max_value=8.0), min_size=1, max_size=25),
    peeks=st.lists(st.floats(min_value=0.0, max_value=300.0), max_size=5),
)
def test_queue_is_bounded_fifo_work_conserving_and_integrals_exact(
    concurrency: int, gaps: list[float], peeks: list[float]
) -> None:
    h = Harness(
        concurrency=concurrency,
        durations_s={"joycaption": (1.0, 20.0)},
        queue_wait_fraction=(0.02, 0.05),
    )
    tasks = []
    t = 0.0
    events = sorted([(g, "create") for g in _cumsum(gaps)] + [(p, "peek") for p in peeks])
    for t, kind in events:
        h.at(t)
        if kind == "create":
            tasks.append(h.engine.create(joy(f"http://x/{len(tasks)}.png")))
        else:
            h.engine.advance()
            assert h.engine.metrics.processing <= concurrency
            assert h.engine.metrics.in_flight == sum(
                1 for x in tasks if x.status in ("pending", "processing"))
    h.at(t + 10_000)
    h.engine.advance()
    assert all(x.status == "completed" for x in tasks)

    spans = [(x.started_at, x.ended_at) for x in tasks]
    assert all(s is not None and e is not None for s, e in spans)
    # never more than `concurrency` processing at once
    marks = sorted([(e, -1) for _, e in spans] + [(s, 1) for s, _ in spans])
    running = 0
    for _, delta in marks:
        running += delta
        assert running <= concurrency
    # FIFO by readiness, and nobody waits while a slot is free
    ready = {x.task_id: x.created_at + x.queue_wait_s for x in tasks}
    ends = {x.ended_at for x in tasks}
    by_start = sorted(tasks, key=lambda x: (x.started_at, ready[x.task_id]))
    assert [ready[x.task_id] for x in by_start] == sorted(ready.values())
    for x in tasks:
        assert x.started_at is not None
        assert x.started_at == pytest.approx(ready[x.task_id]) or x.started_at in ends
    # exact integrals
    snap = h.engine.metrics.snapshot(h.clock.now())
    in_flight = sum(x.ended_at - x.created_at for x in tasks)  # type: ignore[operator]
    processing = sum(x.ended_at - x.started_at for x in tasks)  # type: ignore[operator]
    assert snap["in_flight_integral_s"] == pytest.approx(in_flight)
    assert snap["processing_integral_s"] == pytest.approx(processing)


def _cumsum(values: list[float]) -> list[float]:
    out, total = [], 0.0
    for v in values:
        total += v
        out.append(total)
    return out

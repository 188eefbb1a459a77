"""ProgressWatch on a real database: quiet is not stalled; stalled = work due, nothing moving."""

from __future__ import annotations

import time

from sqlalchemy import update
from sqlalchemy.engine import Engine

from scheduler.liveness import ProgressWatch, signature
from workers.db import session, transaction
from workers.models import JOBS, Batch, Job


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _setup(engine: Engine, n: int = 3) -> None:
    """Batch b1 of `n` queued rows."""
    with session(engine) as s:
        s.add(Batch(id="b1", content_hash="h", source="m.jsonl", created_at=0.0, ingested=True,
                    total=n))
        for i in range(1, n + 1):
            s.add(Job(batch_id="b1", seq=i, line=i, row_key=str(i), model="m", task_type="t",
                      input_json="{}", created_at=0.0))


def _set(engine: object, **values: object) -> None:
    with transaction(engine) as conn:  # type: ignore[arg-type]
        conn.execute(update(JOBS).values(**values))


def test_quiet_is_not_stalled_until_work_is_due(engine: Engine) -> None:
    _setup(engine)
    now = time.time()
    # Running tasks whose next poll is far ahead (a long video): nothing is due, so a
    # fleet that does nothing for a long time is quiet, not stalled.
    _set(engine, state="running", task_id="t", next_at=now + 3600)
    clock = Clock()
    watch = ProgressWatch(engine, stall_s=60, clock=clock)  # type: ignore[arg-type]
    assert not watch.check()
    clock.t += 600
    assert not watch.check()
    # The polls fall overdue by more than stall_s and still nothing moves: stalled.
    _set(engine, next_at=now - 120)
    assert not watch.check()  # the signature changed: that was progress
    clock.t += 61
    assert watch.check()
    assert watch.stalls == 1
    # After a restart the watch counts afresh.
    assert not watch.check()


def test_progress_resets_the_clock(engine: Engine) -> None:
    _setup(engine)
    _set(engine, state="running", task_id="t", next_at=time.time() - 600)
    clock = Clock()
    watch = ProgressWatch(engine, stall_s=60, clock=clock)  # type: ignore[arg-type]
    before = signature(engine)  # type: ignore[arg-type]
    assert not watch.check()
    for _ in range(5):
        clock.t += 50
        with transaction(engine) as conn:  # type: ignore[arg-type]
            conn.execute(update(JOBS).values(polls=JOBS.c.polls + 1))
        assert not watch.check()
    assert signature(engine) != before  # type: ignore[arg-type]


def test_a_leased_row_never_claimed_is_work_waiting(engine: Engine) -> None:
    _setup(engine)
    clock = Clock()
    watch = ProgressWatch(engine, stall_s=30, clock=clock)  # type: ignore[arg-type]
    assert not watch.check()
    clock.t += 100
    assert not watch.check()  # queued rows nobody was asked to run: not a stall
    # Rows handed to a worker (leased) and, 100 s on, still not claimed: stalled.
    _set(engine, lease_until=time.time() + 5, lease_epoch="e")
    assert watch.check()

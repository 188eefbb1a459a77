"""Reconciling a lost create when another row has the same input (a prompt repeated for
several samples): the task found may be that row's, whose create still awaits its answer.
On a real database, with PiAPI as a script the test writes (its history and GETs)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Engine

from tests.integration.e2e import JOY_KIND, add_batch, job, set_jobs
from workers import transitions as tr
from workers.piapi import HistoryPage, HistoryRow, TaskView, Usage
from workers.reconcile import records
from workers.reconcile.settle import reconcile_one
from workers.states import JobState
from workers.work import Tally, WorkerContext

T0 = 1_000_000.0
INPUT = {"image": "https://example.test/same.png"}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


class History:
    """PiAPI with one task, made by the first row's create at T0 + 0.5."""

    def __init__(self) -> None:
        self.task = TaskView("made-by-a", *JOY_KIND, status="processing", output=None,
                             usage=Usage("llm", 0, 100), error=None, created_at=_iso(T0 + 0.5),
                             started_at=None, ended_at=None, input=dict(INPUT))

    def task_history(self, model: str | None, start: float, end: float, page: int = 1,
                     page_size: int = 100) -> HistoryPage:
        row = HistoryRow("made-by-a", JOY_KIND[0], JOY_KIND[1], "processing", T0 + 0.5, None)
        return HistoryPage([row], 1)

    def get_task(self, task_id: str) -> TaskView:
        assert task_id == "made-by-a"
        return self.task

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"reconciliation called {name}")


class Twins:
    """Rows A and B of one input, both sent at T0; B's create answer lost at T0 + 1. The
    clock (`now`) is the test's."""

    def __init__(self, engine: Engine, now: float) -> None:
        self.engine, self.now = engine, now
        self.a, self.b = add_batch(engine, "b1", 2)
        set_jobs(engine, self.a, self.b, input_json='{"image":"https://example.test/same.png"}')
        self.piapi = History()
        self.ctx = WorkerContext(engine=engine, client=self.piapi,  # type: ignore[arg-type]
                                 lease_s=60, max_tries=3, clock=lambda: self.now)
        claim_a = tr.claim_for_submit(engine, self.a, T0, 60)
        claim_b = tr.claim_for_submit(engine, self.b, T0, 60)
        assert claim_a is not None and claim_b is not None
        self.claim_a = claim_a
        assert tr.record_ambiguous(engine, claim_b, T0 + 1, "connection dropped")

    def reconcile_b(self) -> bool:
        [target] = records.load_ambiguous(self.engine, [self.b])
        return reconcile_one(self.ctx, target, Tally())


def test_a_task_a_twin_row_is_still_creating_is_not_taken(engine: Engine) -> None:
    # Found by review: row B's create was lost while row A (the same input) still awaited
    # its create's answer. B took A's task; A then recorded it too: one task for two rows,
    # counted twice, and B's own task (had its create made one) recorded nowhere.
    w = Twins(engine, T0 + 5)
    assert not w.reconcile_b()  # A's answer may still name the task
    assert job(engine, w.b).state == JobState.AMBIGUOUS

    # A's answer comes: the task is A's. B's look no longer has it as a candidate.
    assert tr.record_created(engine, w.claim_a, w.piapi.task, T0 + 6, T0 + 7)
    w.now = T0 + 30
    w.reconcile_b()
    assert (job(engine, w.a).task_id, job(engine, w.b).task_id) == ("made-by-a", None)
    assert job(engine, w.b).state != JobState.RUNNING


def test_a_late_answer_for_a_task_a_twin_row_took_does_not_share_it(engine: Engine) -> None:
    # Found by an exploratory run: both rows' answers were late; B took A's task, then A's
    # answer came and A recorded the same task: two rows on one task, B's own unrecorded.
    w = Twins(engine, T0 + 90)
    assert tr.expire_submitting(engine, T0 + 61) == [w.a]  # A's answer is late: ambiguous too
    assert w.reconcile_b()  # no create awaits an answer: B takes it
    assert job(engine, w.b).task_id == "made-by-a"

    assert not tr.record_created(engine, w.claim_a, w.piapi.task, T0 + 95, T0 + 96)
    assert (job(engine, w.a).state, job(engine, w.a).task_id) == (JobState.AMBIGUOUS, None)
    assert records.owned_elsewhere(engine, w.a, w.claim_a.attempt_n, ["made-by-a"]) == {
        "made-by-a"}  # A looks for a task of its own, or posts again


def test_a_lost_create_is_given_up_on_only_once_its_task_would_have_ended(
        engine: Engine) -> None:
    # Found by an exploratory run: for video (stuck limits of 30-40 minutes before anything
    # is learned) the reconcile timeout came first, so every create that made no task failed.
    from workers.reconcile.settle import MAX_TIMEOUTS, _undecided

    (a,) = add_batch(engine, "b1", 1)
    ctx = WorkerContext(engine=engine, client=None, lease_s=60, max_tries=3,  # type: ignore[arg-type]
                        reconcile_timeout_s=1800)
    claim = tr.claim_for_submit(engine, a, T0, 60)
    assert claim is not None and tr.record_ambiguous(engine, claim, T0 + 1, "lost")
    [t] = records.load_ambiguous(engine, [a])
    assert not _undecided(ctx, t, T0 + 1 + 1800, "why", ended_by=T0 + 2400)  # looks again
    assert job(engine, a).state == JobState.AMBIGUOUS
    assert _undecided(ctx, t, T0 + 2400 + 31, "why", ended_by=T0 + 2400)
    assert job(engine, a).state == JobState.FAILED
    # However long the limit (a congested kind), at most MAX_TIMEOUTS timeouts.
    (b,) = add_batch(engine, "b2", 1)
    claim = tr.claim_for_submit(engine, b, T0, 60)
    assert claim is not None and tr.record_ambiguous(engine, claim, T0 + 1, "lost")
    [t] = records.load_ambiguous(engine, [b])
    assert _undecided(ctx, t, T0 + 1 + MAX_TIMEOUTS * 1800 + 31, "why", ended_by=T0 + 1e6)

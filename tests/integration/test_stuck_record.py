"""Stuck tasks in the record (SQLite and PostgreSQL): abandoning, watching, late results.

The worker functions run for real on a real database; only PiAPI is a script (a task's
status is whatever the test says it is by then), since the emulator never completes a
task it let get stuck. The run-level behaviour is in test_stuck.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from scheduler.export import iter_results
from scheduler.operator import cancel
from scheduler.status import batch_status
from tests.integration.e2e import add_batch
from workers import leases, spending
from workers import transitions as tr
from workers.db import create_tables
from workers.models import Attempt, Job
from workers.piapi import NotFound, TaskError, TaskView, Usage
from workers.states import AttemptState, ErrorKind, JobState
from workers.watch import watch_tasks
from workers.work import WorkerContext
from workers.work.poll import poll_jobs

T0 = 1_000_000.0
LEASE = 30.0
LIMIT = 300.0
"""Joycaption's stuck limit before anything is learned: 10 x its 30 s prior."""
STUCK_AT = T0 + LIMIT + 1
FIRST_LOOK = STUCK_AT + LIMIT / 2
PRICE = 100_000
JOY = ("Qubico/joycaption", "joycaption-beta-one")


class Script:
    """PiAPI as the test scripts it: each task's current view; cancels work while pending."""

    def __init__(self) -> None:
        self.views: dict[str, TaskView] = {}
        self.cancelled: list[str] = []

    def set(self, task_id: str, status: str, output: Any = None, consume: int = PRICE,
            error: TaskError | None = None) -> None:
        self.views[task_id] = TaskView(task_id, *JOY, status=status, output=output,
                                       usage=Usage("llm", 0, consume), error=error,
                                       created_at=None, started_at=None, ended_at=None)

    def get_task(self, task_id: str) -> TaskView:
        if task_id not in self.views:
            raise NotFound("HTTP 404", status=404)
        return self.views[task_id]

    def cancel_task(self, task_id: str) -> bool:
        if self.views[task_id].status != "pending":
            return False
        self.cancelled.append(task_id)
        self.set(task_id, "failed", consume=0, error=TaskError(10000, "task canceled", ""))
        return True


class World:
    """A batch on a real database, a scripted PiAPI and a clock the test moves."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.piapi = Script()
        self.now = T0
        self.ctx = WorkerContext(engine=engine, client=self.piapi, lease_s=LEASE,  # type: ignore[arg-type]
                                 max_tries=3, clock=lambda: self.now)

    def add(self, rows: int = 1, max_attempts: int = 3, on_stuck: str | None = None,
            batch_id: str = "b1") -> list[int]:
        return add_batch(self.engine, batch_id, rows, JOY, max_attempts=max_attempts,
                         on_stuck=on_stuck)

    def create(self, job_id: int, task_id: str, status: str = "processing") -> None:
        claim = tr.claim_for_submit(self.engine, job_id, self.now, LEASE)
        assert claim is not None
        self.piapi.set(task_id, status)
        assert tr.record_created(self.engine, claim, self.piapi.views[task_id], self.now,
                                 self.now + 1)

    def poll(self, *job_ids: int) -> None:
        poll_jobs(self.ctx, job_ids)

    def look(self) -> list[int]:
        """Lease the looks due now and run them, as the dispatcher and a worker would."""
        ids = list(leases.lease_looks(self.engine, 100, self.now, LEASE))
        watch_tasks(self.ctx, ids)
        return ids

    def job(self, job_id: int) -> Job:
        with Session(self.engine) as s:
            return s.get_one(Job, job_id)

    def attempts(self, job_id: int) -> list[Attempt]:
        with Session(self.engine) as s:
            return list(s.exec(select(Attempt).where(Attempt.job_id == job_id)
                               .order_by(Attempt.n)))

    def occupancy(self) -> leases.Occupancy:
        return leases.occupancy(self.engine, self.now, "e1")


@pytest.fixture
def world(engine: Engine) -> World:
    return World(engine)


def stuck_and_replaced(w: World, job: int) -> None:
    """Task t1 stays processing past the limit: abandoned, watched, and t2 replaces it."""
    w.create(job, "t1")
    w.now = STUCK_AT
    w.poll(job)
    row = w.job(job)
    assert (row.state, row.error_kind, row.task_id) == ("retry_wait", "stuck", None)
    [a1] = w.attempts(job)
    assert a1.state == AttemptState.ABANDONED and a1.error is not None
    assert a1.error.startswith("task t1 stuck processing for 301s (expected at most 300s)")
    assert (a1.watch_until, a1.next_at) == (STUCK_AT + 10 * LIMIT, FIRST_LOOK)
    w.create(job, "t2", status="pending")


def test_an_abandoned_task_still_counts_in_flight_until_its_watch_ends(world: World) -> None:
    w = world
    [job] = w.add()
    w.create(job, "t1")
    assert w.occupancy().total == 1
    w.now = STUCK_AT
    w.poll(job)
    occ = w.occupancy()
    assert (occ.total, occ.by_batch, occ.abandoned, occ.creating) == (1, {"b1": 1}, 1, 0)
    assert leases.next_due_at(w.engine, STUCK_AT) == FIRST_LOOK  # its first look
    w.create(job, "t2")
    assert w.occupancy().total == 2  # the replacement and the abandoned task it replaced
    # Looks are leased like polls: due ones once, then not again until recorded or lost.
    assert leases.lease_looks(w.engine, 10, FIRST_LOOK - 1, LEASE) == {}
    [a1, _] = w.attempts(job)
    assert leases.lease_looks(w.engine, 10, FIRST_LOOK, LEASE) == {a1.id: "b1"}
    assert leases.lease_looks(w.engine, 10, FIRST_LOOK, LEASE) == {}
    w.now = FIRST_LOOK + LEASE
    assert w.look() == [a1.id]  # the lost look came due again; still processing
    assert w.attempts(job)[0].next_at == FIRST_LOOK + LEASE + LIMIT / 2
    # At its watch bound it stops being watched, looked at or counted (logged).
    w.now = STUCK_AT + 10 * LIMIT
    assert w.occupancy().total == 2
    w.look()
    a1 = w.attempts(job)[0]
    assert (a1.watch_until, a1.next_at) == (None, None)
    assert a1.error is not None and a1.error.endswith("at the end of its watch: not watched "
                                                      "any more")
    assert w.occupancy().total == 1
    assert w.look() == []


def test_a_late_result_is_taken_and_a_pending_replacement_cancelled(world: World) -> None:
    w = world
    [job] = w.add()
    stuck_and_replaced(w, job)
    w.piapi.set("t1", "completed", {"text": "late"})
    w.now = FIRST_LOOK
    w.look()
    row = w.job(job)
    assert (row.state, row.task_id, row.output_json) == ("completed", "t1", '{"text":"late"}')
    assert (row.error_kind, row.error_message, row.usage_consume) == (None, None, PRICE)
    assert w.piapi.cancelled == ["t2"]
    a1, a2 = w.attempts(job)
    assert (a1.state, a1.consume, a1.watch_until) == (AttemptState.COMPLETED, PRICE, None)
    assert a2.state == AttemptState.CANCELLED and a2.consume == 0 and a2.watch_until is None
    assert a2.error is not None and "took the result of stuck task t1" in a2.error
    assert w.occupancy().total == 0
    st = batch_status(w.engine, "b1")
    assert st is not None and st.consumed_units == PRICE  # the replacement was refunded
    [line] = iter_results(w.engine, "b1")
    assert (line["status"], line["task_id"], line["attempts"]) == ("completed", "t1", 2)
    assert [(o["task_id"], o["state"]) for o in line["other_tasks"]] == [("t2", "cancelled")]


def test_a_late_result_while_the_replacement_processes_pays_for_both(world: World) -> None:
    w = world
    [job] = w.add()
    stuck_and_replaced(w, job)
    w.piapi.set("t2", "processing")
    w.piapi.set("t1", "completed", {"text": "late"})
    w.now = FIRST_LOOK
    w.poll(job)  # the replacement's own poll sees it processing
    w.look()
    assert (w.job(job).state, w.job(job).task_id) == ("completed", "t1")
    a1, a2 = w.attempts(job)
    assert a1.state == AttemptState.COMPLETED
    assert a2.state == AttemptState.ABANDONED and a2.watch_until == FIRST_LOOK + 10 * LIMIT
    assert a2.error is not None and "PiAPI cannot cancel this one" in a2.error
    occ = w.occupancy()
    assert (occ.total, occ.abandoned) == (1, 1)  # t2 still holds a slot at PiAPI
    spend = spending.batch_spend(w.engine, "b1", w.now, "e1")
    assert spend.spent_usd == pytest.approx(0.01) and spend.frozen_usd == pytest.approx(0.01)
    # t2 completes too: paid for, its result not used; the row keeps t1's.
    w.piapi.set("t2", "completed", {"text": "second"})
    w.now = FIRST_LOOK + LIMIT / 2
    w.look()
    row = w.job(job)
    assert (row.task_id, row.output_json) == ("t1", '{"text":"late"}')
    a2 = w.attempts(job)[1]
    assert (a2.state, a2.consume, a2.watch_until) == (AttemptState.ABANDONED, PRICE, None)
    assert a2.error is not None and a2.error.endswith("the row already had its result")
    assert w.occupancy().total == 0
    st = batch_status(w.engine, "b1")
    assert st is not None and st.consumed_units == 2 * PRICE  # both tasks, each once
    assert (st.abandoned, st.watched) == (1, 0)
    spend = spending.batch_spend(w.engine, "b1", w.now, "e1")
    assert spend.spent_usd == pytest.approx(0.02) and spend.frozen_usd == 0


def test_the_replacement_completing_first_leaves_the_late_one_unused(world: World) -> None:
    w = world
    [job] = w.add()
    stuck_and_replaced(w, job)
    w.piapi.set("t2", "completed", {"text": "replacement"})
    w.now = STUCK_AT + 5
    w.poll(job)
    assert (w.job(job).state, w.job(job).task_id) == ("completed", "t2")
    w.piapi.set("t1", "completed", {"text": "late"})
    w.now = FIRST_LOOK
    w.look()
    assert w.job(job).output_json == '{"text":"replacement"}'
    assert [(a.state, a.consume) for a in w.attempts(job)] == [
        (AttemptState.ABANDONED, PRICE), (AttemptState.COMPLETED, PRICE)]
    st = batch_status(w.engine, "b1")
    assert st is not None and st.consumed_units == 2 * PRICE
    [line] = iter_results(w.engine, "b1")
    [other] = line["other_tasks"]
    assert other["task_id"] == "t1" and other["state"] == "abandoned"
    assert other["error"].startswith("task t1 stuck processing")
    assert other["usage"] == {"consume": PRICE, "usd": 0.01}


def test_fail_policy_then_the_task_completes_after_all(world: World) -> None:
    w = world
    [job] = w.add(on_stuck="fail")
    w.create(job, "t1")
    w.now = STUCK_AT
    w.poll(job)
    row = w.job(job)
    assert (row.state, row.error_kind, row.task_id) == ("failed", "stuck", "t1")
    assert row.error_message is not None and row.error_message.endswith("(--on-stuck fail)")
    assert w.occupancy().total == 1
    st = batch_status(w.engine, "b1")
    assert st is not None and st.failures == {"stuck": 1} and st.watched == 1
    w.piapi.set("t1", "completed", {"text": "late"})
    w.now = FIRST_LOOK
    w.look()
    row = w.job(job)
    assert (row.state, row.error_kind, row.output_json) == ("completed", None, '{"text":"late"}')
    assert w.occupancy().total == 0


def test_cancel_now_watches_the_task_and_the_row_takes_its_late_result(world: World) -> None:
    """`cancel --now` gives up on a processing task, which PiAPI runs on: it is watched and
    counted in flight like a stuck one, its cost counts when it ends, and the cancelled row
    takes its result (it was paid for)."""
    w = world
    [job] = w.add()
    w.create(job, "t1")
    cancel(w.engine, "b1", now_mode=True, now=w.now)
    w.poll(job)
    row = w.job(job)
    assert (row.state, row.error_kind, row.task_id) == ("cancelled", "cancelled", "t1")
    [a1] = w.attempts(job)
    assert a1.state == AttemptState.ABANDONED and a1.watch_until is not None
    occ = w.occupancy()
    assert (occ.total, occ.abandoned) == (1, 1)  # its slot is still held
    st = batch_status(w.engine, "b1")
    assert st is not None and (st.abandoned, st.watched) == (1, 1)
    assert (st.done, st.phase) == (False, "cancelling")  # its row may still change
    w.piapi.set("t1", "completed", {"text": "late"})
    assert a1.next_at is not None
    w.now = a1.next_at
    w.look()
    row = w.job(job)
    assert (row.state, row.error_kind, row.output_json) == ("completed", None, '{"text":"late"}')
    assert w.occupancy().total == 0
    st = batch_status(w.engine, "b1")
    assert st is not None and (st.watched, st.consumed_units) == (0, PRICE)
    assert (st.done, st.phase) == (True, "done")


def test_an_abandoned_task_that_fails_later_is_refunded(world: World) -> None:
    w = world
    [job] = w.add(max_attempts=1)
    w.create(job, "t1")
    w.now = STUCK_AT
    w.poll(job)
    row = w.job(job)
    assert (row.state, row.error_kind, row.usage_consume) == ("failed", "stuck", PRICE)
    assert row.error_message is not None and row.error_message.startswith(
        "stuck: 1 of 1 attempts used; last: task t1 stuck processing")
    w.piapi.set("t1", "failed", consume=0, error=TaskError(10000, "task timeout", ""))
    w.now = FIRST_LOOK
    w.look()
    row = w.job(job)
    assert (row.state, row.usage_consume) == ("failed", 0)  # PiAPI's final word: refunded
    [a1] = w.attempts(job)
    assert (a1.state, a1.consume, a1.watch_until) == (AttemptState.ABANDONED, 0, None)
    assert a1.error is not None and a1.error.endswith("ended failed at PiAPI later: task timeout")
    assert w.occupancy().total == 0


def test_a_late_result_waits_while_its_row_is_being_created(world: World) -> None:
    w = world
    [job] = w.add()
    w.create(job, "t1")
    w.now = STUCK_AT
    w.poll(job)
    claim = tr.claim_for_submit(w.engine, job, w.now, LEASE)  # a create under way
    assert claim is not None
    w.piapi.set("t1", "completed", {"text": "late"})
    w.now = FIRST_LOOK
    w.look()
    assert w.job(job).state == "submitting"
    a1 = w.attempts(job)[0]
    assert a1.state == AttemptState.ABANDONED and a1.next_at == FIRST_LOOK + LIMIT / 2
    # The create answers; the next look takes the late result and cancels the new task.
    w.piapi.set("t2", "pending")
    assert tr.record_created(w.engine, claim, w.piapi.views["t2"], w.now, w.now + 1)
    w.now = FIRST_LOOK + LIMIT / 2
    w.look()
    assert (w.job(job).state, w.job(job).task_id) == ("completed", "t1")
    assert w.piapi.cancelled == ["t2"]


def test_a_stuck_pending_task_is_cancelled_refunded_and_out_of_attempts_fails_stuck(
        world: World) -> None:
    w = world
    [job] = w.add(max_attempts=2, on_stuck="wait")  # the policy is for processing tasks
    for task_id in ("t1", "t2"):
        w.create(job, task_id, status="pending")
        w.now += LIMIT + 1
        w.poll(job)
    row = w.job(job)
    assert (row.state, row.error_kind, row.usage_consume) == ("failed", "stuck", 0)
    assert row.error_message is not None and "stuck pending" in row.error_message
    assert [(a.state, a.consume, a.watch_until) for a in w.attempts(job)] == [
        (AttemptState.CANCELLED, 0, None), (AttemptState.CANCELLED, 0, None)]
    assert w.piapi.cancelled == ["t1", "t2"] and w.occupancy().total == 0


def test_wait_policy_keeps_polling_a_processing_task(world: World) -> None:
    w = world
    [job] = w.add(on_stuck="wait")
    w.create(job, "t1")
    w.now = T0 + 50 * LIMIT
    w.poll(job)
    row = w.job(job)
    assert (row.state, row.task_id, row.polls) == ("running", "t1", 1)
    assert row.next_at is not None and row.next_at > w.now
    assert w.attempts(job)[0].state == AttemptState.CREATED


def test_abandoning_a_task_and_counting_it_are_one_change(world: World) -> None:
    # Abandoning and counting the abandoned task are one transaction: at no moment is the
    # row out of `running` while its task is uncounted.
    w = world
    [job] = w.add()
    w.create(job, "t1")
    [target] = tr.load_poll_targets(w.engine, [job])
    outcome = tr.PollOutcome(target, "retry", w.piapi.views["t1"], next_at=STUCK_AT,
                             message="m", error_kind=ErrorKind.STUCK,
                             attempt_state=AttemptState.ABANDONED,
                             watch_until=STUCK_AT + 10, watch_next=STUCK_AT + 1)
    assert tr.record_poll_outcomes(w.engine, [outcome], STUCK_AT) == 1
    assert tr.record_poll_outcomes(w.engine, [outcome], STUCK_AT) == 0  # a duplicate
    assert w.job(job).state == JobState.RETRY_WAIT
    assert leases.occupancy(w.engine, STUCK_AT, "e1").total == 1
    assert leases.occupancy(w.engine, STUCK_AT + 11, "e1").total == 0


def test_an_older_database_gains_the_stuck_columns_and_indexes(engine: Engine) -> None:
    with engine.begin() as conn:  # the schema as the previous version made it, before Alembic
        conn.execute(text("DROP TABLE alembic_version"))
        for index in ("ix_attempts_watched", "ix_attempts_abandoned"):
            conn.execute(text(f"DROP INDEX {index}"))
        for column in ("watch_until", "next_at"):
            conn.execute(text(f"ALTER TABLE attempts DROP COLUMN {column}"))
        conn.execute(text("ALTER TABLE batches DROP COLUMN on_stuck"))
    create_tables(engine)
    assert {i["name"] for i in inspect(engine).get_indexes("attempts")} >= {
        "ix_attempts_watched", "ix_attempts_abandoned"}
    w = World(engine)
    [job] = w.add(on_stuck="fail")
    w.create(job, "t1")
    w.now = STUCK_AT
    w.poll(job)
    assert (w.job(job).error_kind, w.occupancy().abandoned) == ("stuck", 1)


def test_a_task_only_slow_with_the_rest_of_its_kind_is_not_given_up_on(world: World) -> None:
    """Past the limit, a task counts as stuck only when a task of its kind created about
    when it was (no earlier than one limit before) has completed since: otherwise PiAPI is
    slow with the whole kind (congested), and replacing it would pay twice when it ends.
    Then it is given up on only past UNCONFIRMED_FACTOR limits."""
    from workers.durations import DurationCache, add_samples
    from workers.stuck import UNCONFIRMED_FACTOR

    w = world
    w.ctx.durations = DurationCache(w.engine)
    [job, other] = w.add(2)
    with Session(w.engine) as s:  # a task of the kind created long before t1 (not its time)
        add_samples(s, [(*JOY, 20.0)], T0 - LIMIT - 1)
        s.commit()
    w.create(job, "t1")
    w.now = STUCK_AT
    w.poll(job)
    assert (w.job(job).state, w.piapi.cancelled) == ("running", [])  # slow, not stuck
    # A task of its time completes: t1 is the one that hangs.
    w.create(other, "t2")
    w.piapi.set("t2", "completed", output={"text": "a cat"})
    w.now += 1
    w.poll(other)
    assert w.job(other).state == "completed"
    w.now += 1
    w.poll(job)
    row = w.job(job)
    assert (row.state, row.error_kind) == ("retry_wait", "stuck")
    [a1] = w.attempts(job)
    assert a1.error is not None and "(expected at most 300s)" in a1.error
    assert UNCONFIRMED_FACTOR > 1


def test_a_congested_kind_gives_a_task_up_only_far_past_its_limit(world: World) -> None:
    from workers.durations import DurationCache
    from workers.stuck import UNCONFIRMED_FACTOR

    w = world
    w.ctx.durations = DurationCache(w.engine)
    [job] = w.add()
    w.create(job, "t1")
    far = T0 + LIMIT * UNCONFIRMED_FACTOR
    w.now = far
    w.poll(job)
    assert w.job(job).state == "running"
    w.now = far + 1
    w.poll(job)
    assert (w.job(job).state, w.job(job).error_kind) == ("retry_wait", "stuck")
    [a1] = w.attempts(job)
    assert a1.error is not None and f"(expected at most {far - T0:.0f}s)" in a1.error

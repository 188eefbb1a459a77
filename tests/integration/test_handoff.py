"""Slot handoff (`workers.handoff`) on a real database and a real Redis: a poll that frees a
slot creates the batch's next row in it, in the same transaction, and nowhere it could pass
a limit, a control or pay twice. PiAPI is a script here (creates answer at once); the run
with real processes is the last test."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from sqlalchemy import create_engine, select
from sqlalchemy.engine import Engine

from tests.integration.e2e import RunRows, add_batch, caption_rows, job, set_jobs
from workers import handoff, leases
from workers import transitions as tr
from workers.db import create_tables, is_sqlite, transaction
from workers.fleet import Fleet
from workers.models import ATTEMPTS, BATCHES, JOBS
from workers.piapi import TaskView, Usage
from workers.polling import PollMode
from workers.states import AttemptState, JobState
from workers.transitions.create import claim_standby
from workers.work import WorkerContext
from workers.work.poll import poll_jobs

T0 = 1_000_000.0
LEASE = 30.0
JOY = ("Qubico/joycaption", "joycaption-beta-one")
FLUX = ("Qubico/flux1-schnell", "txt2img")
EPOCH = "e1"


class Script:
    """PiAPI as the test scripts it: every create makes a processing task at once."""

    def __init__(self) -> None:
        self.views: dict[str, TaskView] = {}
        self.created: list[dict[str, Any]] = []

    def set(self, task_id: str, status: str) -> TaskView:
        self.views[task_id] = TaskView(task_id, *JOY, status=status, output=(
            {"text": "a caption"} if status == "completed" else None),
            usage=Usage("llm", 0, 100), error=None, created_at=None, started_at=None,
            ended_at=None)
        return self.views[task_id]

    def get_task(self, task_id: str) -> TaskView:
        return self.views[task_id]

    def create_task(self, model: str, task_type: str, input: dict[str, Any],
                    service_mode: str | None = None, **hook: Any) -> TaskView:
        self.created.append(input)
        return self.set(f"h{len(self.created)}", "processing")


class World:
    """Batches on a real database, a real Redis, a scripted PiAPI, a clock the test moves."""

    def __init__(self, engine: Engine, redis_url: str) -> None:
        self.engine = engine
        self.redis = redis.Redis.from_url(redis_url)
        self.piapi = Script()
        self.now = T0
        self.ctx = WorkerContext(engine=engine, client=self.piapi,  # type: ignore[arg-type]
                                 lease_s=LEASE, max_tries=3, clock=lambda: self.now,
                                 fleet=Fleet(self.redis), handoff=True)

    def running(self, job_id: int, task_id: str) -> None:
        claim = tr.claim_for_submit(self.engine, job_id, self.now, LEASE)
        assert claim is not None
        assert tr.record_created(self.engine, claim, self.piapi.set(task_id, "processing"),
                                 self.now, self.now + 1)

    def finish(self, task_id: str, job_id: int) -> None:
        """The task ends at PiAPI and a poll message sees it."""
        self.now += 5
        self.piapi.set(task_id, "completed")
        poll_jobs(self.ctx, [job_id])

    def in_flight(self) -> int:
        return leases.occupancy(self.engine, self.now, EPOCH).total

    def standby(self) -> list[int]:
        return [int(i) for i in self.redis.lrange(handoff.key("b1"), 0, -1)]

    def attempts(self, job_id: int) -> list[tuple[str, float]]:
        with transaction(self.engine) as conn:
            return [(str(s), float(t)) for s, t in conn.execute(
                select(ATTEMPTS.c.state, ATTEMPTS.c.started_at)
                .where(ATTEMPTS.c.job_id == job_id).order_by(ATTEMPTS.c.n))]


@pytest.fixture
def world(engine: Engine, redis_url: str) -> World:
    return World(engine, redis_url)


def test_a_freed_slot_goes_to_the_next_row_in_the_same_transaction(world: World) -> None:
    w = world
    rows = add_batch(w.engine, "b1", 4, JOY)
    w.running(rows[0], "t1")
    handoff.publish(w.redis, {"b1": rows[1:3]})
    assert w.in_flight() == 1
    w.finish("t1", rows[0])
    assert job(w.engine, rows[0]).state == JobState.COMPLETED
    nxt = job(w.engine, rows[1])
    assert (nxt.state, nxt.task_id) == (JobState.RUNNING, "h1")  # created in the freed slot
    assert job(w.engine, rows[2]).state == JobState.QUEUED
    assert w.piapi.created == [json.loads(nxt.input_json)]
    assert w.in_flight() == 1  # the count never moved: one ended, one began
    # Its attempt began in the very transaction that recorded the end.
    assert w.attempts(rows[1]) == [(AttemptState.CREATED, job(w.engine, rows[0]).finished_at)]
    assert w.standby() == [rows[2]]


def test_a_row_taken_meanwhile_is_never_claimed_twice(world: World) -> None:
    w = world
    rows = add_batch(w.engine, "b1", 4, JOY)
    w.running(rows[0], "t1")
    w.running(rows[1], "t2")  # a submit message got row 2 first
    handoff.publish(w.redis, {"b1": [rows[1], rows[2]]})
    w.finish("t1", rows[0])  # pops row 2 for its one slot: taken, so the slot is just freed
    assert job(w.engine, rows[1]).task_id == "t2" and len(w.attempts(rows[1])) == 1
    assert job(w.engine, rows[2]).state == JobState.QUEUED
    assert w.piapi.created == [] and w.in_flight() == 1
    # Within one message, a slot whose popped row was taken goes to the next popped one.
    w.running(rows[2], "t3")
    [target] = tr.load_poll_targets(w.engine, [rows[2]])
    done = tr.PollOutcome(target, "completed", w.piapi.set("t3", "completed"))
    plan = tr.Handoff({"b1": [rows[1], rows[3]]}, frozenset({rows[2]}), LEASE)
    recorded = tr.record_and_hand_off(w.engine, [done], w.now + 1, plan)
    assert [c.job_id for c in recorded.claims] == [rows[3]]
    assert recorded.standby_used == {"b1": 2}


def test_a_repeated_poll_frees_and_claims_nothing(world: World) -> None:
    w = world
    rows = add_batch(w.engine, "b1", 3, JOY)
    w.running(rows[0], "t1")
    w.piapi.set("t1", "completed")
    [target] = tr.load_poll_targets(w.engine, [rows[0]])
    done = tr.PollOutcome(target, "completed", w.piapi.views["t1"])
    plan = tr.Handoff({"b1": rows[1:]}, frozenset({rows[0]}), LEASE)
    first = tr.record_and_hand_off(w.engine, [done], T0 + 5, plan)
    again = tr.record_and_hand_off(w.engine, [done], T0 + 6, plan)
    assert (first.freed, [c.job_id for c in first.claims]) == (1, [rows[1]])
    assert (again.freed, again.claims) == (0, [])
    assert job(w.engine, rows[2]).state == JobState.QUEUED


def test_a_row_another_transaction_holds_is_passed_over_not_waited_for(
        database_url: str) -> None:
    # The dispatcher leasing a row, or another worker claiming it, holds it until its
    # commit; a handoff claim that waited there stalled whole messages on PostgreSQL.
    if is_sqlite(database_url):
        pytest.skip("SQLite has one writer and no row locks to pass over")
    engine = create_engine(database_url, connect_args={"options": "-c lock_timeout=2000"})
    try:
        create_tables(engine)
        rows = add_batch(engine, "b1", 3, JOY)
        with engine.connect() as holder:
            holder.begin()
            holder.execute(select(JOBS.c.id).where(JOBS.c.id == rows[0]).with_for_update())
            with transaction(engine) as conn:
                claim, used = claim_standby(conn, rows, "b1", JOY[0], T0, LEASE)
            holder.rollback()
        assert claim is not None and (claim.job_id, used) == (rows[1], 2)
        assert job(engine, rows[0]).state == JobState.QUEUED  # free again for the next
    finally:
        engine.dispose()


@pytest.mark.parametrize("control", [{"budget_usd": 5.0}, {"paused": "budget"},
                                     {"cancel_mode": "finish"}, {"deadline_at": T0 + 3600}])
def test_a_batch_with_a_control_gets_no_handoff(engine: Engine, redis_url: str,
                                                control: dict[str, Any]) -> None:
    # Admission weighs these per create: a list published before the control was set is
    # inert, the slot is freed for the dispatcher to decide.
    w = World(engine, redis_url)
    rows = add_batch(w.engine, "b1", 3, JOY)
    w.running(rows[0], "t1")
    handoff.publish(w.redis, {"b1": rows[1:]})
    with transaction(w.engine) as conn:
        conn.execute(BATCHES.update().where(BATCHES.c.id == "b1").values(**control))
    w.finish("t1", rows[0])
    assert [job(w.engine, r).state for r in rows[1:]] == [JobState.QUEUED] * 2
    assert w.piapi.created == [] and w.in_flight() == 0


def test_only_the_same_batch_and_model_take_the_slot(world: World) -> None:
    w = world
    joy = add_batch(w.engine, "b1", 1, JOY)
    flux = add_batch(w.engine, "b2", 2, FLUX)
    w.running(joy[0], "t1")
    handoff.publish(w.redis, {"b1": flux, "b2": flux})  # ids of another batch and model
    w.finish("t1", joy[0])
    assert [job(w.engine, r).state for r in flux] == [JobState.QUEUED] * 2
    assert w.piapi.created == []


def test_an_abandoned_task_still_watched_keeps_its_slot(world: World) -> None:
    w = world
    rows = add_batch(w.engine, "b1", 3, JOY)
    w.running(rows[0], "t1")
    [target] = tr.load_poll_targets(w.engine, [rows[0]])
    view = w.piapi.set("t1", "processing")
    abandoned = tr.PollOutcome(target, "retry", view, next_at=T0, message="stuck",
                               attempt_state=AttemptState.ABANDONED.value,
                               watch_until=T0 + 9000, watch_next=T0 + 100)
    completed = tr.PollOutcome(target, "completed", view)
    assert not handoff.hands_off(abandoned, PollMode.EAGER)  # PiAPI may still run it
    assert handoff.hands_off(completed, PollMode.EAGER)
    assert handoff.hands_off(completed, PollMode.WEBHOOK)
    # Slots freed by PiAPI's in-flight count: the dispatcher may have refilled it already.
    assert not handoff.hands_off(completed, PollMode.LAZY)
    assert not handoff.hands_off(tr.PollOutcome(target, "progress", view, next_at=T0),
                                 PollMode.EAGER)


def test_standby_lists_in_redis(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    handoff.publish(client, {"a": [1, 2, 3], "b": [7]})
    assert handoff.lengths(client, ["a", "b", "c"]) == {"a": 3, "b": 1, "c": 0}
    popped, low = handoff.take(client, {"a": 2, "b": 0})
    assert (popped, low) == ({"a": [1, 2]}, True)  # 1 left: under REFILL_BELOW
    popped, low = handoff.take(client, {"b": 3})
    assert popped == {"b": [7]} and low  # came up short
    handoff.publish(client, {"a": [9]}, clear=["b"])
    assert handoff.lengths(client, ["a", "b"]) == {"a": 1, "b": 0}
    assert 0 < client.pttl(handoff.key("a")) <= handoff.STANDBY_TTL_MS
    assert handoff.within({"a": 2, "b": 3}, 3) == {"a": 2, "b": 1}
    assert handoff.within({"a": 2}, 0) == {"a": 0}


def test_standby_rows_are_the_ones_the_dispatcher_would_lease_next(engine: Engine) -> None:
    rows = add_batch(engine, "b1", 6, JOY)
    set_jobs(engine, rows[4], state=JobState.RETRY_WAIT.value, next_at=T0 - 1)  # due
    set_jobs(engine, rows[5], state=JobState.RETRY_WAIT.value, next_at=T0 + 60)  # not yet
    set_jobs(engine, rows[3], priority=5)  # the longest expected
    set_jobs(engine, rows[0], lease_until=T0 + 10, lease_epoch=EPOCH)  # a message is out
    picked = leases.standby(engine, "b1", 4, T0, EPOCH)
    assert picked == [rows[4], rows[3], rows[1], rows[2]]
    assert leases.standby(engine, "b1", 4, T0, EPOCH, retries=False)[0] == rows[3]
    leased = leases.lease_submits(engine, "b1", 4, T0, EPOCH, LEASE)
    assert sorted(leased) == sorted(picked)  # the same rows


def test_a_run_hands_freed_slots_over_and_holds_the_limit(sqlite_url: str,
                                                          run_rows: RunRows) -> None:
    code, results, stats, _ = run_rows(sqlite_url, caption_rows(60),
                                       ["--time-scale", "0.01", "--concurrency", "4"],
                                       run_args=("--concurrency", "4"), PIAPI_BULK_HANDOFF="1")
    assert code == 0 and {r["status"] for r in results} == {"completed"}
    assert stats["peak_in_flight"] <= 4 and stats["max_creates_per_input"] == 1
    eng = create_engine(sqlite_url)
    with eng.connect() as conn:
        ended = {float(t) for (t,) in conn.execute(select(JOBS.c.finished_at))}
        began = [float(t) for (t,) in conn.execute(select(ATTEMPTS.c.started_at))]
    eng.dispose()
    # A handoff's attempt begins in the transaction that records a task's end, at the same
    # instant; a create the dispatcher sent never does.
    assert sum(t in ended for t in began) >= 20

"""Compare-and-set state changes and dispatch leases on a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Update
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from tests.integration.e2e import add_batch, job, set_jobs
from tests.unit.test_states import WRITERS, declared
from workers import durations, leases
from workers import transitions as tr
from workers.db import transaction
from workers.expected import expected_s
from workers.halt import clear_halt, get_halt, named
from workers.models import ATTEMPTS, BATCHES, DURATION_SAMPLES, JOBS, Attempt
from workers.piapi import TaskError, TaskView, Usage
from workers.polling import MIN_SAMPLES
from workers.states import ACTIVE, ALLOWED, AttemptState, ErrorKind, JobState

NOW = 1_000_000.0
LEASE = 30.0


def view(task_id: str, status: str = "pending", output: object = None,
         error: TaskError | None = None) -> TaskView:
    return TaskView(task_id=task_id, model="Qubico/joycaption", task_type="joycaption-beta-one",
                    status=status, output=output, usage=Usage("llm", 0, 100000), error=error,
                    created_at=None, started_at=None, ended_at=None)


def attempts(engine: Engine, job_id: int) -> list[Attempt]:
    with Session(engine) as s:
        return list(s.exec(select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.n)))


def claimed(engine: Engine, job_id: int, at: float = NOW) -> tr.Claim:
    """The job claimed for a create at `at`."""
    claim = tr.claim_for_submit(engine, job_id, at, LEASE)
    assert claim is not None
    return claim


def running(engine: Engine, job_id: int) -> tr.PollTarget:
    """The job claimed and created as task t1 at NOW (next poll at NOW + 1), as a poll
    sees it."""
    tr.record_created(engine, claimed(engine, job_id), view("t1"), NOW, NOW + 1)
    [target] = tr.load_poll_targets(engine, [job_id])
    return target


def test_claim_records_the_attempt_first_and_only_once(engine: Engine) -> None:
    [j, *_] = add_batch(engine)
    claim = tr.claim_for_submit(engine, j, NOW, LEASE)
    assert claim is not None and claim.input == {"image": "ub11"}
    assert tr.claim_for_submit(engine, j, NOW, LEASE) is None  # a duplicate message
    [a] = attempts(engine, j)
    assert a.state == AttemptState.POSTING and a.task_id is None
    assert job(engine, j).state == JobState.SUBMITTING


def test_created_then_duplicate_answer_changes_nothing(engine: Engine) -> None:
    [j, *_] = add_batch(engine)
    claim = claimed(engine, j)
    assert tr.record_created(engine, claim, view("t1"), NOW, NOW + 1)
    assert not tr.record_created(engine, claim, view("t1"), NOW, NOW + 1)
    row = job(engine, j)
    assert (row.state, row.task_id, row.attempts) == ("running", "t1", 1)
    assert attempts(engine, j)[0].task_id == "t1"


def test_poll_guard_makes_a_repeated_poll_harmless(engine: Engine) -> None:
    [j, *_] = add_batch(engine)
    target = running(engine, j)
    assert tr.record_progress(engine, target, view("t1", "processing"), NOW + 5)
    assert not tr.record_progress(engine, target, view("t1", "processing"), NOW + 5)
    [target] = tr.load_poll_targets(engine, [j])
    assert tr.record_completed(engine, target, view("t1", "completed", {"text": "hi"}), NOW + 6)
    assert not tr.record_completed(engine, target, view("t1", "completed", {"text": "x"}), NOW)
    row = job(engine, j)
    assert row.state == "completed" and row.output_json == '{"text":"hi"}'
    assert attempts(engine, j)[0].state == AttemptState.COMPLETED


def test_durations_are_learned_per_unit_of_work_and_scaled_back(engine: Engine) -> None:
    # A 10 s Kling clip is 2 units of the kind's default 5 s: its poll target carries the
    # factor, its 200 s is recorded as 100 s per unit, and the kind's mean comes back x2
    # for it (x1 for a 5 s clip).
    kling = ("kling", "video_generation")
    ids = add_batch(engine, rows=MIN_SAMPLES, kind=kling)
    set_jobs(engine, *ids, input_json='{"duration":10,"prompt":"p"}')
    outcomes = []
    for j in ids:
        target = running(engine, j)
        assert target.factor == pytest.approx(2.0)
        done = replace(view("t1", "completed", {"video": "u"}), model=kling[0],
                       task_type=kling[1])
        outcomes.append(tr.PollOutcome(target, "completed", done, duration_s=200.0))
    assert tr.record_poll_outcomes(engine, outcomes, NOW + 200) == MIN_SAMPLES
    with engine.connect() as conn:
        stored = conn.execute(select(DURATION_SAMPLES.c.duration_s)).scalars().all()
    assert stored == [pytest.approx(100.0)] * MIN_SAMPLES
    typical = durations.typical_by_kind(engine)[kling]
    assert typical == pytest.approx(100.0)
    assert expected_s(*kling, {"duration": 10}, typical) == pytest.approx(200.0)
    assert expected_s(*kling, {"duration": 5}, typical) == pytest.approx(100.0)


def test_failed_task_retries_as_a_new_attempt_only_when_due(engine: Engine) -> None:
    [j, *_] = add_batch(engine)
    target = running(engine, j)
    err = TaskError(1, "failed", "no available account")
    state = tr.record_task_failed(engine, target, view("t1", "failed", error=err), NOW,
                                  kind=ErrorKind.PROVIDER, message="x", retry_at=NOW + 10)
    assert state == JobState.RETRY_WAIT
    assert tr.claim_for_submit(engine, j, NOW + 5, LEASE) is None  # not due yet
    claim2 = tr.claim_for_submit(engine, j, NOW + 10, LEASE)
    assert claim2 is not None and claim2.attempt_n == 2
    assert [a.state for a in attempts(engine, j)] == [AttemptState.FAILED, AttemptState.POSTING]


def test_a_lost_create_never_adopts_an_earlier_attempts_task(engine: Engine) -> None:
    # Found by the chaos run: attempt 1's task failed; attempt 2's create lost its answer.
    # The history lists both tasks (same input, same window); attempt 1's is not the one
    # to adopt, or attempt 2's real task runs unrecorded and the row is paid twice.
    from workers.reconcile import records as amb

    [j, *_] = add_batch(engine)
    target = running(engine, j)
    err = TaskError(1, "failed", "no available account")
    tr.record_task_failed(engine, target, view("t1", "failed", error=err), NOW,
                          kind=ErrorKind.PROVIDER, message="x", retry_at=NOW + 1)
    claim2 = tr.claim_for_submit(engine, j, NOW + 1, LEASE)
    assert claim2 is not None and claim2.attempt_n == 2
    tr.record_ambiguous(engine, claim2, NOW + 2, "no answer to create")
    [lost] = amb.load_ambiguous(engine, [j])
    assert lost.attempt_n == 2
    assert amb.owned_elsewhere(engine, j, 2, ["t1", "t2"]) == {"t1"}
    assert not amb.adopt(engine, lost, view("t1", "failed", error=err), NOW + 3, NOW + 3, "x")
    assert amb.adopt(engine, lost, view("t2"), NOW + 3, NOW + 4, "history")
    assert (job(engine, j).state, job(engine, j).task_id) == ("running", "t2")


def test_lost_worker_makes_the_create_ambiguous_and_a_late_answer_is_adopted(
        engine: Engine) -> None:
    [j, *_] = add_batch(engine)
    claim = claimed(engine, j)
    assert tr.expire_submitting(engine, NOW + LEASE - 1) == []  # lease still valid
    assert tr.expire_submitting(engine, NOW + LEASE + 1) == [j]
    assert job(engine, j).state == JobState.AMBIGUOUS
    assert tr.resolve_ambiguous_as_failed(engine, NOW + LEASE + 2) == 1
    row = job(engine, j)
    assert (row.state, row.error_kind, row.attempts) == ("failed", "ambiguous", 1)
    # The worker was only slow: its answer arrives and the paid task is adopted, not lost.
    assert tr.record_created(engine, claim, view("t9"), NOW + LEASE + 3, NOW + LEASE + 4)
    row = job(engine, j)
    assert (row.state, row.task_id, row.attempts) == ("running", "t9", 1)


def test_retryable_refusals_are_bounded(engine: Engine) -> None:
    [j, *_] = add_batch(engine)
    t = NOW
    for _ in range(2):
        claim = claimed(engine, j, t)
        assert tr.record_create_retry(engine, claim, t, t + 1, "HTTP 429", max_tries=3) \
            == JobState.RETRY_WAIT
        t += 1
    claim = claimed(engine, j, t)
    assert tr.record_create_retry(engine, claim, t, t + 1, "HTTP 429", 3) == JobState.FAILED
    row = job(engine, j)
    assert row.error_kind == ErrorKind.RETRIES_EXHAUSTED and row.attempts == 0


@pytest.mark.parametrize("max_tries", [1, 2, 3])
def test_a_row_fails_at_exactly_its_max_tries_th_retryable_refusal(engine: Engine,
                                                                  max_tries: int) -> None:
    [j, *_] = add_batch(engine)
    t = NOW
    for tries in range(1, max_tries + 1):
        claim = tr.claim_for_submit(engine, j, t, LEASE)
        assert claim is not None and claim.tries == tries - 1
        expected = JobState.FAILED if tries == max_tries else JobState.RETRY_WAIT
        assert tr.record_create_retry(engine, claim, t, t + 1, "HTTP 503", max_tries) \
            == expected
        t += 1
    assert tr.claim_for_submit(engine, j, t, LEASE) is None
    assert [a.state for a in attempts(engine, j)] == [AttemptState.REFUSED] * max_tries


def test_a_poll_error_keeps_the_task_and_a_stale_one_changes_nothing(engine: Engine) -> None:
    [j, *_] = add_batch(engine)
    target = running(engine, j)
    error = tr.PollOutcome(target, "poll_error", next_at=NOW + 7, message="HTTP 502")
    assert tr.record_poll_outcomes(engine, [error], NOW + 1) == 0  # no slot freed
    row = job(engine, j)
    assert (row.state, row.task_id, row.poll_errors, row.next_at, row.error_message) == \
        (JobState.RUNNING, "t1", 1, NOW + 7, "HTTP 502")
    assert attempts(engine, j)[0].state == AttemptState.CREATED
    # A GET that worked since: an error recorded for the earlier poll no longer matches.
    progress = tr.PollOutcome(target, "progress", view("t1", "processing"), next_at=NOW + 8)
    assert tr.record_poll_outcomes(engine, [progress], NOW + 8) == 0
    assert tr.record_poll_outcomes(engine, [error], NOW + 9) == 0
    row = job(engine, j)
    assert (row.poll_errors, row.polls, row.next_at) == (0, 1, NOW + 8)


def test_a_task_piapi_lost_fails_the_row_and_frees_its_slot(engine: Engine) -> None:
    [j, *_] = add_batch(engine)
    target = running(engine, j)
    lost = tr.PollOutcome(target, "lost", message="PiAPI does not know the task")
    assert tr.record_poll_outcomes(engine, [lost], NOW + 1) == 1
    row = job(engine, j)
    assert (row.state, row.error_kind, row.finished_at, row.attempts) == \
        (JobState.FAILED, ErrorKind.NOT_FOUND, NOW + 1, 1)
    assert tr.load_poll_targets(engine, [j]) == []
    assert tr.record_poll_outcomes(engine, [lost], NOW + 2) == 0  # a repeat changes nothing
    assert tr.claim_for_submit(engine, j, NOW + 3, LEASE) is None  # never posted again here


def test_account_refusal_requeues_and_halts(engine: Engine) -> None:
    [j, *_] = add_batch(engine)
    claim = claimed(engine, j)
    tr.record_create_requeued(engine, claim, NOW, "HTTP 401")
    assert job(engine, j).state == JobState.QUEUED
    assert get_halt(engine) == named("HTTP 401")  # with the process refused
    clear_halt(engine)
    assert get_halt(engine) is None


def test_leases_fill_only_free_slots_and_a_new_epoch_voids_them(engine: Engine) -> None:
    ids = add_batch(engine, rows=5)
    got = leases.lease_submits(engine, "b1", 2, NOW, "e1", LEASE)
    assert got == ids[:2]
    occ = leases.occupancy(engine, NOW, "e1")
    assert occ.total == 2 and occ.by_batch == {"b1": 2}
    # Same epoch, lease held: not leased again.
    assert leases.lease_submits(engine, "b1", 5, NOW, "e1", LEASE) == ids[2:]
    # Redis was flushed (new epoch): every message is gone, every job is due again.
    assert leases.occupancy(engine, NOW, "e2").total == 0
    assert leases.lease_submits(engine, "b1", 5, NOW, "e2", LEASE) == ids
    # Expired by time too.
    assert leases.lease_submits(engine, "b1", 5, NOW + LEASE + 1, "e2", LEASE) == ids


def test_polls_are_leased_when_due_most_overdue_first(engine: Engine) -> None:
    ids = add_batch(engine, rows=3)
    for k, j in enumerate(ids):
        claim = claimed(engine, j)
        tr.record_created(engine, claim, view(f"t{k}"), NOW, NOW + 10 - k)
    assert leases.lease_polls(engine, 10, NOW + 5, "e", LEASE) == {}
    assert leases.lease_polls(engine, 10, NOW + 9, "e", LEASE) == dict.fromkeys(ids[1:], "b1")
    assert leases.lease_polls(engine, 10, NOW + 9, "e", LEASE) == {}
    assert leases.next_due_at(engine, NOW + 9) == NOW + 10


def test_done_batches_are_marked(engine: Engine) -> None:
    [j] = add_batch(engine, rows=1)
    assert leases.mark_done_batches(engine) == []
    claim = claimed(engine, j)
    tr.record_create_rejected(engine, claim, NOW, ErrorKind.INPUT, "HTTP 400")
    assert leases.mark_done_batches(engine) == ["b1"]
    assert leases.open_batches(engine) == []


@pytest.mark.parametrize("state", sorted(ACTIVE))
def test_a_batch_with_its_last_row_active_in_any_state_is_not_done(engine: Engine,
                                                                     state: JobState) -> None:
    # One probe per active state (workers.leases._ANY_ACTIVE): each state must be seen.
    ids = add_batch(engine, rows=3)
    with transaction(engine) as conn:
        conn.execute(JOBS.update().where(JOBS.c.id.in_(ids[:-1])).values(state="completed"))
        conn.execute(JOBS.update().where(JOBS.c.id == ids[-1]).values(state=state.value))
    assert leases.mark_done_batches(engine) == []
    with transaction(engine) as conn:
        conn.execute(JOBS.update().where(JOBS.c.id == ids[-1]).values(state="failed"))
    assert leases.mark_done_batches(engine) == ["b1"]


# --- every statement that changes jobs.state, on a real database -----------------------------
# Rows in any state, run through the statements built from the table (found in the code by
# tests/unit/test_states.py): each moves only the rows, from only the states, it declares.

STATEMENTS = sorted(WRITERS.items())
PLAIN = (None, AttemptState.CREATED)
"""(error_kind, state of its last attempt) of a row whose last create is known..."""
UNKNOWN = (ErrorKind.AMBIGUOUS.value, AttemptState.AMBIGUOUS)
"""...and of one whose last create's outcome is unknown (operator's retry tells them apart)."""


Row = tuple[JobState, tuple[str | None, AttemptState]]


def reset(engine: Engine, rows: list[Row]) -> list[int]:
    """A batch (cancelled, past its deadline, reuse on) holding these rows, pairs of twins
    (rows 1-2, 3-4...), each due, with one attempt whose task is the row's."""
    with transaction(engine) as conn:
        for table in (ATTEMPTS, JOBS, BATCHES):
            conn.execute(table.delete())
        conn.execute(BATCHES.insert().values(
            id="b1", content_hash="h", source="t.jsonl", created_at=NOW, ingested=True,
            total=len(rows), invalid=0, max_attempts=3, done=False, reuse=True,
            cancel_mode="now", deadline_at=NOW - 1))
        ids = []
        for i, (state, (kind, attempt)) in enumerate(rows, start=1):
            [(job_id,)] = conn.execute(JOBS.insert().values(
                batch_id="b1", seq=i, line=i, row_key=str(i), model="m", task_type="t",
                input_json="{}", state=state.value, attempts=1, posts=1, tries=0,
                retry_base=0, task_id=f"t{i}", next_at=NOW - 1, lease_until=NOW - 1,
                polls=0, poll_errors=0, created_at=NOW, submitted_at=NOW, finished_at=NOW,
                error_kind=kind, fingerprint=f"fp{(i + 1) // 2}").returning(JOBS.c.id)).all()
            conn.execute(ATTEMPTS.insert().values(job_id=job_id, n=1, state=attempt.value,
                                                  task_id=f"t{i}", started_at=NOW))
            ids.append(int(job_id))
    return ids


def states(engine: Engine) -> dict[int, str]:
    with transaction(engine) as conn:
        return {int(i): str(s) for i, s in conn.execute(JOBS.select().with_only_columns(
            JOBS.c.id, JOBS.c.state))}


def run(engine: Engine, statement: Update, job_id: int, twin_id: int,
        src: JobState) -> int:
    """Execute `statement` aimed at `job_id` (its source state named `src` when the
    statement takes it as a parameter), with every other parameter set to let it apply;
    returns how many rows it changed."""
    binds = statement.compile().binds
    m = declared(statement)
    with transaction(engine) as conn:
        row = conn.execute(JOBS.select().where(JOBS.c.id == job_id)).one()._mapping
        params: dict[str, Any] = {
            "p_job": job_id, "p_ids": [job_id], "p_now": NOW, "p_lease_until": NOW + LEASE,
            "p_n": row["posts"], "p_task": row["task_id"], "p_polls": row["polls"],
            "p_current": row["task_id"], "p_status": "pending", "p_next": NOW + 5,
            "p_consume": None, "p_usage_type": None, "p_tries": 1, "p_error": "e",
            "p_kind": ErrorKind.PROVIDER.value, "p_max": 10, "p_submitted": NOW,
            "p_batch": "b1", "p_keys": [row["row_key"]], "p_twin": twin_id,
            "p_cutoff": NOW - 3600, "p_lo": 0, "p_hi": 10**6, "p_output": "{}",
            "p_note": "n", "p_id": job_id, "p_model": "m"}
        if m.given is not None:
            params[m.given] = [src.value] if binds[m.given].expanding else src.value
        plain = "p_model" in binds  # a slot handoff's claim: only in a batch without controls
        if plain:
            conn.execute(BATCHES.update().values(cancel_mode=None, deadline_at=None))
        result = conn.execute(statement, {k: v for k, v in params.items() if k in binds})
        # (with RETURNING, SQLite counts the rows only once they are read)
        changed = len(result.all()) if result.returns_rows else int(result.rowcount)
        if plain:
            conn.execute(BATCHES.update().values(cancel_mode="now", deadline_at=NOW - 1))
        return changed


def twin_of(ids: list[int], k: int) -> int:
    return ids[k + 1 if k % 2 == 0 else k - 1]


def test_every_statement_moves_exactly_the_states_it_declares(engine: Engine) -> None:
    # A row in each state, each statement aimed at it: it moves from a declared source
    # (so the table is not wider than the SQL) and from nothing else (nor is the SQL wider
    # than the table); a completed twin beside it never moves.
    wrong = []
    for name, statement in STATEMENTS:
        m = declared(statement)
        for state in JobState:
            moved = set()
            for flavour in (PLAIN, UNKNOWN):
                ids = reset(engine, [(state, flavour), (JobState.COMPLETED, PLAIN)])
                given_state = state if state in m.sources else min(m.sources)
                changed = run(engine, statement, ids[0], ids[1], given_state)
                after = states(engine)
                assert after[ids[1]] == JobState.COMPLETED, name
                if changed:  # (retry_wait -> retry_wait changes the row, not its state)
                    assert changed == 1, name
                    moved.add(after[ids[0]])
            expected = {m.target} if state in m.sources else set()
            if moved != expected:
                wrong.append(f"{name}: from {state} moved to {moved or 'nothing'}, "
                             f"declared {expected or 'nothing'}")
    assert wrong == []


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(st.sampled_from(list(JobState)),
                               st.sampled_from([PLAIN, UNKNOWN])), min_size=4, max_size=4),
       steps=st.lists(st.tuples(st.integers(0, len(STATEMENTS) - 1), st.integers(0, 3),
                                st.integers(0, 8)), min_size=1, max_size=16))
def test_random_moves_change_only_what_the_table_allows(
        engine: Engine, rows: list[Row], steps: list[tuple[int, int, int]]) -> None:
    ids = reset(engine, rows)
    before = states(engine)
    for which, k, pick in steps:
        name, statement = STATEMENTS[which]
        m = declared(statement)
        src = sorted(m.sources)[pick % len(m.sources)]
        run(engine, statement, ids[k], twin_of(ids, k), src)
        after = states(engine)
        for job_id, old in before.items():
            new = after[job_id]
            if new == old:
                continue
            assert JobState(new) in ALLOWED[JobState(old)], f"{name}: {old} -> {new}"
            assert (JobState(old) in m.sources and new == m.target), f"{name}: {old} -> {new}"
            if m.given is not None:
                assert old == src, f"{name} moved a row from {old}, not the {src} it was given"
            if "p_job" in statement.compile().binds:
                assert job_id == ids[k], f"{name} moved job {job_id}, not {ids[k]}"
        before = after


def test_a_create_whose_answer_was_lost_holds_its_slot(engine: Engine) -> None:
    """An ambiguous row's task may be in flight at PiAPI: until it is reconciled it counts
    against the limit like a running one (not as a create PiAPI may not count yet)."""
    ids = add_batch(engine, "b1", rows=4)
    set_jobs(engine, ids[0], state=JobState.RUNNING.value)
    set_jobs(engine, ids[1], state=JobState.AMBIGUOUS.value)
    set_jobs(engine, ids[2], state=JobState.SUBMITTING.value)
    occ = leases.occupancy(engine, NOW, "e1")
    assert (occ.total, occ.by_batch, occ.creating) == (3, {"b1": 3}, 1)


def test_a_broker_that_cannot_be_reached_in_a_pass_is_waited_out(engine: Engine,
                                                                 redis_url: str) -> None:
    """Celery's publish raises kombu's OperationalError (no redis.RedisError) when Redis
    went away mid-pass: the dispatcher waits and passes again, as for any Redis error,
    instead of exiting with a traceback."""
    import threading

    import redis
    from kombu.exceptions import OperationalError

    from scheduler.dispatcher import Dispatcher
    from workers.app import create_celery

    d = Dispatcher(engine, redis.Redis.from_url(redis_url), create_celery(redis_url),
                   lease_s=LEASE)
    stop = threading.Event()
    passes: list[bool] = []

    def step(leading: bool) -> tuple[bool, float]:
        passes.append(leading)
        if len(passes) == 1:
            raise OperationalError("Error 111 connecting to 127.0.0.1:6390. Connection refused.")
        stop.set()
        return False, 0.0

    d._step = step  # type: ignore[method-assign]
    d.run(stop)
    assert passes == [False, False]


def test_a_dispatcher_lifts_the_halt_once_piapi_accepts_the_key(engine: Engine,
                                                                redis_url: str) -> None:
    """A standing fleet halted by a refused key is not halted for good: its dispatcher asks
    PiAPI (/account/info) every HALT_RECHECK_S whether the key is accepted again, and lifts
    the halt when it is; while refused, it stays halted and asks no sooner."""
    import redis

    from scheduler.dispatcher import HALT_RECHECK_S, Dispatcher
    from workers.app import create_celery
    from workers.halt import set_halt
    from workers.piapi import AccountError

    answers: list[int | Exception] = [AccountError("HTTP 401: key refused", status=401), 10]
    asked: list[float] = []
    now = NOW

    def account_limit() -> int:
        asked.append(now)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    d = Dispatcher(engine, redis.Redis.from_url(redis_url), create_celery(redis_url),
                   lease_s=LEASE, account_limit=account_limit, clock=lambda: now)
    assert d.halted(now) is None and asked == []
    set_halt(engine, "HTTP 401: key refused", now)
    assert d.halted(now) == named("HTTP 401: key refused") and asked == []  # first seen
    now += HALT_RECHECK_S - 1
    assert d.halted(now) == named("HTTP 401: key refused") and asked == []
    now += 1
    assert d.halted(now) == named("HTTP 401: key refused") and asked == [now]  # asked: refused
    now += 1
    assert d.halted(now) == named("HTTP 401: key refused") and len(asked) == 1
    now += HALT_RECHECK_S
    assert d.halted(now) is None and asked[-1] == now and get_halt(engine) is None

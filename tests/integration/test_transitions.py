"""Compare-and-set state changes and dispatch leases on a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from workers import leases
from workers import transitions as tr
from workers.control import clear_halt, get_halt
from workers.db import session
from workers.models import Attempt, Batch, Job
from workers.piapi import TaskError, TaskView, Usage
from workers.states import ErrorKind, JobState

NOW = 1_000_000.0
LEASE = 30.0


def add_batch(engine: Engine, batch_id: str = "b1", rows: int = 3, concurrency: int | None = None,
              max_attempts: int = 3) -> list[int]:
    with session(engine) as s:
        s.add(Batch(id=batch_id, content_hash=batch_id * 4, source="t.jsonl", created_at=NOW,
                    ingested=True, total=rows, max_attempts=max_attempts, concurrency=concurrency))
        s.flush()
        jobs = [Job(batch_id=batch_id, seq=i, line=i, row_key=str(i), model="Qubico/joycaption",
                    task_type="joycaption-beta-one", input_json=f'{{"image":"u{i}"}}')
                for i in range(1, rows + 1)]
        s.add_all(jobs)
        s.flush()
        return [int(j.id) for j in jobs if j.id is not None]


def view(task_id: str, status: str = "pending", output: object = None,
         error: TaskError | None = None) -> TaskView:
    return TaskView(task_id=task_id, model="Qubico/joycaption", task_type="joycaption-beta-one",
                    status=status, output=output, usage=Usage("llm", 0, 100000), error=error,
                    created_at=None, started_at=None, ended_at=None)


def job(engine: Engine, job_id: int) -> Job:
    with Session(engine) as s:
        return s.get_one(Job, job_id)


def attempts(engine: Engine, job_id: int) -> list[Attempt]:
    with Session(engine) as s:
        return list(s.exec(select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.n)))


def test_claim_records_the_attempt_first_and_only_once(engine: Engine) -> None:
    [j, *_] = add_batch(engine)
    claim = tr.claim_for_submit(engine, j, NOW, LEASE)
    assert claim is not None and claim.input == {"image": "u1"}
    assert tr.claim_for_submit(engine, j, NOW, LEASE) is None  # a duplicate message
    [a] = attempts(engine, j)
    assert a.state == "posting" and a.task_id is None
    assert job(engine, j).state == JobState.SUBMITTING


def test_created_then_duplicate_answer_changes_nothing(engine: Engine) -> None:
    [j, *_] = add_batch(engine)
    claim = tr.claim_for_submit(engine, j, NOW, LEASE)
    assert claim is not None
    assert tr.record_created(engine, claim, view("t1"), NOW, NOW + 1)
    assert not tr.record_created(engine, claim, view("t1"), NOW, NOW + 1)
    row = job(engine, j)
    assert (row.state, row.task_id, row.attempts) == ("running", "t1", 1)
    assert attempts(engine, j)[0].task_id == "t1"


def test_poll_guard_makes_a_repeated_poll_harmless(engine: Engine) -> None:
    [j, *_] = add_batch(engine)
    claim = tr.claim_for_submit(engine, j, NOW, LEASE)
    assert claim is not None
    tr.record_created(engine, claim, view("t1"), NOW, NOW + 1)
    [target] = tr.load_poll_targets(engine, [j])
    assert tr.record_progress(engine, target, view("t1", "processing"), NOW + 5)
    assert not tr.record_progress(engine, target, view("t1", "processing"), NOW + 5)
    [target] = tr.load_poll_targets(engine, [j])
    assert tr.record_completed(engine, target, view("t1", "completed", {"text": "hi"}), NOW + 6)
    assert not tr.record_completed(engine, target, view("t1", "completed", {"text": "x"}), NOW)
    row = job(engine, j)
    assert row.state == "completed" and row.output_json == '{"text":"hi"}'
    assert attempts(engine, j)[0].state == "completed"


def test_failed_task_retries_as_a_new_attempt_only_when_due(engine: Engine) -> None:
    [j, *_] = add_batch(engine)
    claim = tr.claim_for_submit(engine, j, NOW, LEASE)
    assert claim is not None
    tr.record_created(engine, claim, view("t1"), NOW, NOW + 1)
    [target] = tr.load_poll_targets(engine, [j])
    err = TaskError(1, "failed", "no available account")
    state = tr.record_task_failed(engine, target, view("t1", "failed", error=err), NOW,
                                  kind=ErrorKind.PROVIDER, message="x", retry_at=NOW + 10)
    assert state == JobState.RETRY_WAIT
    assert tr.claim_for_submit(engine, j, NOW + 5, LEASE) is None  # not due yet
    claim2 = tr.claim_for_submit(engine, j, NOW + 10, LEASE)
    assert claim2 is not None and claim2.attempt_n == 2
    assert [a.state for a in attempts(engine, j)] == ["failed", "posting"]


def test_a_lost_create_never_adopts_an_earlier_attempts_task(engine: Engine) -> None:
    # Found by the chaos run: attempt 1's task failed; attempt 2's create lost its answer.
    # The history lists both tasks (same input, same window); attempt 1's is not the one
    # to adopt, or attempt 2's real task runs unrecorded and the row is paid twice.
    from workers.transitions import ambiguous as amb

    [j, *_] = add_batch(engine)
    claim = tr.claim_for_submit(engine, j, NOW, LEASE)
    assert claim is not None
    tr.record_created(engine, claim, view("t1"), NOW, NOW + 1)
    [target] = tr.load_poll_targets(engine, [j])
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
    claim = tr.claim_for_submit(engine, j, NOW, LEASE)
    assert claim is not None
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
        claim = tr.claim_for_submit(engine, j, t, LEASE)
        assert claim is not None
        assert tr.record_create_retry(engine, claim, t, t + 1, "HTTP 429", max_tries=3) \
            == JobState.RETRY_WAIT
        t += 1
    claim = tr.claim_for_submit(engine, j, t, LEASE)
    assert claim is not None
    assert tr.record_create_retry(engine, claim, t, t + 1, "HTTP 429", 3) == JobState.FAILED
    row = job(engine, j)
    assert row.error_kind == ErrorKind.RETRIES_EXHAUSTED and row.attempts == 0


def test_account_refusal_requeues_and_halts(engine: Engine) -> None:
    [j, *_] = add_batch(engine)
    claim = tr.claim_for_submit(engine, j, NOW, LEASE)
    assert claim is not None
    tr.record_create_requeued(engine, claim, NOW, "HTTP 401")
    assert job(engine, j).state == JobState.QUEUED
    assert get_halt(engine) == "HTTP 401"
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
        claim = tr.claim_for_submit(engine, j, NOW, LEASE)
        assert claim is not None
        tr.record_created(engine, claim, view(f"t{k}"), NOW, NOW + 10 - k)
    assert leases.lease_polls(engine, 10, NOW + 5, "e", LEASE) == []
    assert leases.lease_polls(engine, 10, NOW + 9, "e", LEASE) == ids[1:]
    assert leases.lease_polls(engine, 10, NOW + 9, "e", LEASE) == []
    assert leases.next_due_at(engine, NOW + 9) == NOW + 10


def test_done_batches_are_marked(engine: Engine) -> None:
    [j] = add_batch(engine, rows=1)
    assert leases.mark_done_batches(engine) == []
    claim = tr.claim_for_submit(engine, j, NOW, LEASE)
    assert claim is not None
    tr.record_create_rejected(engine, claim, NOW, ErrorKind.INPUT, "HTTP 400")
    assert leases.mark_done_batches(engine) == ["b1"]
    assert leases.open_batches(engine) == []

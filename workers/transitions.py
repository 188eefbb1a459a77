"""Every change of a job's state, each a compare-and-set on the state it expects.

`UPDATE jobs SET state = :new WHERE id = :id AND state = :expected` (plus whatever else
must still hold), with the row count checked: a Celery message delivered twice, a worker
that lost its lease, or two dispatchers racing can never apply a change twice. This is the
only module that writes `jobs.state`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.engine import CursorResult, Engine
from sqlalchemy.sql.base import Executable
from sqlmodel import Session, col

from workers.db import session
from workers.models import Attempt, Batch, Control, Job
from workers.piapi import TaskView
from workers.states import ErrorKind, JobState

logger = logging.getLogger(__name__)

Q, SUB, RUN, RW, AMB = (JobState.QUEUED, JobState.SUBMITTING, JobState.RUNNING,
                        JobState.RETRY_WAIT, JobState.AMBIGUOUS)
HALT_KEY = "halt"


@dataclass(frozen=True)
class Claim:
    """A job a worker now holds for one create, with what the create needs."""

    job_id: int
    batch_id: str
    attempt_id: int
    attempt_n: int
    model: str
    task_type: str
    input: dict[str, Any]
    tries: int


@dataclass(frozen=True)
class PollTarget:
    """A running job a worker is about to GET."""

    job_id: int
    task_id: str
    polls: int
    poll_errors: int
    attempts: int
    max_attempts: int
    model: str
    task_type: str
    submitted_at: float | None


def _cas(s: Session, statement: Executable) -> int:
    """Run an UPDATE and return how many rows it changed (0 means the guard did not hold)."""
    result = cast(CursorResult[Any], s.execute(statement))
    return int(result.rowcount)


def _moved(what: str, job_id: int) -> None:
    logger.info("job %s: %s skipped, the job is no longer where this worker left it",
                job_id, what)


def claim_for_submit(engine: Engine, job_id: int, now: float, lease_s: float) -> Claim | None:
    """queued|retry_wait(due) -> submitting, and record the attempt *before* any POST.

    None when the job is not due any more (a duplicate message, or another worker has it).
    """
    with session(engine) as s:
        claimed = _cas(s,
            update(Job)
            .where(col(Job.id) == job_id)
            .where(or_(col(Job.state) == Q.value,
                       and_(col(Job.state) == RW.value, col(Job.next_at) <= now)))
            .values(state=SUB.value, lease_until=now + lease_s, lease_epoch=None, next_at=None)
        )
        if claimed != 1:
            return None
        job = s.get_one(Job, job_id)
        n = int(s.scalar(select(func.coalesce(func.max(Attempt.n), 0))
                         .where(col(Attempt.job_id) == job_id)) or 0) + 1
        attempt = Attempt(job_id=job_id, n=n, state="posting", started_at=now)
        s.add(attempt)
        s.flush()
        assert attempt.id is not None and job.model and job.task_type
        return Claim(
            job_id=job_id, batch_id=job.batch_id, attempt_id=attempt.id, attempt_n=n,
            model=job.model, task_type=job.task_type,
            input=json.loads(job.input_json or "{}"), tries=job.tries,
        )


def _usage_values(view: TaskView) -> dict[str, Any]:
    if view.usage is None:
        return {}
    return {"usage_consume": view.usage.consume, "usage_type": view.usage.type or None}


def record_created(
    engine: Engine, claim: Claim, view: TaskView, now: float, next_poll_at: float
) -> bool:
    """submitting -> running with PiAPI's task id. False if the job had moved meanwhile.

    A late answer for a job already declared ambiguous adopts the task: it exists, it is
    paid for, and it is this row's most recent attempt.
    """
    values = dict(
        state=RUN.value, task_id=view.task_id, remote_status=view.status or "pending",
        attempts=col(Job.attempts) + 1, tries=0, polls=0, poll_errors=0, next_at=next_poll_at,
        lease_until=None, lease_epoch=None, submitted_at=now, error_kind=None,
        error_message=None, **_usage_values(view),
    )
    with session(engine) as s:
        _cas(s, update(Attempt).where(col(Attempt.id) == claim.attempt_id)
                  .values(state="created", task_id=view.task_id))
        done = _cas(s, update(Job).where(col(Job.id) == claim.job_id)
                         .where(col(Job.state) == SUB.value).values(**values))
        if done == 1:
            return True
        newer = exists().where(col(Attempt.job_id) == claim.job_id,
                               col(Attempt.n) > claim.attempt_n)
        adopt = dict(values, attempts=col(Job.attempts))  # counted when it went ambiguous
        adopted = _cas(s,
            update(Job).where(col(Job.id) == claim.job_id)
            .where(or_(col(Job.state) == AMB.value,
                       and_(col(Job.state) == JobState.FAILED.value,
                            col(Job.error_kind) == ErrorKind.AMBIGUOUS.value)))
            .where(~newer).values(**adopt)
        )
        if adopted:
            logger.warning("job %s: adopted task %s whose create had been declared ambiguous",
                           claim.job_id, view.task_id)
        return adopted == 1


def record_create_retry(
    engine: Engine, claim: Claim, now: float, retry_at: float, error: str, max_tries: int
) -> JobState | None:
    """A retryable refusal (nothing created): retry_wait until `retry_at`, or fail at the bound."""
    tries = claim.tries + 1
    if tries >= max_tries:
        return _fail_claim(engine, claim, now, ErrorKind.RETRIES_EXHAUSTED,
                           f"gave up after {tries} retryable errors; last: {error}", "refused")
    with session(engine) as s:
        _cas(s, update(Attempt).where(col(Attempt.id) == claim.attempt_id)
                  .values(state="refused", ended_at=now, error=error))
        done = _cas(s,
            update(Job).where(col(Job.id) == claim.job_id, col(Job.state) == SUB.value)
            .values(state=RW.value, tries=tries, next_at=retry_at, lease_until=None,
                    error_kind=None, error_message=error)
        )
    if done != 1:
        _moved("retry", claim.job_id)
        return None
    return RW


def _fail_claim(engine: Engine, claim: Claim, now: float, kind: ErrorKind, message: str,
                attempt_state: str) -> JobState | None:
    with session(engine) as s:
        _cas(s, update(Attempt).where(col(Attempt.id) == claim.attempt_id)
                  .values(state=attempt_state, ended_at=now, error=message))
        done = _cas(s,
            update(Job).where(col(Job.id) == claim.job_id, col(Job.state) == SUB.value)
            .values(state=JobState.FAILED.value, lease_until=None, finished_at=now,
                    error_kind=kind.value, error_message=message)
        )
    if done != 1:
        _moved("fail", claim.job_id)
        return None
    return JobState.FAILED


def record_create_rejected(
    engine: Engine, claim: Claim, now: float, kind: ErrorKind, message: str
) -> JobState | None:
    """PiAPI refused the create for good (bad input): the row fails, nothing was created."""
    return _fail_claim(engine, claim, now, kind, message, "refused")


def record_create_requeued(engine: Engine, claim: Claim, now: float, reason: str) -> None:
    """An account-wide refusal (key, credit): back to queued and halt the fleet."""
    with session(engine) as s:
        _cas(s, update(Attempt).where(col(Attempt.id) == claim.attempt_id)
                  .values(state="refused", ended_at=now, error=reason))
        s.execute(update(Job).where(col(Job.id) == claim.job_id, col(Job.state) == SUB.value)
                  .values(state=Q.value, lease_until=None, error_message=reason))
    set_halt(engine, reason, now)


def record_ambiguous(engine: Engine, claim: Claim, now: float, message: str) -> bool:
    """submitting -> ambiguous: the create may have made a paid task; never post blindly."""
    with session(engine) as s:
        s.execute(update(Attempt).where(col(Attempt.id) == claim.attempt_id)
                  .values(state="ambiguous", ended_at=now, error=message))
        done = _cas(s,
            update(Job).where(col(Job.id) == claim.job_id, col(Job.state) == SUB.value)
            .values(state=AMB.value, attempts=col(Job.attempts) + 1, lease_until=None,
                    error_kind=ErrorKind.AMBIGUOUS.value, error_message=message)
        )
    return done == 1


def expire_submitting(engine: Engine, now: float) -> list[int]:
    """Jobs whose worker died mid-create (lease expired in submitting) become ambiguous."""
    message = "the worker stopped while creating the task; it may or may not exist"
    with session(engine) as s:
        ids = list(s.scalars(select(col(Job.id)).where(col(Job.state) == SUB.value,
                                                  col(Job.lease_until) < now)))
        moved: list[int] = []
        for job_id in ids:
            assert job_id is not None
            done = _cas(s,
                update(Job).where(col(Job.id) == job_id, col(Job.state) == SUB.value,
                                  col(Job.lease_until) < now)
                .values(state=AMB.value, attempts=col(Job.attempts) + 1, lease_until=None,
                        error_kind=ErrorKind.AMBIGUOUS.value, error_message=message)
            )
            if done:
                _cas(s, update(Attempt).where(col(Attempt.job_id) == job_id,
                                                col(Attempt.state) == "posting")
                          .values(state="ambiguous", ended_at=now, error=message))
                moved.append(job_id)
    for job_id in moved:
        logger.warning("job %s: create outcome unknown (worker lost); marked ambiguous", job_id)
    return moved


def resolve_ambiguous_as_failed(engine: Engine, now: float) -> int:
    """Policy `fail`: an ambiguous row ends failed (kind ambiguous) and is never re-posted."""
    with session(engine) as s:
        return _cas(s,
            update(Job).where(col(Job.state) == AMB.value)
            .values(state=JobState.FAILED.value, finished_at=now,
                    error_kind=ErrorKind.AMBIGUOUS.value)
        )


def load_poll_targets(engine: Engine, job_ids: Iterable[int]) -> list[PollTarget]:
    """The running jobs among `job_ids`, with what a poll needs."""
    ids = list(job_ids)
    if not ids:
        return []
    with session(engine) as s:
        rows = s.execute(
            select(Job, col(Batch.max_attempts))
            .join(Batch, col(Batch.id) == col(Job.batch_id))
            .where(col(Job.id).in_(ids), col(Job.state) == RUN.value)
        ).all()
    return [
        PollTarget(int(j.id), j.task_id, j.polls, j.poll_errors, j.attempts, int(max_attempts),
                   str(j.model), str(j.task_type), j.submitted_at)
        for j, max_attempts in rows if j.id is not None and j.task_id
    ]


def _poll_guard(t: PollTarget) -> Any:
    return and_(col(Job.id) == t.job_id, col(Job.state) == RUN.value,
                col(Job.task_id) == t.task_id, col(Job.polls) == t.polls)


def record_progress(engine: Engine, t: PollTarget, view: TaskView, next_at: float) -> bool:
    """The task is still running: remember its status and when to look again."""
    with session(engine) as s:
        return _cas(s, update(Job).where(_poll_guard(t)).values(
            remote_status=view.status or None, polls=t.polls + 1, poll_errors=0,
            next_at=next_at, lease_until=None, lease_epoch=None, **_usage_values(view),
        )) == 1


def record_completed(engine: Engine, t: PollTarget, view: TaskView, now: float) -> bool:
    """running -> completed with PiAPI's output and usage."""
    consume = view.usage.consume if view.usage else None
    with session(engine) as s:
        done = _cas(s, update(Job).where(_poll_guard(t)).values(
            state=JobState.COMPLETED.value, remote_status=view.status, polls=t.polls + 1,
            output_json=json.dumps(view.output, separators=(",", ":")),
            next_at=None, lease_until=None, finished_at=now, error_kind=None,
            error_message=None, **_usage_values(view),
        ))
        if done:
            _cas(s, update(Attempt).where(col(Attempt.job_id) == t.job_id,
                                            col(Attempt.task_id) == t.task_id)
                      .values(state="completed", ended_at=now, consume=consume))
    return done == 1


def record_task_failed(
    engine: Engine, t: PollTarget, view: TaskView, now: float, *, kind: ErrorKind,
    message: str, retry_at: float | None,
) -> JobState | None:
    """running -> retry_wait (a new task later, when `retry_at` is given) or -> failed."""
    final = retry_at is None
    values: dict[str, Any] = dict(
        remote_status=view.status, polls=t.polls + 1, lease_until=None, lease_epoch=None,
        error_kind=kind.value, error_message=message, **_usage_values(view),
    )
    if final:
        values.update(state=JobState.FAILED.value, next_at=None, finished_at=now)
    else:
        values.update(state=RW.value, next_at=retry_at, task_id=None, tries=0)
    with session(engine) as s:
        done = _cas(s, update(Job).where(_poll_guard(t)).values(**values))
        if done:
            _cas(s, update(Attempt).where(col(Attempt.job_id) == t.job_id,
                                            col(Attempt.task_id) == t.task_id)
                      .values(state="failed", ended_at=now, error=message,
                              consume=view.usage.consume if view.usage else None))
    if not done:
        return None
    return JobState.FAILED if final else RW


def record_poll_error(
    engine: Engine, t: PollTarget, now: float, next_at: float, message: str
) -> bool:
    """The GET failed (network, 5xx, 429): the task is fine, look again later."""
    with session(engine) as s:
        return _cas(s, update(Job).where(_poll_guard(t)).values(
            poll_errors=t.poll_errors + 1, next_at=next_at, lease_until=None, lease_epoch=None,
            error_message=message,
        )) == 1


def record_lost_task(engine: Engine, t: PollTarget, now: float, message: str) -> bool:
    """PiAPI no longer knows the task: the row fails (kind not_found), never re-posted here."""
    with session(engine) as s:
        return _cas(s, update(Job).where(_poll_guard(t)).values(
            state=JobState.FAILED.value, next_at=None, lease_until=None, finished_at=now,
            error_kind=ErrorKind.NOT_FOUND.value, error_message=message,
        )) == 1


def set_halt(engine: Engine, reason: str, now: float) -> None:
    """Stop admitting new creates fleet-wide until an operator clears it."""
    with session(engine) as s:
        row = s.get(Control, HALT_KEY)
        if row is None:
            s.add(Control(key=HALT_KEY, value=reason, updated_at=now))
        else:
            row.value, row.updated_at = reason, now
    logger.error("fleet halted: %s", reason)


def get_halt(engine: Engine) -> str | None:
    """The reason the fleet is halted, or None."""
    with session(engine) as s:
        row = s.get(Control, HALT_KEY)
        return row.value if row else None


def clear_halt(engine: Engine) -> None:
    """Let the fleet admit creates again."""
    with session(engine) as s:
        row = s.get(Control, HALT_KEY)
        if row is not None:
            s.delete(row)

"""The create side: claiming due jobs, and recording what a POST to PiAPI came back with."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

from sqlalchemy import and_, exists, func, insert, or_, select, update
from sqlalchemy.engine import Engine
from sqlmodel import col

from workers.control import set_halt
from workers.db import session
from workers.models import Attempt, Job
from workers.piapi import TaskView
from workers.states import ErrorKind, JobState
from workers.transitions.common import Claim, cas, moved, usage_values

logger = logging.getLogger(__name__)

Q, SUB, RUN, RW, AMB = (JobState.QUEUED, JobState.SUBMITTING, JobState.RUNNING,
                        JobState.RETRY_WAIT, JobState.AMBIGUOUS)


def claim_many(engine: Engine, job_ids: Iterable[int], now: float, lease_s: float) -> list[Claim]:
    """queued|retry_wait(due) -> submitting for each still-due job, and record each attempt
    *before* any POST, all in one transaction. Jobs no longer due are left out."""
    ids = sorted(set(job_ids))
    if not ids:
        return []
    due = or_(col(Job.state) == Q.value, and_(col(Job.state) == RW.value, col(Job.next_at) <= now))
    with session(engine) as s:
        claimed = [int(i) for i in s.scalars(
            update(Job).where(col(Job.id).in_(ids), due)
            .values(state=SUB.value, lease_until=now + lease_s, lease_epoch=None, next_at=None)
            .returning(col(Job.id))
        ) if i is not None]
        if not claimed:
            return []
        last = dict(s.execute(select(col(Attempt.job_id), func.max(col(Attempt.n)))
                              .where(col(Attempt.job_id).in_(claimed))
                              .group_by(col(Attempt.job_id))).all())
        s.execute(insert(Attempt), [
            {"job_id": j, "n": int(last.get(j) or 0) + 1, "state": "posting", "started_at": now}
            for j in claimed
        ])
        numbers = {j: int(last.get(j) or 0) + 1 for j in claimed}
        attempt_ids = {
            int(j): int(a) for j, a, n in s.execute(
                select(col(Attempt.job_id), col(Attempt.id), col(Attempt.n))
                .where(col(Attempt.job_id).in_(claimed), col(Attempt.state) == "posting")
            ).all() if numbers.get(int(j)) == n
        }
        jobs = s.execute(select(Job.id, Job.batch_id, Job.model, Job.task_type,  # type: ignore[call-overload]
                                Job.input_json, Job.tries)
                         .where(col(Job.id).in_(claimed))).all()
    return [
        Claim(job_id=int(j), batch_id=str(b), attempt_id=attempt_ids[int(j)],
              attempt_n=numbers[int(j)], model=str(m), task_type=str(t),
              input=json.loads(i or "{}"), tries=int(tr))
        for j, b, m, t, i, tr in sorted(jobs)
    ]


def claim_for_submit(engine: Engine, job_id: int, now: float, lease_s: float) -> Claim | None:
    """`claim_many` for one job: None when it is not due any more."""
    claims = claim_many(engine, [job_id], now, lease_s)
    return claims[0] if claims else None


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
        error_message=None, **usage_values(view),
    )
    with session(engine) as s:
        s.execute(update(Attempt).where(col(Attempt.id) == claim.attempt_id)
                  .values(state="created", task_id=view.task_id))
        done = cas(s, update(Job).where(col(Job.id) == claim.job_id)
                   .where(col(Job.state) == SUB.value).values(**values))
        if done == 1:
            return True
        newer = exists().where(col(Attempt.job_id) == claim.job_id,
                               col(Attempt.n) > claim.attempt_n)
        adopt = dict(values, attempts=col(Job.attempts))  # counted when it went ambiguous
        adopted = cas(
            s,
            update(Job).where(col(Job.id) == claim.job_id)
            .where(or_(col(Job.state) == AMB.value,
                       and_(col(Job.state) == JobState.FAILED.value,
                            col(Job.error_kind) == ErrorKind.AMBIGUOUS.value)))
            .where(~newer).values(**adopt),
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
                           f"gave up after {tries} retryable errors; last: {error}")
    with session(engine) as s:
        s.execute(update(Attempt).where(col(Attempt.id) == claim.attempt_id)
                  .values(state="refused", ended_at=now, error=error))
        done = cas(s, update(Job).where(col(Job.id) == claim.job_id, col(Job.state) == SUB.value)
                   .values(state=RW.value, tries=tries, next_at=retry_at, lease_until=None,
                           error_kind=None, error_message=error))
    if done != 1:
        moved("retry", claim.job_id)
        return None
    return RW


def _fail_claim(engine: Engine, claim: Claim, now: float, kind: ErrorKind,
                message: str) -> JobState | None:
    with session(engine) as s:
        s.execute(update(Attempt).where(col(Attempt.id) == claim.attempt_id)
                  .values(state="refused", ended_at=now, error=message))
        done = cas(s, update(Job).where(col(Job.id) == claim.job_id, col(Job.state) == SUB.value)
                   .values(state=JobState.FAILED.value, lease_until=None, finished_at=now,
                           error_kind=kind.value, error_message=message))
    if done != 1:
        moved("fail", claim.job_id)
        return None
    return JobState.FAILED


def record_create_rejected(
    engine: Engine, claim: Claim, now: float, kind: ErrorKind, message: str
) -> JobState | None:
    """PiAPI refused the create for good (bad input): the row fails, nothing was created."""
    return _fail_claim(engine, claim, now, kind, message)


def record_create_requeued(engine: Engine, claim: Claim, now: float, reason: str) -> None:
    """An account-wide refusal (key, credit): back to queued and halt the fleet."""
    with session(engine) as s:
        s.execute(update(Attempt).where(col(Attempt.id) == claim.attempt_id)
                  .values(state="refused", ended_at=now, error=reason))
        s.execute(update(Job).where(col(Job.id) == claim.job_id, col(Job.state) == SUB.value)
                  .values(state=Q.value, lease_until=None, error_message=reason))
    set_halt(engine, reason, now)


def record_ambiguous(engine: Engine, claim: Claim, now: float, message: str) -> bool:
    """submitting -> ambiguous: the create may have made a paid task; never post blindly."""
    with session(engine) as s:
        s.execute(update(Attempt).where(col(Attempt.id) == claim.attempt_id)
                  .values(state="ambiguous", ended_at=now, error=message))
        done = cas(s, update(Job).where(col(Job.id) == claim.job_id, col(Job.state) == SUB.value)
                   .values(state=AMB.value, attempts=col(Job.attempts) + 1, lease_until=None,
                           error_kind=ErrorKind.AMBIGUOUS.value, error_message=message))
    return done == 1


def expire_submitting(engine: Engine, now: float) -> list[int]:
    """Jobs whose worker died mid-create (lease expired in submitting) become ambiguous."""
    message = "the worker stopped while creating the task; it may or may not exist"
    with session(engine) as s:
        ids = list(s.scalars(select(col(Job.id)).where(col(Job.state) == SUB.value,
                                                       col(Job.lease_until) < now)))
        moved_ids: list[int] = []
        for job_id in ids:
            assert job_id is not None
            done = cas(
                s,
                update(Job).where(col(Job.id) == job_id, col(Job.state) == SUB.value,
                                  col(Job.lease_until) < now)
                .values(state=AMB.value, attempts=col(Job.attempts) + 1, lease_until=None,
                        error_kind=ErrorKind.AMBIGUOUS.value, error_message=message),
            )
            if done:
                s.execute(update(Attempt).where(col(Attempt.job_id) == job_id,
                                                col(Attempt.state) == "posting")
                          .values(state="ambiguous", ended_at=now, error=message))
                moved_ids.append(job_id)
    for job_id in moved_ids:
        logger.warning("job %s: create outcome unknown (worker lost); marked ambiguous", job_id)
    return moved_ids


def resolve_ambiguous_as_failed(engine: Engine, now: float) -> int:
    """Policy `fail`: an ambiguous row ends failed (kind ambiguous) and is never re-posted."""
    with session(engine) as s:
        return cas(s, update(Job).where(col(Job.state) == AMB.value)
                   .values(state=JobState.FAILED.value, finished_at=now,
                           error_kind=ErrorKind.AMBIGUOUS.value))

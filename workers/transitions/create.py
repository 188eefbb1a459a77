"""The create side: claiming due jobs, and recording what a POST to PiAPI came back with.

Statements are built once and run with parameters: these run for every row of every
batch, and building SQL expressions per call would cost more than running them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import and_, bindparam, case, exists, func, select
from sqlalchemy.engine import Connection, Engine

from workers.db import transaction
from workers.halt import set_halt
from workers.models import ATTEMPTS, BATCHES, JOBS
from workers.piapi import TaskView
from workers.states import AttemptState, ErrorKind, JobState
from workers.transitions.common import THIS_JOB, Claim, move, moved, usage_params

logger = logging.getLogger(__name__)

RECONCILE_AFTER_S = 2.0
"""An ambiguous create is first looked for in PiAPI's history this long after it was lost."""

_CLAIMED: dict[str, Any] = dict(lease_until=bindparam("p_lease_until"), lease_epoch=None,
                                next_at=None, posts=JOBS.c.posts + 1)
_CLAIM_RETURNS = (JOBS.c.id, JOBS.c.batch_id, JOBS.c.model, JOBS.c.task_type,
                  JOBS.c.input_json, JOBS.c.tries, JOBS.c.posts, JOBS.c.service_mode,
                  JOBS.c.row_key)
_DUE_TO_CREATE: dict[JobState, Any] = {
    JobState.QUEUED: None, JobState.RETRY_WAIT: JOBS.c.next_at <= bindparam("p_now")}
"""Rows a claim may take: queued, or waiting to be created again and due."""
_CLAIM = (
    move(_DUE_TO_CREATE, JobState.SUBMITTING, JOBS.c.id.in_(bindparam("p_ids", expanding=True)))
    .values(**_CLAIMED).returning(*_CLAIM_RETURNS)
)
_PLAIN_BATCH = exists().where(
    BATCHES.c.id == JOBS.c.batch_id, BATCHES.c.done.is_(False),
    BATCHES.c.cancel_mode.is_(None), BATCHES.c.paused.is_(None),
    BATCHES.c.budget_usd.is_(None), BATCHES.c.deadline_at.is_(None))
"""The batch has no control that the dispatcher's admission would have to weigh."""
_UNLOCKED = JOBS.c.id.in_(
    select(JOBS.c.id).where(JOBS.c.id == bindparam("p_id")).with_for_update(skip_locked=True))
"""The row, unless another transaction holds it (PostgreSQL: `FOR UPDATE SKIP LOCKED`;
SQLite has one writer and no row locks). A handoff claim passes over such a row rather than
waiting: the holder is the dispatcher leasing it or another worker claiming it, and in
either case it is not this slot's to take. On scenario 1 on PostgreSQL with handoff on,
waits between this claim and the dispatcher's lease were 63% of the active backends'
samples. Only the worker's claim skips: the dispatcher's lease must wait for a row an
older leader holds, or two leaders could both send (`workers.leases`)."""
_HANDOFF_CLAIM = (
    move(_DUE_TO_CREATE, JobState.SUBMITTING, JOBS.c.id == bindparam("p_id"), _UNLOCKED)
    .where(JOBS.c.batch_id == bindparam("p_batch"), JOBS.c.model == bindparam("p_model"),
           _PLAIN_BATCH)
    .values(**_CLAIMED).returning(*_CLAIM_RETURNS)
)
_NEW_ATTEMPT = ATTEMPTS.insert()
_THIS_ATTEMPT = and_(ATTEMPTS.c.job_id == bindparam("p_job"), ATTEMPTS.c.n == bindparam("p_n"))
_ATTEMPT_CREATED = ATTEMPTS.update().where(_THIS_ATTEMPT).values(
    state=AttemptState.CREATED.value, task_id=bindparam("p_task"))
_ATTEMPT_TAKEN = ATTEMPTS.update().where(_THIS_ATTEMPT).values(
    state=AttemptState.AMBIGUOUS.value, task_id=None)
_ATTEMPT_ENDED = ATTEMPTS.update().where(_THIS_ATTEMPT).values(
    state=bindparam("p_state"), ended_at=bindparam("p_now"), error=bindparam("p_error"))
_USAGE: dict[str, Any] = dict(
    usage_consume=func.coalesce(bindparam("p_consume"), JOBS.c.usage_consume),
    usage_type=func.coalesce(bindparam("p_usage_type"), JOBS.c.usage_type))
_HINTED_NOW = case((JOBS.c.task_id == bindparam("p_task"), bindparam("p_now")),
                   else_=bindparam("p_next"))
"""A task a webhook said had ended before its create's answer was recorded
(`hint_submitting`) is polled at once; any other at its schedule."""
_RUNNING_VALUES: dict[str, Any] = dict(
    task_id=bindparam("p_task"), remote_status=bindparam("p_status"),
    tries=0, polls=0, poll_errors=0, next_at=_HINTED_NOW, lease_until=None,
    lease_epoch=None, submitted_at=bindparam("p_now"), error_kind=None, error_message=None,
    **_USAGE,
)
_CREATED = move(JobState.SUBMITTING, JobState.RUNNING, THIS_JOB).values(
    attempts=JOBS.c.attempts + 1, **_RUNNING_VALUES)
_NEWER_ATTEMPT = exists().where(ATTEMPTS.c.job_id == JOBS.c.id,
                                ATTEMPTS.c.n > bindparam("p_n"))
_HELD_BY_ANOTHER_ROW = exists().where(ATTEMPTS.c.task_id == bindparam("p_task"),
                                      ATTEMPTS.c.job_id != bindparam("p_job"))
"""Another row took this task while its create's answer was late (reconciliation of a row
with the same input): this row then looks for its own task, or posts again, as any lost
create does; two rows never hold one task."""
_ADOPT = (
    move({JobState.AMBIGUOUS: None,
          JobState.FAILED: JOBS.c.error_kind == ErrorKind.AMBIGUOUS.value},
         JobState.RUNNING, THIS_JOB)
    .where(~_NEWER_ATTEMPT, ~_HELD_BY_ANOTHER_ROW)
    .values(**_RUNNING_VALUES)  # the attempt was counted when it went ambiguous
)
_TO_RETRY_WAIT = move(JobState.SUBMITTING, JobState.RETRY_WAIT, THIS_JOB).values(
    tries=bindparam("p_tries"), next_at=bindparam("p_next"), lease_until=None,
    error_kind=None, error_message=bindparam("p_error"))
_TO_FAILED = move(JobState.SUBMITTING, JobState.FAILED, THIS_JOB).values(
    lease_until=None, finished_at=bindparam("p_now"),
    error_kind=bindparam("p_kind"), error_message=bindparam("p_error"))
_TO_QUEUED = move(JobState.SUBMITTING, JobState.QUEUED, THIS_JOB).values(
    lease_until=None, error_message=bindparam("p_error"))
_LOST: dict[str, Any] = dict(
    attempts=JOBS.c.attempts + 1, lease_until=None, next_at=bindparam("p_next"),
    error_kind=ErrorKind.AMBIGUOUS.value, error_message=bindparam("p_error"))
_TO_AMBIGUOUS = move(JobState.SUBMITTING, JobState.AMBIGUOUS, THIS_JOB).values(**_LOST)
_LOST_CREATES = select(JOBS.c.id).where(JOBS.c.state == JobState.SUBMITTING.value,
                                        JOBS.c.lease_until < bindparam("p_now"))
_EXPIRE = (move(JobState.SUBMITTING, JobState.AMBIGUOUS, THIS_JOB)
           .where(JOBS.c.lease_until < bindparam("p_now")).values(**_LOST))
_POSTING_ENDED = (
    ATTEMPTS.update()
    .where(ATTEMPTS.c.job_id == bindparam("p_job"),
           ATTEMPTS.c.state == AttemptState.POSTING.value)
    .values(state=AttemptState.AMBIGUOUS.value, ended_at=bindparam("p_now"),
            error=bindparam("p_error"))
)
_EARLY_HINT = JOBS.update().where(THIS_JOB, JOBS.c.state == JobState.SUBMITTING.value).values(
    task_id=bindparam("p_task"))
_AMBIGUOUS_FAILED = move(JobState.AMBIGUOUS, JobState.FAILED).values(
    finished_at=bindparam("p_now"), error_kind=ErrorKind.AMBIGUOUS.value)


def claim_many(engine: Engine, job_ids: Iterable[int], now: float, lease_s: float) -> list[Claim]:
    """queued|retry_wait(due) -> submitting for each still-due job, and record each attempt
    *before* any POST, all in one transaction. Jobs no longer due are left out."""
    ids = sorted(set(job_ids))
    if not ids:
        return []
    with transaction(engine) as conn:
        rows = conn.execute(_CLAIM, {"p_ids": ids, "p_now": now,
                                     "p_lease_until": now + lease_s}).all()
        return _attempts_for(conn, rows, now)


def _attempts_for(conn: Connection, rows: Sequence[Any], now: float) -> list[Claim]:
    """Insert the attempt of each just-claimed row (before any POST); their claims."""
    if not rows:
        return []
    conn.execute(_NEW_ATTEMPT, [
        {"job_id": int(r[0]), "n": int(r[6]), "state": AttemptState.POSTING.value,
         "started_at": now}
        for r in rows
    ])
    return [
        Claim(job_id=int(job), batch_id=str(b), attempt_n=int(n), model=str(m),
              task_type=str(t), input=json.loads(i or "{}"), tries=int(tries),
              service_mode=mode or None, row_key=str(key))
        for job, b, m, t, i, tries, n, mode, key in sorted(rows)
    ]


def claim_standby(conn: Connection, ids: Sequence[int], batch_id: str, model: str,
                  now: float, lease_s: float) -> tuple[Claim | None, int]:
    """In the caller's transaction (the one that freed a slot of `batch_id`): claim the
    first of `ids` (rows of that batch waiting to be created, in the dispatcher's order)
    that still is (queued, or in retry_wait and due), of `model`, in a batch without
    controls; its attempt is inserted as a claim's.
    Returns the claim (None: none could be) and how many ids it used up."""
    for used, job_id in enumerate(ids, start=1):
        rows = conn.execute(_HANDOFF_CLAIM, {
            "p_id": job_id, "p_batch": batch_id, "p_model": model, "p_now": now,
            "p_lease_until": now + lease_s}).all()
        if rows:
            return _attempts_for(conn, rows, now)[0], used
    return None, len(ids)


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
    params = {"p_job": claim.job_id, "p_n": claim.attempt_n, "p_task": view.task_id,
              "p_status": view.status or "pending", "p_next": next_poll_at, "p_now": now,
              **usage_params(view)}
    with transaction(engine) as conn:
        conn.execute(_ATTEMPT_CREATED, params)
        if conn.execute(_CREATED, params).rowcount == 1:
            return True
        adopted = conn.execute(_ADOPT, params).rowcount == 1
        if not adopted and conn.execute(select(_HELD_BY_ANOTHER_ROW), params).scalar():
            conn.execute(_ATTEMPT_TAKEN, params)  # the task is the other row's record now
            logger.warning("job %s: its late answer names task %s, which a row with the same "
                           "input took meanwhile; this row goes on looking for its own",
                           claim.job_id, view.task_id)
    if adopted:
        logger.warning("job %s: adopted task %s whose create had been declared ambiguous",
                       claim.job_id, view.task_id)
    return adopted


def hint_submitting(engine: Engine, job_id: int, task_id: str) -> bool:
    """A webhook said this task ended while the job's create was still awaiting its answer
    (PiAPI may call back before the create's answer is read). Its id is kept on the job, so
    the create's record makes it due at once instead of at its schedule (or, were the answer
    lost, reconciliation starts from it, confirmed by a GET). Nothing else changes."""
    with transaction(engine) as conn:
        return bool(conn.execute(_EARLY_HINT, {"p_job": job_id, "p_task": task_id}).rowcount
                    == 1)


def _end_attempt(conn: Any, claim: Claim, state: AttemptState, now: float, error: str) -> None:
    conn.execute(_ATTEMPT_ENDED, {"p_job": claim.job_id, "p_n": claim.attempt_n,
                                  "p_state": state.value, "p_now": now, "p_error": error})


def record_create_retry(
    engine: Engine, claim: Claim, now: float, retry_at: float, error: str, max_tries: int
) -> JobState | None:
    """A retryable refusal (nothing created): retry_wait until `retry_at`, or fail at the bound."""
    tries = claim.tries + 1
    if tries >= max_tries:
        return _fail_claim(engine, claim, now, ErrorKind.RETRIES_EXHAUSTED,
                           f"gave up after {tries} retryable errors; last: {error}")
    with transaction(engine) as conn:
        _end_attempt(conn, claim, AttemptState.REFUSED, now, error)
        done = conn.execute(_TO_RETRY_WAIT, {"p_job": claim.job_id, "p_tries": tries,
                                             "p_next": retry_at, "p_error": error}).rowcount
    if done != 1:
        moved("retry", claim.job_id)
        return None
    return JobState.RETRY_WAIT


def _fail_claim(engine: Engine, claim: Claim, now: float, kind: ErrorKind,
                message: str) -> JobState | None:
    with transaction(engine) as conn:
        _end_attempt(conn, claim, AttemptState.REFUSED, now, message)
        done = conn.execute(_TO_FAILED, {"p_job": claim.job_id, "p_now": now,
                                         "p_kind": kind.value, "p_error": message}).rowcount
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
    with transaction(engine) as conn:
        _end_attempt(conn, claim, AttemptState.REFUSED, now, reason)
        conn.execute(_TO_QUEUED, {"p_job": claim.job_id, "p_error": reason})
    set_halt(engine, reason, now)


def record_ambiguous(engine: Engine, claim: Claim, now: float, message: str) -> bool:
    """submitting -> ambiguous: the create may have made a paid task; never post blindly."""
    with transaction(engine) as conn:
        _end_attempt(conn, claim, AttemptState.AMBIGUOUS, now, message)
        return bool(conn.execute(_TO_AMBIGUOUS, {
            "p_job": claim.job_id, "p_error": message, "p_next": now + RECONCILE_AFTER_S,
        }).rowcount == 1)


def expire_submitting(engine: Engine, now: float) -> list[int]:
    """Jobs whose worker died mid-create (lease expired in submitting) become ambiguous."""
    message = "the worker stopped while creating the task; it may or may not exist"
    moved_ids: list[int] = []
    with transaction(engine) as conn:
        for (job_id,) in conn.execute(_LOST_CREATES, {"p_now": now}).all():
            params = {"p_job": int(job_id), "p_now": now, "p_error": message,
                      "p_next": now + RECONCILE_AFTER_S}
            if conn.execute(_EXPIRE, params).rowcount:
                conn.execute(_POSTING_ENDED, params)
                moved_ids.append(int(job_id))
    for job_id in moved_ids:
        logger.warning("job %s: create outcome unknown (worker lost); marked ambiguous", job_id)
    return moved_ids


def resolve_ambiguous_as_failed(engine: Engine, now: float) -> int:
    """Policy `fail`: an ambiguous row ends failed (kind ambiguous) and is never re-posted."""
    with transaction(engine) as conn:
        return int(conn.execute(_AMBIGUOUS_FAILED, {"p_now": now}).rowcount)

"""The ambiguous side: creates whose outcome was lost, until they are settled.

An ambiguous job may have a paid task at PiAPI. It leaves `ambiguous` only by adopting
the task found for it (-> running), by learning that the create never made one
(-> queued, to be posted again), or by giving up (-> failed, kind ambiguous, never posted
twice). Each change is a compare-and-set on the ambiguous state.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, bindparam, exists, func, or_, select
from sqlalchemy.engine import Engine

from workers.db import transaction
from workers.models import ATTEMPTS, JOBS
from workers.piapi import TaskView
from workers.states import AttemptState, ErrorKind, JobState
from workers.transitions.common import THIS_JOB, Posting, move, rows_among, usage_params
from workers.uploads import as_sent

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AmbiguousTarget(Posting):
    """An ambiguous job and the attempt whose outcome is unknown."""

    started_at: float
    lost_at: float
    hint_task_id: str | None
    """A task id a webhook named for this job (unverified until a GET confirms it)."""
    reconcile_from: float | None = None
    """Set when an operator retried the row: its reconciliation period starts here."""

    @property
    def undecided_since(self) -> float:
        """Where the reconciliation period (PIAPI_BULK_RECONCILE_TIMEOUT_S) starts."""
        return max(self.lost_at, self.reconcile_from or 0.0)


_TARGETS = (
    select(JOBS.c.id, JOBS.c.batch_id, JOBS.c.model, JOBS.c.task_type, JOBS.c.input_json,
           ATTEMPTS.c.n, ATTEMPTS.c.started_at,
           func.coalesce(ATTEMPTS.c.ended_at, ATTEMPTS.c.started_at), JOBS.c.task_id,
           JOBS.c.tries, JOBS.c.reconcile_from, ATTEMPTS.c.upload_urls, JOBS.c.row_key)
    .join(ATTEMPTS, and_(ATTEMPTS.c.job_id == JOBS.c.id, ATTEMPTS.c.n == JOBS.c.posts))
    .where(JOBS.c.id.in_(bindparam("p_ids", expanding=True)),
           JOBS.c.state == JobState.AMBIGUOUS.value)
)
_AMBIGUOUS = and_(THIS_JOB, JOBS.c.state == JobState.AMBIGUOUS.value)
"""The guard of the changes that leave the job ambiguous (a later look, a webhook's hint)."""
_OTHER_ATTEMPT = or_(ATTEMPTS.c.job_id != bindparam("p_job"), ATTEMPTS.c.n != bindparam("p_n"))
"""Any attempt but the lost one: another row's, or an earlier one of this row (whose task,
failed or stuck, has the same input and may lie in the window: never this attempt's)."""
_OWNED_BY_OTHERS = exists().where(ATTEMPTS.c.task_id == bindparam("p_task"), _OTHER_ATTEMPT)
_ADOPT = move(JobState.AMBIGUOUS, JobState.RUNNING, THIS_JOB).where(~_OWNED_BY_OTHERS).values(
    task_id=bindparam("p_task"), remote_status=bindparam("p_status"),
    tries=0, polls=0, poll_errors=0, next_at=bindparam("p_next"), lease_until=None,
    lease_epoch=None, submitted_at=bindparam("p_submitted"), error_kind=None,
    error_message=None,
    usage_consume=func.coalesce(bindparam("p_consume"), JOBS.c.usage_consume),
    usage_type=func.coalesce(bindparam("p_usage_type"), JOBS.c.usage_type),
)
_ATTEMPT = and_(ATTEMPTS.c.job_id == bindparam("p_job"), ATTEMPTS.c.n == bindparam("p_n"))
_ATTEMPT_ADOPTED = ATTEMPTS.update().where(_ATTEMPT).values(
    state=AttemptState.CREATED.value, task_id=bindparam("p_task"), error=bindparam("p_error"))
_NO_TASK: dict[str, Any] = dict(
    attempts=JOBS.c.attempts - 1, tries=JOBS.c.tries + 1, task_id=None, lease_until=None,
    lease_epoch=None, error_message=bindparam("p_error"))
"""The lost create made no task: it no longer counts as an attempt, but as a failed try."""
_ABSENT = move(JobState.AMBIGUOUS, JobState.RETRY_WAIT, THIS_JOB).values(
    next_at=bindparam("p_next"), error_kind=None, **_NO_TASK)
_ABSENT_FAILED = move(JobState.AMBIGUOUS, JobState.FAILED, THIS_JOB).values(
    next_at=None, finished_at=bindparam("p_next"),
    error_kind=ErrorKind.RETRIES_EXHAUSTED.value, **_NO_TASK)
_ATTEMPT_ABSENT = ATTEMPTS.update().where(_ATTEMPT).values(
    state=AttemptState.ABSENT.value, error=bindparam("p_error"))
_DEFER = JOBS.update().where(_AMBIGUOUS).values(
    next_at=bindparam("p_next"), lease_until=None, lease_epoch=None,
    error_message=bindparam("p_error"))
_GIVEN_UP: dict[str, Any] = dict(
    finished_at=bindparam("p_now"), next_at=None, lease_until=None,
    error_kind=ErrorKind.AMBIGUOUS.value)
_GIVE_UP = move(JobState.AMBIGUOUS, JobState.FAILED, THIS_JOB).values(
    error_message=bindparam("p_error"), **_GIVEN_UP)
_REPOST = (
    move(JobState.AMBIGUOUS, JobState.QUEUED).where(JOBS.c.tries + 1 < bindparam("p_max"))
    .values(task_id=None, next_at=None, lease_until=None, lease_epoch=None,
            error_kind=None, tries=JOBS.c.tries + 1,
            error_message="posted again without reconciling (policy: retry); this row may "
                          "be paid twice")
)
_REPOST_EXHAUSTED = move(JobState.AMBIGUOUS, JobState.FAILED).values(
    error_message="create answers lost too many times (policy: retry)", **_GIVEN_UP)
_HINT = JOBS.update().where(_AMBIGUOUS).values(
    task_id=bindparam("p_task"), next_at=bindparam("p_now"), lease_until=None,
    lease_epoch=None)
_LATER = (select(ATTEMPTS.c.task_id, ATTEMPTS.c.started_at)
          .where(ATTEMPTS.c.task_id.is_not(None),
                 ATTEMPTS.c.started_at > bindparam("p_after"),
                 ATTEMPTS.c.started_at <= bindparam("p_until"))
          .order_by(ATTEMPTS.c.started_at).limit(200))
_TWIN = JOBS.alias("twin")
_TWIN_AWAITING = (
    select(_TWIN.c.id)
    .join(ATTEMPTS, and_(ATTEMPTS.c.job_id == _TWIN.c.id, ATTEMPTS.c.n == _TWIN.c.posts))
    .where(_TWIN.c.state == JobState.SUBMITTING.value, _TWIN.c.id != bindparam("p_job"),
           _TWIN.c.model == bindparam("p_model"), _TWIN.c.task_type == bindparam("p_type"),
           _TWIN.c.input_json == select(JOBS.c.input_json).where(THIS_JOB).scalar_subquery(),
           ATTEMPTS.c.started_at <= bindparam("p_before"))
    .limit(1)
)
_OWNED = select(ATTEMPTS.c.task_id).where(
    ATTEMPTS.c.task_id.in_(bindparam("p_tasks", expanding=True)), _OTHER_ATTEMPT)


def load_ambiguous(engine: Engine, job_ids: Iterable[int]) -> list[AmbiguousTarget]:
    """The ambiguous jobs among `job_ids`, with their lost attempt."""
    # The input compared with PiAPI's echo is the one sent: local files as uploaded URLs.
    return [AmbiguousTarget(job_id=int(job), batch_id=str(batch), attempt_n=int(n),
                            model=str(model), task_type=str(task_type),
                            input=as_sent(json.loads(data or "{}"), uploads), tries=int(tries),
                            started_at=float(started), lost_at=float(lost),
                            hint_task_id=hint, reconcile_from=since, row_key=str(key))
            for job, batch, model, task_type, data, n, started, lost, hint, tries, since, uploads,
            key in rows_among(engine, _TARGETS, job_ids)]


def owned_elsewhere(engine: Engine, job_id: int, attempt_n: int,
                    task_ids: Iterable[str]) -> set[str]:
    """Which of these task ids another attempt already owns: another job's, or an earlier
    attempt of this job (its failed task has the same input, so only this tells it apart)."""
    ids = list(task_ids)
    if not ids:
        return set()
    with transaction(engine) as conn:
        return {str(t) for (t,) in conn.execute(
            _OWNED, {"p_tasks": ids, "p_job": job_id, "p_n": attempt_n})}


def twin_awaiting(engine: Engine, t: AmbiguousTarget, before: float) -> bool:
    """Another row with this row's input (manifests repeat a prompt for several samples)
    has a create sent no later than `before` still awaiting its answer. A task of this
    input created then may be that row's, which will record it when the answer comes:
    adopting it here would leave this row's own task (if its create made one) unrecorded,
    and the same task counted twice."""
    with transaction(engine) as conn:
        return conn.execute(_TWIN_AWAITING, {
            "p_job": t.job_id, "p_model": t.model, "p_type": t.task_type,
            "p_before": before}).first() is not None


def tasks_created_after(engine: Engine, after: float, until: float) -> list[tuple[str, float]]:
    """(task id, attempt start) of our creates begun in (after, until], oldest first (at
    most 200): tasks PiAPI created after anything sent before `after`."""
    with transaction(engine) as conn:
        return [(str(tid), float(at)) for tid, at in conn.execute(
            _LATER, {"p_after": after, "p_until": until})]


def adopt(engine: Engine, t: AmbiguousTarget, view: TaskView, now: float, next_poll_at: float,
          why: str) -> bool:
    """ambiguous -> running with the task found for the lost create (never posted again)."""
    params = {"p_job": t.job_id, "p_n": t.attempt_n, "p_task": view.task_id,
              "p_status": view.status or "pending", "p_next": next_poll_at,
              "p_submitted": t.started_at, "p_error": f"adopted: {why}", **usage_params(view)}
    with transaction(engine) as conn:
        if conn.execute(_ADOPT, params).rowcount != 1:
            return False
        conn.execute(_ATTEMPT_ADOPTED, params)
    logger.info("job %s: adopted task %s (%s)", t.job_id, view.task_id, why)
    return True


def absent(engine: Engine, t: AmbiguousTarget, why: str, retry_at: float,
           max_tries: int) -> bool:
    """ambiguous -> retry_wait: the lost create made no task, so posting again is safe
    (it counts as a retryable failure: past `max_tries` the row fails instead)."""
    last = t.tries + 1 >= max_tries
    params = {"p_job": t.job_id, "p_n": t.attempt_n, "p_next": retry_at,
              "p_error": f"create made no task: {why}"
              + (f"; gave up after {t.tries + 1} tries" if last else "")}
    with transaction(engine) as conn:
        if conn.execute(_ABSENT_FAILED if last else _ABSENT, params).rowcount != 1:
            return False
        conn.execute(_ATTEMPT_ABSENT, params)
    logger.info("job %s: the lost create made no task (%s); %s", t.job_id, why,
                "giving up" if last else "it will be posted again")
    return True


def defer(engine: Engine, t: AmbiguousTarget, next_at: float, why: str) -> bool:
    """Still undecided: look again at `next_at`."""
    with transaction(engine) as conn:
        return bool(conn.execute(_DEFER, {"p_job": t.job_id, "p_next": next_at,
                                          "p_error": f"reconciling: {why}"}).rowcount == 1)


def give_up(engine: Engine, t: AmbiguousTarget, now: float, why: str) -> bool:
    """ambiguous -> failed (kind ambiguous): never posted twice, reason kept."""
    with transaction(engine) as conn:
        done = conn.execute(_GIVE_UP, {"p_job": t.job_id, "p_now": now,
                                       "p_error": f"could not reconcile: {why}"}).rowcount
    if done:
        logger.warning("job %s: gave up reconciling its lost create: %s", t.job_id, why)
    return bool(done == 1)


def repost_all(engine: Engine, now: float, max_tries: int) -> int:
    """Policy `retry`: every ambiguous job goes back to queued without reconciling (a lost
    answer counts as a retryable failure; past `max_tries` the row fails)."""
    with transaction(engine) as conn:
        reposted = int(conn.execute(_REPOST, {"p_max": max_tries}).rowcount)
        conn.execute(_REPOST_EXHAUSTED, {"p_now": now})
    return reposted


def hint(engine: Engine, job_id: int, task_id: str, now: float) -> bool:
    """A webhook named a task for an ambiguous job: reconcile it now, starting there."""
    with transaction(engine) as conn:
        return bool(conn.execute(_HINT, {"p_job": job_id, "p_task": task_id,
                                         "p_now": now}).rowcount == 1)

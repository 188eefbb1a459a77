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
from workers.states import ErrorKind, JobState
from workers.transitions.common import usage_params

logger = logging.getLogger(__name__)

AMB, RUN, Q, RW, FAILED = (JobState.AMBIGUOUS.value, JobState.RUNNING.value,
                           JobState.QUEUED.value, JobState.RETRY_WAIT.value,
                           JobState.FAILED.value)
j, a = JOBS.c, ATTEMPTS.c


@dataclass(frozen=True)
class AmbiguousTarget:
    """An ambiguous job and the attempt whose outcome is unknown."""

    job_id: int
    batch_id: str
    model: str
    task_type: str
    input: dict[str, Any]
    attempt_n: int
    started_at: float
    lost_at: float
    hint_task_id: str | None
    """A task id a webhook named for this job (unverified until a GET confirms it)."""
    tries: int
    """Retryable create failures in a row so far (a create that made no task is one)."""
    reconcile_from: float | None = None
    """Set when an operator retried the row: its reconciliation period starts here."""

    @property
    def undecided_since(self) -> float:
        """Where the reconciliation period (PIAPI_BULK_RECONCILE_TIMEOUT_S) starts."""
        return max(self.lost_at, self.reconcile_from or 0.0)


_TARGETS = (
    select(j.id, j.batch_id, j.model, j.task_type, j.input_json, a.n, a.started_at,
           func.coalesce(a.ended_at, a.started_at), j.task_id, j.tries, j.reconcile_from)
    .join(ATTEMPTS, and_(a.job_id == j.id, a.n == j.posts))
    .where(j.id.in_(bindparam("p_ids", expanding=True)), j.state == AMB)
)
_AMBIGUOUS = and_(j.id == bindparam("p_job"), j.state == AMB)
_OTHER_ATTEMPT = or_(a.job_id != bindparam("p_job"), a.n != bindparam("p_n"))
"""Any attempt but the lost one: another row's, or an earlier one of this row (whose task,
failed or stuck, has the same input and may lie in the window: never this attempt's)."""
_OWNED_BY_OTHERS = exists().where(a.task_id == bindparam("p_task"), _OTHER_ATTEMPT)
_ADOPT = JOBS.update().where(_AMBIGUOUS, ~_OWNED_BY_OTHERS).values(
    state=RUN, task_id=bindparam("p_task"), remote_status=bindparam("p_status"),
    tries=0, polls=0, poll_errors=0, next_at=bindparam("p_next"), lease_until=None,
    lease_epoch=None, submitted_at=bindparam("p_submitted"), error_kind=None,
    error_message=None,
    usage_consume=func.coalesce(bindparam("p_consume"), j.usage_consume),
    usage_type=func.coalesce(bindparam("p_usage_type"), j.usage_type),
)
_ATTEMPT = and_(a.job_id == bindparam("p_job"), a.n == bindparam("p_n"))
_ATTEMPT_ADOPTED = ATTEMPTS.update().where(_ATTEMPT).values(
    state="created", task_id=bindparam("p_task"), error=bindparam("p_error"))
_ABSENT = JOBS.update().where(_AMBIGUOUS).values(
    state=RW, attempts=j.attempts - 1, tries=j.tries + 1, task_id=None,
    next_at=bindparam("p_next"), lease_until=None, lease_epoch=None, error_kind=None,
    error_message=bindparam("p_error"))
_ABSENT_FAILED = JOBS.update().where(_AMBIGUOUS).values(
    state=FAILED, attempts=j.attempts - 1, tries=j.tries + 1, task_id=None, next_at=None,
    finished_at=bindparam("p_next"), lease_until=None, lease_epoch=None,
    error_kind=ErrorKind.RETRIES_EXHAUSTED.value, error_message=bindparam("p_error"))
_ATTEMPT_ABSENT = ATTEMPTS.update().where(_ATTEMPT).values(
    state="absent", error=bindparam("p_error"))
_DEFER = JOBS.update().where(_AMBIGUOUS).values(
    next_at=bindparam("p_next"), lease_until=None, lease_epoch=None,
    error_message=bindparam("p_error"))
_GIVE_UP = JOBS.update().where(_AMBIGUOUS).values(
    state=FAILED, finished_at=bindparam("p_now"), next_at=None, lease_until=None,
    error_kind=ErrorKind.AMBIGUOUS.value, error_message=bindparam("p_error"))
_REPOST = JOBS.update().where(j.state == AMB, j.tries + 1 < bindparam("p_max")).values(
    state=Q, task_id=None, next_at=None, lease_until=None, lease_epoch=None,
    error_kind=None, tries=j.tries + 1,
    error_message="posted again without reconciling (policy: retry); this row may be paid "
                  "twice")
_REPOST_EXHAUSTED = JOBS.update().where(j.state == AMB).values(
    state=FAILED, finished_at=bindparam("p_now"), next_at=None, lease_until=None,
    error_kind=ErrorKind.AMBIGUOUS.value,
    error_message="create answers lost too many times (policy: retry)")
_HINT = JOBS.update().where(_AMBIGUOUS).values(
    task_id=bindparam("p_task"), next_at=bindparam("p_now"), lease_until=None,
    lease_epoch=None)
_LATER = (select(a.task_id, a.started_at)
          .where(a.task_id.is_not(None), a.started_at > bindparam("p_after"),
                 a.started_at <= bindparam("p_until"))
          .order_by(a.started_at).limit(200))
_OWNED = select(a.task_id).where(a.task_id.in_(bindparam("p_tasks", expanding=True)),
                                 _OTHER_ATTEMPT)


def load_ambiguous(engine: Engine, job_ids: Iterable[int]) -> list[AmbiguousTarget]:
    """The ambiguous jobs among `job_ids`, with their lost attempt."""
    ids = list(job_ids)
    if not ids:
        return []
    with transaction(engine) as conn:
        rows = conn.execute(_TARGETS, {"p_ids": ids}).all()
    return [AmbiguousTarget(int(r[0]), str(r[1]), str(r[2]), str(r[3]),
                            json.loads(r[4] or "{}"), int(r[5]), float(r[6]), float(r[7]),
                            r[8], int(r[9]), r[10]) for r in rows]


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

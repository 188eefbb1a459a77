"""Abandoned stuck tasks still watched: what a look at one found, recorded.

Each change is a compare-and-set on the attempt still being watched (`state = abandoned`
and `watch_until` set), so a look delivered twice changes nothing twice. A late completion
that the row takes is one transaction: the row (a compare-and-set on the states that may
take it, and on its current task when it runs a replacement), the late attempt, and the
replacement's attempt. The rules are in `workers.stuck`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, bindparam, func, select
from sqlalchemy.engine import Connection, Engine

from workers.db import transaction
from workers.expected import stored_factor
from workers.models import ATTEMPTS, JOBS
from workers.piapi import TaskView
from workers.states import AttemptState, JobState
from workers.transitions.common import THIS_JOB, ForRow, move, rows_among, usage_params

logger = logging.getLogger(__name__)

TAKEN_NOTE = "; it completed later and the row took its result"
NOT_USED_NOTE = "; it completed later (and is charged) but the row already had its result"

_TARGETS = (
    select(ATTEMPTS.c.id, ATTEMPTS.c.job_id, ATTEMPTS.c.task_id, JOBS.c.model, JOBS.c.task_type,
           ATTEMPTS.c.watch_until, JOBS.c.state, JOBS.c.task_id, JOBS.c.row_key,
           JOBS.c.input_json)
    .join(JOBS, JOBS.c.id == ATTEMPTS.c.job_id)
    .where(ATTEMPTS.c.id.in_(bindparam("p_ids", expanding=True)),
           ATTEMPTS.c.state == AttemptState.ABANDONED.value, ATTEMPTS.c.watch_until.is_not(None))
)
_WATCHED = and_(ATTEMPTS.c.id == bindparam("p_attempt"),
                ATTEMPTS.c.state == AttemptState.ABANDONED.value,
                ATTEMPTS.c.watch_until.is_not(None))
_NOTE: Any = func.coalesce(ATTEMPTS.c.error, "").concat(bindparam("p_note"))
_USAGE: Any = func.coalesce(bindparam("p_consume"), ATTEMPTS.c.consume)
_LOOK_LATER = ATTEMPTS.update().where(_WATCHED).values(next_at=bindparam("p_next"))
_UNWATCHED = ATTEMPTS.update().where(_WATCHED).values(
    watch_until=None, next_at=None, consume=_USAGE, error=_NOTE)
_TAKEN = ATTEMPTS.update().where(_WATCHED).values(
    state=AttemptState.COMPLETED.value, watch_until=None, next_at=None, consume=_USAGE,
    error=_NOTE)
_OWN_USAGE = JOBS.update().where(
    THIS_JOB, JOBS.c.task_id == bindparam("p_task"), JOBS.c.state == JobState.FAILED.value,
).values(usage_consume=func.coalesce(bindparam("p_consume"), JOBS.c.usage_consume),
         remote_status=bindparam("p_status"))
"""A row that failed on this very task: its usage is PiAPI's final word on it."""
_RESULT: dict[str, Any] = dict(
    task_id=bindparam("p_task"), remote_status=bindparam("p_status"),
    output_json=bindparam("p_output"), next_at=None, lease_until=None, lease_epoch=None,
    finished_at=bindparam("p_now"), error_kind=None, error_message=None,
    usage_consume=func.coalesce(bindparam("p_consume"), JOBS.c.usage_consume),
    usage_type=func.coalesce(bindparam("p_usage_type"), JOBS.c.usage_type))
_TAKE_FROM_WAITING = move((JobState.FAILED, JobState.CANCELLED, JobState.QUEUED,
                           JobState.RETRY_WAIT), JobState.COMPLETED, THIS_JOB).values(**_RESULT)
_TAKE_FROM_RUNNING = (move(JobState.RUNNING, JobState.COMPLETED, THIS_JOB)
                      .where(JOBS.c.task_id == bindparam("p_current")).values(**_RESULT))
_REPLACEMENT_ENDED = ATTEMPTS.update().where(
    ATTEMPTS.c.job_id == bindparam("p_job"), ATTEMPTS.c.task_id == bindparam("p_current"),
).values(state=bindparam("p_state"), ended_at=bindparam("p_now"), error=bindparam("p_error"),
         consume=bindparam("p_replacement_consume"), watch_until=bindparam("p_watch_until"),
         next_at=bindparam("p_watch_next"))
_ROW_STATE = select(JOBS.c.state).where(THIS_JOB)


@dataclass(frozen=True)
class WatchTarget(ForRow):
    """An abandoned task due for a look, with its row as it was when loaded."""

    attempt_id: int
    job_id: int
    task_id: str
    model: str
    task_type: str
    watch_until: float
    row_state: str
    row_task_id: str | None
    factor: float = 1.0
    """The row's input factor: its stuck limit is its kind's per unit times this."""


@dataclass(frozen=True)
class Replacement:
    """The row's running task when a late result arrives, and what became of it."""

    task_id: str
    cancelled: bool
    """True: cancelled at PiAPI while pending (refunded); else abandoned and watched."""
    watch_until: float
    watch_next: float


class Late(StrEnum):
    """What a late completion did."""

    TAKEN = "taken"
    """The row had no result: it took this one."""
    NOT_USED = "not_used"
    """The row already had its result (or was cancelled): recorded, not used."""
    BUSY = "busy"
    """The row is being created or reconciled: nothing recorded, look again later."""


def load_watch_targets(engine: Engine, attempt_ids: Iterable[int]) -> list[WatchTarget]:
    """The attempts among `attempt_ids` still watched, with their rows."""
    return [WatchTarget(int(r[0]), int(r[1]), str(r[2]), str(r[3]), str(r[4]), float(r[5]),
                        str(r[6]), r[7], stored_factor(str(r[3]), str(r[4]), r[9]),
                        row_key=str(r[8]))
            for r in rows_among(engine, _TARGETS, attempt_ids) if r[2]]


def _params(t: WatchTarget, view: TaskView | None, now: float, note: str) -> dict[str, Any]:
    return {"p_attempt": t.attempt_id, "p_job": t.job_id, "p_task": t.task_id, "p_now": now,
            "p_note": note, "p_status": view.status if view else None, **usage_params(view)}


def look_later(engine: Engine, t: WatchTarget, next_at: float) -> bool:
    """Still running (or the look failed): look again at `next_at`."""
    with transaction(engine) as conn:
        return bool(conn.execute(_LOOK_LATER, {"p_attempt": t.attempt_id,
                                               "p_next": next_at}).rowcount == 1)


def stop_watching(engine: Engine, t: WatchTarget, view: TaskView | None, now: float,
                  note: str) -> bool:
    """The task ended without a result (failed, cancelled, unknown to PiAPI) or the watch
    bound passed: PiAPI's last usage is recorded and the task is no longer counted."""
    params = _params(t, view, now, note)
    with transaction(engine) as conn:
        if conn.execute(_UNWATCHED, params).rowcount != 1:
            return False
        if view is not None:
            conn.execute(_OWN_USAGE, params)
    return True


def record_late_completion(engine: Engine, t: WatchTarget, view: TaskView, now: float,
                           replacement: Replacement | None) -> Late:
    """The abandoned task completed: the row takes its result if it has none (see
    `workers.stuck`), else it is recorded as paid for and not used."""
    output = json.dumps(view.output, separators=(",", ":"))
    params = {**_params(t, view, now, TAKEN_NOTE), "p_output": output,
              "p_current": replacement.task_id if replacement else None}
    try:
        with transaction(engine) as conn:
            took_running = replacement is not None and \
                conn.execute(_TAKE_FROM_RUNNING, params).rowcount == 1
            if took_running or conn.execute(_TAKE_FROM_WAITING, params).rowcount == 1:
                if conn.execute(_TAKEN, params).rowcount != 1:
                    raise _Moved  # a duplicate look recorded it first: undo the row's change
                if took_running and replacement is not None:
                    _end_replacement(conn, t, replacement, now)
                return Late.TAKEN
            state = conn.execute(_ROW_STATE, params).scalar()
            if state in (JobState.COMPLETED, JobState.CANCELLED, JobState.INVALID):
                conn.execute(_UNWATCHED, {**params, "p_note": NOT_USED_NOTE})
                return Late.NOT_USED
    except _Moved:
        return Late.NOT_USED
    return Late.BUSY


class _Moved(Exception):
    """Rolls back a transaction whose compare-and-set lost to another writer."""


def _end_replacement(conn: Connection, t: WatchTarget, r: Replacement, now: float) -> None:
    if r.cancelled:
        values = {"p_state": AttemptState.CANCELLED.value, "p_replacement_consume": 0,
                  "p_watch_until": None, "p_watch_next": None,
                  "p_error": f"cancelled at PiAPI while pending (refunded): the row took the "
                             f"result of stuck task {t.task_id}, which completed later"}
    else:
        values = {"p_state": AttemptState.ABANDONED.value, "p_replacement_consume": None,
                  "p_watch_until": r.watch_until, "p_watch_next": r.watch_next,
                  "p_error": f"abandoned: the row took the result of stuck task {t.task_id}, "
                             "which completed later; PiAPI cannot cancel this one any more, "
                             "so it is watched and charged if it completes"}
    conn.execute(_REPLACEMENT_ENDED, {"p_job": t.job_id, "p_current": r.task_id, "p_now": now,
                                      **values})

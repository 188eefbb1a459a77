"""What an operator's commands (and the deadline) do to rows: cancel, retry, sweep.

Each change is a compare-and-set on the states it expects, so a worker racing with it
loses cleanly: a claim is itself a compare-and-set on queued|retry_wait, so a row
cancelled first is never claimed, and a row claimed first is left to the poll path.
Statements are built once and run with parameters.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, case, exists, func, or_
from sqlalchemy.engine import Engine
from sqlalchemy.sql.elements import ColumnElement

from workers.db import transaction
from workers.models import ATTEMPTS, BATCHES, JOBS
from workers.states import AttemptState, ErrorKind, JobState
from workers.transitions.common import Given, given, move

logger = logging.getLogger(__name__)

BY_OPERATOR = "cancelled by operator"
AMBIGUOUS_ABANDONED = ("cancelled by operator (--now) while its lost create was being "
                       "reconciled: a task may exist at PiAPI (and be charged)")
DEADLINE_NOT_STARTED = "not started before the deadline {deadline}"
DEADLINE_RETRY_WAIT = "deadline passed while waiting to retry"
RECONCILE_FIRST = ("retried: its last create's outcome is unknown, so PiAPI's task history "
                   "is searched for that task before anything is posted again")
UNKNOWN_ATTEMPT_STATES = (AttemptState.AMBIGUOUS.value, AttemptState.POSTING.value)
KEY_CHUNK = 500
"""Row ids per statement when a retry names rows."""

_BATCH = JOBS.c.batch_id == bindparam("p_batch")
_WAITING = (JobState.QUEUED, JobState.RETRY_WAIT)
_ENDED: dict[str, Any] = dict(
    next_at=None, lease_until=None, lease_epoch=None,
    finished_at=bindparam("p_now"), error_kind=ErrorKind.CANCELLED.value,
    error_message=bindparam("p_error"))
_CANCEL_IN = move(Given("p_states", (*_WAITING, JobState.AMBIGUOUS), many=True),
                  JobState.CANCELLED, _BATCH).values(**_ENDED)
"""The batch's rows in `p_states` (waiting ones, or ambiguous ones with --now) -> cancelled."""
_THIS_BATCH = BATCHES.c.id == bindparam("p_batch")
_SWEEP_CANCELLED = _CANCEL_IN.where(
    exists().where(_THIS_BATCH, BATCHES.c.cancel_mode.is_not(None)))
_SWEEP_DEADLINE = _CANCEL_IN.where(
    exists().where(_THIS_BATCH, BATCHES.c.deadline_at <= bindparam("p_now")))
_POLL_NOW = JOBS.update().where(
    _BATCH, JOBS.c.state == JobState.RUNNING.value,
    or_(JOBS.c.next_at.is_(None), JOBS.c.next_at > bindparam("p_now")),
).values(next_at=bindparam("p_now"))

_UNKNOWN: ColumnElement[bool] = or_(
    # never NULL: it is negated
    func.coalesce(JOBS.c.error_kind, "") == ErrorKind.AMBIGUOUS.value,
    exists().where(ATTEMPTS.c.job_id == JOBS.c.id, ATTEMPTS.c.n == JOBS.c.posts,
                   ATTEMPTS.c.state.in_(UNKNOWN_ATTEMPT_STATES)))
"""The row's last create may have made a task nobody knows the id of."""
_FRESH: dict[str, Any] = dict(
    tries=0, polls=0, poll_errors=0, remote_status=None, output_json=None, finished_at=None,
    lease_until=None, lease_epoch=None)
_RETRIED = Given("p_states", (JobState.FAILED, JobState.CANCELLED), many=True)
"""The rows an operator may retry: those that ended without a result."""


def _retry_statements(keyed: bool) -> tuple[Any, Any]:
    """(to queued, to ambiguous) for the selected rows of a batch, by state (and row id)."""
    where = [JOBS.c.row_key.in_(bindparam("p_keys", expanding=True))] if keyed else []
    requeue = move(_RETRIED, JobState.QUEUED, _BATCH).where(*where, ~_UNKNOWN).values(
        retry_base=JOBS.c.attempts, task_id=None, next_at=None, reconcile_from=None,
        error_kind=None, error_message=None, **_FRESH)
    reconcile = move(_RETRIED, JobState.AMBIGUOUS, _BATCH).where(*where, _UNKNOWN).values(
        retry_base=case((JOBS.c.attempts > 0, JOBS.c.attempts - 1), else_=0),
        next_at=bindparam("p_now"), reconcile_from=bindparam("p_now"),
        error_kind=ErrorKind.AMBIGUOUS.value, error_message=RECONCILE_FIRST, **_FRESH)
    return requeue, reconcile


_RETRY_ALL = _retry_statements(keyed=False)
_RETRY_KEYED = _retry_statements(keyed=True)


def cancel_waiting(engine: Engine, batch_id: str, now: float) -> int:
    """The batch's rows waiting to be created (queued, retry_wait) -> cancelled."""
    return _cancel(engine, _CANCEL_IN, batch_id, now, BY_OPERATOR, _WAITING)


def cancel_ambiguous(engine: Engine, batch_id: str, now: float) -> int:
    """The batch's ambiguous rows -> cancelled (cancel --now): reconciliation stops."""
    return _cancel(engine, _CANCEL_IN, batch_id, now, AMBIGUOUS_ABANDONED,
                   (JobState.AMBIGUOUS,))


def sweep_cancelled(engine: Engine, batch_id: str, now: float, mode: str) -> int:
    """Stragglers of a cancelled batch (rows back to waiting after the cancel; with `now`,
    lost creates too) -> cancelled, as long as the batch is still cancelled (a retry may
    have lifted it since the caller looked)."""
    n = _cancel(engine, _SWEEP_CANCELLED, batch_id, now, BY_OPERATOR, _WAITING)
    if mode == "now":
        n += _cancel(engine, _SWEEP_CANCELLED, batch_id, now, AMBIGUOUS_ABANDONED,
                     (JobState.AMBIGUOUS,))
    return n


def sweep_deadline(engine: Engine, batch_id: str, now: float, deadline: str) -> int:
    """Past the batch's deadline: rows not started, and rows waiting to be created again,
    -> cancelled with the reason (as long as the deadline still stands)."""
    return (_cancel(engine, _SWEEP_DEADLINE, batch_id, now,
                    DEADLINE_NOT_STARTED.format(deadline=deadline), (JobState.QUEUED,))
            + _cancel(engine, _SWEEP_DEADLINE, batch_id, now, DEADLINE_RETRY_WAIT,
                      (JobState.RETRY_WAIT,)))


def _cancel(engine: Engine, statement: Any, batch_id: str, now: float, message: str,
            states: Sequence[JobState]) -> int:
    params = {"p_batch": batch_id, "p_states": given(statement, states), "p_now": now,
              "p_error": message}
    with transaction(engine) as conn:
        done = int(conn.execute(statement, params).rowcount)
    if done:
        logger.info("batch %s: %d %s row(s) cancelled: %s", batch_id, done, "/".join(states),
                    message)
    return done


def poll_running_now(engine: Engine, batch_id: str, now: float) -> int:
    """Make the batch's running rows due for a poll now (so a cancel reaches them soon)."""
    with transaction(engine) as conn:
        return int(conn.execute(_POLL_NOW, {"p_batch": batch_id, "p_now": now}).rowcount)


@dataclass(frozen=True)
class Retried:
    """What an operator's retry did."""

    requeued: int = 0
    """Rows back to queued: posted again as a new attempt."""
    reconciling: int = 0
    """Rows whose last create's outcome is unknown: reconciled before anything is posted."""


def retry_rows(engine: Engine, batch_id: str, states: Iterable[str], now: float,
               keys: Sequence[str] | None = None) -> Retried:
    """A new attempt for the batch's rows in `states` (failed, cancelled), only those whose
    row id is in `keys` when given. Attempts made so far no longer count against the
    batch's max_attempts. A row whose last create's outcome is unknown goes to ambiguous
    with a fresh reconciliation period instead of queued, so a task it may have made is
    found (and adopted) rather than paid for twice."""
    chosen = [s for s in states if s in _RETRIED.states]
    requeued = reconciling = 0
    if not chosen:
        return Retried()
    params: dict[str, Any] = {"p_batch": batch_id, "p_states": given(_RETRY_ALL[0], chosen),
                              "p_now": now}
    with transaction(engine) as conn:
        if keys is None:
            requeue, reconcile = _RETRY_ALL
            reconciling = int(conn.execute(reconcile, params).rowcount)
            requeued = int(conn.execute(requeue, params).rowcount)
        else:
            requeue, reconcile = _RETRY_KEYED
            for start in range(0, len(keys), KEY_CHUNK):
                part = {**params, "p_keys": list(keys[start:start + KEY_CHUNK])}
                reconciling += int(conn.execute(reconcile, part).rowcount)
                requeued += int(conn.execute(requeue, part).rowcount)
    logger.info("batch %s retried: %d row(s) requeued, %d to reconcile first", batch_id,
                requeued, reconciling)
    return Retried(requeued, reconciling)


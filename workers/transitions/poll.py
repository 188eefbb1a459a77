"""The running side: what a GET (or a webhook) says about a job's task, recorded in batches.

A poll message's outcomes are written in one transaction; each is still its own
compare-and-set on (state = running, task id, poll count), so a repeated poll changes
nothing twice. Statements are built once and run with parameters.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import and_, bindparam, func, select
from sqlalchemy.engine import Connection, Engine

from workers.db import transaction
from workers.expected import stored_factor
from workers.models import ATTEMPTS, BATCHES, DURATION_SAMPLES, JOBS
from workers.piapi import TaskView
from workers.polling import per_unit_s
from workers.states import AttemptState, ErrorKind, JobState
from workers.transitions.common import (
    THIS_JOB,
    Claim,
    PollTarget,
    move,
    rows_among,
    usage_params,
)
from workers.transitions.create import claim_standby

logger = logging.getLogger(__name__)

OutcomeKind = Literal["progress", "completed", "failed", "retry", "poll_error", "lost",
                      "cancelled"]

_TARGETS = (
    select(JOBS.c.id, JOBS.c.task_id, JOBS.c.polls, JOBS.c.poll_errors, JOBS.c.attempts,
           BATCHES.c.max_attempts, JOBS.c.model, JOBS.c.task_type, JOBS.c.submitted_at,
           JOBS.c.retry_base, BATCHES.c.cancel_mode, BATCHES.c.on_stuck, JOBS.c.row_key,
           JOBS.c.input_json, JOBS.c.batch_id)
    .join(BATCHES, BATCHES.c.id == JOBS.c.batch_id)
    .where(JOBS.c.id.in_(bindparam("p_ids", expanding=True)),
           JOBS.c.state == JobState.RUNNING.value)
)
_THIS_POLL = and_(JOBS.c.task_id == bindparam("p_task"), JOBS.c.polls == bindparam("p_polls"))
"""With the job still running: the guard of every outcome (a repeated poll matches none)."""
_GUARD = and_(THIS_JOB, JOBS.c.state == JobState.RUNNING.value, _THIS_POLL)
_USAGE: dict[str, Any] = dict(
    usage_consume=func.coalesce(bindparam("p_consume"), JOBS.c.usage_consume),
    usage_type=func.coalesce(bindparam("p_usage_type"), JOBS.c.usage_type))
_DONE = dict(lease_until=None, lease_epoch=None, remote_status=bindparam("p_status"),
             polls=JOBS.c.polls + 1, **_USAGE)


def _ended(target: JobState) -> Any:
    """running -> `target` for the job's current task, guarded like every outcome."""
    return move(JobState.RUNNING, target, THIS_JOB).where(_THIS_POLL)


_STATEMENTS: dict[OutcomeKind, Any] = {
    "progress": JOBS.update().where(_GUARD).values(
        poll_errors=0, next_at=bindparam("p_next"), **_DONE),
    "completed": _ended(JobState.COMPLETED).values(
        output_json=bindparam("p_output"), next_at=None,
        finished_at=bindparam("p_now"), error_kind=None, error_message=None, **_DONE),
    "failed": _ended(JobState.FAILED).values(
        next_at=None, finished_at=bindparam("p_now"),
        error_kind=bindparam("p_kind"), error_message=bindparam("p_error"), **_DONE),
    "retry": _ended(JobState.RETRY_WAIT).values(
        next_at=bindparam("p_next"), task_id=None, tries=0,
        error_kind=bindparam("p_kind"), error_message=bindparam("p_error"), **_DONE),
    "cancelled": _ended(JobState.CANCELLED).values(
        next_at=None, finished_at=bindparam("p_now"),
        error_kind=ErrorKind.CANCELLED.value, error_message=bindparam("p_error"), **_DONE),
    "poll_error": JOBS.update().where(_GUARD).values(
        lease_until=None, lease_epoch=None, poll_errors=JOBS.c.poll_errors + 1,
        next_at=bindparam("p_next"), error_message=bindparam("p_error")),
    "lost": _ended(JobState.FAILED).values(
        lease_until=None, lease_epoch=None, next_at=None,
        finished_at=bindparam("p_now"), error_kind=ErrorKind.NOT_FOUND.value,
        error_message=bindparam("p_error")),
}
_ATTEMPT_ENDED = ATTEMPTS.update().where(
    ATTEMPTS.c.job_id == bindparam("p_job"), ATTEMPTS.c.task_id == bindparam("p_task")
).values(state=bindparam("p_attempt_state"), ended_at=bindparam("p_now"),
         consume=bindparam("p_consume"), error=bindparam("p_attempt_error"),
         watch_until=bindparam("p_watch_until"), next_at=bindparam("p_watch_next"))
_SAMPLE = DURATION_SAMPLES.insert()
_DUE_LATER = (THIS_JOB, JOBS.c.state == JobState.RUNNING.value,
              JOBS.c.next_at > bindparam("p_now"))
_MARK_DUE = JOBS.update().where(*_DUE_LATER).values(next_at=bindparam("p_now"))
_MARK_DUE_TASK = JOBS.update().where(
    *_DUE_LATER, JOBS.c.task_id == bindparam("p_task"),
).values(next_at=bindparam("p_now"))


@dataclass(frozen=True)
class PollOutcome:
    """What one GET found, ready to be recorded."""

    target: PollTarget
    kind: OutcomeKind
    view: TaskView | None = None
    next_at: float | None = None
    """progress / poll_error: next poll; retry: when the new task may be created."""
    message: str = ""
    error_kind: ErrorKind | None = None
    duration_s: float | None = None
    attempt_state: str | None = None
    """How the attempt's row ends, when not `completed`/`failed`: an `AttemptState` (e.g.
    `cancelled`, `abandoned`)."""
    watch_until: float | None = None
    """An abandoned stuck task: watched until then (see `workers.stuck`)..."""
    watch_next: float | None = None
    """...and first looked at then."""
    attempt_error: str | None = None
    """The attempt's own error, when it differs from the row's message."""

    @property
    def frees_slot(self) -> bool:
        """True when the job leaves the running state (a concurrency slot frees up)."""
        return self.kind in ("completed", "failed", "retry", "lost", "cancelled")

    def params(self, now: float) -> dict[str, Any]:
        """Statement parameters for recording this outcome."""
        t, view = self.target, self.view
        return {
            "p_job": t.job_id, "p_task": t.task_id, "p_polls": t.polls, "p_now": now,
            "p_next": self.next_at, "p_status": view.status if view else None,
            "p_output": json.dumps(view.output, separators=(",", ":")) if view else None,
            "p_kind": self.error_kind.value if self.error_kind else None,
            "p_error": self.message, "p_watch_until": self.watch_until,
            "p_watch_next": self.watch_next, **usage_params(view),
        }


def load_poll_targets(engine: Engine, job_ids: Iterable[int]) -> list[PollTarget]:
    """The running jobs among `job_ids`, with what a poll needs."""
    return [
        PollTarget(int(r[0]), str(r[1]), int(r[2]), int(r[3]), int(r[4]), int(r[5]),
                   str(r[6]), str(r[7]), r[8], int(r[9] or 0), r[10], r[11],
                   stored_factor(str(r[6]), str(r[7]), r[13]), row_key=str(r[12]),
                   batch_id=str(r[14]))
        for r in rows_among(engine, _TARGETS, job_ids) if r[1]
    ]


def _apply(conn: Connection, o: PollOutcome, now: float) -> bool:
    params = o.params(now)
    if conn.execute(_STATEMENTS[o.kind], params).rowcount != 1:
        return False
    if o.kind in ("completed", "failed", "retry", "cancelled"):
        ended = AttemptState(o.attempt_state or (
            AttemptState.COMPLETED if o.kind == "completed" else AttemptState.FAILED))
        conn.execute(_ATTEMPT_ENDED, {
            **params, "p_attempt_state": ended.value,
            "p_attempt_error": None if o.kind == "completed" else (o.attempt_error
                                                                   or o.message),
        })
    return True


@dataclass(frozen=True)
class Handoff:
    """Rows a poll message may create in the slots it frees (`workers.handoff`)."""

    standby: Mapping[str, Sequence[int]]
    """Per batch: ids of its next queued rows, in the dispatcher's order."""
    eligible: frozenset[int]
    """The jobs whose freed slot may be handed over (the caller's judgement)."""
    lease_s: float
    """The claimed rows' lease (as a `submit` message's claim)."""


@dataclass
class Recorded:
    """What recording a poll message did: slots freed, and rows claimed into them."""

    freed: int = 0
    claims: list[Claim] = field(default_factory=list)
    standby_used: dict[str, int] = field(default_factory=dict)
    """Per batch: standby ids used up (claimed, or found taken)."""


def record_poll_outcomes(engine: Engine, outcomes: Sequence[PollOutcome], now: float) -> int:
    """Record a message's outcomes in one transaction; returns how many slots they freed."""
    return record_and_hand_off(engine, outcomes, now, None).freed


def record_and_hand_off(engine: Engine, outcomes: Sequence[PollOutcome], now: float,
                        handoff: Handoff | None) -> Recorded:
    """Record a message's outcomes in one transaction and, with `handoff`, claim into each
    eligible slot freed the next standby row of its batch and model, in that transaction:
    the tasks in flight never drop between the end and the claim (`workers.handoff`)."""
    done = Recorded()
    if not outcomes:
        return done
    samples: list[dict[str, Any]] = []
    with transaction(engine) as conn:
        for o in outcomes:
            if _apply(conn, o, now):
                done.freed += o.frees_slot
                if handoff is not None and o.frees_slot and o.target.job_id in handoff.eligible:
                    _hand_off(conn, o.target, handoff, done, now)
                if o.kind == "completed" and o.duration_s is not None:
                    # Per unit of work: the kind's schedule scales it back by each row's factor.
                    samples.append({"model": o.target.model, "task_type": o.target.task_type,
                                    "duration_s": per_unit_s(o.duration_s, o.target.factor),
                                    "at": now})
        if samples:
            conn.execute(_SAMPLE, samples)
    return done


def _hand_off(conn: Connection, t: PollTarget, handoff: Handoff, done: Recorded,
              now: float) -> None:
    batch = t.batch_id
    left = list(handoff.standby.get(batch, ()))[done.standby_used.get(batch, 0):]
    if not left:
        return
    claim, used = claim_standby(conn, left, batch, t.model, now, handoff.lease_s)
    done.standby_used[batch] = done.standby_used.get(batch, 0) + used
    if claim is not None:
        done.claims.append(claim)


def _one(engine: Engine, outcome: PollOutcome, now: float) -> bool:
    with transaction(engine) as conn:
        return _apply(conn, outcome, now)


def record_progress(engine: Engine, t: PollTarget, view: TaskView, next_at: float) -> bool:
    """The task is still running: remember its status and when to look again."""
    return _one(engine, PollOutcome(t, "progress", view, next_at=next_at), next_at)


def record_completed(engine: Engine, t: PollTarget, view: TaskView, now: float) -> bool:
    """running -> completed with PiAPI's output and usage."""
    return _one(engine, PollOutcome(t, "completed", view), now)


def record_task_failed(
    engine: Engine, t: PollTarget, view: TaskView, now: float, *, kind: ErrorKind,
    message: str, retry_at: float | None,
) -> JobState | None:
    """running -> retry_wait (a new task later, when `retry_at` is given) or -> failed."""
    outcome = PollOutcome(t, "failed" if retry_at is None else "retry", view, next_at=retry_at,
                          message=message, error_kind=kind)
    if not _one(engine, outcome, now):
        return None
    return JobState.FAILED if retry_at is None else JobState.RETRY_WAIT


def mark_due(engine: Engine, job_id: int, task_id: str | None, now: float) -> bool:
    """Make a running job due for one GET now (a webhook said its task may have ended).

    Only the job's current task counts; nothing else about the job changes, so a forged,
    replayed or stale call costs at most one GET.
    """
    statement = _MARK_DUE if task_id is None else _MARK_DUE_TASK
    with transaction(engine) as conn:
        return bool(conn.execute(statement, {"p_job": job_id, "p_now": now,
                                             "p_task": task_id}).rowcount == 1)

"""The running side: what a GET (or a webhook) says about a job's task, recorded in batches.

A poll message's outcomes are written in one transaction; each is still its own
compare-and-set on (state = running, task id, poll count), so a repeated poll changes
nothing twice.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import and_, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from workers.db import session
from workers.durations import add_samples
from workers.models import Attempt, Batch, Job
from workers.piapi import TaskView
from workers.states import ErrorKind, JobState
from workers.transitions.common import PollTarget, cas, usage_values

logger = logging.getLogger(__name__)

RUN, RW = JobState.RUNNING, JobState.RETRY_WAIT

OutcomeKind = Literal["progress", "completed", "failed", "retry", "poll_error", "lost"]


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
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def frees_slot(self) -> bool:
        """True when the job leaves the running state (a concurrency slot frees up)."""
        return self.kind in ("completed", "failed", "retry", "lost")


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


def _guard(t: PollTarget) -> Any:
    return and_(col(Job.id) == t.job_id, col(Job.state) == RUN.value,
                col(Job.task_id) == t.task_id, col(Job.polls) == t.polls)


def _apply(s: Session, o: PollOutcome, now: float) -> bool:
    t, view = o.target, o.view
    usage = usage_values(view) if view else {}
    common: dict[str, Any] = dict(lease_until=None, lease_epoch=None)
    if o.kind == "progress":
        values = dict(common, remote_status=view.status if view else None, polls=t.polls + 1,
                      poll_errors=0, next_at=o.next_at, **usage)
    elif o.kind == "completed":
        assert view is not None
        values = dict(common, state=JobState.COMPLETED.value, remote_status=view.status,
                      polls=t.polls + 1, output_json=json.dumps(view.output, separators=(",", ":")),
                      next_at=None, finished_at=now, error_kind=None, error_message=None, **usage)
    elif o.kind in ("failed", "retry"):
        values = dict(common, remote_status=view.status if view else None, polls=t.polls + 1,
                      error_kind=o.error_kind.value if o.error_kind else None,
                      error_message=o.message, **usage)
        if o.kind == "failed":
            values.update(state=JobState.FAILED.value, next_at=None, finished_at=now)
        else:
            values.update(state=RW.value, next_at=o.next_at, task_id=None, tries=0)
    elif o.kind == "poll_error":
        values = dict(common, poll_errors=t.poll_errors + 1, next_at=o.next_at,
                      error_message=o.message)
    else:  # lost
        values = dict(common, state=JobState.FAILED.value, next_at=None, finished_at=now,
                      error_kind=ErrorKind.NOT_FOUND.value, error_message=o.message)
    done = cas(s, update(Job).where(_guard(t)).values(**values)) == 1
    if done and o.kind in ("completed", "failed", "retry"):
        consume = view.usage.consume if view and view.usage else None
        state = "completed" if o.kind == "completed" else "failed"
        s.execute(update(Attempt).where(col(Attempt.job_id) == t.job_id,
                                        col(Attempt.task_id) == t.task_id)
                  .values(state=state, ended_at=now, consume=consume,
                          error=None if o.kind == "completed" else o.message))
    return done


def record_poll_outcomes(engine: Engine, outcomes: Sequence[PollOutcome], now: float) -> int:
    """Record a message's outcomes in one transaction; returns how many slots they freed."""
    if not outcomes:
        return 0
    freed = 0
    samples: list[tuple[str, str, float]] = []
    with session(engine) as s:
        for o in outcomes:
            if _apply(s, o, now):
                freed += o.frees_slot
                if o.kind == "completed" and o.duration_s is not None:
                    samples.append((o.target.model, o.target.task_type, o.duration_s))
        add_samples(s, samples, now)
    return freed


def _one(engine: Engine, outcome: PollOutcome, now: float) -> bool:
    with session(engine) as s:
        return _apply(s, outcome, now)


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
    return JobState.FAILED if retry_at is None else RW


def record_poll_error(engine: Engine, t: PollTarget, now: float, next_at: float,
                      message: str) -> bool:
    """The GET failed (network, 5xx, 429): the task is fine, look again later."""
    return _one(engine, PollOutcome(t, "poll_error", next_at=next_at, message=message), now)


def record_lost_task(engine: Engine, t: PollTarget, now: float, message: str) -> bool:
    """PiAPI no longer knows the task: the row fails (kind not_found), never re-posted here."""
    return _one(engine, PollOutcome(t, "lost", message=message), now)


def mark_due(engine: Engine, job_id: int, task_id: str | None, now: float) -> bool:
    """Make a running job due for one GET now (a webhook said its task may have ended).

    Only the job's current task counts; nothing else about the job changes, so a forged,
    replayed or stale call costs at most one GET.
    """
    guard = [col(Job.id) == job_id, col(Job.state) == RUN.value, col(Job.next_at) > now]
    if task_id is not None:
        guard.append(col(Job.task_id) == task_id)
    with session(engine) as s:
        return cas(s, update(Job).where(*guard).values(next_at=now)) == 1

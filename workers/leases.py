"""Dispatch leases: which jobs are due now, and reserving them for one Celery message.

A lease (`lease_until` in the future, `lease_epoch` equal to the current Redis epoch) means
a message for the job is out. A lease that expired (worker died) or belongs to an older
epoch (Redis was flushed or restarted, so the message is gone) makes the job due again.
A job in `submitting` is the exception: its worker may be mid-POST, so only time frees it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import col

from workers.db import session
from workers.models import Batch, Job
from workers.states import ACTIVE, JobState

Q, SUB, RUN, RW = JobState.QUEUED, JobState.SUBMITTING, JobState.RUNNING, JobState.RETRY_WAIT


def lease_free(now: float, epoch: str) -> ColumnElement[bool]:
    """SQL: no message for this job is out any more."""
    return or_(col(Job.lease_until).is_(None), col(Job.lease_until) < now,
               col(Job.lease_epoch).is_(None), col(Job.lease_epoch) != epoch)


def lease_held(now: float, epoch: str) -> ColumnElement[bool]:
    """SQL: a message for this job is out and may still arrive."""
    return and_(col(Job.lease_until) >= now, col(Job.lease_epoch) == epoch)


@dataclass(frozen=True)
class Occupancy:
    """How many of the account's slots are taken, overall and per batch."""

    total: int
    by_batch: dict[str, int]
    creating: int = 0
    """Of `total`: creates dispatched or under way that PiAPI may not have counted yet."""


def occupancy(engine: Engine, now: float, epoch: str) -> Occupancy:
    """Slots in use: tasks submitting or running, plus creates already dispatched."""
    reserved = and_(col(Job.state).in_([Q.value, RW.value]), lease_held(now, epoch))
    busy = or_(col(Job.state).in_([SUB.value, RUN.value]), reserved)
    with session(engine) as s:
        rows = s.execute(select(col(Job.batch_id), col(Job.state), func.count())
                         .where(busy).group_by(col(Job.batch_id), col(Job.state))).all()
    by_batch: dict[str, int] = {}
    creating = 0
    for batch_id, state, n in rows:
        by_batch[str(batch_id)] = by_batch.get(str(batch_id), 0) + int(n)
        if state != RUN.value:
            creating += int(n)
    return Occupancy(total=sum(by_batch.values()), by_batch=by_batch, creating=creating)


def young_running(engine: Engine, since: float) -> int:
    """Running jobs whose task was created after `since` (surely still in flight at PiAPI)."""
    with session(engine) as s:
        return int(s.scalar(select(func.count()).where(
            col(Job.state) == RUN.value, col(Job.submitted_at) > since)) or 0)


@dataclass(frozen=True)
class OpenBatch:
    """A batch that still has rows to run."""

    id: str
    concurrency: int | None


def open_batches(engine: Engine) -> list[OpenBatch]:
    """Batches not yet done, oldest first."""
    with session(engine) as s:
        rows = s.execute(
            select(col(Batch.id), col(Batch.concurrency))
            .where(col(Batch.done).is_(False)).order_by(col(Batch.created_at))
        ).all()
    return [OpenBatch(str(r[0]), r[1]) for r in rows]


def _lease(engine: Engine, where: ColumnElement[bool], order: Any,
           limit: int, now: float, epoch: str, lease_s: float) -> list[int]:
    if limit <= 0:
        return []
    due = select(col(Job.id)).where(where, lease_free(now, epoch)).order_by(order).limit(limit)
    with session(engine) as s:
        ids = [int(i) for i in s.scalars(due) if i is not None]
        if not ids:
            return []
        leased = s.scalars(
            update(Job).where(col(Job.id).in_(ids), where, lease_free(now, epoch))
            .values(lease_until=now + lease_s, lease_epoch=epoch)
            .returning(col(Job.id))
        ).all()
    return sorted(int(i) for i in leased if i is not None)


def lease_submits(engine: Engine, batch_id: str, limit: int, now: float, epoch: str,
                  lease_s: float) -> list[int]:
    """Reserve up to `limit` of a batch's jobs that may be created now, in manifest order."""
    retry_due = _lease(
        engine,
        and_(col(Job.batch_id) == batch_id, col(Job.state) == RW.value, col(Job.next_at) <= now),
        col(Job.seq), limit, now, epoch, lease_s,
    )
    fresh = _lease(
        engine, and_(col(Job.batch_id) == batch_id, col(Job.state) == Q.value),
        col(Job.seq), limit - len(retry_due), now, epoch, lease_s,
    )
    return retry_due + fresh


def lease_polls(engine: Engine, limit: int, now: float, epoch: str, lease_s: float) -> list[int]:
    """Reserve up to `limit` running jobs whose next poll is due, most overdue first."""
    return _lease(
        engine, and_(col(Job.state) == RUN.value, col(Job.next_at) <= now),
        col(Job.next_at), limit, now, epoch, lease_s,
    )


def next_due_at(engine: Engine, after: float) -> float | None:
    """The earliest time after `after` that a running or waiting job becomes due."""
    with session(engine) as s:
        values = [s.scalar(select(func.min(col(Job.next_at)))
                           .where(col(Job.state) == state.value, col(Job.next_at) > after))
                  for state in (RUN, RW)]
    due = [float(v) for v in values if v is not None]
    return min(due) if due else None


def mark_done_batches(engine: Engine) -> list[str]:
    """Flag ingested batches that have no active row left; returns their ids."""
    active = [s.value for s in ACTIVE]
    with session(engine) as s:
        candidates = [str(b) for b in s.scalars(
            select(col(Batch.id)).where(col(Batch.done).is_(False), col(Batch.ingested).is_(True)))]
        finished: list[str] = []
        for batch_id in candidates:
            left = s.scalar(select(col(Job.id)).where(col(Job.batch_id) == batch_id,
                                                 col(Job.state).in_(active)).limit(1))
            if left is None:
                s.execute(update(Batch).where(col(Batch.id) == batch_id).values(done=True))
                finished.append(batch_id)
    return finished

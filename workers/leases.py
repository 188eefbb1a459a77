"""Dispatch leases: which jobs are due now, and reserving them for one Celery message.

A lease (`lease_until` in the future, `lease_epoch` equal to the current Redis epoch) means
a message for the job is out. A lease that expired (worker died) or belongs to an older
epoch (Redis was flushed or restarted, so the message is gone) makes the job due again.
A job in `submitting` is the exception: its worker may be mid-POST, so only time frees it.
The dispatcher runs these every pass, so the statements are built once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, bindparam, func, or_, select, union_all
from sqlalchemy.engine import Engine
from sqlalchemy.sql.elements import ColumnElement

from workers.db import transaction
from workers.models import BATCHES, JOBS
from workers.states import ACTIVE, JobState

Q, SUB, RUN, RW = (JobState.QUEUED.value, JobState.SUBMITTING.value, JobState.RUNNING.value,
                   JobState.RETRY_WAIT.value)
j = JOBS.c

_FREE = or_(j.lease_until.is_(None), j.lease_until < bindparam("p_now"),
            j.lease_epoch.is_(None), j.lease_epoch != bindparam("p_epoch"))
"""No message for this job is out any more."""

# Two index-served halves, not one OR (which made PostgreSQL read every queued row, every
# pass): rows holding a slot, and queued rows a message is out for (by lease time).
_OCCUPANCY = union_all(
    select(j.batch_id, j.state, func.count()).where(j.state.in_([SUB, RUN]))
    .group_by(j.batch_id, j.state),
    select(j.batch_id, j.state, func.count())
    .where(j.lease_until >= bindparam("p_now"), j.lease_epoch == bindparam("p_epoch"),
           j.state.in_([Q, RW]))
    .group_by(j.batch_id, j.state),
)
_YOUNG = select(func.count()).where(j.state == RUN, j.submitted_at > bindparam("p_since"),
                                    j.submitted_at <= bindparam("p_until"))
_OPEN_BATCHES = (select(BATCHES.c.id, BATCHES.c.concurrency, BATCHES.c.budget_usd,
                        BATCHES.c.deadline_at, BATCHES.c.cancel_mode, BATCHES.c.paused)
                 .where(BATCHES.c.done.is_(False)).order_by(BATCHES.c.created_at))
_NEXT_DUE = select(func.min(j.next_at)).where(j.state.in_([RUN, RW, JobState.AMBIGUOUS.value]),
                                               j.next_at > bindparam("p_now"))
_ANY_RETRY = select(j.id).where(j.state == RW).limit(1)


def _leaser(where: ColumnElement[bool], order: Any) -> Any:
    """One statement: lease the first `p_limit` due jobs in `order`, returning their ids.
    The outer WHERE repeats the condition, so a row that changed meanwhile is left out."""
    due = and_(where, _FREE)
    pick = select(j.id).where(due).order_by(order).limit(bindparam("p_limit"))
    return (JOBS.update().where(j.id.in_(pick.scalar_subquery()), due)
            .values(lease_until=bindparam("p_lease_until"), lease_epoch=bindparam("p_epoch"))
            .returning(j.id))


_RETRY_DUE = _leaser(and_(j.batch_id == bindparam("p_batch"), j.state == RW,
                          j.next_at <= bindparam("p_now")), j.seq)
_QUEUED = _leaser(and_(j.batch_id == bindparam("p_batch"), j.state == Q), j.seq)
_POLLS_DUE = _leaser(and_(j.state == RUN, j.next_at <= bindparam("p_now")), j.next_at)
_RECONCILES_DUE = _leaser(and_(j.state == JobState.AMBIGUOUS.value,
                               j.next_at <= bindparam("p_now")), j.next_at)


@dataclass(frozen=True)
class Occupancy:
    """How many of the account's slots are taken, overall and per batch."""

    total: int
    by_batch: dict[str, int]
    creating: int = 0
    """Of `total`: creates dispatched or under way that PiAPI may not have counted yet."""


def occupancy(engine: Engine, now: float, epoch: str) -> Occupancy:
    """Slots in use: tasks submitting or running, plus creates already dispatched."""
    with transaction(engine) as conn:
        rows = conn.execute(_OCCUPANCY, {"p_now": now, "p_epoch": epoch}).all()
    by_batch: dict[str, int] = {}
    creating = 0
    for batch_id, state, n in rows:
        by_batch[str(batch_id)] = by_batch.get(str(batch_id), 0) + int(n)
        if state != RUN:
            creating += int(n)
    return Occupancy(total=sum(by_batch.values()), by_batch=by_batch, creating=creating)


def young_running(engine: Engine, since: float, until: float) -> int:
    """Running jobs whose task was created in (since, until]: surely in flight at PiAPI."""
    with transaction(engine) as conn:
        return int(conn.execute(_YOUNG, {"p_since": since, "p_until": until}).scalar() or 0)


@dataclass(frozen=True)
class OpenBatch:
    """A batch that still has rows to run."""

    id: str
    concurrency: int | None
    budget_usd: float | None = None
    deadline_at: float | None = None
    cancel_mode: str | None = None
    """Set once an operator cancelled the batch: no create is admitted any more."""
    paused: str | None = None


def open_batches(engine: Engine) -> list[OpenBatch]:
    """Batches not yet done, oldest first."""
    with transaction(engine) as conn:
        rows = conn.execute(_OPEN_BATCHES).all()
    return [OpenBatch(str(r[0]), r[1], r[2], r[3], r[4], r[5]) for r in rows]


def _lease(engine: Engine, leaser: Any, params: dict[str, Any], limit: int) -> list[int]:
    if limit <= 0:
        return []
    with transaction(engine) as conn:
        leased = conn.execute(leaser, {**params, "p_limit": limit}).all()
    return sorted(int(i) for (i,) in leased)


def lease_submits(engine: Engine, batch_id: str, limit: int, now: float, epoch: str,
                  lease_s: float, retries: bool = True) -> list[int]:
    """Reserve up to `limit` of a batch's jobs that may be created now, in manifest order
    (rows waiting to be created again first, unless `retries` says there are none)."""
    params = {"p_batch": batch_id, "p_now": now, "p_epoch": epoch,
              "p_lease_until": now + lease_s}
    retry_due = _lease(engine, _RETRY_DUE, params, limit) if retries else []
    return retry_due + _lease(engine, _QUEUED, params, limit - len(retry_due))


def lease_polls(engine: Engine, limit: int, now: float, epoch: str, lease_s: float) -> list[int]:
    """Reserve up to `limit` running jobs whose next poll is due, most overdue first."""
    return _lease(engine, _POLLS_DUE,
                  {"p_now": now, "p_epoch": epoch, "p_lease_until": now + lease_s}, limit)


def lease_reconciles(engine: Engine, limit: int, now: float, epoch: str,
                     lease_s: float) -> list[int]:
    """Reserve up to `limit` ambiguous jobs due to be looked for in PiAPI's history."""
    return _lease(engine, _RECONCILES_DUE,
                  {"p_now": now, "p_epoch": epoch, "p_lease_until": now + lease_s}, limit)


def next_due_at(engine: Engine, after: float) -> float | None:
    """The earliest time after `after` that a running or waiting job becomes due."""
    with transaction(engine) as conn:
        value = conn.execute(_NEXT_DUE, {"p_now": after}).scalar()
    return float(value) if value is not None else None


def any_retry_wait(engine: Engine) -> bool:
    """True when some job waits to be created again."""
    with transaction(engine) as conn:
        return conn.execute(_ANY_RETRY).first() is not None


def mark_done_batches(engine: Engine) -> list[str]:
    """Flag ingested batches that have no active row left; returns their ids."""
    active = [s.value for s in ACTIVE]
    b = BATCHES.c
    finished: list[str] = []
    with transaction(engine) as conn:
        candidates = [str(i) for (i,) in conn.execute(
            select(b.id).where(b.done.is_(False), b.ingested.is_(True))).all()]
        for batch_id in candidates:
            left = conn.execute(select(j.id).where(j.batch_id == batch_id,
                                                   j.state.in_(active)).limit(1)).first()
            if left is None:
                conn.execute(BATCHES.update().where(b.id == batch_id).values(done=True))
                finished.append(batch_id)
    return finished


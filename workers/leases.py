"""Dispatch leases: which jobs are due now, and reserving them for one Celery message.

A lease (`lease_until` in the future, `lease_epoch` equal to the current Redis epoch) means
a message for the job is out. A lease that expired (worker died) or belongs to an older
epoch (Redis was flushed or restarted, so the message is gone) makes the job due again.
A job in `submitting` is the exception: its worker may be mid-POST, so only time frees it.
The dispatcher runs these every pass, so the statements are built once.

Occupancy also counts abandoned stuck tasks while they are watched (`workers.stuck`): PiAPI
has not said they ended, so they may still hold a slot there. A watched task's look is
leased by moving its `next_at` past the lease (a lost look comes due again by itself).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, bindparam, func, literal, or_, select, union_all
from sqlalchemy.engine import Engine

from workers.db import transaction
from workers.models import ATTEMPTS, BATCHES, JOBS
from workers.states import ACTIVE, AttemptState, JobState

_WATCHED = ATTEMPTS.c.watch_until.is_not(None)

_FREE = or_(JOBS.c.lease_until.is_(None), JOBS.c.lease_until < bindparam("p_now"),
            JOBS.c.lease_epoch.is_(None), JOBS.c.lease_epoch != bindparam("p_epoch"))
"""No message for this job is out any more."""

# Two index-served halves, not one OR (which read every queued row, every pass): rows
# holding a slot (by state), and rows a message is out for (by lease time; the caller keeps
# the queued and retry_wait ones). No state condition in the second: the planners would
# rather walk every queued row by state than the few live leases by time.
# (No GROUP BY in the second half either: SQLite would scan a whole index to avoid a sort.)
_OCCUPANCY = union_all(
    select(literal(False).label("held"), JOBS.c.batch_id, JOBS.c.state, JOBS.c.model,
           func.count())
    .where(JOBS.c.state.in_([JobState.SUBMITTING.value, JobState.RUNNING.value,
                             JobState.AMBIGUOUS.value]))
    .group_by(JOBS.c.batch_id, JOBS.c.state, JOBS.c.model),
    select(literal(True).label("held"), JOBS.c.batch_id, JOBS.c.state, JOBS.c.model, literal(1))
    .where(JOBS.c.lease_until >= bindparam("p_now"), JOBS.c.lease_epoch == bindparam("p_epoch")),
    # Abandoned stuck tasks still watched (the partial index holds only those).
    select(literal(False).label("held"), JOBS.c.batch_id, literal(AttemptState.ABANDONED.value),
           JOBS.c.model, func.count())
    .select_from(ATTEMPTS.join(JOBS, JOBS.c.id == ATTEMPTS.c.job_id))
    .where(_WATCHED, ATTEMPTS.c.watch_until >= bindparam("p_now"))
    .group_by(JOBS.c.batch_id, JOBS.c.model),
)
_WAITING_HELD = frozenset({JobState.QUEUED, JobState.RETRY_WAIT})
_CREATED = frozenset({JobState.RUNNING, JobState.AMBIGUOUS})
"""Rows whose create PiAPI has long had, if it made the task: not `creating` (a create
PiAPI's own count may not show yet). An ambiguous row holds its slot like a running one:
its task may be in flight, and until it is reconciled, nothing says it is not."""
_YOUNG = (select(JOBS.c.model, func.count())
          .where(JOBS.c.state == JobState.RUNNING.value,
                 JOBS.c.submitted_at > bindparam("p_since"),
                 JOBS.c.submitted_at <= bindparam("p_until"))
          .group_by(JOBS.c.model))
_OPEN_BATCHES = (select(BATCHES.c.id, BATCHES.c.concurrency, BATCHES.c.budget_usd,
                        BATCHES.c.deadline_at, BATCHES.c.cancel_mode, BATCHES.c.paused)
                 .where(BATCHES.c.done.is_(False)).order_by(BATCHES.c.created_at))
_NEXT_DUE = select(func.min(JOBS.c.next_at)).where(
    JOBS.c.state.in_([JobState.RUNNING.value, JobState.RETRY_WAIT.value,
                      JobState.AMBIGUOUS.value]),
    JOBS.c.next_at > bindparam("p_now"))
_ANY_RETRY = select(JOBS.c.id).where(JOBS.c.state == JobState.RETRY_WAIT.value).limit(1)
# Is any row of a batch still active? One probe per active state, each down the
# (batch_id, state, seq) index, not one `state IN (...) LIMIT 1`: for that, PostgreSQL's
# planner expects an active row within the first few it reads and scans the table in
# physical order, which late in a big batch means reading every finished row (measured:
# 167 ms with 100,000 of 1,000,000 rows left), once a second.
_ANY_ACTIVE = select(union_all(*(
    select(probe.c.id).select_from(probe)
    for probe in (select(JOBS.c.id).where(JOBS.c.batch_id == bindparam("p_batch"),
                                           JOBS.c.state == state.value)
                  .order_by(JOBS.c.seq).limit(1).subquery()
                  for state in sorted(ACTIVE))
)).subquery()).limit(1)
_NEXT_LOOK = select(func.min(ATTEMPTS.c.next_at)).where(
    _WATCHED, ATTEMPTS.c.next_at > bindparam("p_now"))
_LOOKS_DUE = (
    ATTEMPTS.update()
    .where(ATTEMPTS.c.id.in_(select(ATTEMPTS.c.id)
                             .where(_WATCHED, ATTEMPTS.c.next_at <= bindparam("p_now"))
                             .order_by(ATTEMPTS.c.next_at).limit(bindparam("p_limit"))
                             .scalar_subquery()),
           _WATCHED, ATTEMPTS.c.next_at <= bindparam("p_now"))
    .values(next_at=bindparam("p_lease_until"))
    .returning(ATTEMPTS.c.id, select(JOBS.c.batch_id).where(JOBS.c.id == ATTEMPTS.c.job_id)
               .correlate(ATTEMPTS).scalar_subquery())
)


def _pick(state: JobState, order: Any, *, batch: bool, due_by_time: bool) -> Any:
    """The first `p_limit` due jobs in `state` (of batch `p_batch`; with `next_at` passed)
    that no message is out for, in `order`."""
    timely = [JOBS.c.next_at <= bindparam("p_now")] if due_by_time else []
    scope = [JOBS.c.batch_id == bindparam("p_batch")] if batch else []
    keys = order if isinstance(order, tuple) else (order,)
    return (select(JOBS.c.id).where(JOBS.c.state == state.value, *scope, *timely, _FREE)
            .order_by(*keys).limit(bindparam("p_limit")))


def _leaser(state: JobState, order: Any, *, batch: bool = False,
            due_by_time: bool = False) -> Any:
    """One statement: lease the first `p_limit` due jobs in `state` (of batch `p_batch`;
    with `next_at` passed) in `order` (a key or a tuple of keys), returning their ids.

    The outer WHERE checks again that each picked row is still due, so a row that changed
    meanwhile is left out. It compares `coalesce(state, '')` on purpose: a plain `state = ?`
    there made SQLite walk the whole (batch_id, state) index instead of fetching the few
    picked ids by key.
    """
    timely = [JOBS.c.next_at <= bindparam("p_now")] if due_by_time else []
    pick = _pick(state, order, batch=batch, due_by_time=due_by_time)
    still_due = and_(func.coalesce(JOBS.c.state, "") == state.value, *timely, _FREE)
    return (JOBS.update().where(JOBS.c.id.in_(pick.scalar_subquery()), still_due)
            .values(lease_until=bindparam("p_lease_until"), lease_epoch=bindparam("p_epoch"))
            .returning(JOBS.c.id, JOBS.c.batch_id))


_RETRY_ORDER = JOBS.c.seq
# Longest expected first (`workers.expected`), ties in manifest order: the partial index
# (batch_id, priority DESC, seq) of queued rows gives this order without a sort. Retries
# keep manifest order: few, and already started once.
_QUEUED_ORDER = (JOBS.c.priority.desc(), JOBS.c.seq)
_RETRY_DUE = _leaser(JobState.RETRY_WAIT, _RETRY_ORDER, batch=True, due_by_time=True)
_QUEUED = _leaser(JobState.QUEUED, _QUEUED_ORDER, batch=True)
_STANDBY_RETRIES = _pick(JobState.RETRY_WAIT, _RETRY_ORDER, batch=True, due_by_time=True)
_STANDBY_QUEUED = _pick(JobState.QUEUED, _QUEUED_ORDER, batch=True, due_by_time=False)
_POLLS_DUE = _leaser(JobState.RUNNING, JOBS.c.next_at, due_by_time=True)
_RECONCILES_DUE = _leaser(JobState.AMBIGUOUS, JOBS.c.next_at, due_by_time=True)


@dataclass(frozen=True)
class Occupancy:
    """How many of the account's slots are taken, overall and per batch."""

    total: int
    by_batch: dict[str, int]
    creating: int = 0
    """Of `total`: creates dispatched or under way that PiAPI may not have counted yet."""
    abandoned: int = 0
    """Of `total`: abandoned stuck tasks still watched (PiAPI may still run them)."""
    by_model: dict[str, int] = field(default_factory=dict)
    """`total` per model (PiAPI counts in-flight tasks per model family)."""
    creating_by_model: dict[str, int] = field(default_factory=dict)
    """`creating` per model."""


def occupancy(engine: Engine, now: float, epoch: str) -> Occupancy:
    """Slots in use: tasks submitting or running, creates whose answer was lost
    (ambiguous, until reconciled), creates already dispatched, and abandoned stuck tasks
    still watched."""
    with transaction(engine) as conn:
        rows = conn.execute(_OCCUPANCY, {"p_now": now, "p_epoch": epoch}).all()
    by_batch: dict[str, int] = {}
    by_model: dict[str, int] = {}
    creating_by_model: dict[str, int] = {}
    abandoned = 0
    for held, batch_id, state, model, n in rows:
        if held and state not in _WAITING_HELD:
            continue  # a submitting or running row with a lease: counted by its state
        by_batch[str(batch_id)] = by_batch.get(str(batch_id), 0) + int(n)
        by_model[str(model)] = by_model.get(str(model), 0) + int(n)
        if state == AttemptState.ABANDONED:
            abandoned += int(n)
        elif state not in _CREATED:
            creating_by_model[str(model)] = creating_by_model.get(str(model), 0) + int(n)
    return Occupancy(total=sum(by_batch.values()), by_batch=by_batch,
                     creating=sum(creating_by_model.values()), abandoned=abandoned,
                     by_model=by_model, creating_by_model=creating_by_model)


def young_running(engine: Engine, since: float, until: float) -> dict[str, int]:
    """Running jobs whose task was created in (since, until], per model: surely in flight
    at PiAPI."""
    with transaction(engine) as conn:
        rows = conn.execute(_YOUNG, {"p_since": since, "p_until": until}).all()
    return {str(model): int(n) for model, n in rows}


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


Leased = dict[int, str]
"""Ids leased (in order) and each one's batch id: the dispatcher names the batch in the
message beside the ids, so Flower's `args:<batch>` search finds a batch's messages."""


def _lease(engine: Engine, leaser: Any, params: dict[str, Any], limit: int) -> Leased:
    if limit <= 0:
        return {}
    with transaction(engine) as conn:
        leased = conn.execute(leaser, {**params, "p_limit": limit}).all()
    return {int(i): str(batch) for i, batch in sorted(leased)}


def lease_submits(engine: Engine, batch_id: str, limit: int, now: float, epoch: str,
                  lease_s: float, retries: bool = True) -> list[int]:
    """Reserve up to `limit` of a batch's jobs that may be created now: rows waiting to be
    created again first (unless `retries` says there are none), in manifest order, then
    queued rows longest expected first (`jobs.priority`), ties in manifest order."""
    params = {"p_batch": batch_id, "p_now": now, "p_epoch": epoch,
              "p_lease_until": now + lease_s}
    retry_due = list(_lease(engine, _RETRY_DUE, params, limit)) if retries else []
    return retry_due + list(_lease(engine, _QUEUED, params, limit - len(retry_due)))


def standby(engine: Engine, batch_id: str, limit: int, now: float, epoch: str,
            retries: bool = True) -> list[int]:
    """The ids `lease_submits` would lease next (not leased: `workers.handoff` hands them
    to workers whose polls free a slot), in the same order."""
    params = {"p_batch": batch_id, "p_now": now, "p_epoch": epoch}
    with transaction(engine) as conn:
        ids = ([int(i) for (i,) in conn.execute(_STANDBY_RETRIES, {**params, "p_limit": limit})]
               if retries else [])
        if len(ids) < limit:
            ids += [int(i) for (i,) in conn.execute(_STANDBY_QUEUED,
                                                     {**params, "p_limit": limit - len(ids)})]
    return ids


def lease_polls(engine: Engine, limit: int, now: float, epoch: str, lease_s: float) -> Leased:
    """Reserve up to `limit` running jobs whose next poll is due, most overdue first."""
    return _lease(engine, _POLLS_DUE,
                  {"p_now": now, "p_epoch": epoch, "p_lease_until": now + lease_s}, limit)


def lease_reconciles(engine: Engine, limit: int, now: float, epoch: str,
                     lease_s: float) -> Leased:
    """Reserve up to `limit` ambiguous jobs due to be looked for in PiAPI's history."""
    return _lease(engine, _RECONCILES_DUE,
                  {"p_now": now, "p_epoch": epoch, "p_lease_until": now + lease_s}, limit)


def lease_looks(engine: Engine, limit: int, now: float, lease_s: float) -> Leased:
    """Reserve up to `limit` watched abandoned tasks due for a look (attempt ids, each with
    its row's batch), most overdue first: their next look moves past the lease until a
    worker records one."""
    return _lease(engine, _LOOKS_DUE, {"p_now": now, "p_lease_until": now + lease_s}, limit)


def next_due_at(engine: Engine, after: float, looks: bool = True) -> float | None:
    """The earliest time after `after` that a running or waiting job (or, with `looks`, a
    look at a watched abandoned task) becomes due."""
    with transaction(engine) as conn:
        values = [conn.execute(_NEXT_DUE, {"p_now": after}).scalar()]
        if looks:
            values.append(conn.execute(_NEXT_LOOK, {"p_now": after}).scalar())
    due = [float(v) for v in values if v is not None]
    return min(due) if due else None


def any_retry_wait(engine: Engine) -> bool:
    """True when some job waits to be created again."""
    with transaction(engine) as conn:
        return conn.execute(_ANY_RETRY).first() is not None


def mark_done_batches(engine: Engine) -> list[str]:
    """Flag ingested batches that have no active row left; returns their ids."""
    b = BATCHES.c
    finished: list[str] = []
    with transaction(engine) as conn:
        candidates = [str(i) for (i,) in conn.execute(
            select(b.id).where(b.done.is_(False), b.ingested.is_(True))).all()]
        for batch_id in candidates:
            left = conn.execute(_ANY_ACTIVE, {"p_batch": batch_id}).first()
            if left is None:
                conn.execute(BATCHES.update().where(b.id == batch_id).values(done=True))
                finished.append(batch_id)
    return finished


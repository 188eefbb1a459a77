"""Paying once across batches: a row whose twin completed takes the twin's task instead.

Twins are jobs with the same `fingerprint` (row id, model, task type and input; see
`scheduler.ingest.fingerprint`), in any batch. A waiting row (queued or retry_wait) of a
batch with `reuse` on whose twin completed within the reuse window becomes `completed`
with the twin's task id, output, status and usage type, no usage of its own (it cost
nothing) and `reused_from` naming the original job that was paid for. The window exists
because PiAPI deletes outputs after a few days: a twin counts while it finished within it
and, for a twin that was itself reused, while the task it carries was created within it
(`submitted_at` is copied along, so a chain of reuses never outlives the original task).

A row whose twin is still in flight (submitting, running, ambiguous, or dispatched to be
created: queued or retry_wait with a live lease) waits in `retry_wait` for a few seconds
and is looked at again: it takes the twin's task once that completes, and is created
normally if the twin failed. Every change is a compare-and-set on the state the row was
found in; the statements are built once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import FromClause, and_, bindparam, func, or_, select
from sqlalchemy.engine import Engine
from sqlalchemy.sql.elements import ColumnElement

from workers.db import transaction
from workers.models import BATCHES, JOBS
from workers.states import JobState
from workers.transitions.common import THIS_JOB, Given, move

logger = logging.getLogger(__name__)

TWIN_WAIT_S = 5.0
"""How long a row whose twin is in flight waits before it is looked at again."""
CHUNK_ROWS = 5000
"""Rows (a seq range) per transaction of `reuse_completed`: a million-row batch never holds
SQLite's write lock for long."""
WAITING_NOTE = "waiting for its twin (job {twin}) in flight instead of paying twice"

_WAITING = (JobState.QUEUED, JobState.RETRY_WAIT)
_WAITING_VALUES = [s.value for s in _WAITING]
_BUSY = (JobState.SUBMITTING.value, JobState.RUNNING.value, JobState.AMBIGUOUS.value)
_NOT_LEASED = or_(JOBS.c.lease_until.is_(None), JOBS.c.lease_until < bindparam("p_now"))
_FOUND_IN = Given("p_state", _WAITING)
"""The state `resolve_twins` found the row in (one of the waiting ones)."""


def _usable(t: FromClause) -> ColumnElement[bool]:
    """`t` completed, and PiAPI still serves its output (finished within the window, and a
    reused row's task created within it)."""
    return and_(t.c.state == JobState.COMPLETED.value, t.c.finished_at >= bindparam("p_cutoff"),
                or_(t.c.reused_from.is_(None), t.c.submitted_at >= bindparam("p_cutoff")))


def _taken_from(src: FromClause) -> dict[str, Any]:
    """SET clause: a waiting row takes the completed task of `src`."""
    return dict(
        task_id=src.c.task_id, output_json=src.c.output_json,
        remote_status=src.c.remote_status, usage_type=src.c.usage_type, usage_consume=None,
        submitted_at=src.c.submitted_at, finished_at=bindparam("p_now"),
        reused_from=func.coalesce(src.c.reused_from, src.c.id), next_at=None,
        lease_until=None, lease_epoch=None, error_kind=None, error_message=None)


_cand, _twin, _src = JOBS.alias("cand"), JOBS.alias("twin"), JOBS.alias("src")
# Per waiting row of a seq range, its newest usable twin (the one PiAPI serves longest).
# A correlated subquery, so each row is one probe of the fingerprint index (as a join,
# PostgreSQL hashed every completed row of the table for each range).
_NEWEST_TWIN = (
    select(func.max(_twin.c.id))
    .where(_twin.c.fingerprint == _cand.c.fingerprint, _twin.c.id != _cand.c.id,
           _usable(_twin))
    .scalar_subquery()
)
_PICK = (
    select(_cand.c.id.label("cid"), _NEWEST_TWIN.label("tid"))
    .where(_cand.c.batch_id == bindparam("p_batch"), _cand.c.state.in_(_WAITING_VALUES),
           _cand.c.seq > bindparam("p_lo"), _cand.c.seq <= bindparam("p_hi"),
           _cand.c.fingerprint.is_not(None))
    .offset(0)  # kept a subquery: pulled up, PostgreSQL hashed the whole table to join src
    .subquery("pick")
)
_REUSE_RANGE = (
    move(_WAITING, JobState.COMPLETED, _PICK.c.tid.is_not(None), JOBS.c.id == _PICK.c.cid,
         _src.c.id == _PICK.c.tid)
    .where(_NOT_LEASED)
    .values(**_taken_from(_src))
)
_REUSE_ONE = (
    move(_FOUND_IN, JobState.COMPLETED, THIS_JOB)
    .where(_src.c.id == bindparam("p_twin"), _src.c.fingerprint == JOBS.c.fingerprint,
           _usable(_src))
    .values(**_taken_from(_src))
)
_WAIT_ONE = (
    move(_FOUND_IN, JobState.RETRY_WAIT, THIS_JOB)
    .values(next_at=bindparam("p_next"), lease_until=None, lease_epoch=None,
            error_message=bindparam("p_note"))
)
_REUSE_ON = select(BATCHES.c.reuse).where(BATCHES.c.id == bindparam("p_batch"))
# One state at a time: with IN, PostgreSQL walked the batch's (batch_id, seq) index.
_SEQ_SPAN = select(func.min(JOBS.c.seq), func.max(JOBS.c.seq)).where(
    JOBS.c.batch_id == bindparam("p_batch"), JOBS.c.state == bindparam("p_state"))
_CANDIDATES = (
    select(JOBS.c.id, JOBS.c.state, JOBS.c.fingerprint)
    .join(BATCHES, BATCHES.c.id == JOBS.c.batch_id)
    .where(JOBS.c.id.in_(bindparam("p_ids", expanding=True)),
           JOBS.c.state.in_(_WAITING_VALUES), JOBS.c.fingerprint.is_not(None),
           BATCHES.c.reuse.is_(True))
)
_TWINS = (
    select(JOBS.c.id, JOBS.c.fingerprint, JOBS.c.state, JOBS.c.lease_epoch)
    .where(JOBS.c.fingerprint.in_(bindparam("p_fps", expanding=True)),
           JOBS.c.id.not_in(bindparam("p_ids", expanding=True)),
           or_(_usable(JOBS), JOBS.c.state.in_(_BUSY),
               and_(JOBS.c.state.in_(_WAITING_VALUES),
                    JOBS.c.lease_until >= bindparam("p_now"))))
)


def reuse_completed(engine: Engine, batch_id: str, now: float, window_s: float) -> int:
    """Every waiting row of the batch (queued, retry_wait; not dispatched) whose twin
    completed within `window_s` takes the twin's task; returns how many did. Nothing when
    the batch's `reuse` is off. Set-based, a seq range per transaction."""
    params: dict[str, Any] = {"p_batch": batch_id, "p_now": now, "p_cutoff": now - window_s}
    with transaction(engine) as conn:
        if not conn.execute(_REUSE_ON, params).scalar():
            return 0
        spans = [conn.execute(_SEQ_SPAN, {**params, "p_state": s.value}).one()
                 for s in _WAITING]
    seqs = [int(seq) for span in spans for seq in span if seq is not None]
    if not seqs:
        return 0
    reused = 0
    for start in range(min(seqs) - 1, max(seqs), CHUNK_ROWS):
        with transaction(engine) as conn:
            reused += int(conn.execute(_REUSE_RANGE, {**params, "p_lo": start,
                                                      "p_hi": start + CHUNK_ROWS}).rowcount)
    if reused:
        logger.info("batch %s: %d row(s) took the task of a completed twin", batch_id, reused)
    return reused


@dataclass(frozen=True)
class _Twins:
    """What the twins of some fingerprints are doing: a usable completed one, one in flight."""

    done: dict[str, int]
    busy: dict[str, int]


def _twins(conn: Any, fps: set[str], ids: list[int], now: float, cutoff: float,
           epoch: str | None) -> _Twins:
    done: dict[str, int] = {}
    busy: dict[str, int] = {}
    rows = conn.execute(_TWINS, {"p_fps": sorted(fps), "p_ids": ids, "p_now": now,
                                 "p_cutoff": cutoff}).all()
    for twin_id, fp, state, lease_epoch in rows:
        if state == JobState.COMPLETED:
            done[fp] = max(done.get(fp, 0), int(twin_id))
        elif state in _BUSY or epoch is None or lease_epoch == epoch:
            busy.setdefault(fp, int(twin_id))  # a queued twin's lease of a voided epoch is dead
    return _Twins(done, busy)


def resolve_twins(engine: Engine, job_ids: Sequence[int], now: float, window_s: float,
                  twin_wait_s: float = TWIN_WAIT_S, *, epoch: str | None = None) -> list[int]:
    """Of jobs just leased to be created, the ids that should really be created (in the
    order given). The others, of batches with `reuse` on: a twin completed within
    `window_s` -> they take its task (completed); a twin in flight, or an earlier job of
    this call with the same fingerprint -> retry_wait for `twin_wait_s`, lease cleared (not
    counted as a try). `epoch`: the dispatcher's Redis epoch (a lease of another is dead).

    Two indexed reads and at most two writes, in one transaction.
    """
    ids = list(job_ids)
    if not ids:
        return []
    with transaction(engine) as conn:
        found = {int(i): (str(s), str(fp)) for i, s, fp in
                 conn.execute(_CANDIDATES, {"p_ids": ids}).all()}
        if not found:
            return ids
        twins = _twins(conn, {fp for _, fp in found.values()}, ids, now, now - window_s, epoch)
        create: list[int] = []
        reuse: list[dict[str, Any]] = []
        wait: list[dict[str, Any]] = []
        first: dict[str, int] = {}
        for job_id in ids:
            if job_id not in found:
                create.append(job_id)
                continue
            state, fp = found[job_id]
            twin = twins.done.get(fp)
            if twin is not None:
                reuse.append({"p_job": job_id, "p_state": state, "p_twin": twin})
                continue
            twin = twins.busy.get(fp, first.get(fp))
            if twin is not None:
                wait.append({"p_job": job_id, "p_state": state, "p_next": now + twin_wait_s,
                             "p_note": WAITING_NOTE.format(twin=twin)})
                continue
            first[fp] = job_id
            create.append(job_id)
        if reuse:
            conn.execute(_REUSE_ONE, [{**r, "p_now": now, "p_cutoff": now - window_s}
                                      for r in reuse])
        if wait:
            conn.execute(_WAIT_ONE, wait)
    if reuse or wait:
        logger.info("%d row(s) took the task of a completed twin, %d wait for a twin in "
                    "flight, %d to create", len(reuse), len(wait), len(create))
    return create

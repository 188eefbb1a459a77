"""`piapi-bulk forget`: remove a batch that should never have existed, its rows and their
attempts, from the database; refused while any of its tasks is in flight.

In flight here is what occupancy counts (`workers.leases`): rows `submitting` or `running`,
rows `ambiguous` (a create whose task may exist), rows a message is out for (a live lease),
and abandoned tasks still watched. Those are PiAPI tasks the record must keep until they end.

The batch is first closed (cancelled and marked done, so no dispatcher admits a create for
it any more), then its rows go in chunks of `CHUNK_ROWS`, a transaction each, so a
10^6-row batch never holds SQLite's write lock for long. Each chunk locks the rows it takes
and skips any a dispatcher leased meanwhile (a dispatcher that had already read the batch
as open may lease a few in the second before it reads the batches again): those are left,
with the batch, for a later `forget`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, bindparam, exists, func, or_, select
from sqlalchemy.engine import Engine

from workers.db import transaction
from workers.models import ATTEMPTS, BATCHES, JOBS
from workers.settings import ConfigError
from workers.states import JobState

CHUNK_ROWS = 2000
"""Rows removed per transaction."""

j, a, b = JOBS.c, ATTEMPTS.c, BATCHES.c
_HELD_STATES = (JobState.SUBMITTING.value, JobState.RUNNING.value, JobState.AMBIGUOUS.value)
_LEASED = and_(j.lease_until.is_not(None), j.lease_until >= bindparam("p_now"))
_IN_FLIGHT = (
    select(func.count()).where(j.batch_id == bindparam("p_batch"),
                               or_(j.state.in_(_HELD_STATES), _LEASED)),
    select(func.count()).select_from(ATTEMPTS.join(JOBS, j.id == a.job_id))
    .where(j.batch_id == bindparam("p_batch"), a.watch_until.is_not(None),
           a.watch_until >= bindparam("p_now")),
)
_FREE = and_(j.state.not_in(_HELD_STATES), or_(j.lease_until.is_(None),
                                                j.lease_until < bindparam("p_now")))
# In manifest order, so the unique (batch_id, seq) index serves each chunk.
_CHUNK = (select(j.id, j.seq).where(j.batch_id == bindparam("p_batch"),
                                    j.seq > bindparam("p_after"), _FREE)
          .order_by(j.seq).limit(bindparam("p_limit")).with_for_update())
_IDS: Any = bindparam("p_ids", expanding=True)
_DELETE_ATTEMPTS = ATTEMPTS.delete().where(a.job_id.in_(_IDS))
_DELETE_JOBS = JOBS.delete().where(j.id.in_(_IDS))
_ANY_JOB = exists().where(j.batch_id == bindparam("p_batch"))
_DELETE_BATCH = BATCHES.delete().where(b.id == bindparam("p_batch"), ~_ANY_JOB)
_LEFT = select(func.count()).where(j.batch_id == bindparam("p_batch"))


@dataclass(frozen=True)
class Forgotten:
    """What `forget` removed."""

    batch_id: str
    source: str
    rows: int
    attempts: int
    left: int = 0
    """Rows a dispatcher took while the batch was being removed (kept, with the batch)."""

    def summary(self) -> str:
        """What the command prints."""
        return (f"forgot batch {self.batch_id} ({self.source}): {self.rows} row(s), "
                f"{self.attempts} attempt(s) removed")


def forget(engine: Engine, batch_id: str, now: float | None = None,
           chunk_rows: int = CHUNK_ROWS) -> Forgotten:
    """Remove the batch, its rows and their attempts; `ConfigError` when there is no such
    batch or it has tasks in flight (nothing is removed then)."""
    at = time.time() if now is None else now
    source = _close(engine, batch_id, at)
    rows = attempts = 0
    after = 0
    while True:
        with transaction(engine) as conn:
            chunk = conn.execute(_CHUNK, {"p_batch": batch_id, "p_after": after, "p_now": at,
                                          "p_limit": chunk_rows}).all()
            ids = [int(i) for i, _ in chunk]
            if not ids:
                conn.execute(_DELETE_BATCH, {"p_batch": batch_id})
                left = int(conn.execute(_LEFT, {"p_batch": batch_id}).scalar_one())
                break
            attempts += conn.execute(_DELETE_ATTEMPTS, {"p_ids": ids}).rowcount
            rows += conn.execute(_DELETE_JOBS, {"p_ids": ids}).rowcount
        after = int(chunk[-1][1])
    return Forgotten(batch_id, source, rows, attempts, left)


def _close(engine: Engine, batch_id: str, now: float) -> str:
    """Check the batch can go, and stop admission for it (in one transaction); its source."""
    with transaction(engine) as conn:
        found = conn.execute(select(b.source).where(b.id == batch_id).with_for_update()).first()
        if found is None:
            raise ConfigError(f"no batch {batch_id}")
        params = {"p_batch": batch_id, "p_now": now}
        busy = sum(int(conn.execute(q, params).scalar_one()) for q in _IN_FLIGHT)
        if busy:
            raise ConfigError(
                f"batch {batch_id} has {busy} task(s) in flight; cancel it first (piapi-bulk "
                f"cancel {batch_id}) and forget it once they have ended")
        conn.execute(BATCHES.update().where(b.id == batch_id).values(
            done=True, cancel_mode=func.coalesce(b.cancel_mode, "finish"),
            cancelled_at=func.coalesce(b.cancelled_at, now)))
    return str(found[0])

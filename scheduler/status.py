"""Progress of batches: counts by state, cost so far, throughput and ETA."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from workers.models import Batch, Job
from workers.states import ACTIVE, JobState

USD_PER_UNIT = 1e-7


@dataclass
class BatchStatus:
    """One batch's counts and cost."""

    id: str
    source: str
    total: int
    counts: dict[str, int] = field(default_factory=dict)
    consumed_units: int = 0
    created_at: float = 0.0
    done: bool = False

    @property
    def active(self) -> int:
        """Rows that can still change."""
        return sum(self.counts.get(s.value, 0) for s in ACTIVE)

    @property
    def finished(self) -> int:
        """Rows in a terminal state."""
        return self.total - self.active

    @property
    def usd(self) -> float:
        """Credits consumed so far, in US dollars."""
        return self.consumed_units * USD_PER_UNIT

    def to_json(self) -> dict[str, Any]:
        """The `status --json` object for this batch."""
        return {
            "id": self.id,
            "source": self.source,
            "total": self.total,
            "counts": self.counts,
            "finished": self.finished,
            "done": self.done,
            "usd": round(self.usd, 6),
            "created_at": self.created_at,
        }


def batch_status(engine: Engine, batch_id: str) -> BatchStatus | None:
    """Counts by state and cost for one batch, or None if there is no such batch."""
    with Session(engine) as s:
        batch = s.get(Batch, batch_id)
        if batch is None:
            return None
        rows = s.execute(
            select(col(Job.state), func.count(), func.coalesce(func.sum(col(Job.usage_consume)), 0))
            .where(col(Job.batch_id) == batch_id).group_by(col(Job.state))
        ).all()
    counts = {state.value: 0 for state in JobState}
    consumed = 0
    for state, n, units in rows:
        counts[str(state)] = int(n)
        if state in (JobState.COMPLETED.value, JobState.FAILED.value, JobState.CANCELLED.value):
            consumed += int(units)
    return BatchStatus(
        id=batch.id, source=batch.source, total=sum(counts.values()), counts=counts,
        consumed_units=consumed, created_at=batch.created_at, done=batch.done,
    )


def all_statuses(engine: Engine) -> list[BatchStatus]:
    """Every batch, newest first."""
    with Session(engine) as s:
        ids = [str(b) for b in s.scalars(select(col(Batch.id))
                                         .order_by(col(Batch.created_at).desc()))]
    return [st for st in (batch_status(engine, b) for b in ids) if st is not None]

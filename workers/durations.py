"""Learned task durations per (model, task_type), kept in the database so restarts keep them.

A sample is seconds per unit of work: the task's duration divided by its row's input factor
(`workers.polling.per_unit_s`, when the poll records the completion), so `load` gives the
poll schedule per unit and `typical_by_kind` a default row's mean (`workers.expected`
multiplies both back by a row's factor). Samples stored before that were whole durations:
those of default rows (factor 1, most rows) are per unit already, and the others cannot be
told apart (a sample names no row), so they are left to age out of the `WINDOW` the
schedule reads (at worst a too-late poll and a too-generous stuck limit meanwhile).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime

from sqlalchemy import delete, func, insert, select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from workers.db import session
from workers.models import DurationSample
from workers.piapi import TaskView
from workers.polling import MIN_SAMPLES, Durations

WINDOW = 500
"""The poll schedule uses the most recent this-many durations of a kind of task."""
KEEP = 2000
"""Pruning keeps this many samples per kind."""
CACHE_TTL_S = 10.0
LEARNING_TTL_S = 0.2
"""While a kind has too few samples to be learned, its cache entry lasts only this long."""


def _parse(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def task_duration_s(view: TaskView, submitted_at: float | None, now: float) -> float | None:
    """How long the task took: PiAPI's ended - created, else what we observed (an upper bound)."""
    created, ended = _parse(view.created_at), _parse(view.ended_at)
    if created is not None and ended is not None and ended >= created:
        return ended - created
    if submitted_at is not None and now >= submitted_at:
        return now - submitted_at
    return None


def add_samples(s: Session, samples: Iterable[tuple[str, str, float]], now: float) -> None:
    """Record (model, task_type, duration) samples inside the caller's transaction."""
    rows = [{"model": m, "task_type": t, "duration_s": d, "at": now} for m, t, d in samples]
    if rows:
        s.execute(insert(DurationSample), rows)


def load(engine: Engine, model: str, task_type: str, limit: int = WINDOW) -> Durations:
    """The most recent durations of one kind of task."""
    with Session(engine) as s:
        values = s.scalars(
            select(col(DurationSample.duration_s))
            .where(col(DurationSample.model) == model, col(DurationSample.task_type) == task_type)
            .order_by(col(DurationSample.id).desc()).limit(limit)
        ).all()
    return Durations.of([float(v) for v in values])


def one_created_since(engine: Engine, model: str, task_type: str, since: float) -> bool:
    """Whether a task of this kind created at `since` or later has completed (a sample's
    creation: its record time less its duration; exact for rows of input factor 1, most
    rows). Read from the kind's newest `KEEP` samples at most (pruning keeps no more)."""
    with Session(engine) as s:
        found = s.scalar(
            select(col(DurationSample.id))
            .where(col(DurationSample.model) == model, col(DurationSample.task_type) == task_type,
                   col(DurationSample.at) - col(DurationSample.duration_s) >= since)
            .limit(1))
    return found is not None


def prune(engine: Engine, keep: int = KEEP) -> int:
    """Drop all but the newest `keep` samples of each kind; returns rows deleted."""
    deleted = 0
    with session(engine) as s:
        kinds = s.execute(select(col(DurationSample.model), col(DurationSample.task_type))
                          .distinct()).all()
        for model, task_type in kinds:
            cutoff = s.scalar(
                select(col(DurationSample.id))
                .where(col(DurationSample.model) == model,
                       col(DurationSample.task_type) == task_type)
                .order_by(col(DurationSample.id).desc()).offset(keep).limit(1)
            )
            if cutoff is not None:
                result = s.execute(delete(DurationSample).where(
                    col(DurationSample.model) == model, col(DurationSample.task_type) == task_type,
                    col(DurationSample.id) <= cutoff))
                deleted += int(getattr(result, "rowcount", 0) or 0)
    return deleted


class DurationCache:
    """Per-process cache of learned durations, refreshed from the database every few seconds."""

    def __init__(self, engine: Engine, ttl_s: float = CACHE_TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.ttl_s = ttl_s
        self.clock = clock
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], tuple[float, Durations]] = {}

    def get(self, model: str, task_type: str) -> Durations:
        """The learned durations for this kind of task (maybe too few to be `learned`)."""
        key = (model, task_type)
        now = self.clock()
        with self._lock:
            hit = self._entries.get(key)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        value = load(self.engine, model, task_type)
        # Refresh sooner while still learning, so the first tasks' lessons apply quickly
        # (on tasks of a fraction of a second, the second wave already needs them).
        stamp = now if value.learned else now - self.ttl_s + LEARNING_TTL_S
        with self._lock:
            self._entries[key] = (stamp, value)
        return value


def typical_by_kind(engine: Engine) -> dict[tuple[str, str], float]:
    """The mean kept duration of each kind with enough samples to trust (`MIN_SAMPLES`):
    what ingest expects of a default row of that kind (`workers.expected`). One grouped
    read of a table pruned to `KEEP` samples a kind."""
    with Session(engine) as s:
        rows = s.execute(
            select(col(DurationSample.model), col(DurationSample.task_type),
                   func.avg(col(DurationSample.duration_s)), func.count())
            .group_by(col(DurationSample.model), col(DurationSample.task_type))
        ).all()
    return {(str(m), str(t)): float(mean) for m, t, mean, n in rows
            if n >= MIN_SAMPLES and mean is not None}

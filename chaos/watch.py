"""The run's database as the harness reads it: progress, what is due, and the final rows.

Plain psycopg in autocommit (read-only, no lock held), reconnecting after PostgreSQL
restarts: a read that fails returns None and the next one connects again.

Liveness is judged by progress with `scheduler/liveness.py`'s `ProgressWatch`
(`LocalProgressWatch` below is the same idea, used only if that cannot be loaded): progress
is a signature of the jobs table (rows finished, polls made, creates begun); the fleet is
stalled when that signature has not changed for `stall_s` while work is due: a running,
waiting or ambiguous row overdue by `stall_s` with no message out for it, or queued rows
with nothing in flight.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg

TERMINAL = ("completed", "failed", "cancelled", "invalid")
"""Terminal job states (spelled out: the harness must not depend on code being edited)."""


@dataclass(frozen=True)
class Progress:
    """One read of the batch's rows."""

    counts: dict[str, int]
    polls: int
    posts: int

    @property
    def total(self) -> int:
        """Rows in the batch."""
        return sum(self.counts.values())

    @property
    def finished(self) -> int:
        """Rows in a terminal state."""
        return sum(n for s, n in self.counts.items() if s in TERMINAL)

    @property
    def active(self) -> int:
        """Rows that can still change."""
        return self.total - self.finished

    @property
    def signature(self) -> tuple[int, int, int]:
        """Changes whenever the fleet does anything: finishes a row, polls, posts."""
        return (self.finished, self.polls, self.posts)


_PROGRESS = ("SELECT state, COUNT(*), COALESCE(SUM(polls), 0), COALESCE(SUM(posts), 0) "
             "FROM jobs WHERE batch_id = %s GROUP BY state")
_OVERDUE = ("SELECT COUNT(*) FROM jobs WHERE batch_id = %s "
            "AND state IN ('running', 'retry_wait', 'ambiguous') AND next_at < %s "
            "AND (lease_until IS NULL OR lease_until < %s)")
_WAITING = ("SELECT COUNT(*) FILTER (WHERE state = 'queued'), "
            "COUNT(*) FILTER (WHERE state IN ('submitting', 'running')) "
            "FROM jobs WHERE batch_id = %s")


class Db:
    """A reconnecting read-only connection to the run's database."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.Connection[Any] | None = None
        self.errors = 0

    def rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]] | None:
        """The rows of one query, or None when the database does not answer right now."""
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=2)
            return list(self._conn.execute(sql, args).fetchall())
        except psycopg.Error:
            self.errors += 1
            self.close()
            return None

    def batch_ids(self) -> list[str]:
        """Every batch (the run's database holds the one it submitted)."""
        return [str(r[0]) for r in self.rows("SELECT id FROM batches ORDER BY created_at") or []]

    def progress(self, batch_id: str) -> Progress | None:
        """Counts by state and the progress signature, or None when the DB is down."""
        rows = self.rows(_PROGRESS, (batch_id,))
        if rows is None:
            return None
        return Progress({str(s): int(n) for s, n, _, _ in rows},
                        sum(int(p) for _, _, p, _ in rows), sum(int(p) for _, _, _, p in rows))

    def work_due(self, batch_id: str, overdue_s: float) -> bool | None:
        """Some row is overdue by `overdue_s` with no message out, or rows wait with nothing
        in flight; None when the DB is down."""
        now = time.time()
        overdue = self.rows(_OVERDUE, (batch_id, now - overdue_s, now))
        waiting = self.rows(_WAITING, (batch_id,))
        if overdue is None or waiting is None:
            return None
        queued, in_flight = int(waiting[0][0] or 0), int(waiting[0][1] or 0)
        return int(overdue[0][0]) > 0 or (queued > 0 and in_flight == 0)

    def close(self) -> None:
        """Drop the connection (the next read connects again)."""
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None


class Watch(Protocol):
    """What the supervisor asks a stall watch."""

    def check(self) -> bool:
        """True when work is due but nothing has progressed for `stall_s`."""


class LocalProgressWatch:
    """The stall watch over `Db`, for when `scheduler.liveness` is not there."""

    def __init__(self, db: Db, batch_id: str, stall_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.db, self.batch_id, self.stall_s, self.clock = db, batch_id, stall_s, clock
        self._sig: tuple[int, int, int] | None = None
        self._since = clock()

    def check(self) -> bool:
        """True when work is due but the signature has not changed for `stall_s`."""
        now = self.clock()
        progress = self.db.progress(self.batch_id)
        if progress is None:  # the database is down: that is not the workers' stall
            return False
        if progress.signature != self._sig:
            self._sig, self._since = progress.signature, now
            return False
        if now - self._since < self.stall_s:
            return False
        if self.db.work_due(self.batch_id, self.stall_s):
            self._since = now  # once per stall_s at most
            return True
        return False


def progress_watch(db: Db, batch_id: str, stall_s: float) -> tuple[Watch, str]:
    """`scheduler.liveness.ProgressWatch` over its own engine (the local watch only if that
    cannot be loaded from the code under test); and which one it is, for the report."""
    try:
        from scheduler.liveness import ProgressWatch
        from workers.db import make_engine

        watch = ProgressWatch(make_engine(db.url, pool_size=1), stall_s=stall_s)
        return _Guarded(watch), "scheduler.liveness.ProgressWatch"
    except Exception as exc:  # an older tree without it, or one mid-edit
        local = LocalProgressWatch(db, batch_id, stall_s)
        return local, f"chaos.watch.LocalProgressWatch ({exc!r})"


class _Guarded:
    """A watch whose database errors (PostgreSQL restarting) count as "not stalled"."""

    def __init__(self, inner: Watch) -> None:
        self.inner = inner

    def check(self) -> bool:
        try:
            return bool(self.inner.check())
        except Exception:
            return False

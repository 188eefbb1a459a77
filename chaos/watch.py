"""The run's database as the harness reads it: progress for the timeline, and liveness.

Plain psycopg in autocommit (read-only, no lock held), reconnecting after PostgreSQL
restarts: a read that fails returns None and the next one connects again.

Liveness is judged by progress with `scheduler/liveness.py`'s `ProgressWatch`, the one `run`
uses; a database error (PostgreSQL restarting) counts as "not stalled".
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import psycopg

from scheduler.liveness import ProgressWatch
from workers.db import make_engine

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

    def close(self) -> None:
        """Drop the connection (the next read connects again)."""
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None


def progress_watch(url: str, stall_s: float) -> GuardedWatch:
    """`scheduler.liveness.ProgressWatch` over its own engine on the run's database."""
    return GuardedWatch(ProgressWatch(make_engine(url, pool_size=1), stall_s=stall_s))


class GuardedWatch:
    """A watch whose database errors (PostgreSQL restarting) count as "not stalled"."""

    def __init__(self, inner: ProgressWatch) -> None:
        self.inner = inner

    def check(self) -> bool:
        """True when work is due but nothing has progressed for `stall_s`."""
        try:
            return bool(self.inner.check())
        except Exception:
            return False

"""Read-only view of a run's database: its batch and how many of its rows are still active.

Plain drivers, not the project's engines: a SQLite engine from `workers.db` begins every
transaction with BEGIN IMMEDIATE (a write lock), which a watcher polling five times a second
must not take. Reading in autocommit mode holds no lock between statements.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

TERMINAL = frozenset({"completed", "failed", "cancelled", "invalid"})
"""Terminal job states (README: the results' statuses). Spelled out rather than imported, so
the harness keeps working while the code it measures is being edited."""


class DbWatch:
    """Counts of a batch's rows by state, straight from the `jobs` table."""

    def __init__(self, database_url: str) -> None:
        url = make_url(database_url)
        self.sqlite = url.get_backend_name() == "sqlite"
        self._conn: Any
        if self.sqlite:
            self._conn = sqlite3.connect(str(url.database), timeout=30, isolation_level=None,
                                         check_same_thread=False)
            self._ph = "?"
        else:
            plain = url.set(drivername="postgresql").render_as_string(hide_password=False)
            self._conn = psycopg.connect(plain, autocommit=True, connect_timeout=5)
            self._ph = "%s"

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        cur = self._conn.execute(sql.replace("?", self._ph), args)
        return list(cur.fetchall())

    def batch_ids(self) -> list[str]:
        """Every batch in the database (a fresh database has the one we submitted)."""
        return [str(r[0]) for r in self._rows("SELECT id FROM batches ORDER BY created_at")]

    def counts(self, batch_id: str) -> dict[str, int]:
        """Rows of `batch_id` by state."""
        rows = self._rows("SELECT state, COUNT(*) FROM jobs WHERE batch_id = ? GROUP BY state",
                          (batch_id,))
        return {str(state): int(n) for state, n in rows}

    def failures(self, batch_id: str, limit: int = 5) -> list[dict[str, Any]]:
        """The commonest reasons rows of `batch_id` failed: error kind, message, count."""
        rows = self._rows(
            "SELECT error_kind, error_message, COUNT(*) FROM jobs WHERE batch_id = ? "
            "AND state = 'failed' GROUP BY error_kind, error_message ORDER BY COUNT(*) DESC",
            (batch_id,))
        return [{"kind": k, "message": (m or "")[:200], "rows": int(n)} for k, m, n in rows[:limit]]

    def total_jobs(self) -> int:
        """Rows in the jobs table, all batches."""
        return int(self._rows("SELECT COUNT(*) FROM jobs")[0][0])

    def backend_pid(self) -> int | None:
        """PostgreSQL: the server process of this watcher's connection (None on SQLite)."""
        return None if self.sqlite else int(self._conn.info.backend_pid)

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()


def active(counts: dict[str, int]) -> int:
    """Rows that can still change."""
    return sum(n for state, n in counts.items() if state not in TERMINAL)


def finished(counts: dict[str, int]) -> int:
    """Rows in a terminal state."""
    return sum(counts.values()) - active(counts)

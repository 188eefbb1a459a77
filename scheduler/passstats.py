"""Opt-in per-pass figures of the dispatcher, for the benchmark's backlog scenario.

Whether the dispatcher's cost stays flat as the queued backlog grows is judged from two
numbers per pass: how long it took and how many SQL statements it ran (a query that reads
the whole backlog shows in the first; a loop over rows in the second). With
PIAPI_BULK_DISPATCHER_STATS set, each pass appends one JSON line to that file; unset, the
dispatcher is untouched. Statements are counted by a SQLAlchemy `before_cursor_execute`
listener on the dispatcher's engine (an integer increment); nothing else of the statement
is kept, and the lines hold only counts and durations.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import event
from sqlalchemy.engine import Engine

from scheduler.dispatcher import PassResult


class PassStats:
    """Counts the statements run on `engine` and writes one line per pass to `path`."""

    def __init__(self, engine: Engine, path: Path) -> None:
        self.statements = 0
        self._file: TextIO = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        event.listen(engine, "before_cursor_execute", self._count)

    def _count(self, *_args: Any) -> None:
        self.statements += 1

    def record(self, result: PassResult) -> None:
        """One pass's line; the statement count restarts for the next pass."""
        line = {"t": round(time.time(), 3), "took_s": round(result.took_s, 6),
                "statements": self.statements, "housekept": result.housekept,
                "submits": result.submits, "polls": result.polls,
                "in_flight": result.in_flight, "limit": result.limit}
        self.statements = 0
        self._file.write(json.dumps(line) + "\n")

    def close(self) -> None:
        """Close the file."""
        self._file.close()

"""What both sides of the state machine share: claims, poll targets, the CAS helper."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy.engine import CursorResult
from sqlalchemy.sql.base import Executable
from sqlmodel import Session

from workers.piapi import TaskView

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claim:
    """A job a worker now holds for one create, with what the create needs."""

    job_id: int
    batch_id: str
    attempt_id: int
    attempt_n: int
    model: str
    task_type: str
    input: dict[str, Any]
    tries: int


@dataclass(frozen=True)
class PollTarget:
    """A running job a worker is about to GET."""

    job_id: int
    task_id: str
    polls: int
    poll_errors: int
    attempts: int
    max_attempts: int
    model: str
    task_type: str
    submitted_at: float | None


def cas(s: Session, statement: Executable) -> int:
    """Run an UPDATE and return how many rows it changed (0 means the guard did not hold)."""
    result = cast(CursorResult[Any], s.execute(statement))
    return int(result.rowcount)


def moved(what: str, job_id: int) -> None:
    """Log a change skipped because the job is no longer where the caller left it."""
    logger.info("job %s: %s skipped, the job is no longer where this worker left it",
                job_id, what)


def usage_values(view: TaskView) -> dict[str, Any]:
    """The usage columns for what PiAPI reported (nothing when it reported none)."""
    if view.usage is None:
        return {}
    return {"usage_consume": view.usage.consume, "usage_type": view.usage.type or None}

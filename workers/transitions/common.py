"""What both sides of the state machine share: claims, poll targets, the CAS helper."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from workers.piapi import TaskView

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claim:
    """A job a worker now holds for one create, with what the create needs."""

    job_id: int
    batch_id: str
    attempt_n: int
    """This create's number for its job; (job_id, attempt_n) names its `attempts` row."""
    model: str
    task_type: str
    input: dict[str, Any]
    tries: int
    service_mode: str | None = None
    """`config.service_mode` to send (`public`, `private`), or None to send none."""


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
    retry_base: int = 0
    """`attempts` when an operator last retried the row (those no longer count)."""
    cancel_mode: str | None = None
    """The batch was cancelled: `finish` (running tasks finish) or `now` (abandoned)."""
    on_stuck: str | None = None
    """The batch's `--on-stuck` (None: the fleet's default)."""

    @property
    def counted_attempts(self) -> int:
        """Attempts that count against `max_attempts` (since the last operator retry)."""
        return self.attempts - self.retry_base


def moved(what: str, job_id: int) -> None:
    """Log a change skipped because the job is no longer where the caller left it."""
    logger.info("job %s: %s skipped, the job is no longer where this worker left it",
                job_id, what)


def usage_params(view: TaskView | None) -> dict[str, Any]:
    """Parameters for the usage columns (None keeps what was there)."""
    usage = view.usage if view is not None else None
    return {"p_consume": usage.consume if usage else None,
            "p_usage_type": (usage.type or None) if usage else None}

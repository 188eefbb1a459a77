"""One emulated task: its state, its fate, and its PiAPI JSON rendering (cached per state)."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any

from emulator.clock import format_time

PENDING = "pending"
PROCESSING = "processing"
COMPLETED = "completed"
FAILED = "failed"
ACTIVE = frozenset({PENDING, PROCESSING})

NO_ERROR: dict[str, Any] = {"code": 0, "raw_message": "", "message": "", "detail": None}
MODERATION_ERROR: dict[str, Any] = {
    "code": 10000, "raw_message": "content moderation failed",
    "message": "failed to do request", "detail": None,
}
TRANSIENT_ERROR: dict[str, Any] = {
    "code": 10000, "raw_message": "no available account, please retry later",
    "message": "failed to do request", "detail": None,
}
TIMEOUT_ERROR: dict[str, Any] = {
    "code": 10000, "raw_message": "task timeout", "message": "failed to do request",
    "detail": None,
}
CREDITS_ERROR: dict[str, Any] = {
    "code": 10000, "raw_message": "doesn't have enough credits",
    "message": "failed to do request", "detail": None,
}
"""The provider pool's account ran dry (not the user's wallet): clients retry it."""
CANCEL_ERROR: dict[str, Any] = {
    "code": 10000, "raw_message": "task canceled", "message": "task canceled", "detail": None,
}


class Fate(enum.Enum):
    """How a task will end, decided at creation (by a marker in the input or a fault draw)."""

    COMPLETE = "complete"
    FAIL_TRANSIENT = "fail_transient"
    FAIL_MODERATION = "fail_moderation"
    FAIL_CREDITS = "fail_credits"
    STUCK_PENDING = "stuck_pending"
    STUCK_PROCESSING = "stuck_processing"


@dataclass(slots=True, eq=False)
class Task:
    """A task as the emulated account holds it; times are unix seconds, usage in units."""

    seq: int
    task_id: str
    model: str
    task_type: str
    family: str
    input: dict[str, Any]
    config: dict[str, Any]
    input_key: str
    fate: Fate
    duration_s: float
    queue_wait_s: float
    usage_type: str
    price: int
    created_at: float
    updated_at: float
    frozen: int = 0
    consume: int = 0
    status: str = PENDING
    started_at: float | None = None
    ended_at: float | None = None
    output: dict[str, Any] | None = None
    error: dict[str, Any] = field(default_factory=lambda: NO_ERROR)
    logs: tuple[str, ...] = ()
    """`data.logs`: a failed task's reason, as PiAPI shows it there too."""
    workflow_type: str = ""
    """`input.workflow_type` as sent (the normalised input may drop it): history rows show it."""
    created_by: str = ""
    """The client address of the create (the ledger's: which host made the task)."""
    polls_by: dict[str, int] = field(default_factory=dict)
    """GETs of this task per client address."""
    end_seen_by: str = ""
    end_seen_at: float | None = None
    """The client address and time of the first GET that saw the task ended."""
    _envelope: bytes | None = None

    @property
    def webhook_endpoint(self) -> str:
        """Where webhooks for this task go ('' = none)."""
        return str(self.config["webhook_config"]["endpoint"])

    @property
    def webhook_secret(self) -> str:
        """Sent verbatim as x-webhook-secret."""
        return str(self.config["webhook_config"]["secret"])

    def touch(self, now: float) -> None:
        """Record a change at `now`: drops the cached rendering."""
        self.updated_at = now
        self._envelope = None

    def data(self) -> dict[str, Any]:
        """The `data` object of GET /api/v1/task/{id} (and of webhooks), as of now."""
        return {
            "task_id": self.task_id,
            "model": self.model,
            "task_type": self.task_type,
            "status": self.status,
            "config": self.config,
            "input": self.input,
            "output": self.output,
            "meta": {
                "created_at": format_time(self.created_at),
                "started_at": format_time(self.started_at),
                "ended_at": format_time(self.ended_at),
                "usage": {"type": self.usage_type, "frozen": self.frozen,
                          "consume": self.consume},
                "is_using_private_pool": False,
            },
            "detail": None,
            "logs": list(self.logs),
            "error": self.error,
        }

    def seen_by(self, client: str, now: float) -> None:
        """Record a GET of this task from `client` at `now` (the ledger's who-saw-what)."""
        self.polls_by[client] = self.polls_by.get(client, 0) + 1
        if self.ended_at is not None and self.end_seen_at is None:
            self.end_seen_by, self.end_seen_at = client, now

    def envelope(self) -> bytes:
        """The full HTTP 200 body for a create or get, serialised once per state.

        Only these bytes are cached (polls of a finished task cost a dict lookup); the
        `data()` dict is rebuilt on demand to keep memory per task small.
        """
        if self._envelope is None:
            body = {"code": 200, "data": self.data(), "message": "success"}
            self._envelope = dump_json(body)
        return self._envelope


def dump_json(value: Any) -> bytes:
    """Compact UTF-8 JSON, as the API sends it."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()

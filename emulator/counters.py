"""Request, fault and webhook counters shared by the emulator's parts, for /_emulator/stats."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

REQUEST_NAMES = (
    "create", "get", "delete", "account_info", "active_tasks", "histories", "files",
    "upload",
)
FAULT_KINDS = (
    "5xx", "429", "ambiguous", "lost", "hang", "stuck", "stuck_processing", "fail",
    "fail_credits", "history_500",
    "webhook_loss", "webhook_duplicate",
)
WEBHOOK_KEYS = ("sent", "failed", "skipped", "dropped", "duplicated", "attempts")
"""sent/failed: deliveries that ended 2xx / gave up; attempts: every POST tried."""


def _zeros(keys: tuple[str, ...]) -> dict[str, int]:
    return dict.fromkeys(keys, 0)


@dataclass
class Counters:
    """Plain integer counters; reset together with the tasks."""

    requests: dict[str, int] = field(default_factory=lambda: _zeros(REQUEST_NAMES))
    faults: dict[str, int] = field(default_factory=lambda: _zeros(FAULT_KINDS))
    webhooks: dict[str, int] = field(default_factory=lambda: _zeros(WEBHOOK_KEYS))
    creates_refused: int = 0
    rate_limited: int = 0

    def reset(self) -> None:
        """Zero every counter."""
        self.requests = _zeros(REQUEST_NAMES)
        self.faults = _zeros(FAULT_KINDS)
        self.webhooks = _zeros(WEBHOOK_KEYS)
        self.creates_refused = 0
        self.rate_limited = 0

    def snapshot(self) -> dict[str, Any]:
        """The counters as JSON-ready data."""
        return {
            "requests": {**self.requests, "total": sum(self.requests.values())},
            "creates_refused": self.creates_refused,
            "rate_limited": self.rate_limited,
            "faults": dict(self.faults),
            "webhooks": dict(self.webhooks),
        }

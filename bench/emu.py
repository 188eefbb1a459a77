"""The emulator's control API as the benchmark reads it: stats, ledger, reset, and task times."""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass
from typing import Any

import httpx

ZERO_TIME = "0001-01-01T00:00:00Z"


def parse_time(text: str) -> float | None:
    """RFC 3339 UTC with up to 9 fractional digits -> unix seconds (None for the zero time)."""
    if not text or text == ZERO_TIME:
        return None
    base, _, frac = text.rstrip("Z").partition(".")
    whole = calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S"))
    return whole + (float(f"0.{frac}") if frac else 0.0)


def http_429s(stats: dict[str, Any]) -> int:
    """Every 429 the emulator answered: request budget, refused creates, injected faults."""
    faults = stats.get("faults", {})
    return int(stats.get("rate_limited", 0)) + int(stats.get("creates_refused", 0)) + int(
        faults.get("429", 0))


@dataclass
class LedgerSummary:
    """What the emulator's ledger says about the tasks of a run."""

    tasks: int
    ended: int
    busy_s: float
    """Sum over ended tasks of ended_at - created_at: the account's slot-seconds of work."""
    longest_s: float
    first_created: float | None
    last_ended: float | None
    by_status: dict[str, int]
    with_webhook: int = 0
    """Tasks whose create carried a webhook endpoint."""


def summarise_ledger(tasks: list[dict[str, Any]]) -> LedgerSummary:
    """Task count, total busy time and first/last instants from ledger rows."""
    busy = longest = 0.0
    ended = 0
    first: float | None = None
    last: float | None = None
    by_status: dict[str, int] = {}
    hooks = 0
    for task in tasks:
        by_status[task["status"]] = by_status.get(task["status"], 0) + 1
        hooks += bool(task.get("webhook_endpoint"))
        created = parse_time(task["created_at"])
        end = parse_time(task["ended_at"])
        if created is not None:
            first = created if first is None else min(first, created)
        if created is None or end is None:
            continue
        ended += 1
        busy += end - created
        longest = max(longest, end - created)
        last = end if last is None else max(last, end)
    return LedgerSummary(len(tasks), ended, busy, longest, first, last, by_status, hooks)


class Emu:
    """A running emulator's control API (unauthenticated, loopback only)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._http = httpx.Client(base_url=url, timeout=30, trust_env=False)

    def stats(self) -> dict[str, Any]:
        """GET /_emulator/stats."""
        return dict(self._http.get("/_emulator/stats").json())

    def ledger(self) -> list[dict[str, Any]]:
        """GET /_emulator/ledger: every task, in creation order."""
        return list(self._http.get("/_emulator/ledger", timeout=120).json()["tasks"])

    def reset(self) -> None:
        """POST /_emulator/reset: forget tasks and counters (the seed restarts too)."""
        self._http.post("/_emulator/reset").raise_for_status()

    def close(self) -> None:
        """Close the HTTP client."""
        self._http.close()

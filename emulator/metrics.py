"""Task-derived measurements kept incrementally: in-flight integrals, statuses, usage, repeats."""

from __future__ import annotations

from collections import Counter
from typing import Any


class Metrics:
    """Counts and exact time integrals, updated at every change (never by scanning tasks)."""

    def __init__(self, now: float) -> None:
        self.started_at = now
        self.last_t = now
        self.pending = 0
        self.processing = 0
        self.peak_in_flight = 0
        self.in_flight_integral_s = 0.0
        self.processing_integral_s = 0.0
        self.creates = 0
        self.by_status: Counter[str] = Counter()
        self.creates_per_input: Counter[str] = Counter()
        self.histogram: Counter[int] = Counter()
        self.max_creates_per_input = 0
        self.frozen_units = 0
        self.consumed_units = 0

    @property
    def in_flight(self) -> int:
        """Tasks pending or processing: what the account's concurrency limit counts."""
        return self.pending + self.processing

    def advance_to(self, t: float) -> None:
        """Integrate the current counts up to `t` (seconds); earlier `t` is ignored."""
        if t > self.last_t:
            dt = t - self.last_t
            self.in_flight_integral_s += self.in_flight * dt
            self.processing_integral_s += self.processing * dt
            self.last_t = t

    def on_create(self, t: float, input_key: str, status: str) -> None:
        """A task was created at `t` (already pending)."""
        self.advance_to(t)
        self.creates += 1
        self.pending += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        self.by_status[status] += 1
        old = self.creates_per_input[input_key]
        self.creates_per_input[input_key] = old + 1
        if old:
            self.histogram[old] -= 1
            if not self.histogram[old]:
                del self.histogram[old]
        self.histogram[old + 1] += 1
        self.max_creates_per_input = max(self.max_creates_per_input, old + 1)

    def on_status(self, t: float, old: str, new: str) -> None:
        """A task moved from status `old` to `new` at `t`."""
        self.advance_to(t)
        for status, delta in ((old, -1), (new, 1)):
            if status == "pending":
                self.pending += delta
            elif status == "processing":
                self.processing += delta
        self.by_status[old] -= 1
        self.by_status[new] += 1

    def on_usage(self, d_frozen: int, d_consume: int) -> None:
        """Frozen or consumed units changed by these amounts."""
        self.frozen_units += d_frozen
        self.consumed_units += d_consume

    def snapshot(self, now: float) -> dict[str, Any]:
        """JSON-ready values, integrated up to `now`."""
        self.advance_to(now)
        return {
            "creates": self.creates,
            "in_flight": self.in_flight,
            "pending": self.pending,
            "processing": self.processing,
            "peak_in_flight": self.peak_in_flight,
            "in_flight_integral_s": self.in_flight_integral_s,
            "processing_integral_s": self.processing_integral_s,
            "max_creates_per_input": self.max_creates_per_input,
            "creates_per_input_histogram": {
                str(k): v for k, v in sorted(self.histogram.items())
            },
            "tasks_by_status": {k: v for k, v in sorted(self.by_status.items()) if v},
            "consumed_units": self.consumed_units,
            "frozen_units": self.frozen_units,
        }

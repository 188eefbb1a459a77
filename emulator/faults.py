"""Seeded random fault decisions (5xx, 429, dropped or hung creates, stuck or failed tasks)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from emulator.config import EmulatorConfig
from emulator.counters import Counters
from emulator.tasks import Fate

CreateFault = Literal["ambiguous", "hang"]


@dataclass(frozen=True, slots=True)
class EdgeFault:
    """An answer given instead of handling the request, as a flaky edge would."""

    status: int
    html: bool
    retry_after_s: int | None = None


class FaultInjector:
    """Draws faults at the configured rates and counts each one it injects."""

    def __init__(self, config: EmulatorConfig, counters: Counters, rng: random.Random) -> None:
        self.config = config
        self.counters = counters
        self.rng = rng

    def _hit(self, rate: float, kind: str, rng: random.Random | None = None) -> bool:
        # No draw when off, so fault-free runs consume the same random stream.
        if rate <= 0.0 or (rng or self.rng).random() >= rate:
            return False
        self.counters.faults[kind] += 1
        return True

    def edge_fault(self) -> EdgeFault | None:
        """A 5xx or a spurious 429 for any API request, or None."""
        if self._hit(self.config.fault_5xx, "5xx"):
            status = self.rng.choice((500, 502, 503))
            return EdgeFault(status, html=status != 500 and self.rng.random() < 0.5)
        if self._hit(self.config.fault_429, "429"):
            return EdgeFault(429, html=False, retry_after_s=self.config.fault_retry_after_s)
        return None

    def create_fault(self) -> CreateFault | None:
        """For a create that succeeded: drop the connection, hang, or answer normally."""
        if self._hit(self.config.fault_ambiguous, "ambiguous"):
            return "ambiguous"
        if self._hit(self.config.fault_hang, "hang"):
            return "hang"
        return None

    def lost_create(self) -> bool:
        """Whether this create is lost on its way in: no task, connection dropped."""
        return self._hit(self.config.fault_lost, "lost")

    def history_fault(self) -> bool:
        """Whether this history request fails with 500."""
        return self._hit(self.config.history_fault_rate, "history_500")

    def task_fate(self, rng: random.Random) -> Fate | None:
        """A stuck or failing fate for a new task, or None for a normal one.

        Drawn from the caller's `rng` (the per-create stream), so a task's fate depends on
        the sequence of creates only, not on how polls interleave with them.
        """
        if self._hit(self.config.fault_stuck, "stuck", rng):
            return Fate.STUCK_PENDING if rng.random() < 0.5 else Fate.STUCK_PROCESSING
        if self._hit(self.config.fault_stuck_processing, "stuck_processing", rng):
            return Fate.STUCK_PROCESSING
        if self._hit(self.config.fault_fail_credits, "fail_credits", rng):
            return Fate.FAIL_CREDITS
        if self._hit(self.config.fault_fail, "fail", rng):
            return Fate.FAIL_TRANSIENT
        return None

    def webhook_copies(self) -> int:
        """How many times to deliver one webhook: 0 (lost), 1, or 2 (duplicated)."""
        if self._hit(self.config.webhook_loss, "webhook_loss"):
            self.counters.webhooks["dropped"] += 1
            return 0
        if self._hit(self.config.webhook_duplicate, "webhook_duplicate"):
            self.counters.webhooks["duplicated"] += 1
            return 2
        return 1

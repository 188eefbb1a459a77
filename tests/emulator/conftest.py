"""Shared builders for emulator unit tests: an engine on a fake clock."""

from __future__ import annotations

import random
from typing import Any

import pytest

from emulator.clock import FakeClock
from emulator.config import EmulatorConfig
from emulator.counters import Counters
from emulator.engine import Engine
from emulator.faults import FaultInjector

JOY = {"model": "Qubico/joycaption", "task_type": "joycaption-beta-one"}


def joy(image: str = "https://example.test/a.png", **extra: Any) -> dict[str, Any]:
    """A Joycaption create body."""
    return {**JOY, "input": {"image": image, **extra}}


def wan(prompt: str = "a cat", **extra: Any) -> dict[str, Any]:
    """A Wan text-to-video create body."""
    return {"model": "Wan", "task_type": "wan26-txt2video", "input": {"prompt": prompt, **extra}}


class Harness:
    """An engine, its fake clock and counters."""

    def __init__(self, **settings: Any) -> None:
        # Fixed durations and queue waits unless a test asks otherwise: exact times to assert.
        defaults: dict[str, Any] = {
            "seed": 1,
            "durations_s": {f: (10.0, 10.0) for f in ("joycaption", "wan", "flux", "kling",
                                                        "hailuo")},
            "queue_wait_fraction": (0.1, 0.1),
        }
        self.config = EmulatorConfig(**{**defaults, **settings})
        self.clock = FakeClock()
        self.counters = Counters()
        self.faults = FaultInjector(self.config, self.counters, random.Random(2))
        self.engine = Engine(
            self.config, self.clock, self.faults, random.Random(1), "http://127.0.0.1:9"
        )

    def at(self, t: float) -> None:
        """Move the fake clock to `t` seconds after its start."""
        self.clock.t = 1_750_000_000.0 + t

    @property
    def t0(self) -> float:
        return 1_750_000_000.0


@pytest.fixture
def h() -> Harness:
    return Harness()

"""Which poll mode a task gets: PiAPI's in-flight count (LAZY) frees only the slots of the
families it counts, so a task of any other family is polled eagerly even then."""

from __future__ import annotations

from typing import Any

import pytest

from workers.polling import PollMode
from workers.work.context import WorkerContext


class PublishedMode:
    """A fleet that publishes `mode` (the dispatcher's `Fleet.set_mode`)."""

    def __init__(self, mode: PollMode) -> None:
        self._mode = mode

    def mode(self) -> PollMode:
        return self._mode


def context(fleet: Any = None, webhooks: Any = None) -> WorkerContext:
    return WorkerContext(engine=None, client=None, lease_s=1.0, max_tries=1,  # type: ignore[arg-type]
                         fleet=fleet, webhooks=webhooks)


@pytest.mark.parametrize(
    ("published", "model", "mode"),
    [
        (PollMode.LAZY, "kling", PollMode.LAZY),  # counted in /account/active_tasks
        (PollMode.LAZY, "Qubico/flux1-schnell", PollMode.LAZY),
        (PollMode.LAZY, "Wan", PollMode.EAGER),  # not counted: our record holds its slot
        (PollMode.LAZY, "Qubico/joycaption", PollMode.EAGER),
        (PollMode.LAZY, "someone/unknown-model", PollMode.EAGER),
        (PollMode.LAZY, None, PollMode.LAZY),  # the fleet's mode when no model is named
        (PollMode.EAGER, "kling", PollMode.EAGER),
        (PollMode.EAGER, "Wan", PollMode.EAGER),
    ],
)
def test_lazy_polls_only_the_families_the_count_covers(published: PollMode, model: str | None,
                                                       mode: PollMode) -> None:
    assert context(PublishedMode(published)).mode(model) is mode


def test_webhooks_win_and_no_fleet_means_eager() -> None:
    assert context(PublishedMode(PollMode.LAZY), webhooks=object()).mode("Wan") \
        is PollMode.WEBHOOK
    assert context().mode("kling") is PollMode.EAGER

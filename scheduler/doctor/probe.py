"""`doctor --probe`: one cheap paid task, to see how PiAPI's history and GET treat a new task.

It creates one Flux schnell txt2img task (the cheapest kind) and measures what the docs do
not say: how long until the history lists it (the lag), whether it is listed before it
ends, and whether GET /api/v1/task/{id} echoes its input. The history is read unfiltered
(the one query known to be complete), every few seconds up to a deadline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from workers.catalog import active_family
from workers.piapi import (
    AmbiguousError,
    HistoryRow,
    Outcome,
    PiAPIClient,
    PiAPIError,
    status_outcome,
)
from workers.prices import price_usd
from workers.reconcile.decide import input_matches

logger = logging.getLogger(__name__)

PROBE_MODEL = "Qubico/flux1-schnell"
PROBE_TASK_TYPE = "txt2img"
PROBE_INPUT: Mapping[str, Any] = {"prompt": "a small red dot on white"}
PROBE_USD = price_usd(PROBE_MODEL, PROBE_TASK_TYPE, PROBE_INPUT).usd
"""What the probe costs (one Flux schnell image)."""
FIRST_POLL_S = 0.5
POLL_GROWTH = 1.5
MAX_POLL_S = 5.0
"""The history is read at most this far apart: the lag measured is within this of the real one."""
WINDOW_SLACK_S = 120.0
"""The probe's history window starts this long before the create (clock skew)."""
PAGE_SIZE = 20


@dataclass(frozen=True)
class ProbeResult:
    """What one probe task showed; None fields were not observed."""

    task_id: str | None = None
    error: str | None = None
    """Why the probe could not create its task (nothing measured then)."""
    maybe_created: bool = False
    """The create's answer was lost: a task may exist (and be charged) all the same."""
    lag_s: float | None = None
    """Seconds from sending the create until the task was first listed."""
    first_status: str | None = None
    """The task's status in the listing when it was first listed (PiAPI's word)."""
    row: HistoryRow | None = None
    echo_read: bool = False
    """Whether the GET of the task answered."""
    echoed: Mapping[str, Any] | None = None
    """The input GET /api/v1/task/{id} echoed (None: none)."""
    active_counted: bool | None = None
    """Whether /account/active_tasks counted the task just after its create."""
    polls: int = 0
    waited_s: float = 0.0

    @property
    def listed(self) -> bool:
        """True when the history listed the task before the deadline."""
        return self.row is not None

    @property
    def lists_pending(self) -> bool | None:
        """True when first listed while still pending; None when it had left pending by
        then (a task listed only once it runs or ended says nothing of a task waiting in
        PiAPI's queue, which reconciliation must not take for absent)."""
        if self.first_status is None:
            return None
        return True if status_outcome(self.first_status) is Outcome.PENDING else None

    @property
    def echoes_input(self) -> bool | None:
        """Whether the GET echoed the input as sent (None: the GET was not made)."""
        if not self.echo_read:
            return None
        return self.echoed is not None and input_matches(PROBE_INPUT, self.echoed)

    @property
    def row_input_matches(self) -> bool | None:
        """Whether the listing carried the probe's input (None: not listed)."""
        if self.row is None:
            return None
        return self.row.input is not None and input_matches(PROBE_INPUT, self.row.input)


def _find(client: PiAPIClient, task_id: str, start: float, now: float) -> HistoryRow | None:
    page = client.task_history(None, start, now + WINDOW_SLACK_S, page_size=PAGE_SIZE)
    return next((r for r in page.rows if r.task_id == task_id), None)


def _active_counted(client: PiAPIClient) -> bool | None:
    family = active_family(PROBE_MODEL)
    try:
        counts = client.active_task_counts()
    except PiAPIError:
        return None
    if counts is None or family not in counts:
        return None
    return counts[family] > 0


def run_probe(client: PiAPIClient, *, timeout_s: float,
              clock: Callable[[], float] = time.time,
              sleep: Callable[[float], None] = time.sleep) -> ProbeResult:
    """Create the probe task and watch the history for it until `timeout_s` has passed."""
    sent_at = clock()
    try:
        view = client.create_task(PROBE_MODEL, PROBE_TASK_TYPE, PROBE_INPUT)
    except AmbiguousError as exc:
        return ProbeResult(error=f"the create's answer was lost ({exc})", maybe_created=True)
    except PiAPIError as exc:
        return ProbeResult(error=f"the create was refused ({exc})")
    logger.info("doctor probe task %s created", view.task_id)
    active = _active_counted(client)
    row, polls, step, listed_at = None, 0, FIRST_POLL_S, None
    while True:
        now = clock()
        try:
            polls += 1
            row = _find(client, view.task_id, sent_at - WINDOW_SLACK_S, now)
        except PiAPIError as exc:
            logger.info("doctor probe: history read failed: %s", exc)
        if row is not None:
            listed_at = now
            break
        if now - sent_at + step > timeout_s:
            break
        sleep(step)
        step = min(MAX_POLL_S, step * POLL_GROWTH)
    read, echoed = _echo(client, view.task_id)
    return ProbeResult(
        task_id=view.task_id, lag_s=None if listed_at is None else listed_at - sent_at,
        first_status=row.status if row else None, row=row, echo_read=read, echoed=echoed,
        active_counted=active, polls=polls, waited_s=clock() - sent_at,
    )


def _echo(client: PiAPIClient, task_id: str) -> tuple[bool, Mapping[str, Any] | None]:
    """Whether the GET of the task answered, and the input it echoed."""
    try:
        return True, client.get_task(task_id).input
    except PiAPIError as exc:
        logger.info("doctor probe: GET of %s failed: %s", task_id, exc)
        return False, None

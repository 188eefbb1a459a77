"""The simulated PiAPI account: task lifecycle on a timer heap, concurrency, cancel, usage.

Every state change happens at its own event time, so reading the engine at any instant
(after `advance(now)`) shows exactly the state the schedule implies, whether or not a
background timer has run. Nothing here scans all tasks: each request costs O(log n).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from emulator.catalog import CATALOG, build_output
from emulator.clock import Clock
from emulator.config import FAMILIES, EmulatorConfig
from emulator.faults import FaultInjector
from emulator.history import HistoryIndex
from emulator.metrics import Metrics
from emulator.outputs import Minter
from emulator.parsing import parse_create
from emulator.tasks import (
    ACTIVE,
    CANCEL_ERROR,
    COMPLETED,
    CREDITS_ERROR,
    FAILED,
    MODERATION_ERROR,
    PENDING,
    PROCESSING,
    TIMEOUT_ERROR,
    TRANSIENT_ERROR,
    Fate,
    Task,
    dump_json,
)

logger = logging.getLogger(__name__)

_READY, _END, _TIMEOUT = 0, 1, 2
CancelResult = Literal["canceled", "not_found", "not_pending"]


class OverLimit(Exception):
    """Refuse mode: the account already has `concurrency` tasks pending or processing."""


class OutOfBalance(Exception):
    """The wallet cannot cover the task's price (after what is already frozen)."""

    def __init__(self, needed: int, remain: int) -> None:
        super().__init__(f"insufficient balance: the task costs {needed} points, "
                         f"{max(0, remain)} remain")
        self.needed, self.remain = needed, remain


_END_ERRORS = {Fate.FAIL_TRANSIENT: TRANSIENT_ERROR, Fate.FAIL_CREDITS: CREDITS_ERROR}
"""Fates that end failed when their processing ends, and with what error."""


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """A webhook to deliver: body is `{"timestamp", "data"}` as of the status change."""

    task_id: str
    status: str
    endpoint: str
    secret: str
    body: bytes


class Engine:
    """Tasks, their timers and the account's concurrency; time comes from `clock`."""

    def __init__(
        self, config: EmulatorConfig, clock: Clock, faults: FaultInjector,
        rng: random.Random, base_url: str,
    ) -> None:
        self.config = config
        self.clock = clock
        self.faults = faults
        self.rng = rng
        self.base_url = base_url
        self.reset()

    def reset(self) -> None:
        """Forget every task and measurement."""
        self.tasks: dict[str, Task] = {}
        self.active: dict[str, dict[str, Task]] = {family: {} for family in FAMILIES}
        self.by_input: dict[str, list[Task]] = {}
        self.history = HistoryIndex()
        self.metrics = Metrics(self.clock.now())
        self.outbox: list[WebhookEvent] = []
        self._heap: list[tuple[float, int, int, Task]] = []
        self._tiebreak = itertools.count()
        self._waiting: deque[Task] = deque()  # ready pending tasks, FIFO, lazily pruned

    # ---- time -------------------------------------------------------------------------

    def advance(self, now: float | None = None) -> float:
        """Apply every state change due by `now` (default: the clock), in time order."""
        now = self.clock.now() if now is None else now
        heap = self._heap
        while heap and heap[0][0] <= now:
            t, _, kind, task = heapq.heappop(heap)
            if kind == _READY:
                self._on_ready(t, task)
            elif kind == _END:
                self._on_end(t, task)
            elif task.status in ACTIVE:
                self._finish(t, task, FAILED, TIMEOUT_ERROR)
        return now

    def next_event_time(self) -> float | None:
        """When the next scheduled change is due, if any."""
        return self._heap[0][0] if self._heap else None

    def _schedule(self, t: float, kind: int, task: Task) -> None:
        heapq.heappush(self._heap, (t, next(self._tiebreak), kind, task))

    # ---- requests ---------------------------------------------------------------------

    def create(self, body: object) -> Task:
        """Validate and create a task (InvalidRequest → 400, OutOfBalance → 402,
        OverLimit → 429)."""
        req = parse_create(body)
        now = self.advance()
        config = self.config
        spec = req.spec
        price = spec.price(req.input)
        remain = config.balance_points - self.metrics.consumed_units - self.metrics.frozen_units
        if price > remain:
            raise OutOfBalance(price, remain)
        if config.over_limit == "refuse" and self.metrics.in_flight >= config.concurrency:
            raise OverLimit
        fate = req.forced_fate or self.faults.task_fate(self.rng) or Fate.COMPLETE
        low, high = config.durations_s[spec.family]
        duration = self.rng.uniform(low, high) * spec.duration_factor(req.input)
        duration *= config.time_scale
        wait = self.rng.uniform(*config.queue_wait_fraction) * duration
        task = Task(
            seq=self.metrics.creates + 1, task_id=self._new_uuid(), model=spec.model,
            task_type=spec.task_type, family=spec.family, input=req.input, config=req.config,
            input_key=req.input_key, fate=fate, duration_s=duration, queue_wait_s=wait,
            usage_type=spec.usage_type, price=price, created_at=now, updated_at=now,
            workflow_type=req.workflow_type,
        )
        if spec.charge_at_create:
            self._set_usage(task, frozen=0, consume=task.price)
        else:
            self._set_usage(task, frozen=task.price, consume=0)
        self.tasks[task.task_id] = task
        self.active[task.family][task.task_id] = task
        self.by_input.setdefault(task.input_key, []).append(task)
        self.history.add(task)
        self.metrics.on_create(now, task.input_key, PENDING)
        if fate is Fate.STUCK_PENDING:
            self._schedule_timeout(now, task)
        else:
            self._schedule(now + wait, _READY, task)
        self._emit(now, task)
        logger.debug("task %s created: %s/%s, %s, %.3f s", task.task_id, task.model,
                     task.task_type, fate.value, duration)
        return task

    def get(self, task_id: str) -> Task | None:
        """The task with this id, its state brought up to now."""
        self.advance()
        return self.tasks.get(task_id)

    def cancel(self, task_id: str) -> CancelResult:
        """Cancel a pending task: it ends failed (or 'cancelled') with its usage refunded."""
        now = self.advance()
        task = self.tasks.get(task_id)
        if task is None:
            return "not_found"
        if task.status != PENDING:
            return "not_pending"
        self._finish(now, task, self.config.cancel_status, CANCEL_ERROR)
        return "canceled"

    def on_config_change(self) -> None:
        """Start waiting tasks if the concurrency limit went up."""
        self._try_start(self.advance())

    # ---- transitions ------------------------------------------------------------------

    def _on_ready(self, t: float, task: Task) -> None:
        if task.status != PENDING:
            return
        if task.fate is Fate.FAIL_MODERATION:
            # Moderation rejects the input before any pool account picks the task up.
            self._finish(t, task, FAILED, MODERATION_ERROR)
            return
        self._waiting.append(task)
        self._try_start(t)

    def _try_start(self, t: float) -> None:
        limit = self.config.concurrency
        while self.metrics.processing < limit and self._waiting:
            task = self._waiting.popleft()
            if task.status == PENDING:
                self._start(t, task)

    def _start(self, t: float, task: Task) -> None:
        task.started_at = t
        self._set_status(t, task, PROCESSING)
        if task.fate is Fate.STUCK_PROCESSING:
            self._schedule_timeout(t, task)  # holds its slot: processing counts until then
        else:
            self._schedule(t + task.duration_s, _END, task)

    def _on_end(self, t: float, task: Task) -> None:
        if task.status != PROCESSING:
            return
        error = _END_ERRORS.get(task.fate)
        if error is not None:
            self._finish(t, task, FAILED, error)
        else:
            self._finish(t, task, COMPLETED, None)

    def _finish(self, t: float, task: Task, status: str, error: dict[str, Any] | None) -> None:
        was_processing = task.status == PROCESSING
        task.ended_at = t
        if error is None:
            spec = CATALOG[(task.model, task.task_type)]
            task.output = build_output(spec, task.input, Minter(task.task_id, self.base_url))
            self._set_usage(task, frozen=0, consume=task.price)
        else:
            task.error = error
            task.logs = (error["raw_message"],)
            self._set_usage(task, frozen=0, consume=0)  # a failed task is refunded
        self._set_status(t, task, status)
        logger.debug("task %s %s %s", task.task_id, status, task.error["raw_message"])
        del self.active[task.family][task.task_id]
        if was_processing:
            self._try_start(t)

    def _set_status(self, t: float, task: Task, status: str) -> None:
        old = task.status
        task.status = status
        if old == PENDING:
            self.history.left_pending(task)
        task.touch(t)
        self.metrics.on_status(t, old, status)
        self._emit(t, task)

    def _set_usage(self, task: Task, frozen: int, consume: int) -> None:
        self.metrics.on_usage(frozen - task.frozen, consume - task.consume)
        task.frozen, task.consume = frozen, consume

    def _emit(self, t: float, task: Task) -> None:
        if task.webhook_endpoint and task.status in self.config.webhook_events:
            body = dump_json({"timestamp": int(t), "data": task.data()})
            self.outbox.append(WebhookEvent(
                task.task_id, task.status, task.webhook_endpoint, task.webhook_secret, body,
            ))

    # ---- helpers ----------------------------------------------------------------------

    def _schedule_timeout(self, t: float, task: Task) -> None:
        """A stuck task fails 'task timeout' after stuck_timeout_factor x its duration, or
        (factor 0) stays as it is until cancelled, if it can be."""
        factor = self.config.stuck_timeout_factor
        if factor > 0:
            self._schedule(t + factor * task.duration_s, _TIMEOUT, task)

    def _new_uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

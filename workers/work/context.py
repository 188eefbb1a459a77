"""What the work functions share: the worker's context and a message's request tally."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy.engine import Engine

from workers import durations, stuck
from workers.catalog import active_family, prior_duration_s
from workers.db import TRANSIENT_WAIT_S, retry_transient
from workers.durations import DurationCache
from workers.fleet import Fleet
from workers.metering import RequestMeter
from workers.piapi import LimitScope, PiAPIClient, PiAPIError
from workers.polling import PollMode, next_poll_age, stuck_after_s
from workers.ratelimit import Budget
from workers.retry import backoff_s
from workers.webhook_signing import WebhookSigner

logger = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


@dataclass
class WorkerContext:
    """What the work functions need: the record, the API, the limits and a clock."""

    engine: Engine
    client: PiAPIClient
    lease_s: float
    max_tries: int
    clock: Callable[[], float] = time.time
    rng: Callable[[], float] | None = None
    budget: Budget | None = None
    """The fleet-wide request budget (creates are budgeted by the dispatcher)."""
    fleet: Fleet | None = None
    durations: DurationCache | None = None
    webhooks: WebhookSigner | None = None
    reconcile_timeout_s: float = 1800.0
    http_pool: ThreadPoolExecutor | None = None
    """Runs a message's HTTP calls side by side (a message carries several jobs)."""
    counters: Counter[str] = field(default_factory=Counter)
    db_wait_s: float = TRANSIENT_WAIT_S
    """How long a record waits for a restarting database."""
    on_stuck: str = stuck.OnStuck.RETRY.value
    """The fleet's policy for stuck tasks PiAPI cannot cancel (a batch may set its own)."""
    meter: RequestMeter | None = None
    """Counts the process's PiAPI requests by endpoint, status and latency (`Tally.report`
    adds them to the fleet's totals)."""
    handoff: bool = False
    """Create the batch's next row in a slot a poll frees (`workers.handoff`; needs `fleet`)."""
    poll_gap: float = 0.0
    """The eager schedule's spacing (`workers.polling.eager_grid`); 0: learned quantiles."""

    def each(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """`fn` over `items`, concurrently when there is a pool and more than one item."""
        if self.http_pool is None or len(items) < 2:
            return [fn(item) for item in items]
        return list(self.http_pool.map(fn, items))

    def count(self, name: str, n: int = 1) -> None:
        """Bump a process-local counter (for logs and benchmarks)."""
        self.counters[name] += n

    def backoff(self, tries: int, retry_after_s: float | None) -> float:
        """Seconds before the next try (jittered)."""
        if self.rng is None:
            return backoff_s(tries, retry_after_s)
        return backoff_s(tries, retry_after_s, self.rng)

    def record(self, fn: Callable[[], R]) -> R:
        """Write what a PiAPI request taught us, waiting out a database restart (the
        transitions are compare-and-sets, so running one again changes nothing twice)."""
        return retry_transient(fn, wait_s=self.db_wait_s)

    def take_tokens(self, wanted: int) -> int:
        """Up to `wanted` requests from the fleet's budget, without waiting (all of them
        when there is no budget)."""
        return self.budget.take_now(wanted) if self.budget is not None else max(wanted, 0)

    def give_back_tokens(self, unused: int) -> None:
        """Return tokens `take_tokens` gave and no request used."""
        if self.budget is not None:
            self.budget.give_back(unused)

    def spend(self, kind: str) -> None:
        """Take one request from the fleet's budget (blocks while there is none)."""
        if self.budget is not None:
            self.budget.spend(kind)

    def mode(self, model: str | None = None) -> PollMode:
        """How the fleet learns that a task of `model` ended (decides how eagerly to poll).
        PiAPI's in-flight count (LAZY) frees the slots only of the families it counts: a task
        of another family (Joycaption, Wan, Hailuo, ...) holds its slot in our own count until
        a poll sees it end, so its polls stay EAGER."""
        if self.webhooks is not None:
            return PollMode.WEBHOOK
        mode = self.fleet.mode() if self.fleet else PollMode.EAGER
        if mode is PollMode.LAZY and model is not None and active_family(model) is None:
            return PollMode.EAGER
        return mode

    def stuck_after_s(self, model: str, task_type: str, factor: float = 1.0) -> float:
        """How long a task of this kind, for a row of input factor `factor`, may go on
        before it counts as stuck."""
        learned = self.durations.get(model, task_type) if self.durations else None
        return stuck_after_s(learned, prior_duration_s(model, task_type), factor)

    def confirmed_stuck_after_s(self, model: str, task_type: str, submitted_at: float,
                                now: float, factor: float = 1.0) -> float:
        """`stuck_after_s`, confirmed for a task already past it: a task PiAPI is only
        slow with is not stuck, and replacing it would pay twice when it ends.

        Read afresh (the cache may be seconds behind tasks that just took longer), the
        limit may have grown past the task's age. Past it, the task counts as stuck only
        when a task of its kind created no earlier than one limit before it has completed
        since: tasks of its time still end, so it is the one that hangs. When none has,
        PiAPI is slow with every task of the kind (congested), and the task counts as stuck
        only past `stuck.UNCONFIRMED_FACTOR` times the limit."""
        limit = self.stuck_after_s(model, task_type, factor)
        if now - submitted_at <= limit or self.durations is None:
            return limit
        engine = self.durations.engine
        fresh = stuck_after_s(durations.load(engine, model, task_type),
                              prior_duration_s(model, task_type), factor)
        if now - submitted_at <= fresh or durations.one_created_since(
                engine, model, task_type, submitted_at - fresh):
            return fresh
        return fresh * stuck.UNCONFIRMED_FACTOR

    def next_poll_at(self, model: str, task_type: str, submitted_at: float, polls: int,
                     now: float, factor: float = 1.0) -> float:
        """When to GET a task next, from what tasks of its kind have taken so far per unit
        of work, times its row's input factor."""
        learned = self.durations.get(model, task_type) if self.durations else None
        age = max(0.0, now - submitted_at)
        return submitted_at + next_poll_age(age, polls, learned,
                                            prior_duration_s(model, task_type), self.mode(model),
                                            factor, self.poll_gap)

    def cancel_at_piapi(self, task_id: str) -> bool:
        """Ask PiAPI to cancel a task (only possible while pending); True when it did."""
        try:
            self.spend("cancel")
            return self.client.cancel_task(task_id)
        except PiAPIError as exc:
            logger.info("could not cancel task %s: %s", task_id, exc)
            return False


@dataclass
class Tally:
    """Requests and 429s of one message, reported to the fleet once at the end (a
    concurrency refusal at once: `limited`)."""

    requests: int = 0
    rate_429: int = 0
    conc_429: int = 0
    freed: bool = False
    """The message freed a concurrency slot: the report wakes the dispatcher."""
    fleet: Fleet | None = None
    """Where a concurrency refusal is reported at once (`limited`)."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, requests: int = 0, rate_429: int = 0, conc_429: int = 0) -> None:
        """Count requests and 429s (called from the message's HTTP threads)."""
        with self.lock:
            self.requests += requests
            self.rate_429 += rate_429
            self.conc_429 += conc_429

    def limited(self, scope: LimitScope | None) -> None:
        """Count a 429 of this scope (None: the answer was no 429).

        A concurrency refusal goes to the fleet at once, not with the message's report: the
        record that follows frees the row's slot, and a dispatcher that saw that slot
        before the refusal refilled it at the old level (a message with creates that
        succeeded reports late: a test met 8 such refusals more, a loaded CI machine 27)."""
        if scope is LimitScope.CONCURRENCY:
            if self.fleet is not None:
                self.fleet.report(0, conc_429=1)
            else:
                self.add(conc_429=1)
        elif scope is LimitScope.RATE:
            self.add(rate_429=1)

    def report(self, ctx: WorkerContext) -> None:
        """Tell the fleet, once per message; `freed` wakes the dispatcher for a free slot.
        The process's metered requests since the last report go along (every request is
        made inside a message that reports after it, so each is added once)."""
        if ctx.fleet is not None:
            metered = ctx.meter.drain() if ctx.meter is not None else ({}, {})
            ctx.fleet.report(self.requests, self.rate_429, self.conc_429, wake=self.freed,
                             metered=metered)


@contextlib.contextmanager
def reported(ctx: WorkerContext) -> Iterator[Tally]:
    """A message's `Tally`, reported to the fleet once when the message's work ends, also
    when it raises (its requests happened either way)."""
    tally = Tally(fleet=ctx.fleet)
    try:
        yield tally
    finally:
        tally.report(ctx)

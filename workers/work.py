"""What a worker does for a message: create tasks for due jobs, or poll running ones.

Plain functions over a `WorkerContext`, testable without Celery. One row's trouble never
stops the others in the same message. Creates are recorded one by one (a task id must be
saved the moment it is known); a message's poll results are recorded in one transaction.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from sqlalchemy.engine import Engine

from workers import stuck
from workers import transitions as tr
from workers.catalog import prior_duration_s
from workers.db import TRANSIENT_WAIT_S, retry_transient
from workers.durations import DurationCache, task_duration_s
from workers.fleet import Fleet
from workers.halt import set_halt
from workers.piapi import (
    AccountError,
    AmbiguousError,
    InvalidRequest,
    NotFound,
    PermanentError,
    PiAPIClient,
    PiAPIError,
    RateLimited,
    RetryableError,
    TaskView,
    Usage,
)
from workers.polling import PollMode, next_poll_age, stuck_after_s
from workers.ratelimit import Budget
from workers.retry import FailureClass, backoff_s, classify_failure
from workers.states import ErrorKind
from workers.webhook_signing import WebhookSigner

logger = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

NOT_FOUND_GRACE = 5
"""A task id PiAPI says it does not know is given this many more GETs before the row fails."""
EMPTY_OUTPUT_GRACE = 3
"""A `completed` task whose output is still empty placeholders is re-read this many times."""
ACCOUNT_RETRY_S = 60.0
"""How long a row waits after an account-level failure (credit) before it may run again."""
CANCELLED_STATUSES = frozenset({"cancelled", "canceled"})
CANCELLED_AT_PIAPI = "cancelled by operator; its task was cancelled at PiAPI while pending"
SUCCESS_STATUSES = frozenset({"completed", "success", "succeeded"})


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
    counters: dict[str, int] = field(default_factory=dict)
    db_wait_s: float = TRANSIENT_WAIT_S
    """How long a record waits for a restarting database."""
    on_stuck: str = stuck.OnStuck.RETRY.value
    """The fleet's policy for stuck tasks PiAPI cannot cancel (a batch may set its own)."""

    def each(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """`fn` over `items`, concurrently when there is a pool and more than one item."""
        if self.http_pool is None or len(items) < 2:
            return [fn(item) for item in items]
        return list(self.http_pool.map(fn, items))

    def count(self, name: str, n: int = 1) -> None:
        """Bump a process-local counter (for logs and benchmarks)."""
        self.counters[name] = self.counters.get(name, 0) + n

    def backoff(self, tries: int, retry_after_s: float | None) -> float:
        """Seconds before the next try (jittered)."""
        if self.rng is None:
            return backoff_s(tries, retry_after_s)
        return backoff_s(tries, retry_after_s, self.rng)

    def record(self, fn: Callable[[], R]) -> R:
        """Write what a PiAPI request taught us, waiting out a database restart (the
        transitions are compare-and-sets, so running one again changes nothing twice)."""
        return retry_transient(fn, wait_s=self.db_wait_s)

    def spend(self, kind: str) -> None:
        """Take one request from the fleet's budget (blocks while there is none)."""
        if self.budget is not None:
            self.budget.spend(kind)

    def mode(self) -> PollMode:
        """How the fleet learns that tasks ended (decides how eagerly to poll)."""
        if self.webhooks is not None:
            return PollMode.WEBHOOK
        return self.fleet.mode() if self.fleet else PollMode.EAGER

    def stuck_after_s(self, model: str, task_type: str) -> float:
        """How long a task of this kind may go on before it counts as stuck."""
        learned = self.durations.get(model, task_type) if self.durations else None
        return stuck_after_s(learned, prior_duration_s(model, task_type))

    def next_poll_at(self, model: str, task_type: str, submitted_at: float, polls: int,
                     now: float) -> float:
        """When to GET a task next, from what tasks of its kind have taken so far."""
        learned = self.durations.get(model, task_type) if self.durations else None
        age = max(0.0, now - submitted_at)
        return submitted_at + next_poll_age(age, polls, learned,
                                            prior_duration_s(model, task_type), self.mode())


@dataclass
class Tally:
    """Requests and 429s of one message, reported to the fleet once at the end."""

    requests: int = 0
    rate_429: int = 0
    conc_429: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, requests: int = 0, rate_429: int = 0, conc_429: int = 0) -> None:
        with self.lock:
            self.requests += requests
            self.rate_429 += rate_429
            self.conc_429 += conc_429

    def report(self, ctx: WorkerContext, freed: bool) -> None:
        if ctx.fleet is not None:
            ctx.fleet.report(self.requests, self.rate_429, self.conc_429, wake=freed)


def is_concurrency_429(exc: RateLimited, create: bool) -> bool:
    """Whether a 429 says "too many tasks in flight" rather than "too many requests"."""
    text = str(exc).lower()
    if "concurren" in text or ("task" in text and "limit" in text):
        return True
    return create and "rate" not in text and "too many requests" not in text


def has_content(output: Any) -> bool:
    """True when `output` carries a real result (some non-empty string), not placeholders."""
    if isinstance(output, str):
        return bool(output.strip())
    if isinstance(output, dict):
        return any(has_content(v) for v in output.values())
    if isinstance(output, list):
        return any(has_content(v) for v in output)
    return False


# --- creates ---------------------------------------------------------------------------
def submit_jobs(ctx: WorkerContext, job_ids: Iterable[int]) -> None:
    """Create a PiAPI task for each job that is still due."""
    ids = list(job_ids)
    tally = Tally()
    freed = False
    # No budget is spent here: the dispatcher took a token for each create it sent, so a
    # create never waits for one while its lease runs.
    try:
        claims = tr.claim_many(ctx.engine, ids, ctx.clock(), ctx.lease_s)
        freed = any(ctx.each(lambda claim: _submit_one(ctx, claim, tally), claims))
        skipped = len(ids) - tally.requests
        if skipped > 0:
            ctx.count("submit_skipped", skipped)
    finally:
        tally.report(ctx, freed)


def submit_one(ctx: WorkerContext, job_id: int) -> None:
    """Claim one job, record the attempt, POST it, and record what came back."""
    submit_jobs(ctx, [job_id])


def _submit_one(ctx: WorkerContext, claim: tr.Claim, tally: Tally) -> bool:
    """POST one claimed job; True when the outcome frees a concurrency slot."""
    tally.add(requests=1)
    hook: dict[str, str] = {}
    if ctx.webhooks is not None:
        hook = ctx.webhooks.config_for(claim.batch_id, claim.job_id)
    try:
        view = ctx.client.create_task(claim.model, claim.task_type, claim.input,
                                      service_mode=claim.service_mode, **hook)
    except AmbiguousError as exc:
        ctx.count("create_ambiguous")
        logger.warning("job %s attempt %s: %s", claim.job_id, claim.attempt_n, exc)
        lost = str(exc)
        ctx.record(lambda: tr.record_ambiguous(ctx.engine, claim, ctx.clock(), lost))
        return True
    except RateLimited as exc:
        if is_concurrency_429(exc, create=True):
            tally.add(conc_429=1)
        else:
            tally.add(rate_429=1)
        _create_retry(ctx, claim, str(exc), exc.retry_after_s)
        return True
    except RetryableError as exc:
        _create_retry(ctx, claim, str(exc), exc.retry_after_s)
        return True
    except AccountError as exc:
        ctx.count("create_account_error")
        refused = f"PiAPI refused the account: {exc}"
        ctx.record(lambda: tr.record_create_requeued(ctx.engine, claim, ctx.clock(), refused))
        return True
    except PermanentError as exc:
        ctx.count("create_rejected")
        logger.info("job %s: create rejected: %s", claim.job_id, exc)
        rejected = str(exc)
        ctx.record(lambda: tr.record_create_rejected(ctx.engine, claim, ctx.clock(),
                                                     ErrorKind.INPUT, rejected))
        return True
    ctx.count("created")
    done = ctx.clock()
    next_at = ctx.next_poll_at(claim.model, claim.task_type, done, 0, done)
    # The task exists and is paid for: its id must reach the record even while the
    # database restarts (else the row would go through reconciliation to be found again).
    ctx.record(lambda: tr.record_created(ctx.engine, claim, view, done, next_at))
    return False


def _create_retry(ctx: WorkerContext, claim: tr.Claim, message: str,
                  retry_after_s: float | None) -> None:
    ctx.count("create_retry")
    now = ctx.clock()
    retry_at = now + ctx.backoff(claim.tries + 1, retry_after_s)
    logger.info("job %s: create refused, retry in %.1fs: %s", claim.job_id, retry_at - now,
                message)
    ctx.record(lambda: tr.record_create_retry(ctx.engine, claim, now, retry_at, message,
                                              ctx.max_tries))


# --- polls -----------------------------------------------------------------------------
def poll_jobs(ctx: WorkerContext, job_ids: Iterable[int]) -> None:
    """GET each running job's task, then record every outcome in one transaction."""
    tally = Tally()
    freed = 0
    try:
        targets = tr.load_poll_targets(ctx.engine, job_ids)
        outcomes = ctx.each(lambda target: poll_one(ctx, target, tally), targets)
        freed = ctx.record(lambda: tr.record_poll_outcomes(ctx.engine, outcomes, ctx.clock()))
    finally:
        tally.report(ctx, freed > 0)


def poll_one(ctx: WorkerContext, t: tr.PollTarget, tally: Tally) -> tr.PollOutcome:
    """One GET for one running job, turned into the outcome to record."""
    try:
        ctx.spend("get")
        tally.add(requests=1)
        view = ctx.client.get_task(t.task_id)
    except (NotFound, InvalidRequest) as exc:
        return _not_found(ctx, t, str(exc))
    except AccountError as exc:
        set_halt(ctx.engine, f"PiAPI refused the account: {exc}", ctx.clock())
        return _poll_error(ctx, t, str(exc), ACCOUNT_RETRY_S)
    except RateLimited as exc:
        tally.add(rate_429=1)
        return _poll_error(ctx, t, str(exc), exc.retry_after_s)
    except (RetryableError, PermanentError) as exc:
        return _poll_error(ctx, t, str(exc), getattr(exc, "retry_after_s", None))
    ctx.count("polled")
    return outcome_of(ctx, t, view)


def outcome_of(ctx: WorkerContext, t: tr.PollTarget, view: TaskView) -> tr.PollOutcome:
    """What PiAPI's view of a running job's task means for the row."""
    now = ctx.clock()
    status = view.status
    if status in SUCCESS_STATUSES:
        if has_content(view.output) or t.polls >= EMPTY_OUTPUT_GRACE:
            ctx.count("completed")
            return tr.PollOutcome(t, "completed", view,
                                  duration_s=task_duration_s(view, t.submitted_at, now))
        return tr.PollOutcome(t, "progress", view, next_at=now + 0.5)
    if status == "failed" or status in CANCELLED_STATUSES:
        return _task_failed(ctx, t, view, now)
    if t.cancel_mode is not None:
        stopped = _stop_for_cancel(ctx, t, view)
        if stopped is not None:
            return stopped
    # pending, processing, staged, or a status nobody documented: still running.
    submitted = t.submitted_at if t.submitted_at is not None else now
    given_up = _stuck(ctx, t, view, now, now - submitted)
    if given_up is not None:
        return given_up
    next_at = ctx.next_poll_at(t.model, t.task_type, submitted, t.polls + 1, now)
    return tr.PollOutcome(t, "progress", view, next_at=next_at)


def _stuck(ctx: WorkerContext, t: tr.PollTarget, view: TaskView, now: float,
           age: float) -> tr.PollOutcome | None:
    """A task that has not ended far past its kind's tail: cancelled (pending) or abandoned
    (otherwise), and replaced or failed, by the policy in `workers.stuck`; None: wait on."""
    limit = ctx.stuck_after_s(t.model, t.task_type)
    policy = stuck.policy_of(t.on_stuck, ctx.on_stuck)
    left = t.counted_attempts < t.max_attempts
    act = stuck.action(view.status, age, limit, policy, left)
    if act is stuck.Action.CANCEL:
        if cancel_at_piapi(ctx, t.task_id):
            ctx.count("stuck_cancelled")
            message = stuck.cancelled_message(t.task_id, age, limit)
            refunded = replace(view, usage=view.usage and Usage(view.usage.type, 0, 0))
            return _stuck_outcome(t, refunded, stuck.after_cancel(left), now, message,
                                  policy, attempt_state="cancelled")
        act = stuck.after_failed_cancel(age, limit, policy, left)
    if act is None:
        return None
    ctx.count("stuck_abandoned")
    until = stuck.watch_until(now, limit)
    message = stuck.abandoned_message(t.task_id, view.status, age, limit)
    return _stuck_outcome(t, view, act, now, message, policy, attempt_state="abandoned",
                          watch_until=until, watch_next=stuck.next_look_at(now, limit, until))


def _stuck_outcome(t: tr.PollTarget, view: TaskView, act: stuck.Action, now: float,
                   message: str, policy: stuck.OnStuck, **attempt: Any) -> tr.PollOutcome:
    logger.warning("job %s: %s", t.job_id, message)
    if act is stuck.Action.REPLACE:
        return tr.PollOutcome(t, "retry", view, next_at=now, message=message,
                              error_kind=ErrorKind.STUCK, **attempt)
    failed = stuck.failed_message(message, policy, t.counted_attempts, t.max_attempts)
    return tr.PollOutcome(t, "failed", view, message=failed, error_kind=ErrorKind.STUCK,
                          attempt_error=message, **attempt)


def cancel_at_piapi(ctx: WorkerContext, task_id: str) -> bool:
    """Ask PiAPI to cancel a task (only possible while pending); True when it did."""
    try:
        ctx.spend("cancel")
        return ctx.client.cancel_task(task_id)
    except PiAPIError as exc:
        logger.info("could not cancel task %s: %s", task_id, exc)
        return False


def _stop_for_cancel(ctx: WorkerContext, t: tr.PollTarget,
                     view: TaskView) -> tr.PollOutcome | None:
    """A running task of a cancelled batch: cancelled at PiAPI while still pending
    (refunded); with `cancel --now`, abandoned otherwise; else None (it runs to the end)."""
    if view.status == "pending" and cancel_at_piapi(ctx, t.task_id):
        ctx.count("operator_cancelled")
        usage = view.usage and Usage(view.usage.type, 0, 0)  # PiAPI refunds a cancelled task
        return tr.PollOutcome(t, "cancelled", replace(view, usage=usage),
                              message=CANCELLED_AT_PIAPI, error_kind=ErrorKind.CANCELLED,
                              attempt_state="cancelled")
    if t.cancel_mode != "now":
        return None
    ctx.count("operator_abandoned")
    message = (f"cancelled by operator (--now) while its task was {view.status or 'running'}; "
               f"task {t.task_id} may still finish and be charged")
    return tr.PollOutcome(t, "cancelled", view, message=message,
                          error_kind=ErrorKind.CANCELLED, attempt_state="abandoned")


def _task_failed(ctx: WorkerContext, t: tr.PollTarget, view: TaskView,
                 now: float) -> tr.PollOutcome:
    text = view.error.text if view.error else f"task {view.status}"
    if view.status in CANCELLED_STATUSES:
        kind, cls = ErrorKind.CANCELLED, FailureClass.INPUT
    else:
        cls = classify_failure(text)
        kind = {FailureClass.ACCOUNT: ErrorKind.ACCOUNT,
                FailureClass.INPUT: ErrorKind.INPUT}.get(cls, ErrorKind.PROVIDER)
    # A failed task never halts the fleet, whatever its text says ("doesn't have enough
    # credits" is a provider pool's, not the account's): only a refused create does.
    ctx.count("task_failed")
    logger.info("job %s: task %s failed (%s): %s", t.job_id, t.task_id, cls.value, text)
    retryable = cls != FailureClass.INPUT and t.counted_attempts < t.max_attempts
    if retryable and t.cancel_mode is not None:
        return tr.PollOutcome(t, "cancelled", view, error_kind=ErrorKind.CANCELLED,
                              message=f"cancelled by operator; its task failed: {text}")
    if retryable:
        delay = ACCOUNT_RETRY_S if cls == FailureClass.ACCOUNT else ctx.backoff(t.attempts, None)
        return tr.PollOutcome(t, "retry", view, next_at=now + delay, message=text,
                              error_kind=kind)
    message = text
    if cls != FailureClass.INPUT:
        message = f"failed {t.counted_attempts} of {t.max_attempts} attempts; last: {text}"
    return tr.PollOutcome(t, "failed", view, message=message, error_kind=kind)


def _poll_error(ctx: WorkerContext, t: tr.PollTarget, message: str,
                retry_after_s: float | None) -> tr.PollOutcome:
    ctx.count("poll_error")
    next_at = ctx.clock() + ctx.backoff(t.poll_errors + 1, retry_after_s)
    return tr.PollOutcome(t, "poll_error", next_at=next_at, message=message)


def _not_found(ctx: WorkerContext, t: tr.PollTarget, message: str) -> tr.PollOutcome:
    if t.poll_errors >= NOT_FOUND_GRACE:
        return tr.PollOutcome(t, "lost", message=f"PiAPI does not know the task: {message}")
    return _poll_error(ctx, t, message, None)

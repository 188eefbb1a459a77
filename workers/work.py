"""What a worker does for a message: create tasks for due jobs, or poll running ones.

Plain functions over a `WorkerContext`, testable without Celery. Each job is handled on
its own: one row's trouble never stops the others in the same message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis
from sqlalchemy.engine import Engine

from workers import transitions as tr
from workers.piapi import (
    AccountError,
    AmbiguousError,
    InvalidRequest,
    NotFound,
    PermanentError,
    PiAPIClient,
    RetryableError,
    TaskView,
)
from workers.polling import next_poll_delay_s
from workers.retry import FailureClass, backoff_s, classify_failure
from workers.states import ErrorKind

logger = logging.getLogger(__name__)

NOT_FOUND_GRACE = 5
"""A task id PiAPI says it does not know is given this many more GETs before the row fails."""
EMPTY_OUTPUT_GRACE = 3
"""A `completed` task whose output is still empty placeholders is re-read this many times."""
ACCOUNT_RETRY_S = 60.0
"""How long a row waits after an account-level failure (credit) before it may run again."""
CANCELLED_STATUSES = frozenset({"cancelled", "canceled"})
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
    budget: Callable[[str], None] | None = None
    """Blocks until the fleet-wide request budget allows one more PiAPI request."""
    counters: dict[str, int] = field(default_factory=dict)

    def count(self, name: str) -> None:
        """Bump a process-local counter (for logs and benchmarks)."""
        self.counters[name] = self.counters.get(name, 0) + 1

    def backoff(self, tries: int, retry_after_s: float | None) -> float:
        """Seconds before the next try (jittered)."""
        if self.rng is None:
            return backoff_s(tries, retry_after_s)
        return backoff_s(tries, retry_after_s, self.rng)


def has_content(output: Any) -> bool:
    """True when `output` carries a real result (some non-empty string), not placeholders."""
    if isinstance(output, str):
        return bool(output.strip())
    if isinstance(output, dict):
        return any(has_content(v) for v in output.values())
    if isinstance(output, list):
        return any(has_content(v) for v in output)
    return False


def submit_jobs(ctx: WorkerContext, job_ids: Iterable[int]) -> None:
    """Create a PiAPI task for each job that is still due."""
    for job_id in job_ids:
        submit_one(ctx, job_id)


def submit_one(ctx: WorkerContext, job_id: int) -> None:
    """Claim one job, record the attempt, POST it, and record what came back.

    The request budget is spent before the claim, so a long wait for it never eats into
    the lease that protects the create.
    """
    if ctx.budget is not None:
        ctx.budget("create")
    now = ctx.clock()
    claim = tr.claim_for_submit(ctx.engine, job_id, now, ctx.lease_s)
    if claim is None:
        ctx.count("submit_skipped")
        return
    try:
        view = ctx.client.create_task(claim.model, claim.task_type, claim.input)
    except AmbiguousError as exc:
        ctx.count("create_ambiguous")
        logger.warning("job %s attempt %s: %s", job_id, claim.attempt_n, exc)
        tr.record_ambiguous(ctx.engine, claim, ctx.clock(), str(exc))
        return
    except RetryableError as exc:
        _create_retry(ctx, claim, str(exc), exc.retry_after_s)
        return
    except AccountError as exc:
        ctx.count("create_account_error")
        reason = f"PiAPI refused the account: {exc}"
        tr.record_create_requeued(ctx.engine, claim, ctx.clock(), reason)
        return
    except PermanentError as exc:
        ctx.count("create_rejected")
        logger.info("job %s: create rejected: %s", job_id, exc)
        tr.record_create_rejected(ctx.engine, claim, ctx.clock(), ErrorKind.INPUT, str(exc))
        return
    ctx.count("created")
    done = ctx.clock()
    tr.record_created(ctx.engine, claim, view, done, done + next_poll_delay_s(0))


def _create_retry(ctx: WorkerContext, claim: tr.Claim, message: str,
                  retry_after_s: float | None) -> None:
    ctx.count("create_retry")
    now = ctx.clock()
    retry_at = now + ctx.backoff(claim.tries + 1, retry_after_s)
    logger.info("job %s: create refused, retry in %.1fs: %s", claim.job_id, retry_at - now,
                message)
    tr.record_create_retry(ctx.engine, claim, now, retry_at, message, ctx.max_tries)


def poll_jobs(ctx: WorkerContext, job_ids: Iterable[int]) -> None:
    """GET each running job's task and record progress, a result or a failure."""
    for target in tr.load_poll_targets(ctx.engine, job_ids):
        poll_one(ctx, target)


def poll_one(ctx: WorkerContext, t: tr.PollTarget) -> None:
    """One GET for one running job."""
    try:
        if ctx.budget is not None:
            ctx.budget("get")
        view = ctx.client.get_task(t.task_id)
    except (NotFound, InvalidRequest) as exc:
        _poll_not_found(ctx, t, str(exc))
        return
    except AccountError as exc:
        tr.set_halt(ctx.engine, f"PiAPI refused the account: {exc}", ctx.clock())
        _poll_error(ctx, t, str(exc), ACCOUNT_RETRY_S)
        return
    except (RetryableError, PermanentError) as exc:
        _poll_error(ctx, t, str(exc), getattr(exc, "retry_after_s", None))
        return
    except (redis.RedisError, TimeoutError) as exc:
        _poll_error(ctx, t, f"request budget unavailable: {exc}", None)
        return
    ctx.count("polled")
    record_view(ctx, t, view)


def record_view(ctx: WorkerContext, t: tr.PollTarget, view: TaskView) -> None:
    """Apply what PiAPI said about a running job's task."""
    now = ctx.clock()
    status = view.status
    if status in SUCCESS_STATUSES:
        if has_content(view.output) or t.polls >= EMPTY_OUTPUT_GRACE:
            tr.record_completed(ctx.engine, t, view, now)
            ctx.count("completed")
        else:
            tr.record_progress(ctx.engine, t, view, now + next_poll_delay_s(0))
        return
    if status == "failed" or status in CANCELLED_STATUSES:
        _task_failed(ctx, t, view, now)
        return
    # pending, processing, staged, or a status nobody documented: still running.
    tr.record_progress(ctx.engine, t, view, now + next_poll_delay_s(t.polls + 1))


def _task_failed(ctx: WorkerContext, t: tr.PollTarget, view: TaskView, now: float) -> None:
    text = view.error.text if view.error else f"task {view.status}"
    if view.status in CANCELLED_STATUSES:
        kind, cls = ErrorKind.CANCELLED, FailureClass.INPUT
    else:
        cls = classify_failure(text)
        kind = {FailureClass.ACCOUNT: ErrorKind.ACCOUNT,
                FailureClass.INPUT: ErrorKind.INPUT}.get(cls, ErrorKind.PROVIDER)
    retry_at: float | None = None
    message = text
    if cls == FailureClass.ACCOUNT:
        tr.set_halt(ctx.engine, f"PiAPI failed a task for an account reason: {text}", now)
    if cls != FailureClass.INPUT and t.attempts < t.max_attempts:
        delay = ACCOUNT_RETRY_S if cls == FailureClass.ACCOUNT else ctx.backoff(t.attempts, None)
        retry_at = now + delay
    elif cls != FailureClass.INPUT:
        message = f"failed {t.attempts} of {t.max_attempts} attempts; last: {text}"
    ctx.count("task_failed")
    logger.info("job %s: task %s failed (%s): %s", t.job_id, t.task_id, cls.value, text)
    tr.record_task_failed(ctx.engine, t, view, now, kind=kind, message=message,
                          retry_at=retry_at)


def _poll_error(ctx: WorkerContext, t: tr.PollTarget, message: str,
                retry_after_s: float | None) -> None:
    ctx.count("poll_error")
    now = ctx.clock()
    next_at = now + ctx.backoff(t.poll_errors + 1, retry_after_s)
    tr.record_poll_error(ctx.engine, t, now, next_at, message)


def _poll_not_found(ctx: WorkerContext, t: tr.PollTarget, message: str) -> None:
    if t.poll_errors >= NOT_FOUND_GRACE:
        tr.record_lost_task(ctx.engine, t, ctx.clock(), f"PiAPI does not know the task: {message}")
        return
    _poll_error(ctx, t, message, None)

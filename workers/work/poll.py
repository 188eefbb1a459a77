"""The poll half: GET running jobs' tasks and record what each answer means for its row.

What an answer (a task, or the client's exception) means is `decide_poll`, a pure function
of the answer, the row and `PollFacts` (the clock, the stuck limit and poll schedule its
kind has learned, scaled by the row's input factor, the back-off); `poll_jobs` only reads,
sends and records. The one request a decision may need first, a cancel at PiAPI (of a
stuck pending task, or of a cancelled batch's), it asks for, and is then decided again
with PiAPI's answer. A message's outcomes are recorded in one transaction.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import redis

from workers import handoff, stuck
from workers import transitions as tr
from workers.durations import task_duration_s
from workers.halt import set_halt
from workers.piapi import (
    AccountError,
    InvalidRequest,
    LimitScope,
    NotFound,
    Outcome,
    PermanentError,
    RateLimited,
    RetryableError,
    TaskView,
    Usage,
)
from workers.retry import FailureClass, classify_failure
from workers.states import AttemptState, ErrorKind
from workers.work.context import Tally, WorkerContext, reported
from workers.work.create import create_one
from workers.work.summary import MessageSummary, RowOutcome, of_polls

logger = logging.getLogger(__name__)

NOT_FOUND_GRACE = 5
"""A task id PiAPI says it does not know is given this many more GETs before the row fails."""
EMPTY_OUTPUT_GRACE = 3
"""A `completed` task whose output is still empty placeholders is re-read this many times..."""
EMPTY_OUTPUT_RECHECK_S = 0.5
"""...this soon after each read."""
ACCOUNT_RETRY_S = 60.0
"""How long a row waits after an account-level failure (credit) before it may run again."""
CANCELLED_AT_PIAPI = "cancelled by operator; its task was cancelled at PiAPI while pending"

PollAnswer = TaskView | RetryableError | PermanentError
"""What a GET can come back with: the task, or the client's retryable or permanent error."""
Backoff = Callable[[int, float | None], float]
"""Seconds to wait after `tries` errors, honouring a Retry-After (`WorkerContext.backoff`)."""


@dataclass(frozen=True)
class PollFacts:
    """What deciding a poll needs besides PiAPI's answer and the row."""

    now: float
    on_stuck: str
    """The fleet's `--on-stuck` (the batch's own, on the row, wins)."""
    backoff: Backoff
    stuck_after_s: float = math.inf
    """How long the row's task may go on before it counts as stuck (its kind's limit per
    unit of work times the row's factor)..."""
    next_poll_at: float | None = None
    """...and when to GET it again if it goes on (the learned schedule); both are needed
    only for a task still running."""
    cancelled: bool | None = None
    """PiAPI's answer to the cancel the last decision asked for (None: none asked)."""


@dataclass(frozen=True)
class PollDecision:
    """What to record for one GET, and what else the answer asks of the worker."""

    record: tr.PollOutcome | None
    """None: ask PiAPI to cancel the task first, then decide again (`ask_cancel`)."""
    counter: str | None = None
    limit: LimitScope | None = None
    """A 429's scope, counted for the fleet's limits."""
    halt: str | None = None
    """Halt the fleet with this reason (PiAPI refused the key)."""

    @property
    def ask_cancel(self) -> bool:
        """True when PiAPI must be asked to cancel the task before deciding."""
        return self.record is None


ASK_CANCEL = PollDecision(None)


def poll_jobs(ctx: WorkerContext, job_ids: Iterable[int]) -> MessageSummary:
    """GET each running job's task, then record every outcome in one transaction (with the
    rows handed the slots they free claimed, `workers.handoff`); what became of each row."""
    ids = set(job_ids)
    with reported(ctx) as tally:
        targets = tr.load_poll_targets(ctx.engine, ids)
        outcomes = ctx.each(lambda target: _poll_one(ctx, target, tally), targets)
        plan, popped, low = _standby(ctx, outcomes)
        recorded = ctx.record(lambda: tr.record_and_hand_off(ctx.engine, outcomes,
                                                             ctx.clock(), plan))
        ctx.give_back_tokens(popped - len(recorded.claims))
        created = ctx.each(lambda claim: create_one(ctx, claim, tally), recorded.claims)
        # A slot freed and not handed over (or whose create failed), or a standby list
        # running dry: the dispatcher should look now.
        tally.freed = (recorded.freed > len(recorded.claims) or (low and recorded.freed > 0)
                       or any(frees for frees, _ in created))
    summary = of_polls(targets, outcomes, len(ids), ctx.clock())
    if recorded.claims:
        ctx.count("handed_off", len(recorded.claims))
    for claim, (_, row) in zip(recorded.claims, created, strict=True):
        summary.row(claim.job_id, claim.row_key, claim.batch_id, RowOutcome(
            f"handed a freed slot: {row.label}", row.wait_s))
    return summary


def _standby(ctx: WorkerContext, outcomes: Sequence[tr.PollOutcome]
             ) -> tuple[tr.Handoff | None, int, bool]:
    """The rows this message may create in the slots it frees (`workers.handoff`): ids
    popped from their batches' standby lists, one request token taken for each (none when
    the budget has none now). Also how many were popped, and whether a list ran low."""
    if not ctx.handoff or ctx.fleet is None:
        return None, 0, False
    eligible = {o.target.job_id for o in outcomes if handoff.hands_off(o, ctx.mode(o.target.model))}
    wants = handoff.wanted(outcomes, eligible)
    try:
        tokens = ctx.take_tokens(sum(wants.values()))
        wants = handoff.within(wants, tokens)
        popped, low = handoff.take(ctx.fleet.redis, wants)
    except redis.RedisError as exc:  # no handoff: the dispatcher refills as before
        logger.info("no slot handoff this time: %s", exc)
        return None, 0, False
    got = sum(len(ids) for ids in popped.values())
    ctx.give_back_tokens(tokens - got)
    if not got:
        return None, 0, low
    return tr.Handoff(popped, frozenset(eligible), ctx.lease_s), got, low


def _poll_one(ctx: WorkerContext, t: tr.PollTarget, tally: Tally) -> tr.PollOutcome:
    """One GET for one running job, turned into the outcome to record."""
    answer: PollAnswer
    try:
        ctx.spend("get")
        tally.add(requests=1)
        answer = ctx.client.get_task(t.task_id)
        ctx.count("polled")
    except (RetryableError, PermanentError) as exc:
        answer = exc
    facts = facts_for(ctx, t, answer)
    decision = decide_poll(t, answer, facts)
    if decision.ask_cancel:
        facts = replace(facts, cancelled=ctx.cancel_at_piapi(t.task_id))
        decision = decide_poll(t, answer, facts)
    if decision.halt is not None:
        set_halt(ctx.engine, decision.halt, ctx.clock())
    tally.limited(decision.limit)
    if decision.counter is not None:
        ctx.count(decision.counter)
    assert decision.record is not None  # a cancel's answer is always decided on
    return decision.record


def facts_for(ctx: WorkerContext, t: tr.PollTarget, answer: PollAnswer) -> PollFacts:
    """The clock, and for a task still running what its kind has learned (an ended task or
    an error needs neither, and the learned durations may take a database read)."""
    now = ctx.clock()
    facts = PollFacts(now=now, on_stuck=ctx.on_stuck, backoff=ctx.backoff)
    if not isinstance(answer, TaskView) or answer.outcome.ended:
        return facts
    submitted = t.submitted_at if t.submitted_at is not None else now
    # A stuck pending task is cancelled, and refunded: the limit needs no confirming. One
    # PiAPI runs on would be paid twice if replaced while only slow: it does.
    limit = (ctx.stuck_after_s(t.model, t.task_type, t.factor)
             if answer.outcome is Outcome.PENDING else
             ctx.confirmed_stuck_after_s(t.model, t.task_type, submitted, now, t.factor))
    return replace(facts, stuck_after_s=limit,
                   next_poll_at=ctx.next_poll_at(t.model, t.task_type, submitted,
                                                 t.polls + 1, now, t.factor))


def decide_poll(t: tr.PollTarget, answer: PollAnswer, f: PollFacts) -> PollDecision:
    """What PiAPI's answer to a GET of a running job's task means for the row."""
    if not isinstance(answer, TaskView):
        return _refused(t, answer, f)
    outcome = answer.outcome
    if outcome is Outcome.COMPLETED:
        if answer.has_output or t.polls >= EMPTY_OUTPUT_GRACE:
            return PollDecision(tr.PollOutcome(
                t, "completed", answer, duration_s=task_duration_s(answer, t.submitted_at, f.now)),
                counter="completed")
        return PollDecision(tr.PollOutcome(t, "progress", answer,
                                           next_at=f.now + EMPTY_OUTPUT_RECHECK_S))
    if outcome in (Outcome.FAILED, Outcome.CANCELLED):
        return _task_failed(t, answer, f)
    if t.cancel_mode is not None:
        stopped = _stop_for_cancel(t, answer, f)
        if stopped is not None:
            return stopped
    given_up = _stuck(t, answer, f)
    if given_up is not None:
        return given_up
    assert f.next_poll_at is not None, "a running task's facts carry its poll schedule"
    return PollDecision(tr.PollOutcome(t, "progress", answer, next_at=f.next_poll_at))


def _refunded(view: TaskView) -> TaskView:
    """The view of a task PiAPI cancelled while pending: it refunds it, so no usage."""
    return replace(view, usage=view.usage and Usage(view.usage.type, 0, 0))


def _stuck(t: tr.PollTarget, view: TaskView, f: PollFacts) -> PollDecision | None:
    """A task that has not ended far past its kind's tail: cancelled (pending) or abandoned
    (otherwise), and replaced or failed, by the policy in `workers.stuck`; None: wait on."""
    age = f.now - (t.submitted_at if t.submitted_at is not None else f.now)
    limit = f.stuck_after_s
    policy = stuck.policy_of(t.on_stuck, f.on_stuck)
    left = t.counted_attempts < t.max_attempts
    act = stuck.action(view.outcome, age, limit, policy, left)
    if act is stuck.Action.CANCEL:
        if f.cancelled is None:
            return ASK_CANCEL
        if f.cancelled:
            message = stuck.cancelled_message(t.task_id, age, limit)
            return _stuck_outcome(t, _refunded(view), stuck.after_cancel(left), f.now, message,
                                  policy, "stuck_cancelled", attempt_state=AttemptState.CANCELLED)
        act = stuck.after_failed_cancel(age, limit, policy, left)
    if act is None:
        return None
    until, first_look = stuck.watch_window(f.now, limit)
    message = stuck.abandoned_message(t.task_id, view.status, age, limit)
    return _stuck_outcome(t, view, act, f.now, message, policy, "stuck_abandoned",
                          attempt_state=AttemptState.ABANDONED, watch_until=until,
                          watch_next=first_look)


def _stuck_outcome(t: tr.PollTarget, view: TaskView, act: stuck.Action, now: float,
                   message: str, policy: stuck.OnStuck, counter: str,
                   **attempt: Any) -> PollDecision:
    logger.warning("job %s: %s", t.job_id, message)
    if act is stuck.Action.REPLACE:
        return PollDecision(tr.PollOutcome(t, "retry", view, next_at=now, message=message,
                                           error_kind=ErrorKind.STUCK, **attempt), counter)
    failed = stuck.failed_message(message, policy, t.counted_attempts, t.max_attempts)
    return PollDecision(tr.PollOutcome(t, "failed", view, message=failed,
                                       error_kind=ErrorKind.STUCK, attempt_error=message,
                                       **attempt), counter)


def _stop_for_cancel(t: tr.PollTarget, view: TaskView, f: PollFacts) -> PollDecision | None:
    """A running task of a cancelled batch: cancelled at PiAPI while still pending
    (refunded); with `cancel --now`, abandoned otherwise; else None (it runs to the end)."""
    if view.outcome is Outcome.PENDING:
        if f.cancelled is None:
            return ASK_CANCEL
        if f.cancelled:
            return PollDecision(tr.PollOutcome(
                t, "cancelled", _refunded(view), message=CANCELLED_AT_PIAPI,
                error_kind=ErrorKind.CANCELLED, attempt_state=AttemptState.CANCELLED),
                counter="operator_cancelled")
    if t.cancel_mode != "now":
        return None
    # PiAPI runs it on: like a stuck task given up on, it is watched, and counts against the
    # account's limit, until it ends (its cost is recorded then, and its result taken).
    limit = f.stuck_after_s if math.isfinite(f.stuck_after_s) else stuck.WATCH_MIN_S
    until, first_look = stuck.watch_window(f.now, limit)
    message = (f"cancelled by operator (--now) while its task was {view.status or 'running'}; "
               f"task {t.task_id} may still finish and be charged: it is watched, and its "
               "result is used if it completes")
    return PollDecision(tr.PollOutcome(t, "cancelled", view, message=message,
                                       error_kind=ErrorKind.CANCELLED,
                                       attempt_state=AttemptState.ABANDONED, watch_until=until,
                                       watch_next=first_look),
                        counter="operator_abandoned")


def _task_failed(t: tr.PollTarget, view: TaskView, f: PollFacts) -> PollDecision:
    """A task PiAPI ended without a result: a new task within the attempt limit, unless
    its error says the input is at fault; failed otherwise."""
    text = view.error.text if view.error else f"task {view.status}"
    if view.outcome is Outcome.CANCELLED:
        kind, cls = ErrorKind.CANCELLED, FailureClass.INPUT
    else:
        cls = classify_failure(text)
        kind = {FailureClass.ACCOUNT: ErrorKind.ACCOUNT,
                FailureClass.INPUT: ErrorKind.INPUT}.get(cls, ErrorKind.PROVIDER)
    # A failed task never halts the fleet, whatever its text says ("doesn't have enough
    # credits" is a provider pool's, not the account's): only a refused create does.
    logger.info("job %s: task %s failed (%s): %s", t.job_id, t.task_id, cls.value, text)
    retryable = cls != FailureClass.INPUT and t.counted_attempts < t.max_attempts
    if retryable and t.cancel_mode is not None:
        record = tr.PollOutcome(t, "cancelled", view, error_kind=ErrorKind.CANCELLED,
                                message=f"cancelled by operator; its task failed: {text}")
    elif retryable:
        delay = ACCOUNT_RETRY_S if cls == FailureClass.ACCOUNT else f.backoff(t.attempts, None)
        record = tr.PollOutcome(t, "retry", view, next_at=f.now + delay, message=text,
                                error_kind=kind)
    else:
        message = text
        if cls != FailureClass.INPUT:
            message = f"failed {t.counted_attempts} of {t.max_attempts} attempts; last: {text}"
        record = tr.PollOutcome(t, "failed", view, message=message, error_kind=kind)
    return PollDecision(record, counter="task_failed")


def _refused(t: tr.PollTarget, exc: RetryableError | PermanentError,
             f: PollFacts) -> PollDecision:
    """A GET that brought no task: look again after a back-off; a task PiAPI keeps saying
    it does not know ends the row (`lost`); a refused key also halts the fleet."""
    if isinstance(exc, NotFound | InvalidRequest):
        if t.poll_errors >= NOT_FOUND_GRACE:
            return PollDecision(tr.PollOutcome(
                t, "lost", message=f"PiAPI does not know the task: {exc}"))
        return _poll_error(t, str(exc), None, f)
    if isinstance(exc, AccountError):
        return replace(_poll_error(t, str(exc), ACCOUNT_RETRY_S, f),
                       halt=f"PiAPI refused the account: {exc}")
    retry_after = exc.retry_after_s if isinstance(exc, RetryableError) else None
    limit = exc.scope if isinstance(exc, RateLimited) else None
    return replace(_poll_error(t, str(exc), retry_after, f), limit=limit)


def _poll_error(t: tr.PollTarget, message: str, retry_after_s: float | None,
                f: PollFacts) -> PollDecision:
    next_at = f.now + f.backoff(t.poll_errors + 1, retry_after_s)
    return PollDecision(tr.PollOutcome(t, "poll_error", next_at=next_at, message=message),
                        counter="poll_error")

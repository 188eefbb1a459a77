"""The create half: claim due jobs, upload their local files, POST each, and record what
PiAPI answered.

What an answer means for the row is `decide_create`, a pure function of the answer (a
task, or the client's exception); `submit_jobs` only claims, sends and records. Creates
are recorded one by one: a task id must be saved the moment it is known. One row's
trouble never stops the others in the same message. A row's local files are uploaded
after its claim and before its POST (`workers.uploads`): an upload that fails leaves the
create provably unsent, so it is read like a refused create (`decide_upload`), never as
an ambiguous one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from workers import transitions as tr
from workers.halt import get_halt
from workers.piapi import (
    AccountError,
    AmbiguousError,
    LimitScope,
    PermanentError,
    PlanRequired,
    RateLimited,
    RetryableError,
    TaskView,
)
from workers.states import ErrorKind, JobState
from workers.uploads import LocalFileGone, local_files, record_uploads, upload_all, with_urls
from workers.work.context import Tally, WorkerContext, reported
from workers.work.summary import SKIPPED, MessageSummary, RowOutcome

logger = logging.getLogger(__name__)

CreateAnswer = TaskView | AmbiguousError | RetryableError | PermanentError
"""What a create can come back with: the task, or one of the client's three kinds."""


class CreateVerdict(StrEnum):
    """What a create's answer means for its row."""

    CREATED = "created"
    """The task exists (and is paid for): record its id, poll it."""
    AMBIGUOUS = "create_ambiguous"
    """Sent, no answer: a task may exist; reconciliation finds it, never a blind re-post."""
    RETRY = "create_retry"
    """Nothing was created (429, 5xx, not sent, provider busy): back off, post again."""
    ACCOUNT = "create_account_error"
    """The account was refused (key, balance): the row goes back to the queue and the
    fleet halts until a human acts."""
    REJECTED = "create_rejected"
    """PiAPI refused the input (or a local file cannot be read any more): the row fails,
    kind `input`."""
    PLAN = "upload_plan_refused"
    """An upload refused for the account's plan: final for every row with a local file,
    which fails (kind `account`); rows without one go on."""


PLAN_MESSAGE = "uploads need the Creator plan or higher (PiAPI said: {})"


@dataclass(frozen=True)
class CreateDecision:
    """What to record for one create (the verdict's value is also its counter's name)."""

    verdict: CreateVerdict
    view: TaskView | None = None
    """CREATED: the task PiAPI made."""
    message: str = ""
    """Why, in PiAPI's words where it gave any (the row's and the attempt's error)."""
    retry_after_s: float | None = None
    """RETRY: PiAPI's Retry-After, when it sent one."""
    limit: LimitScope | None = None
    """A 429's scope, counted for the fleet's limits."""

    @property
    def frees_slot(self) -> bool:
        """True unless a task was made: the concurrency slot the dispatcher gave frees up."""
        return self.verdict is not CreateVerdict.CREATED


def decide_create(answer: CreateAnswer) -> CreateDecision:
    """What a create's answer means for the row (by the answer's type, never its text)."""
    if isinstance(answer, TaskView):
        return CreateDecision(CreateVerdict.CREATED, view=answer)
    if isinstance(answer, AmbiguousError):
        return CreateDecision(CreateVerdict.AMBIGUOUS, message=str(answer))
    if isinstance(answer, RetryableError):
        limit = answer.scope if isinstance(answer, RateLimited) else None
        return CreateDecision(CreateVerdict.RETRY, message=str(answer),
                              retry_after_s=answer.retry_after_s, limit=limit)
    if isinstance(answer, PlanRequired):
        return CreateDecision(CreateVerdict.PLAN, message=PLAN_MESSAGE.format(answer.reason))
    if isinstance(answer, AccountError):
        return CreateDecision(CreateVerdict.ACCOUNT,
                              message=f"PiAPI refused the account: {answer}")
    return CreateDecision(CreateVerdict.REJECTED, message=str(answer))


UploadFailure = RetryableError | PermanentError | LocalFileGone
"""What uploading a row's files can fail with (an upload is never ambiguous)."""


def decide_upload(failure: UploadFailure) -> CreateDecision:
    """What a failed upload means for the row: read as the same refusal of a create (the
    create was not sent), except a file that cannot be read any more (REJECTED)."""
    if isinstance(failure, LocalFileGone):
        return CreateDecision(CreateVerdict.REJECTED, message=str(failure))
    decision = decide_create(failure)
    if decision.verdict is CreateVerdict.PLAN:
        return decision
    return replace(decision, message=f"upload failed: {decision.message}")


VERDICT_LABELS = {
    CreateVerdict.CREATED: "created", CreateVerdict.AMBIGUOUS: "no answer (to reconcile)",
    CreateVerdict.RETRY: "retry", CreateVerdict.ACCOUNT: "requeued (account refused)",
    CreateVerdict.REJECTED: "rejected", CreateVerdict.PLAN: "rejected (plan)",
}
"""A verdict in a message's summary (what Flower shows as the task's result)."""
TAKEN_BACK = RowOutcome("taken back while uploading")
HALTED = "not sent (the fleet is halted)"


def submit_jobs(ctx: WorkerContext, job_ids: Iterable[int]) -> MessageSummary:
    """Create a PiAPI task for each job that is still due; what became of each row."""
    ids = list(job_ids)
    summary = MessageSummary()
    if get_halt(ctx.engine) is not None:
        # A refused key (or credit) halted the fleet after this message was sent: posting
        # would be refused again, row after row. The rows stay queued; their leases run out
        # and the dispatcher hands them out again once the halt is lifted.
        summary.add(RowOutcome(HALTED), len(set(ids)))
        return summary
    # No budget is spent here: the dispatcher took a token for each create it sent, so a
    # create never waits for one while its lease runs.
    with reported(ctx) as tally:
        claims = tr.claim_many(ctx.engine, ids, ctx.clock(), ctx.lease_s)
        done = ctx.each(lambda claim: create_one(ctx, claim, tally), claims)
        tally.freed = any(frees for frees, _ in done)
        skipped = len(ids) - tally.requests
        if skipped > 0:
            ctx.count("submit_skipped", skipped)
        for claim, (_, outcome) in zip(claims, done, strict=True):
            summary.row(claim.job_id, claim.row_key, claim.batch_id, outcome)
        summary.add(RowOutcome(SKIPPED), len(set(ids)) - len(claims))
    return summary


def create_one(ctx: WorkerContext, claim: tr.Claim, tally: Tally) -> tuple[bool, RowOutcome]:
    """POST one claimed job and record the answer: whether it frees a concurrency slot,
    and what became of the row."""
    tally.add(requests=1)
    hook: dict[str, str] = {}
    if ctx.webhooks is not None:
        hook = ctx.webhooks.config_for(claim.batch_id, claim.job_id)
    try:
        sent = _upload(ctx, claim)
    except (RetryableError, PermanentError, LocalFileGone) as exc:
        decision = decide_upload(exc)
    else:
        if sent is None:
            return False, TAKEN_BACK  # not sent, and not ours to record
        answer: CreateAnswer
        try:
            answer = ctx.client.create_task(claim.model, claim.task_type, sent,
                                            service_mode=claim.service_mode, **hook)
        except (AmbiguousError, RetryableError, PermanentError) as exc:
            answer = exc
        decision = decide_create(answer)
    ctx.count(decision.verdict.value)
    tally.limited(decision.limit)  # reported before the record frees the slot
    return decision.frees_slot, _record(ctx, claim, decision)


def _upload(ctx: WorkerContext, claim: tr.Claim) -> dict[str, Any] | None:
    """The input to send: the row's local files uploaded and the URLs recorded with the
    attempt (None when the row was taken back meanwhile: the create must not be sent)."""
    files = local_files(claim.model, claim.task_type, claim.input)
    if not files:
        return claim.input
    urls = upload_all(ctx.client, files, ctx.spend)
    if not ctx.record(lambda: record_uploads(ctx.engine, claim.job_id, claim.attempt_n, urls,
                                             ctx.clock(), ctx.lease_s)):
        return None
    return with_urls(claim.input, urls)


def _record(ctx: WorkerContext, claim: tr.Claim, d: CreateDecision) -> RowOutcome:
    """Write one create's decision (waiting out a database restart: see `ctx.record`);
    what became of the row."""
    if d.verdict is CreateVerdict.CREATED:
        view = d.view
        assert view is not None
        now = ctx.clock()
        next_at = ctx.next_poll_at(claim.model, claim.task_type, now, 0, now)
        # The task exists and is paid for: its id must reach the record even while the
        # database restarts (else the row would go through reconciliation to be found again).
        ctx.record(lambda: tr.record_created(ctx.engine, claim, view, now, next_at))
    elif d.verdict is CreateVerdict.AMBIGUOUS:
        logger.warning("job %s attempt %s: %s", claim.job_id, claim.attempt_n, d.message)
        ctx.record(lambda: tr.record_ambiguous(ctx.engine, claim, ctx.clock(), d.message))
    elif d.verdict is CreateVerdict.RETRY:
        now = ctx.clock()
        retry_at = now + ctx.backoff(claim.tries + 1, d.retry_after_s)
        logger.info("job %s: create refused, retry in %.1fs: %s", claim.job_id,
                    retry_at - now, d.message)
        state = ctx.record(lambda: tr.record_create_retry(ctx.engine, claim, now, retry_at,
                                                          d.message, ctx.max_tries))
        if state is JobState.FAILED:
            return RowOutcome("failed (retries used up)")
        return RowOutcome(VERDICT_LABELS[d.verdict], retry_at - now)
    elif d.verdict is CreateVerdict.ACCOUNT:
        ctx.record(lambda: tr.record_create_requeued(ctx.engine, claim, ctx.clock(),
                                                     d.message))
    elif d.verdict is CreateVerdict.PLAN:
        logger.warning("job %s: %s", claim.job_id, d.message)
        ctx.record(lambda: tr.record_create_rejected(ctx.engine, claim, ctx.clock(),
                                                     ErrorKind.ACCOUNT, d.message))
    else:
        logger.info("job %s: create rejected: %s", claim.job_id, d.message)
        ctx.record(lambda: tr.record_create_rejected(ctx.engine, claim, ctx.clock(),
                                                     ErrorKind.INPUT, d.message))
    return RowOutcome(VERDICT_LABELS[d.verdict])

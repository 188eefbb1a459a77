"""What a worker does to settle ambiguous creates: look for their task, then decide.

A webhook that named the job points straight at the task (confirmed by a GET). Otherwise
PiAPI's task history around the attempt is read and judged by `workers.reconcile.decide`: first
with the model's documented family as the filter (or what `piapi-bulk doctor` found to
work), then unfiltered when that listing cannot decide. Candidates whose input the
listing does not carry are read one by one (GET, bounded per look). An adopted task is
polled like any other; a create that provably made no task is posted again; an undecided
one is looked at again later, and fails (never posted twice) past the bound.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from workers import findings as account_findings
from workers.catalog import history_family
from workers.expected import input_factor
from workers.piapi import HistoryPage, HistoryRow, PiAPIError, RetryableError, TaskView
from workers.reconcile import records as amb
from workers.reconcile.decide import (
    SETTLE_S,
    WINDOW_SLACK_S,
    Decision,
    Verdict,
    decide,
    input_matches,
    model_matches,
)
from workers.work import Tally, WorkerContext, reported
from workers.work.summary import MessageSummary, RowOutcome

logger = logging.getLogger(__name__)

PAGE_SIZE = 100
MAX_PAGES = 20
"""At most this many history pages are read for one listing (2,000 tasks)."""
AGAIN_S = 10.0
"""An undecided attempt is looked at again this much later."""
PAGE_TRIES = 3
"""A history page that fails with a retryable error (429, 5xx) is asked again this many
times in all before the look is given up: a look needs every page of its window."""
PAGE_PAUSE_MAX_S = 1.0
EVIDENCE_REACH_S = 300.0
"""When no create of ours followed the lost one within the window, the listing is read
up to our next create, if it came within this long (else there is no evidence to read)."""
FINDINGS_TTL_S = 60.0
MAX_TIMEOUTS = 2
"""An undecided lost create is given up on at most this many reconcile timeouts after it
was lost, however long its kind's stuck limit."""

_checked: OrderedDict[tuple[int, int], dict[str, bool | None]] = OrderedDict()
"""What GETs of candidates said, per (job, attempt): a task's input never changes, so a
candidate is read once per worker process, not at every look."""
_CHECKED_MAX = 10_000
_checked_lock = threading.Lock()
_findings_cache: tuple[float, account_findings.Findings | None] = (-1e18, None)


def reconcile_jobs(ctx: WorkerContext, job_ids: list[int]) -> MessageSummary:
    """Settle each of these jobs that is still ambiguous; what became of each row."""
    summary = MessageSummary()
    ids = set(job_ids)
    with reported(ctx) as tally:
        targets = amb.load_ambiguous(ctx.engine, ids)
        for target in targets:
            done = reconcile_one(ctx, target, tally)
            tally.freed |= done
            summary.row(target.job_id, target.row_key, target.batch_id,
                        RowOutcome("settled" if done else "still looked for"))
        summary.add(RowOutcome("skipped (not ambiguous)"), len(ids) - len(targets))
    return summary


def _findings(ctx: WorkerContext) -> account_findings.Findings | None:
    global _findings_cache
    at, found = _findings_cache
    now = time.monotonic()
    if now - at > FINDINGS_TTL_S:
        try:
            found = account_findings.load(ctx.engine)
        except Exception as exc:  # noqa: BLE001 - the findings are advice, never required
            logger.debug("could not read the doctor's findings: %s", exc)
            found = None
        _findings_cache = (now, found)
    return found


def filters_for(model: str, found: account_findings.Findings | None) -> list[str | None]:
    """The history `model` filter values to read, in order (None = unfiltered): the one
    the doctor found to work (else the documented family), then unfiltered, which is
    always complete, only longer."""
    value = found.history_filter_value(model) if found is not None else history_family(model)
    return [value, None] if value else [None]


def settle_s(found: account_findings.Findings | None) -> float:
    """How long after a lost create an absence in the listing may count."""
    lag = found.history_lag_s if found is not None else None
    return max(SETTLE_S, 2.0 * lag + 2.0) if lag else SETTLE_S


def reconcile_one(ctx: WorkerContext, t: amb.AmbiguousTarget, tally: Tally) -> bool:
    """Look for the task of one lost create and act on what is found; True when settled."""
    now = ctx.clock()
    if t.hint_task_id and _adopt_hint(ctx, t, tally):
        return True
    found = _findings(ctx)
    start = t.started_at - WINDOW_SLACK_S
    end, ours_later = _evidence_window(ctx, t)
    ours_near = {task for task, _ in amb.tasks_created_after(
        ctx.engine, t.started_at - WINDOW_SLACK_S, t.lost_at)}
    ended_by = t.started_at + settle_s(found) + ctx.confirmed_stuck_after_s(
        t.model, t.task_type, t.started_at, now, input_factor(t.model, t.task_type, t.input))
    why = "nothing read"
    for flt in filters_for(t.model, found):
        try:
            rows, complete = _history(ctx, flt, start, end, tally)
        except PiAPIError as exc:
            why = f"PiAPI's task history is unavailable ({exc})"
            continue
        decision = _judge(ctx, t, rows, Evidence(ours_later, ours_near, ended_by), now, found,
                          tally)
        if decision is None:
            return True  # adopted after a GET
        if decision.verdict is Verdict.ADOPT and decision.task_id:
            if _adopt(ctx, t, decision.task_id, tally, decision.why):
                return True
            why = f"could not confirm task {decision.task_id}"
            continue
        if decision.verdict is Verdict.ABSENT and complete:
            return amb.absent(ctx.engine, t, decision.why,
                              now + ctx.backoff(t.tries + 1, None), ctx.max_tries)
        why = decision.why if complete else "the history around the attempt is too long to read"
        if decision.verdict is Verdict.CHECK:
            break  # more candidates to read at the next look; no other listing settles it
    return _undecided(ctx, t, now, why, ended_by)


def _evidence_window(ctx: WorkerContext, t: amb.AmbiguousTarget) -> tuple[float, set[str]]:
    """Where the listing read ends, and our creates after the lost one that it covers."""
    end = t.lost_at + WINDOW_SLACK_S
    later = amb.tasks_created_after(ctx.engine, t.lost_at, t.lost_at + EVIDENCE_REACH_S)
    if later and all(at > end for _, at in later):
        end = later[0][1] + 5.0  # reach the first of them
    return end, {task_id for task_id, at in later if at <= end}


@dataclass(frozen=True)
class Evidence:
    """What says the listing covers the lost create's time (see `decide`)."""

    later: set[str]
    """Our tasks created after the answer was lost, within the listing read."""
    near: set[str]
    """Our tasks created about when the lost create was sent."""
    ended_by: float
    """When a task the lost create made would have ended (its kind's stuck limit)."""


def _judge(ctx: WorkerContext, t: amb.AmbiguousTarget, rows: list[HistoryRow],
           evidence: Evidence, now: float, found: account_findings.Findings | None,
           tally: Tally) -> Decision | None:
    """Decide on one listing, reading candidates (GET) as needed; None once adopted."""
    owned = amb.owned_elsewhere(ctx.engine, t.job_id, t.attempt_n, [r.task_id for r in rows])
    key = (t.job_id, t.attempt_n)
    with _checked_lock:
        checked = _checked.setdefault(key, {})
        _checked.move_to_end(key)
        while len(_checked) > _CHECKED_MAX:
            _checked.popitem(last=False)
    family = history_family(t.model)
    lists_pending = found.history_lists_pending if found is not None else None
    for _ in range(2):  # once, then again with what the GETs said
        decision = decide(sent=t.input, model=t.model, task_type=t.task_type,
                          window=(t.started_at, t.lost_at), rows=rows, owned=owned, now=now,
                          family=family, ours_later=evidence.later,
                          ours_near=evidence.near, checked=dict(checked),
                          settle_s=settle_s(found), lists_pending=lists_pending,
                          ended_by=evidence.ended_by)
        if decision.verdict is not Verdict.CHECK:
            return decision
        for task_id in decision.to_check:
            view = _read(ctx, t, task_id, tally)
            if view is None:
                return Decision(Verdict.UNKNOWN, why=f"could not read candidate {task_id}")
            if view.input is not None and _same_task(t, view):
                return None if _adopt_view(ctx, t, view, "a GET echoed this row's input") \
                    else Decision(Verdict.UNKNOWN, why=f"could not adopt {task_id}")
            checked[task_id] = False if view.input is not None else None
    return decision


def _history(ctx: WorkerContext, flt: str | None, start: float, end: float,
             tally: Tally) -> tuple[list[HistoryRow], bool]:
    """History rows created in [start, end] under one filter; True when all were read."""
    rows: list[HistoryRow] = []
    for page in range(1, MAX_PAGES + 1):
        listing = _history_page(ctx, flt, start, end, page, tally)
        rows += listing.rows
        if len(listing.rows) < PAGE_SIZE or (listing.total is not None
                                             and len(rows) >= listing.total):
            return rows, True
    return rows, False


def _history_page(ctx: WorkerContext, flt: str | None, start: float, end: float,
                  page: int, tally: Tally) -> HistoryPage:
    """One page of the history, asked again (briefly) after a retryable error."""
    tries = 0
    while True:
        tries += 1
        ctx.spend("history")
        tally.add(requests=1)
        try:
            return ctx.client.task_history(flt, start, end, page=page, page_size=PAGE_SIZE)
        except RetryableError as exc:
            if tries >= PAGE_TRIES:
                raise
            time.sleep(min(PAGE_PAUSE_MAX_S, exc.retry_after_s or 0.2))


def _read(ctx: WorkerContext, t: amb.AmbiguousTarget, task_id: str,
          tally: Tally) -> TaskView | None:
    try:
        ctx.spend("get")
        tally.add(requests=1)
        return ctx.client.get_task(task_id)
    except PiAPIError as exc:
        logger.info("job %s: could not read candidate task %s: %s", t.job_id, task_id, exc)
        return None


def _same_task(t: amb.AmbiguousTarget, view: TaskView) -> bool:
    """The task PiAPI shows is of this row's kind and, where echoed, has its input."""
    return (model_matches((view.model,), t.model, history_family(t.model))
            and view.task_type in ("", t.task_type)
            and (view.input is None or input_matches(t.input, view.input)))


def _adopt_hint(ctx: WorkerContext, t: amb.AmbiguousTarget, tally: Tally) -> bool:
    """A webhook sent to this job's own URL named the task: confirmed by a GET (the input,
    where echoed, must be this row's)."""
    assert t.hint_task_id is not None
    return _adopt(ctx, t, t.hint_task_id, tally, "a webhook for this job named it",
                  twins=False)


def _adopt(ctx: WorkerContext, t: amb.AmbiguousTarget, task_id: str, tally: Tally,
           why: str, twins: bool = True) -> bool:
    """Confirm with a GET that the task is this job's, then adopt it (`_adopt_view`)."""
    view = _read(ctx, t, task_id, tally)
    if view is None:
        return False
    if not _same_task(t, view):
        logger.warning("job %s: task %s is not this job's (model, type or input differ)",
                       t.job_id, task_id)
        return False
    return _adopt_view(ctx, t, view, why, twins)


def _adopt_view(ctx: WorkerContext, t: amb.AmbiguousTarget, view: TaskView, why: str,
                twins: bool = True) -> bool:
    """Adopt the task PiAPI showed; with `twins`, not while a row with the same input has
    a create older than the task awaiting its answer (the task may be that row's: it is
    looked at again once that answer is in)."""
    now = ctx.clock()
    created = view.created_unix
    if twins and amb.twin_awaiting(ctx.engine, t, (created if created is not None else now)
                                   + WINDOW_SLACK_S):
        logger.info("job %s: task %s may be a twin row's, whose create awaits its answer",
                    t.job_id, view.task_id)
        return False
    next_at = now if view.outcome.ended else ctx.next_poll_at(t.model, t.task_type,
                                                            t.started_at, 0, now)
    return amb.adopt(ctx.engine, t, view, now, next_at, why)


def _undecided(ctx: WorkerContext, t: amb.AmbiguousTarget, now: float, why: str,
               ended_by: float) -> bool:
    """Look again later; past the bound, fail the row (never posted twice). The bound is
    PIAPI_BULK_RECONCILE_TIMEOUT_S, or later when the lost create's task could not have
    ended by then (a long video's stuck limit), up to `MAX_TIMEOUTS` times it."""
    bound = max(t.undecided_since + ctx.reconcile_timeout_s,
                min(ended_by + 3 * AGAIN_S,
                    t.undecided_since + MAX_TIMEOUTS * ctx.reconcile_timeout_s))
    if now >= bound:
        return amb.give_up(ctx.engine, t, now, f"{why}; gave up after "
                                               f"{now - t.undecided_since:.0f}s")
    amb.defer(ctx.engine, t, now + AGAIN_S, why)
    return False

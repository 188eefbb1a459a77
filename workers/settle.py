"""What a worker does to settle ambiguous creates: look for their task, then decide.

A webhook that named the job points straight at the task (confirmed by a GET). Otherwise
PiAPI's task history around the attempt is read and judged by `workers.reconcile`. An
adopted task is polled like any other; a create that made no task is posted again; an
undecided one is looked at again later, and fails (never posted twice) past the bound.
"""

from __future__ import annotations

import logging
import time

from workers.piapi import HistoryPage, HistoryRow, PiAPIError, RetryableError
from workers.reconcile import WINDOW_SLACK_S, Verdict, decide, input_matches
from workers.transitions import ambiguous as amb
from workers.work import Tally, WorkerContext

logger = logging.getLogger(__name__)

PAGE_SIZE = 100
MAX_PAGES = 20
"""At most this many history pages are read for one attempt (2,000 tasks of its model)."""
AGAIN_S = 10.0
"""An undecided attempt is looked at again this much later."""
PAGE_TRIES = 3
"""A history page that fails with a retryable error (429, 5xx) is asked again this many
times in all before the look is given up: a look needs every page of its window."""
PAGE_PAUSE_MAX_S = 1.0


def reconcile_jobs(ctx: WorkerContext, job_ids: list[int]) -> None:
    """Settle each of these jobs that is still ambiguous."""
    tally = Tally()
    settled = False
    try:
        for target in amb.load_ambiguous(ctx.engine, job_ids):
            settled |= reconcile_one(ctx, target, tally)
    finally:
        tally.report(ctx, settled)


def reconcile_one(ctx: WorkerContext, t: amb.AmbiguousTarget, tally: Tally) -> bool:
    """Look for the task of one lost create and act on what is found; True when settled."""
    now = ctx.clock()
    if t.hint_task_id and _adopt_hint(ctx, t, tally):
        return True
    try:
        rows, complete = _history(ctx, t, now, tally)
    except PiAPIError as exc:
        return _undecided(ctx, t, now, f"PiAPI's task history is unavailable ({exc})")
    owned = amb.owned_elsewhere(ctx.engine, t.job_id, t.attempt_n, [r.task_id for r in rows])
    decision = decide(sent=t.input, model=t.model, task_type=t.task_type,
                      window=(t.started_at, t.lost_at), rows=rows, owned=owned, now=now)
    if decision.verdict is Verdict.ADOPT and decision.task_id:
        if _adopt(ctx, t, decision.task_id, tally, decision.why):
            return True
        # Not confirmed (the GET failed, or the task is not this job's): look again soon
        # rather than when the lease runs out.
        return _undecided(ctx, t, now, f"could not confirm task {decision.task_id}")
    if decision.verdict is Verdict.ABSENT and complete:
        return amb.absent(ctx.engine, t, decision.why, now + ctx.backoff(t.tries + 1, None),
                          ctx.max_tries)
    why = decision.why if complete else "the history around the attempt is too long to read"
    return _undecided(ctx, t, now, why)


def _history(ctx: WorkerContext, t: amb.AmbiguousTarget, now: float,
             tally: Tally) -> tuple[list[HistoryRow], bool]:
    """History rows of the attempt's model around its window; True when all were read."""
    # The task, if any, was created by the time the answer was lost (give or take clock
    # skew), so an old attempt (an operator's retry) does not read everything since. Only
    # the window `decide` judges is read: rows outside it can never be this attempt's, and
    # every page read is one more request that can fail (the chaos run, at ~12 creates/s,
    # found a window up to lost_at + 120 s needing more than MAX_PAGES pages).
    start, end = t.started_at - WINDOW_SLACK_S, t.lost_at + WINDOW_SLACK_S
    rows: list[HistoryRow] = []
    for page in range(1, MAX_PAGES + 1):
        listing = _history_page(ctx, t, start, end, page, tally)
        rows += listing.rows
        if len(listing.rows) < PAGE_SIZE or (listing.total is not None
                                             and len(rows) >= listing.total):
            return rows, True
    return rows, False


def _history_page(ctx: WorkerContext, t: amb.AmbiguousTarget, start: float, end: float,
                  page: int, tally: Tally) -> HistoryPage:
    """One page of the history, asked again (briefly) after a retryable error."""
    tries = 0
    while True:
        tries += 1
        ctx.spend("history")
        tally.add(requests=1)
        try:
            return ctx.client.task_history(t.model, start, end, page=page,
                                           page_size=PAGE_SIZE)
        except RetryableError as exc:
            if tries >= PAGE_TRIES:
                raise
            time.sleep(min(PAGE_PAUSE_MAX_S, exc.retry_after_s or 0.2))


def _adopt_hint(ctx: WorkerContext, t: amb.AmbiguousTarget, tally: Tally) -> bool:
    assert t.hint_task_id is not None
    return _adopt(ctx, t, t.hint_task_id, tally, "a webhook for this job named it")


def _adopt(ctx: WorkerContext, t: amb.AmbiguousTarget, task_id: str, tally: Tally,
           why: str) -> bool:
    """Confirm with a GET that the task is this job's, then adopt it."""
    try:
        ctx.spend("get")
        tally.add(requests=1)
        view = ctx.client.get_task(task_id)
    except PiAPIError as exc:
        logger.info("job %s: could not read candidate task %s: %s", t.job_id, task_id, exc)
        return False
    same = (view.model in ("", t.model) and view.task_type in ("", t.task_type)
            and (view.input is None or input_matches(t.input, view.input)))
    if not same:
        logger.warning("job %s: task %s is not this job's (model, type or input differ)",
                       t.job_id, task_id)
        return False
    now = ctx.clock()
    next_at = now if view.is_terminal else ctx.next_poll_at(t.model, t.task_type,
                                                            t.started_at, 0, now)
    return amb.adopt(ctx.engine, t, view, now, next_at, why)


def _undecided(ctx: WorkerContext, t: amb.AmbiguousTarget, now: float, why: str) -> bool:
    if now - t.undecided_since >= ctx.reconcile_timeout_s:
        return amb.give_up(ctx.engine, t, now, f"{why}; gave up after "
                                               f"{ctx.reconcile_timeout_s:.0f}s")
    amb.defer(ctx.engine, t, now + AGAIN_S, why)
    return False

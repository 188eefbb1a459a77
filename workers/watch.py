"""What a worker does for a `watch` message: look at abandoned stuck tasks, collect late ones.

A stuck task PiAPI cannot cancel is abandoned by its row but watched on a slow schedule
until it ends or its watch bound passes (`workers.stuck` has the rules). One GET per look:
still running, look again later; failed, record PiAPI's final usage and stop; completed,
record its usage and give the row its result if it has none (cancelling, or else
abandoning, a replacement still running). No Celery here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from workers import stuck
from workers.piapi import InvalidRequest, NotFound, Outcome, PiAPIError, RateLimited, TaskView
from workers.transitions import watch as tw
from workers.work import Tally, WorkerContext, reported
from workers.work.summary import MessageSummary, RowOutcome

logger = logging.getLogger(__name__)

BUSY_RETRY_S = 1.0
"""A late result whose row is being created or reconciled is looked at again this soon
(or one watch interval on, if that is longer)."""


def watch_tasks(ctx: WorkerContext, attempt_ids: Iterable[int]) -> MessageSummary:
    """Look at each watched task once and record what became of it (and say so)."""
    summary = MessageSummary()
    ids = set(attempt_ids)
    with reported(ctx) as tally:
        targets = tw.load_watch_targets(ctx.engine, ids)
        ended = ctx.each(lambda target: look(ctx, target, tally), targets)
        tally.freed = any(ended)
        for target, stopped in zip(targets, ended, strict=True):
            summary.row(target.job_id, target.row_key, None,
                        RowOutcome("watch ended" if stopped else "still watched"))
        summary.add(RowOutcome("skipped (not watched)"), len(ids) - len(targets))
    return summary


def look(ctx: WorkerContext, t: tw.WatchTarget, tally: Tally) -> bool:
    """One look at one watched task; True when it stopped counting as in flight."""
    limit = ctx.stuck_after_s(t.model, t.task_type, t.factor)
    try:
        ctx.spend("get")
        tally.add(requests=1)
        view = ctx.client.get_task(t.task_id)
    except (NotFound, InvalidRequest) as exc:
        now = ctx.clock()
        note = f"; PiAPI no longer knows it ({exc}): not watched any more"
        return _stop(ctx, t, None, now, note)
    except PiAPIError as exc:
        if isinstance(exc, RateLimited):
            tally.add(rate_429=1)
        now = ctx.clock()
        if now >= t.watch_until:
            return _stop(ctx, t, None, now, f"; could not be looked at when its watch ended "
                                            f"({exc}): not watched any more")
        wait = max(stuck.watch_interval_s(limit), getattr(exc, "retry_after_s", None) or 0.0)
        return _later(ctx, t, min(now + wait, t.watch_until))
    now = ctx.clock()
    status = view.status
    if view.outcome is Outcome.COMPLETED and (view.has_output or now >= t.watch_until):
        return _completed(ctx, t, view, now, limit)
    if view.outcome in (Outcome.FAILED, Outcome.CANCELLED):
        text = view.error.text if view.error else status
        return _stop(ctx, t, view, now, f"; it ended {status} at PiAPI later: {text}")
    if now >= t.watch_until:
        logger.warning("task %s (job %s) abandoned as stuck is still %s at PiAPI after its "
                       "watch bound: not watched or counted as in flight any more",
                       t.task_id, t.job_id, status or "running")
        return _stop(ctx, t, view, now, f"; still {status or 'running'} at the end of its "
                                        "watch: not watched any more")
    return _later(ctx, t, stuck.next_look_at(now, limit, t.watch_until))


def _later(ctx: WorkerContext, t: tw.WatchTarget, next_at: float) -> bool:
    ctx.record(lambda: tw.look_later(ctx.engine, t, next_at))
    return False


def _stop(ctx: WorkerContext, t: tw.WatchTarget, view: TaskView | None, now: float,
          note: str) -> bool:
    ctx.count("watch_ended")
    return bool(ctx.record(lambda: tw.stop_watching(ctx.engine, t, view, now, note)))


def _completed(ctx: WorkerContext, t: tw.WatchTarget, view: TaskView, now: float,
               limit: float) -> bool:
    """A late result: the row takes it if it has none; a replacement running is cancelled
    at PiAPI if still pending, else abandoned and watched in its turn."""
    if t.row_state in ("submitting", "ambiguous"):
        return _busy(ctx, t, view, now, limit)
    replacement = None
    current = t.row_task_id
    if t.row_state == "running" and current and current != t.task_id:
        replacement = tw.Replacement(current, ctx.cancel_at_piapi(current),
                                     *stuck.watch_window(now, limit))
    late = ctx.record(lambda: tw.record_late_completion(ctx.engine, t, view, now, replacement))
    ctx.count(f"late_{late.value}")
    if late is tw.Late.BUSY:
        return _busy(ctx, t, view, now, limit)
    logger.info("job %s: stuck task %s completed later (%s)", t.job_id, t.task_id,
                "the row took its result" if late is tw.Late.TAKEN
                else "not used: the row already had its result")
    return True


def _busy(ctx: WorkerContext, t: tw.WatchTarget, view: TaskView, now: float,
          limit: float) -> bool:
    """A late result while the row is being created or reconciled: look again soon, or, at
    the end of the watch, record it as not used."""
    if now >= t.watch_until:
        return _stop(ctx, t, view, now, "; it completed later (and is charged) while its row "
                                        "was being created again: not used")
    return _later(ctx, t, now + max(BUSY_RETRY_S, stuck.watch_interval_s(limit)))

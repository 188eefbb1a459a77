"""Stuck tasks: when a row stops waiting for a task that never ends, and what it does then.

A task that has not ended far past its kind's learned tail (`polling.stuck_after_s`: four
times the longest duration seen, or ten times the prior, both per unit of work and times
the row's input factor, like its poll schedule) is *stuck*. PiAPI can cancel a task only
while it is `pending` (and refunds it), so one it runs on counts as stuck only when tasks of
its kind created about when it was still complete (`WorkerContext.confirmed_stuck_after_s`);
while none has, PiAPI is taken to be slow with the whole kind, and such a task counts as
stuck only past `UNCONFIRMED_FACTOR` limits (replacing slow tasks pays twice). And so:

- **pending**, whatever the policy: cancelled at PiAPI, then a new task replaces it within
  the batch's `max_attempts`; out of attempts the row ends `failed`, kind `stuck`. A cancel
  that does not go through (the task just started) is tried at the next poll, and past
  `PENDING_CANCEL_GRACE` x the limit the task is treated as processing.
- **processing, staged, or a status nobody documented**, by the batch's `--on-stuck` (else
  the fleet's PIAPI_BULK_ON_STUCK):
  `retry` (default): the task is abandoned and a new one replaces it within `max_attempts`;
  out of attempts the row ends `failed`, kind `stuck`. `fail`: abandoned, and the row ends
  `failed`, kind `stuck`, at once. `wait`: the row keeps waiting (polls back off as usual).

An abandoned task is not forgotten. Its attempt ends `abandoned` with the reason in `error`
and is *watched*: looked at every `WATCH_POLL_FRACTION` of the stuck limit (dispatched like
polls, on the poll queue), until PiAPI ends it or `WATCH_FACTOR` x the stuck limit (at
least `WATCH_MIN_S`) after it was abandoned. While watched it counts as in flight (it
still holds one of the account's slots at PiAPI), so replacing stuck tasks never pushes
the account past its limit. Past the watch bound it is neither looked at nor counted any
more (a warning is logged): if PiAPI still runs it then, our count is one short of
PiAPI's, and PiAPI may queue one of our next tasks as `pending` (where it can be judged
stuck in turn). That is a risk accepted: PiAPI must end its tasks some time, and the
bound is generous. `run` waits for
rows, not for watched tasks: it exits once every row is final, and a standing fleet (or
the next `run` that has work) goes on watching.

When a watched task ends:
- failed (or cancelled): its attempt records PiAPI's final usage (refunded); the row is
  left as it is.
- completed: its usage is recorded on its attempt, so the batch's cost (status, budget)
  counts every task paid for. If the row has no result yet, it takes this one: a row
  `failed` (any kind), `cancelled` (its batch was, with `--now`, which abandons and watches
  running tasks the same way), waiting (`queued`, `retry_wait`) or running a replacement ends
  `completed` with the late task's output and task id, and that attempt becomes
  `completed`. A replacement still running is cancelled at PiAPI if still pending
  (refunded), else abandoned and watched in its turn. A row being created (`submitting`)
  or reconciled (`ambiguous`) is looked at again later. A row `completed` (or `invalid`)
  keeps what it has: the late result is recorded as not used (it is still paid for). So a
  row keeps exactly one result, and a second paid task for a row happens only when the
  first was stuck (the documented exception to "never paid twice").
"""

from __future__ import annotations

from enum import StrEnum

from workers.piapi import Outcome

UNCONFIRMED_FACTOR = 10.0
"""A task past its stuck limit while no task of its kind created about when it was (or
later) has completed is taken for a slow one, not a stuck one (PiAPI congested: every task
of the kind takes longer), until this many limits: replacing it would pay twice when it
ends. See `WorkerContext.confirmed_stuck_after_s`."""
WATCH_FACTOR = 10.0
"""An abandoned task is watched until this many stuck limits after it was abandoned
(the stuck limit is itself 4x the longest duration learned: 40x in all)..."""
WATCH_MIN_S = 900.0
"""...and for at least this long: how long PiAPI takes to time a stuck task out is set by
PiAPI, not by how fast tasks of its kind usually are, so fast kinds get minutes too."""
WATCH_POLL_FRACTION = 0.5
"""...and looked at every half stuck limit meanwhile: about 20 GETs per abandoned task."""
MIN_WATCH_INTERVAL_S = 0.05
MAX_WATCH_INTERVAL_S = 300.0
"""Looks at a watched task are at least this close and at most this far apart."""
PENDING_CANCEL_GRACE = 2.0
"""A pending task that could not be cancelled by this many stuck limits is given up on
like a processing one (PiAPI's cancel may itself be out of order)."""


class OnStuck(StrEnum):
    """What a row does about a stuck task PiAPI cannot cancel (`--on-stuck`)."""

    RETRY = "retry"
    FAIL = "fail"
    WAIT = "wait"


class Action(StrEnum):
    """What to do about one task, at one look."""

    CANCEL = "cancel"
    """Pending: cancel it at PiAPI (refunded), then replace it or fail."""
    REPLACE = "replace"
    """Abandon it (watched) and create a new task for the row."""
    FAIL = "fail"
    """Abandon it (watched); the row ends failed, kind stuck."""


def policy_of(batch_value: str | None, fleet_default: str) -> OnStuck:
    """The batch's own policy when it has one, else the fleet's."""
    try:
        return OnStuck(batch_value or fleet_default)
    except ValueError:
        return OnStuck(fleet_default)


def give_up(policy: OnStuck, attempts_left: bool) -> Action | None:
    """What to do with a stuck task PiAPI cannot cancel; None: keep waiting."""
    if policy is OnStuck.WAIT:
        return None
    if policy is OnStuck.RETRY and attempts_left:
        return Action.REPLACE
    return Action.FAIL


def action(outcome: Outcome, age_s: float, limit_s: float, policy: OnStuck,
           attempts_left: bool) -> Action | None:
    """What to do about a task of age `age_s` (s since its create) that PiAPI still reports
    as not ended (`outcome`), given the stuck limit; None: keep polling it."""
    if age_s <= limit_s:
        return None
    if outcome is Outcome.PENDING:
        return Action.CANCEL
    return give_up(policy, attempts_left)


def after_failed_cancel(age_s: float, limit_s: float, policy: OnStuck,
                        attempts_left: bool) -> Action | None:
    """A stuck pending task PiAPI did not cancel: try again at the next poll (None), or,
    long past the limit, give up on it as on a processing one."""
    if age_s <= PENDING_CANCEL_GRACE * limit_s:
        return None
    return give_up(policy, attempts_left)


def after_cancel(attempts_left: bool) -> Action:
    """A stuck pending task was cancelled (refunded): replace it, or fail out of attempts."""
    return Action.REPLACE if attempts_left else Action.FAIL


def watch_interval_s(limit_s: float) -> float:
    """Seconds between looks at an abandoned task of a kind with this stuck limit."""
    return min(MAX_WATCH_INTERVAL_S, max(MIN_WATCH_INTERVAL_S, limit_s * WATCH_POLL_FRACTION))


def watch_until(abandoned_at: float, limit_s: float) -> float:
    """When watching a task abandoned at `abandoned_at` stops."""
    return abandoned_at + max(WATCH_MIN_S, WATCH_FACTOR * limit_s)


def next_look_at(now: float, limit_s: float, until: float) -> float:
    """When to look at a watched task next: one interval on, but not past the bound
    (the look at the bound is the last)."""
    return max(now + MIN_WATCH_INTERVAL_S, min(now + watch_interval_s(limit_s), until))


def watch_window(abandoned_at: float, limit_s: float) -> tuple[float, float]:
    """A task abandoned at `abandoned_at`: when its watch ends, and its first look."""
    until = watch_until(abandoned_at, limit_s)
    return until, next_look_at(abandoned_at, limit_s, until)


def seconds(value: float) -> str:
    """A duration for a message: whole seconds, or tenths below ten."""
    return f"{value:.0f}s" if value >= 10 else f"{value:.1f}s"


def cancelled_message(task_id: str, age_s: float, limit_s: float) -> str:
    """Why a stuck pending task was cancelled (the attempt's error, the row's message)."""
    return (f"task {task_id} stuck pending for {seconds(age_s)} (expected at most "
            f"{seconds(limit_s)}): cancelled at PiAPI (refunded)")


def abandoned_message(task_id: str, status: str, age_s: float, limit_s: float) -> str:
    """Why a stuck task was abandoned (the attempt's error, the row's message)."""
    return (f"task {task_id} stuck {status or 'running'} for {seconds(age_s)} (expected at "
            f"most {seconds(limit_s)}): abandoned, since PiAPI cannot cancel it; it is "
            "still watched and its result is used if it completes")


def failed_message(message: str, policy: OnStuck, counted: int, max_attempts: int) -> str:
    """The row's error message when it ends failed, kind stuck."""
    if policy is OnStuck.FAIL and counted < max_attempts:
        return f"{message} (--on-stuck fail)"
    return f"stuck: {counted} of {max_attempts} attempts used; last: {message}"

"""Money per batch, for budgets: what is spent, what tasks in flight will likely cost, and
how many more creates a budget allows.

spent: PiAPI's usage of the batch's finished rows, plus that of tasks its rows abandoned as
stuck and no longer watched (`workers.stuck`; a row's own task is counted once, with the
row). frozen: every row in flight (a create dispatched or under way, a task running, a lost
create being reconciled) and every abandoned task still watched, at the estimated cost of
one task of its kind: the mean usage of completed tasks of that kind (this batch's, else
any batch's in the database), else the price of its dearest options from the price table
`estimate` uses (`workers.prices.upper_usd`), which errs on the high side.
A create is admitted only while spent + frozen + the next task's estimate stays within the
budget.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import and_, bindparam, case, func, or_, select
from sqlalchemy.engine import Engine

from workers.db import transaction
from workers.models import ATTEMPTS, BATCHES, JOBS
from workers.piapi import UNITS_PER_USD
from workers.prices import upper_usd
from workers.states import AttemptState, JobState

USD_PER_UNIT = 1 / UNITS_PER_USD
"""US$ per PiAPI usage unit."""

FINISHED = (JobState.COMPLETED.value, JobState.FAILED.value, JobState.CANCELLED.value)
IN_FLIGHT = (JobState.SUBMITTING.value, JobState.RUNNING.value, JobState.AMBIGUOUS.value)
WAITING = (JobState.QUEUED.value, JobState.RETRY_WAIT.value)

_HELD = and_(JOBS.c.lease_until >= bindparam("p_now"),
             JOBS.c.lease_epoch == bindparam("p_epoch"))
_ROWS = select(
    JOBS.c.model, JOBS.c.task_type, JOBS.c.state, JOBS.c.usage_consume,
    case((_HELD, 1), else_=0).label("held"),
).where(JOBS.c.batch_id == bindparam("p_batch")).subquery()
_BY_KIND = select(
    _ROWS.c.model, _ROWS.c.task_type, _ROWS.c.state, _ROWS.c.held, func.count(),
    func.count(_ROWS.c.usage_consume), func.coalesce(func.sum(_ROWS.c.usage_consume), 0),
).group_by(_ROWS.c.model, _ROWS.c.task_type, _ROWS.c.state, _ROWS.c.held)
"""Per (kind, state, lease held): rows, rows with usage, usage."""
ATTEMPTS_WITH_ROWS = ATTEMPTS.join(JOBS, JOBS.c.id == ATTEMPTS.c.job_id)
"""Attempts joined to their rows (abandoned tasks are counted over it, and tasks made)."""
ABANDONED_USAGE = func.coalesce(func.sum(case(
    (or_(JOBS.c.task_id.is_(None), ATTEMPTS.c.task_id != JOBS.c.task_id), ATTEMPTS.c.consume),
    else_=0)), 0)
"""Over `ATTEMPTS_WITH_ROWS`: the usage of abandoned tasks that are not their row's own task
(that one is counted with the row)."""
_WATCHED = and_(ATTEMPTS.c.watch_until.is_not(None), ATTEMPTS.c.watch_until >= bindparam("p_now"))
_ABANDONED = (
    select(JOBS.c.model, JOBS.c.task_type, case((_WATCHED, 1), else_=0).label("watched"),
           func.count(), ABANDONED_USAGE)
    .select_from(ATTEMPTS_WITH_ROWS)
    .where(ATTEMPTS.c.state == AttemptState.ABANDONED.value,
           JOBS.c.batch_id == bindparam("p_batch"))
    .group_by(JOBS.c.model, JOBS.c.task_type, "watched")
)
"""Per (kind, still watched): abandoned tasks, and their `ABANDONED_USAGE`."""
_SET_PAUSED = BATCHES.update().where(BATCHES.c.id == bindparam("p_batch")).values(
    paused=bindparam("p_paused"))

Kind = tuple[str, str]


@dataclass(frozen=True)
class Spend:
    """A batch's money, as of one look."""

    spent_usd: float
    frozen_usd: float
    next_usd: float
    """The estimated cost of the next create: the dearest kind among the waiting rows."""
    waiting: int
    """Rows waiting to be created (not yet handed to a worker)."""
    in_flight: int


def allowance(budget_usd: float, spent_usd: float, frozen_usd: float, next_usd: float) -> int:
    """How many more creates fit: the largest n with spent + frozen + n x next <= budget."""
    room = budget_usd - spent_usd - frozen_usd
    if room < 0:
        return 0
    if next_usd <= 0:
        return 1_000_000_000
    return max(0, math.floor(room / next_usd + 1e-9))


def money(usd: float) -> str:
    """Dollars for people: cents, or more digits when cents would hide the amount."""
    return f"${usd:,.2f}" if abs(usd - round(usd, 2)) < 1e-9 else f"${usd:,.4f}"


def pause_message(spend: Spend, budget_usd: float) -> str:
    """Why a batch's creates stopped (shown by `status` and `run`)."""
    return (f"budget: spent {money(spend.spent_usd)} + frozen {money(spend.frozen_usd)} of "
            f"{money(budget_usd)}; re-run with a higher --budget-usd to continue")


@dataclass
class _Kind:
    """One kind's rows in a batch: completed with a usage (and its units), in flight,
    waiting."""

    completed: int = 0
    completed_units: int = 0
    in_flight: int = 0
    waiting: int = 0

    def add(self, state: str, held: bool, n: int, with_usage: int, units: int) -> None:
        """Count `n` rows of this kind in `state` (`held`: a create for them is out)."""
        if state == JobState.COMPLETED.value:
            self.completed += with_usage
            self.completed_units += units
        elif state in IN_FLIGHT or (state in WAITING and held):
            self.in_flight += n
        elif state in WAITING:
            self.waiting += n


def batch_spend(engine: Engine, batch_id: str, now: float, epoch: str) -> Spend:
    """Spent, frozen and the next create's estimate for one batch (one grouped read).

    A kind's task is estimated at the mean cost of the batch's own completed tasks of that
    kind, else at its tariff's dearest options (`prices.upper_usd`): not at what other
    batches paid, whose rows may have taken cheaper options (720P 5 s clips priced a batch
    of 1080P 10 s ones at half, and its budget was passed by 92%)."""
    params = {"p_batch": batch_id, "p_now": now, "p_epoch": epoch}
    with transaction(engine) as conn:
        rows = conn.execute(_BY_KIND, params).all()
        abandoned = conn.execute(_ABANDONED, params).all()
    kinds: defaultdict[Kind, _Kind] = defaultdict(_Kind)
    spent_units = 0
    for model, task_type, state, held, n, with_usage, units in rows:
        spent_units += int(units) if state in FINISHED else 0
        kinds[str(model), str(task_type)].add(str(state), bool(held), int(n), int(with_usage),
                                              int(units))
    for model, task_type, watched, n, units in abandoned:
        if watched:  # may still be charged: frozen at the estimate, like a task in flight
            kinds[str(model), str(task_type)].in_flight += int(n)
        else:
            spent_units += int(units)
    frozen = next_usd = 0.0
    for kind, k in kinds.items():
        if k.in_flight or k.waiting:
            usd = (k.completed_units / k.completed * USD_PER_UNIT if k.completed
                   else upper_usd(*kind))
            frozen += k.in_flight * usd
            if k.waiting:
                next_usd = max(next_usd, usd)
    return Spend(spent_usd=spent_units * USD_PER_UNIT, frozen_usd=frozen, next_usd=next_usd,
                 waiting=sum(k.waiting for k in kinds.values()),
                 in_flight=sum(k.in_flight for k in kinds.values()))


def set_paused(engine: Engine, batch_id: str, reason: str | None) -> None:
    """Record why the batch's admission is paused (None: it is not)."""
    with transaction(engine) as conn:
        conn.execute(_SET_PAUSED, {"p_batch": batch_id, "p_paused": reason})

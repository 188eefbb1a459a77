"""Liveness by progress: the fleet is alive when rows move, not when processes are up.

A worker can be up and useless: stopped by the kernel, wedged on a dead connection after
Redis restarted, stuck in a library. What the database shows cannot lie: while the fleet
works, rows change state, polls and creates are counted, next poll times move. The fleet is
*stalled* when none of that has changed for `stall_s` although work is waiting for it: a
poll or a retry overdue by `stall_s`, or a row handed to a worker (leased) and never
claimed. Nothing is due (long video tasks between polls, a paused batch, a halted fleet)
means quiet, not stalled.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.engine import Engine

from workers.db import transaction
from workers.models import JOBS
from workers.states import JobState

j = JOBS.c
_MOVING = [JobState.QUEUED.value, JobState.SUBMITTING.value, JobState.RUNNING.value,
           JobState.RETRY_WAIT.value, JobState.AMBIGUOUS.value]
_IN_SCOPE = j.batch_id.in_(bindparam("p_batches", expanding=True))


def _signature_query(scoped: bool) -> Any:
    scope = [_IN_SCOPE] if scoped else []
    return (select(j.state, func.count(), func.sum(j.polls), func.sum(j.posts),
                   func.sum(j.poll_errors), func.sum(j.tries), func.sum(j.next_at))
            .where(j.state.in_(_MOVING), *scope).group_by(j.state).order_by(j.state))


def _overdue_query(scoped: bool) -> Any:
    # Polls and reconciliations never wait for a free slot, so one overdue means nobody
    # works.
    scope = [_IN_SCOPE] if scoped else []
    return select(j.id).where(j.state.in_([JobState.RUNNING.value, JobState.AMBIGUOUS.value]),
                              j.next_at < bindparam("p_cut"), *scope).limit(1)


def _unclaimed_query(scoped: bool) -> Any:
    # A retry may wait for a slot, so only its lease (handed out, never claimed) counts.
    scope = [_IN_SCOPE] if scoped else []
    return select(j.id).where(j.state.in_([JobState.QUEUED.value, JobState.RETRY_WAIT.value]),
                              j.lease_until.is_not(None), *scope).limit(1)


_QUERIES = {scoped: (_signature_query(scoped), _overdue_query(scoped), _unclaimed_query(scoped))
            for scoped in (False, True)}

DEFAULT_STALL_S = 120.0


def signature(engine: Engine, batches: Sequence[str] | None = None) -> tuple[Any, ...]:
    """Everything that changes when the fleet makes progress, in one cheap read (of these
    batches' rows only, when `batches` is given)."""
    query = _QUERIES[batches is not None][0]
    params = {"p_batches": list(batches)} if batches is not None else {}
    with transaction(engine) as conn:
        return tuple(tuple(row) for row in conn.execute(query, params).all())


def work_waiting(engine: Engine, now: float, stall_s: float,
                 batches: Sequence[str] | None = None) -> bool:
    """True when some work has waited `stall_s` for the fleet: an overdue poll or
    reconciliation, or a row handed to a worker (leased) that is still not claimed (of
    these batches only, when `batches` is given)."""
    _, overdue, unclaimed = _QUERIES[batches is not None]
    scope = {"p_batches": list(batches)} if batches is not None else {}
    with transaction(engine) as conn:
        if conn.execute(overdue, {"p_cut": now - stall_s, **scope}).first() is not None:
            return True
        return conn.execute(unclaimed, scope).first() is not None


class ProgressWatch:
    """Tells when the fleet stopped making progress while work waits.

    Call `check()` every few seconds; True means stalled (restart the workers), after which
    the watch counts afresh. With `batches`, only those batches' rows are watched (a run's
    fleet serves only its own batches; it may change them between checks).
    """

    def __init__(self, engine: Engine, stall_s: float = DEFAULT_STALL_S,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 batches: Sequence[str] | None = None) -> None:
        self.engine = engine
        self.batches = batches
        self.stall_s = stall_s
        self.clock = clock
        self.wall = wall
        self._signature: tuple[Any, ...] | None = None
        self._since = clock()
        self.stalls = 0

    def quiet_s(self) -> float:
        """Seconds since the last progress seen."""
        return self.clock() - self._since

    def check(self) -> bool:
        """True when nothing moved for `stall_s` although work is waiting."""
        current = signature(self.engine, self.batches)
        now = self.clock()
        if current != self._signature:
            self._signature, self._since = current, now
            return False
        if now - self._since < self.stall_s:
            return False
        if not work_waiting(self.engine, self.wall(), self.stall_s, self.batches):
            return False
        self.stalls += 1
        self.reset()
        return True

    def reset(self) -> None:
        """Count afresh from now (after restarting the fleet)."""
        self._signature, self._since = None, self.clock()

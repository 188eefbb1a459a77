"""Operator commands behind the CLI: cancel, retry, a budget, a deadline and the stuck
policy for a batch.

These write the batch's settings and move rows through `workers.transitions.operator`;
the dispatcher does the rest (`scheduler.admission`): it admits no create for a cancelled
batch, none past the deadline and none past the budget, and workers cancel or abandon the
running tasks of a cancelled batch at their next poll.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import bindparam, func, select
from sqlalchemy.engine import Connection, Engine

from scheduler.status import BatchStatus, cancelled_text
from workers.db import transaction
from workers.keys import LOCK_KEY
from workers.models import BATCHES, JOBS
from workers.settings import ConfigError
from workers.states import ACTIVE, JobState
from workers.transitions import operator

KEY_CHUNK = 500

_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_UNITS_S = (86400, 3600, 60, 1)

_BATCH = select(BATCHES.c.id, BATCHES.c.cancel_mode, BATCHES.c.deadline_at,
                BATCHES.c.ingested).where(BATCHES.c.id == bindparam("p_batch"))
_COUNTS = (select(JOBS.c.state, func.count()).where(JOBS.c.batch_id == bindparam("p_batch"))
           .group_by(JOBS.c.state))
_STATES_OF = select(JOBS.c.row_key, JOBS.c.state).where(
    JOBS.c.batch_id == bindparam("p_batch"),
    JOBS.c.row_key.in_(bindparam("p_keys", expanding=True)))
_UPDATE = BATCHES.update().where(BATCHES.c.id == bindparam("p_batch"))


MAX_DEADLINE_S = 366 * 86_400.0
"""A deadline is at most a year away: further is no deadline (and past year 9999 no date)."""


def parse_deadline(text: str, now: float) -> float:
    """`--deadline`: an ISO-8601 time (naive = local time) or a duration from now such as
    `30m`, `8h`, `1h30m` or `2d`; the Unix time. ConfigError when it is neither, past, or
    more than a year away."""
    value = text.strip()
    match = _DURATION.fullmatch(value.lower())
    if value and match is not None:
        seconds = sum(int(g) * unit for g, unit in zip(match.groups(), _UNITS_S, strict=True)
                      if g)
        if seconds <= 0:
            raise ConfigError(f"--deadline {text!r}: a duration must be longer than zero")
        return _within_a_year(text, now + seconds, now)
    try:
        at = datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise ConfigError(f"--deadline {text!r} is neither an ISO-8601 time "
                          "(2026-11-28T18:30) nor a duration such as 30m, 8h or 1h30m") from None
    if at <= now:
        raise ConfigError(f"--deadline {text!r} is in the past")
    return _within_a_year(text, at, now)


def _within_a_year(text: str, at: float, now: float) -> float:
    if at - now > MAX_DEADLINE_S:
        raise ConfigError(f"--deadline {text!r} is more than a year away; leave it out for "
                          "no deadline")
    return at


def parse_budget(value: float | None) -> float | None:
    """`--budget-usd`: a positive amount of US dollars (None: not given)."""
    if value is not None and not 0 < value < math.inf:
        raise ConfigError("--budget-usd must be more than 0 (and finite)")
    return value


def read_ids(path: Path) -> list[str]:
    """Row ids from a file: one a line; blank lines and `#` comments are ignored."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is no part of an id
    except OSError as exc:
        raise ConfigError(f"cannot read ids file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read ids file {path}: not UTF-8 text (byte {exc.start})"
                          ) from None
    keys = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return list(dict.fromkeys(k for k in keys if k))


def parse_on_stuck(value: str | None) -> str | None:
    """`--on-stuck`: retry, fail or wait (None: not given)."""
    if value is not None and value not in ("retry", "fail", "wait"):
        raise ConfigError(f"--on-stuck {value!r}: must be retry, fail or wait")
    return value


def set_limits(engine: Engine, batch_id: str, *, budget_usd: float | None = None,
               deadline_at: float | None = None, on_stuck: str | None = None,
               reuse: bool | None = None) -> None:
    """Store the budget, deadline, stuck policy and reuse switch given (those not given
    stay as they are). A new budget lifts a pause (the dispatcher pauses again if it is
    still reached)."""
    changes: dict[str, Any] = {}
    if reuse is not None:
        changes["reuse"] = reuse
    if budget_usd is not None:
        changes.update(budget_usd=budget_usd, paused=None)
    if deadline_at is not None:
        changes["deadline_at"] = deadline_at
    if on_stuck is not None:
        changes["on_stuck"] = on_stuck
    if changes:
        with transaction(engine) as conn:
            conn.execute(_UPDATE.values(**changes), {"p_batch": batch_id})


def _require_batch(engine: Engine, batch_id: str) -> tuple[str | None, float | None]:
    row = _batch_row(engine, batch_id)
    return row[1], row[2]


def _batch_row(engine: Engine, batch_id: str) -> Any:
    with transaction(engine) as conn:
        row = conn.execute(_BATCH, {"p_batch": batch_id}).first()
    if row is None:
        raise ConfigError(f"no batch {batch_id}")
    return row


def _counts(engine: Engine, batch_id: str) -> Counter[str]:
    with transaction(engine) as conn:
        return _counted(conn, batch_id)


def _counted(conn: Connection, batch_id: str) -> Counter[str]:
    return Counter({str(s): int(n) for s, n in conn.execute(_COUNTS, {"p_batch": batch_id})})


@dataclass(frozen=True)
class CancelReport:
    """What `piapi-bulk cancel` did, and what the fleet is left to do."""

    batch_id: str
    mode: str
    cancelled_now: int
    """Rows that were waiting to be created (and, with --now, lost creates)."""
    running: int
    """Tasks running (or being created): pending ones get cancelled at PiAPI by the fleet;
    the rest finish, or with --now are abandoned."""
    reconciling: int
    """Lost creates still being reconciled (without --now)."""

    ended: bool = False
    """Every row had ended already: nothing was cancelled or stamped."""

    def summary(self) -> str:
        """The one line the command prints."""
        if self.ended:
            return (f"batch {self.batch_id} has ended (every row completed, failed, cancelled "
                    "or invalid): nothing to cancel")
        now = self.mode == "now"
        rest = ("the others are abandoned (they may still finish and be charged)" if now
                else "the others finish")
        line = (f"batch {self.batch_id} {cancelled_text(self.mode)}: "
                f"{self.cancelled_now} row(s) cancelled now; {self.running} running task(s) "
                f"for the fleet: pending ones are cancelled at PiAPI, {rest}")
        if self.reconciling:
            line += (f"; {self.reconciling} lost create(s) still being reconciled (a task "
                     "found finishes or is cancelled like the rest)")
        return line


def cancel(engine: Engine, batch_id: str, now_mode: bool, now: float | None = None) -> CancelReport:
    """Cancel a batch: no more creates; waiting rows end cancelled at once; running rows
    are made due for a poll, which cancels (or with --now abandons) their tasks."""
    at = time.time() if now is None else now
    _, old_mode, _, ingested = _batch_row(engine, batch_id)
    mode = "now" if now_mode or old_mode == "now" else "finish"
    counts = _counts(engine, batch_id)
    if ingested and not any(counts[s.value] for s in ACTIVE):
        return CancelReport(batch_id, mode, 0, 0, 0, ended=True)
    with transaction(engine) as conn:  # admission stops first, then the rows move
        conn.execute(_UPDATE.values(cancel_mode=mode, paused=None,
                                    cancelled_at=func.coalesce(BATCHES.c.cancelled_at, at)),
                     {"p_batch": batch_id})
        # The tasks running as the cancel takes effect, counted in its own transaction: once
        # it commits, a live fleet's next poll of a pending task cancels it and the row
        # leaves `running`, so a count taken any later raced the fleet.
        at_cancel = _counted(conn, batch_id)
    cancelled = operator.cancel_waiting(engine, batch_id, at)
    if mode == "now":
        cancelled += operator.cancel_ambiguous(engine, batch_id, at)
    left = _counts(engine, batch_id)[JobState.AMBIGUOUS.value]
    operator.poll_running_now(engine, batch_id, at)
    running = at_cancel[JobState.RUNNING.value] + at_cancel[JobState.SUBMITTING.value]
    return CancelReport(batch_id, mode, cancelled, running, left)


@dataclass
class RetryReport:
    """What `piapi-bulk retry` did."""

    batch_id: str
    requeued: int = 0
    reconciling: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    """Rows left alone, by reason."""
    unknown_ids: list[str] = field(default_factory=list)
    deadline_cleared: bool = False

    def lines(self) -> list[str]:
        """What the command prints."""
        out = [f"batch {self.batch_id}: {self.requeued} row(s) requeued, {self.reconciling} "
               f"sent to reconciliation first (their last create's outcome is unknown), "
               f"{sum(self.skipped.values())} skipped"
               + (f" ({', '.join(f'{n} {why}' for why, n in self.skipped.items())})"
                  if self.skipped else "")]
        if self.unknown_ids:
            shown = ", ".join(self.unknown_ids[:20])
            more = f" and {len(self.unknown_ids) - 20} more" if len(self.unknown_ids) > 20 else ""
            out.append(f"{len(self.unknown_ids)} id(s) not in the batch: {shown}{more}")
        if self.deadline_cleared:
            out.append("the batch's deadline had passed: it is lifted (set a new one with "
                       "--deadline)")
        return out


def _skip_reason(state: str, selected: tuple[str, ...]) -> str | None:
    if state in selected:
        return None
    if state in (JobState.COMPLETED.value, JobState.INVALID.value):
        return f"{state} (never re-run)"
    if JobState(state) in ACTIVE:
        return "still active"
    return f"{state} (not selected)"


def retry(engine: Engine, batch_id: str, *, failed_only: bool, keys: list[str] | None,
          now: float | None = None) -> RetryReport:
    """A new attempt for the batch's failed (and, unless `failed_only`, cancelled) rows,
    or only those of them named in `keys`. Completed and invalid rows are never re-run."""
    at = time.time() if now is None else now
    _, deadline_at = _require_batch(engine, batch_id)
    selected = ((JobState.FAILED.value,) if failed_only
                else (JobState.FAILED.value, JobState.CANCELLED.value))
    report = RetryReport(batch_id)
    if keys is None:
        states = dict(_counts(engine, batch_id))
        targets = None
        wanted = sum(n for state, n in states.items() if state in selected)
    else:
        found = _states_of(engine, batch_id, keys)
        report.unknown_ids = [k for k in keys if k not in found]
        states = dict(Counter(found.values()))
        targets = [k for k, state in found.items() if state in selected]
        wanted = len(targets)
    for state, n in states.items():
        why = _skip_reason(state, selected)
        if why and n:
            report.skipped[why] += n
    if not wanted:
        return report
    report.deadline_cleared = deadline_at is not None and deadline_at <= at
    lift: dict[str, Any] = dict(cancel_mode=None, cancelled_at=None, paused=None)
    if report.deadline_cleared:
        lift["deadline_at"] = None
    with transaction(engine) as conn:  # lifted first, so no sweep takes the rows back
        conn.execute(_UPDATE.values(**lift), {"p_batch": batch_id})
    moved = operator.retry_rows(engine, batch_id, selected, at, targets)
    with transaction(engine) as conn:  # after the rows moved: the dispatcher may have
        conn.execute(_UPDATE.values(done=False), {"p_batch": batch_id})  # marked it done
    report.requeued, report.reconciling = moved.requeued, moved.reconciling
    return report


def _states_of(engine: Engine, batch_id: str, keys: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    with transaction(engine) as conn:
        for start in range(0, len(keys), KEY_CHUNK):
            rows = conn.execute(_STATES_OF, {"p_batch": batch_id,
                                             "p_keys": keys[start:start + KEY_CHUNK]})
            found.update({str(k): str(s) for k, s in rows})
    return found


def dispatcher_running(redis_url: str | None) -> bool:
    """True when a dispatcher holds its lock on this Redis (False when unreachable)."""
    if not redis_url:
        return False
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        return bool(client.exists(LOCK_KEY))
    except redis.RedisError:
        return False
    finally:
        client.close()


_LEASED_WAITING = select(JOBS.c.id).where(
    JOBS.c.batch_id == bindparam("p_batch"),
    JOBS.c.state.in_([JobState.QUEUED.value, JobState.RETRY_WAIT.value]),
    JOBS.c.lease_until >= bindparam("p_now")).limit(1)
BUDGET_SETTLE_S = 3.0
"""A budget pause with nothing in flight must hold this long before `run` stops on it
(the dispatcher looks again every second; a finished task may have cost less than its
estimate)."""


class PauseWatch:
    """Tells `run` when its batch is paused by the budget with nothing left in flight, so
    that only a higher budget could make it go on."""

    def __init__(self, engine: Engine, batch_id: str, settle_s: float = BUDGET_SETTLE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.batch_id = batch_id
        self.settle_s = settle_s
        self.clock = clock
        self._since: float | None = None

    def stopped(self, st: BatchStatus) -> bool:
        """True once the pause has held, with nothing in flight, for `settle_s`."""
        in_flight = sum(st.counts.get(s.value, 0) for s in
                        (JobState.SUBMITTING, JobState.RUNNING, JobState.AMBIGUOUS))
        if not st.paused or in_flight or self._leased():
            self._since = None
            return False
        if self._since is None:
            self._since = self.clock()
        return self.clock() - self._since >= self.settle_s

    def _leased(self) -> bool:
        with transaction(self.engine) as conn:
            return conn.execute(_LEASED_WAITING, {"p_batch": self.batch_id,
                                                  "p_now": time.time()}).first() is not None

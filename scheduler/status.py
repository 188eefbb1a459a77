"""Progress of batches: counts by state, failures by kind, cost so far, throughput and ETA.

Cost is PiAPI's usage of the batch's finished rows plus that of the tasks its rows
abandoned as stuck once PiAPI has ended them (`workers.stuck`): a stuck task replaced by a
new one may be charged too, and the cost shows both.

A batch is done once it is fully ingested and none of its rows can change any more, read
from the rows themselves (the dispatcher's `batches.done` is only set while one runs): no
row active, and no task its rows abandoned (stuck, or `cancel --now`) still watched, since
one that completes late is taken by its row.
`human_lines` is what `piapi-bulk status` prints for a batch, in 100 columns.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from scheduler.liveness import DEFAULT_STALL_S
from workers.models import ATTEMPTS, JOBS, Batch, Job
from workers.spending import ABANDONED_USAGE, ATTEMPTS_WITH_ROWS, USD_PER_UNIT, money
from workers.states import ACTIVE, AttemptState, JobState

_ABANDONED = (
    select(ATTEMPTS.c.watch_until.is_not(None), func.count(), ABANDONED_USAGE)
    .select_from(ATTEMPTS_WITH_ROWS)
    .group_by(ATTEMPTS.c.watch_until.is_not(None))
)
"""Abandoned tasks of a batch (watched or not) and their `ABANDONED_USAGE`."""
_POLLED = (JobState.RUNNING.value, JobState.AMBIGUOUS.value)
"""Rows whose `next_at` is a poll or reconciliation due: made by whatever serves the batch,
never held back for a free slot, so one long overdue means nothing serves it."""
STALLED_AFTER_S = DEFAULT_STALL_S
"""Polls overdue this long: nothing is serving the batch (after as long, a run's own
liveness watch restarts its workers)."""
_NOT_IN_JSON = frozenset({"consumed_units", "cancel_mode", "ingested"})
"""`BatchStatus` fields `status --json` leaves out (`cancel_mode` goes out as `cancelled`)."""


@dataclass
class BatchStatus:
    """One batch's counts and cost."""

    id: str
    source: str
    total: int
    counts: dict[str, int] = field(default_factory=dict)
    consumed_units: int = 0
    created_at: float = 0.0
    done: bool = False
    budget_usd: float | None = None
    paused: str | None = None
    """Why creates are paused (the budget is reached), or None."""
    deadline_at: float | None = None
    cancel_mode: str | None = None
    cancelled_at: float | None = None
    unchecked: int = 0
    """Rows sent without catalogue checks (their model is not in piapi-bulk's catalogue)."""
    failures: dict[str, int] = field(default_factory=dict)
    """Failed rows by error kind (`stuck`, `provider`, `input`, ...)."""
    abandoned: int = 0
    """Tasks the batch's rows abandoned (stuck, see `workers.stuck`, or `cancel --now`)..."""
    watched: int = 0
    """...of which PiAPI has not yet said they ended (they may still be charged)."""
    on_stuck: str | None = None
    ingested: bool = True
    """False while an ingest is still adding rows (or crashed part-way: `run` resumes it)."""
    reused: int = 0
    """Rows that took a completed twin's task instead of paying (`workers.transitions.reuse`)."""
    concurrency: int | None = None
    """The batch's own `--concurrency` (tasks in flight at most), if it was given one."""
    due_since: float | None = None
    """When the batch's earliest poll (or reconciliation) not yet made fell due; None when
    none is due. Long past (`STALLED_AFTER_S`), nothing is working on the batch."""

    @property
    def stalled_s(self) -> float | None:
        """How long polls have been overdue, when that is past `STALLED_AFTER_S` (no run,
        dispatcher or worker is serving the batch); None otherwise."""
        if self.due_since is None or self.done:
            return None
        overdue = time.time() - self.due_since
        return overdue if overdue > STALLED_AFTER_S else None

    @property
    def active(self) -> int:
        """Rows that can still change."""
        return sum(self.counts.get(s.value, 0) for s in ACTIVE)

    @property
    def finished(self) -> int:
        """Rows in a terminal state."""
        return self.total - self.active

    @property
    def usd(self) -> float:
        """Credits consumed so far, in US dollars."""
        return self.consumed_units * USD_PER_UNIT

    @property
    def phase(self) -> str:
        """One word for where the batch is: `ingesting`, `done`, `paused` (budget),
        `stalled` (polls long overdue: nothing serves it), `cancelling`, `running` (tasks
        in flight) or `waiting` (for a fleet or a retry)."""
        if not self.ingested:
            return "ingesting"
        if self.done:
            return "done"
        if self.paused:
            return "paused"
        if self.stalled_s is not None:
            return "stalled"
        if self.cancel_mode is not None:
            return "cancelling"
        in_flight = self.counts.get(JobState.SUBMITTING.value, 0) + self.counts.get(
            JobState.RUNNING.value, 0)
        return "running" if in_flight or self.watched else "waiting"

    def controls(self, spent: bool = True) -> list[str]:
        """The operator controls in effect, a line each (concurrency, budget, pause,
        deadline, cancel); `spent=False` leaves the spending out of the budget's line."""
        lines = []
        if self.concurrency is not None:
            lines.append(f"at most {self.concurrency} in flight (--concurrency)")
        if self.budget_usd is not None:
            lines.append(f"budget {money(self.budget_usd)}"
                         + (f", spent {money(self.usd)}" if spent else ""))
        if self.paused:
            lines.append(f"paused: {self.paused}")
        if self.deadline_at is not None:
            passed = " (passed)" if self.deadline_at <= time.time() else ""
            lines.append(f"deadline {local_iso(self.deadline_at)}{passed}")
        if self.cancel_mode is not None:
            when = f" at {local_iso(self.cancelled_at)}" if self.cancelled_at else ""
            lines.append(f"{cancelled_text(self.cancel_mode)}{when}")
        return lines

    def details(self) -> list[str]:
        """Nothing serving the batch, failures by kind and abandoned tasks, a line each
        (none when there are none)."""
        lines = []
        stalled = self.stalled_s
        if stalled is not None:
            lines.append(f"stalled: polls {duration(stalled)} overdue, nothing serves it: run "
                         "the same command again, or start the fleet")
        if self.failures:
            lines.append("failed: " + ", ".join(f"{kind} {n}" for kind, n in
                                                sorted(self.failures.items())))
        if self.abandoned or self.on_stuck:
            policy = f"; --on-stuck {self.on_stuck}" if self.on_stuck else ""
            lines.append(f"abandoned tasks: {self.abandoned} ({self.watched} still watched"
                         f"{policy})")
        return lines

    def to_json(self) -> dict[str, Any]:
        """The `status --json` object for this batch: its fields (but the raw units, the
        ingest flag and `cancel_mode`, shown as `cancelled`) and the derived figures."""
        record = {k: v for k, v in asdict(self).items() if k not in _NOT_IN_JSON}
        usd = round(self.usd, 6)
        return {**record, "finished": self.finished, "usd": usd, "spent_usd": usd,
                "cancelled": self.cancel_mode, "phase": self.phase}


def duration(seconds: float) -> str:
    """Seconds for people: 45s, 3m05s, 2h07m."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def cancelled_text(mode: str | None) -> str:
    """How a cancelled batch is named: `cancelled`, or `cancelled (--now)` for `cancel --now`."""
    return f"cancelled{' (--now)' if mode == 'now' else ''}"


def local_iso(ts: float) -> str:
    """A Unix time as local ISO-8601 with its UTC offset, to the second (one beyond what a
    date can hold, stored by an older release, as its number)."""
    try:
        return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return f"unix time {ts:.0f}"


def batch_status(engine: Engine, batch_id: str) -> BatchStatus | None:
    """Counts by state and cost for one batch, or None if there is no such batch."""
    with Session(engine) as s:
        batch = s.get(Batch, batch_id)
        if batch is None:
            return None
        rows = s.execute(
            select(col(Job.state), func.count(), func.coalesce(func.sum(col(Job.usage_consume)), 0),
                   func.count(col(Job.unchecked)), func.count(col(Job.reused_from)))
            .where(col(Job.batch_id) == batch_id).group_by(col(Job.state))
        ).all()
        failures = {str(kind or "unknown"): int(n) for kind, n in s.execute(
            select(col(Job.error_kind), func.count())
            .where(col(Job.batch_id) == batch_id, col(Job.state) == JobState.FAILED.value)
            .group_by(col(Job.error_kind))).all()}
        abandoned = s.execute(_ABANDONED.where(
            ATTEMPTS.c.state == AttemptState.ABANDONED.value, JOBS.c.batch_id == batch_id)).all()
        due_since = s.scalar(select(func.min(col(Job.next_at))).where(
            col(Job.batch_id) == batch_id, col(Job.state).in_(_POLLED)))
    counts = {state.value: 0 for state in JobState}
    consumed = unchecked = reused = 0
    for state, n, units, n_unchecked, n_reused in rows:
        counts[str(state)] = int(n)
        unchecked += int(n_unchecked)
        reused += int(n_reused)
        if state in (JobState.COMPLETED.value, JobState.FAILED.value, JobState.CANCELLED.value):
            consumed += int(units)
    watched = sum(int(n) for is_watched, n, _ in abandoned if is_watched)
    consumed += sum(int(units) for is_watched, _, units in abandoned if not is_watched)
    return BatchStatus(
        id=batch.id, source=batch.source, total=sum(counts.values()), counts=counts,
        consumed_units=consumed, created_at=batch.created_at,
        done=batch.ingested and not any(counts[st.value] for st in ACTIVE) and not watched,
        budget_usd=batch.budget_usd, paused=batch.paused, deadline_at=batch.deadline_at,
        cancel_mode=batch.cancel_mode, cancelled_at=batch.cancelled_at, unchecked=unchecked,
        failures=failures,
        abandoned=sum(int(n) for _, n, _ in abandoned), watched=watched,
        on_stuck=batch.on_stuck, ingested=batch.ingested, reused=reused,
        concurrency=batch.concurrency,
        due_since=float(due_since) if due_since is not None else None,
    )


def halt_line(reason: str, since: float) -> str:
    """What `status` says of a halted fleet: why, since when, and how it ends."""
    return (f"fleet halted since {time.strftime('%Y-%m-%d %H:%M', time.localtime(since))}: "
            f"{reason}. No task is created until PiAPI accepts the key again: a running "
            "dispatcher asks it every minute and lifts the halt; piapi-bulk run lifts it "
            "at its start")


def tasks_created(engine: Engine, batch_id: str) -> int:
    """PiAPI tasks created for the batch's rows (attempts that got a task id)."""
    with Session(engine) as s:
        return int(s.execute(
            select(func.count()).select_from(ATTEMPTS_WITH_ROWS)
            .where(JOBS.c.batch_id == batch_id, ATTEMPTS.c.task_id.is_not(None))).scalar_one())


def all_statuses(engine: Engine) -> list[BatchStatus]:
    """Every batch, newest first."""
    with Session(engine) as s:
        ids = [str(b) for b in s.scalars(select(col(Batch.id))
                                         .order_by(col(Batch.created_at).desc()))]
    return [st for st in (batch_status(engine, b) for b in ids) if st is not None]


def batch_models(engine: Engine, batch_id: str) -> list[tuple[str, str, int]]:
    """(model, task type, rows) of a batch, most rows first ("?" for what a row lacked)."""
    with Session(engine) as s:
        rows = s.execute(
            select(col(Job.model), col(Job.task_type), func.count())
            .where(col(Job.batch_id) == batch_id)
            .group_by(col(Job.model), col(Job.task_type))).all()
    kinds = [(str(m or "?"), str(t or "?"), int(n)) for m, t, n in rows]
    return sorted(kinds, key=lambda k: (-k[2], k[0], k[1]))


def masked_url(url: str) -> str:
    """A database URL as written, with its password (in the authority or the query) shown
    as ***."""
    text = _AUTH_PASSWORD.sub(r"\1***@", url)
    return _QUERY_PASSWORD.sub(r"\1***", text)


_AUTH_PASSWORD = re.compile(r"^([^:/?#]+://[^:@/?#]*:)[^@]*@")
_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)[^&#]*")


WIDTH = 100
"""Columns `human_lines` keeps to."""
_HOME = str(Path.home())


def human_lines(st: BatchStatus, models: list[tuple[str, str, int]]) -> list[str]:
    """A batch for people, a few lines of at most WIDTH columns: id, phase, created time and
    manifest; models; rows by state and cost; then controls, failures, abandoned tasks."""
    created = datetime.fromtimestamp(st.created_at).strftime("%Y-%m-%d %H:%M")
    head = f"{st.id}  {st.phase:<10} {created}  "
    lines = [head + _shorten(_home(st.source), WIDTH - len(head))]
    kinds = ", ".join(f"{m} {t} ({n})" for m, t, n in models)
    lines.append(_shorten(f"  models: {kinds or 'none'}", WIDTH))
    counts = ", ".join(f"{k} {v}" for k, v in st.counts.items() if v)
    reused = f" ({st.reused} reused from earlier batches)" if st.reused else ""
    lines.append(f"  {st.finished}/{st.total} finished: {counts or 'no rows'}{reused}; cost "
                 f"{money(st.usd)}")
    if st.unchecked:
        lines.append(f"  unchecked {st.unchecked} (models not in piapi-bulk's catalogue, "
                     "sent without field checks)")
    lines += [f"  {line}" for line in (*st.controls(), *st.details())]
    return lines


def _home(path: str) -> str:
    return "~" + path[len(_HOME):] if _HOME != "/" and path.startswith(_HOME + "/") else path


def _shorten(text: str, width: int) -> str:
    """`text` cut to `width` characters: a path loses its start, anything else its end."""
    if len(text) <= width:
        return text
    if text.startswith(("/", "~")):
        return "..." + text[len(text) - width + 3:]
    return text[: width - 3] + "..."

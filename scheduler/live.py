"""What `run` shows while it runs (bar or periodic lines) and the summary when it ends."""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from scheduler.status import BatchStatus, duration
from workers.spending import money
from workers.states import JobState

RATE_WINDOW_S = 120.0
"""Rows per minute and the ETA are read over this much recent time: long enough to smooth
a batch of 16-row messages, short enough to follow a change of pace."""
MIN_RATE_SPAN_S = 3.0
"""No rate (nor ETA) until the samples span this long: a first second says little."""


@dataclass
class RateMeter:
    """Rows finished per second over the recent window, from (time, finished) samples."""

    window_s: float = RATE_WINDOW_S
    samples: deque[tuple[float, int]] = field(default_factory=deque)

    def add(self, now: float, finished: int) -> None:
        """Record how many rows had finished at `now` (monotonic seconds)."""
        self.samples.append((now, finished))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window_s:
            self.samples.popleft()

    def per_s(self) -> float | None:
        """Rows finished per second over the window; None while too little time has passed."""
        if len(self.samples) < 2:
            return None
        (t0, n0), (t1, n1) = self.samples[0], self.samples[-1]
        if t1 - t0 < MIN_RATE_SPAN_S:
            return None
        return max(0, n1 - n0) / (t1 - t0)

    def eta_s(self, remaining: int) -> float | None:
        """Seconds until `remaining` rows finish at the current rate (0 when none remain)."""
        if remaining <= 0:
            return 0.0
        rate = self.per_s()
        return remaining / rate if rate else None


def in_flight(st: BatchStatus, limit: int | None) -> str:
    """Tasks in flight at PiAPI, never shown above the limit.

    Rows stay `running` in the database until a GET sees their task end, so between a task's
    end and that GET the database counts more rows than PiAPI runs (the dispatcher never
    lets PiAPI's own count pass the limit). Rows past the limit are those whose result is
    still to collect, and are said so.
    """
    rows = st.counts.get(JobState.SUBMITTING, 0) + st.counts.get(JobState.RUNNING, 0)
    if limit is None:
        return f"in flight {rows}"
    shown = f"in flight {min(rows, limit)}/{limit}"
    return shown + (f" (+{rows - limit} ending)" if rows > limit else "")


def projected_usd(st: BatchStatus) -> float | None:
    """Spent so far plus the rows still to run at the average paid row's cost so far."""
    paid = st.counts.get(JobState.COMPLETED, 0) - st.reused
    if paid <= 0 or st.usd <= 0:
        return None
    return st.usd + st.active * st.usd / paid


def describe(st: BatchStatus, limit: int | None, meter: RateMeter | None = None) -> str:
    """One line of progress: in flight, waiting, done, failed, invalid, pace, ETA, dollars."""
    c = st.counts
    waiting = sum(c.get(s, 0) for s in (JobState.QUEUED, JobState.RETRY_WAIT,
                                        JobState.AMBIGUOUS))
    parts = [in_flight(st, limit), f"waiting {waiting}", f"done {c.get(JobState.COMPLETED, 0)}",
             f"failed {c.get(JobState.FAILED, 0)}", f"invalid {c.get(JobState.INVALID, 0)}"]
    rate = meter.per_s() if meter else None
    if rate is not None:
        parts.append(f"{rate * 60:.0f} rows/min")
        eta = meter.eta_s(st.active) if meter else None
        parts.append(f"ETA {duration(eta)}" if eta is not None else "ETA ?")
    projected = projected_usd(st)
    cost = money(st.usd) + (f" of ~{money(projected)}" if projected and st.active else "")
    return " · ".join([*parts, cost])


def summary_lines(st: BatchStatus, wall_s: float, output: str, rows: int) -> list[str]:
    """What an ended run says first: rows by status, cost, wall time, where the results are
    (failures by kind follow, with the command that retries them)."""
    counts = ", ".join(f"{k} {v}" for k, v in st.counts.items() if v) or "no rows"
    return [f"{st.finished}/{st.total} rows finished in {duration(wall_s)}: {counts}; "
            f"cost {money(st.usd)}",
            f"results: {output} ({rows} rows)"]


def combined(statuses: list[BatchStatus]) -> BatchStatus:
    """The sum of several batches' statuses (what `run --all` shows); the first's alone
    when there is one."""
    if len(statuses) == 1:
        return statuses[0]
    first = statuses[0]
    counts = {state.value: sum(st.counts.get(state.value, 0) for st in statuses)
              for state in JobState}
    return BatchStatus(id=first.id, source=first.source,
                       total=sum(st.total for st in statuses), counts=counts,
                       consumed_units=sum(st.consumed_units for st in statuses),
                       created_at=first.created_at, reused=sum(st.reused for st in statuses))


@contextlib.contextmanager
def progress_bar(console: Console, total: int) -> Iterator[Progress]:
    """A live bar in a terminal (rows done of total, elapsed, the `describe` line); nothing
    elsewhere (the caller prints periodic lines instead)."""
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("{task.fields[detail]}"),
        console=console, transient=False, disable=not console.is_terminal,
    )
    with progress:
        yield progress

"""What one message did, in row terms: the line Flower shows as its task's result.

A task returns a `MessageSummary`; Celery puts `repr()` of a task's return value in its
`task-succeeded` event (bounded by `resultrepr_maxsize`) whether or not results are stored,
and Flower shows that text. Results are never stored (`task_ignore_result`: the database
holds them), so the summary exists only in that event. Its repr is the plain line (a `str`
would be shown quoted), for example

    batch b82c0e4a91f3d: rows img-1…img-16: 14 created, 2 retry in 12 s

It names the batch, the user's row ids and the outcomes: never an input, a URL or a key.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from workers import transitions as tr
from workers.spending import USD_PER_UNIT

ROWS_SHOWN = 3
"""Row ids named when a message's rows are not one contiguous run."""
KEY_SHOWN = 40
"""Characters of a row id shown at most (a folder manifest's ids are paths)."""
BATCH_SHOWN = 16
"""Batch ids longer than this are shortened (ours are 13 characters: shown whole, so that
Flower's `args:<batch>` search can be copied from a result)."""
SKIPPED = "skipped (not due)"


class RowOutcome(NamedTuple):
    """What a message did for one row: a label, and a wait or a cost when it has one."""

    label: str
    wait_s: float | None = None
    """Seconds until the row is tried or read again (the longest one is shown)."""
    usd: float = 0.0
    """What the row's task cost (completed rows)."""


@dataclass(repr=False)
class MessageSummary:
    """A message's rows and outcomes; `repr()` (and `str()`) is `render(self)`."""

    rows: list[tuple[int, str]] = field(default_factory=list)
    """(job id, the user's row id) of each row the message acted on."""
    batches: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    waits_s: dict[str, float] = field(default_factory=dict)
    usd: dict[str, float] = field(default_factory=dict)

    def row(self, job_id: int, row_key: str, batch_id: str | None = None,
            outcome: RowOutcome | None = None) -> None:
        """Name one row of the message (and its batch, when known; and what became of it,
        when given)."""
        self.rows.append((job_id, row_key))
        if batch_id and batch_id not in self.batches:
            self.batches.append(batch_id)
        if outcome is not None:
            self.add(outcome)

    def add(self, outcome: RowOutcome, n: int = 1) -> None:
        """Count `n` rows with this outcome (`usd` is per row)."""
        if n <= 0:
            return
        label = outcome.label
        self.counts[label] = self.counts.get(label, 0) + n
        if outcome.wait_s is not None:
            self.waits_s[label] = max(self.waits_s.get(label, 0.0), outcome.wait_s)
        if outcome.usd:
            self.usd[label] = self.usd.get(label, 0.0) + outcome.usd * n

    def __repr__(self) -> str:
        return render(self)

    __str__ = __repr__


def render(s: MessageSummary) -> str:
    """The one line: `batch B: rows R: outcomes` (parts not known are left out)."""
    parts = []
    if s.batches:
        word = "batch" if len(s.batches) == 1 else "batches"
        parts.append(f"{word} {', '.join(short(b, BATCH_SHOWN) for b in s.batches)}")
    if s.rows:
        word = "row" if len(s.rows) == 1 else "rows"
        parts.append(f"{word} {row_span(s.rows)}")
    parts.append(outcomes(s) or "nothing to do")
    return ": ".join(parts)


def row_span(rows: Sequence[tuple[int, str]]) -> str:
    """`first…last` for a contiguous run of jobs (manifest order), else the first few."""
    ordered = sorted(rows)
    keys = [short(key, KEY_SHOWN) for _, key in ordered]
    contiguous = ordered[-1][0] - ordered[0][0] == len(ordered) - 1
    if len(keys) > 2 and contiguous:
        return f"{keys[0]}…{keys[-1]}"
    if len(keys) <= ROWS_SHOWN:
        return ", ".join(keys)
    return f"{', '.join(keys[:ROWS_SHOWN])} +{len(keys) - ROWS_SHOWN} more"


def outcomes(s: MessageSummary) -> str:
    """`14 created, 2 retry in 12 s`: the most frequent first."""
    ranked = sorted(s.counts.items(), key=lambda item: -item[1])
    return ", ".join(_outcome(s, label, n) for label, n in ranked)


def _outcome(s: MessageSummary, label: str, n: int) -> str:
    text = f"{n} {label}"
    if label in s.usd:
        text += f" (${s.usd[label]:.2f})"
    if label in s.waits_s:
        text += f" in {seconds(s.waits_s[label])}"
    return text


def seconds(s: float) -> str:
    """A wait as people say it: `12 s`, `3 min`."""
    if s < 90:
        return f"{max(0, math.ceil(s))} s"
    return f"{math.ceil(s / 60)} min"


def short(text: str, limit: int) -> str:
    """`text`, or its first `limit - 1` characters and an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


POLL_LABELS = {
    "progress": "still running", "completed": "completed", "failed": "failed",
    "retry": "retry (new task)", "poll_error": "poll error, read again", "lost": "lost",
    "cancelled": "cancelled",
}


def poll_outcome(o: tr.PollOutcome, now: float) -> RowOutcome:
    """What a GET's recorded outcome means, in a summary's words."""
    label = POLL_LABELS.get(o.kind, o.kind)
    if o.kind == "completed":
        usage = o.view.usage if o.view is not None else None
        return RowOutcome(label, usd=usage.consume * USD_PER_UNIT if usage else 0.0)
    if o.kind in ("retry", "poll_error") and o.next_at is not None:
        return RowOutcome(label, wait_s=o.next_at - now)
    return RowOutcome(label)


def of_polls(targets: Iterable[tr.PollTarget], polled: Sequence[tr.PollOutcome],
             asked: int, now: float) -> MessageSummary:
    """The summary of a `poll` message: `asked` ids, these targets, their outcomes."""
    summary = MessageSummary()
    for target in targets:
        summary.row(target.job_id, target.row_key)
    for o in polled:
        summary.add(poll_outcome(o, now))
    summary.add(RowOutcome("skipped (not running)"), asked - len(polled))
    return summary

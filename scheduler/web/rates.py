"""Rows per minute over time, the recent rate and the ETA of a batch (pure)."""

from __future__ import annotations

import math
from collections.abc import Mapping

CHART_MINUTES = 60
"""Minutes of history the rows-per-minute chart shows at most..."""
CHART_MIN_MINUTES = 10
"""...and at least (a batch younger than that is not drawn as one wide bar)."""
RATE_WINDOW_S = 300.0
"""The recent rate is over this many seconds (or since the first row finished, if later)."""
MIN_SPAN_S = 30.0
"""A rate is never taken over less than this (a few rows in the first seconds are noise)."""


def minute_of(ts: float) -> int:
    """The whole minute (Unix time // 60) a time falls in."""
    return math.floor(ts / 60.0)


def per_minute(counts: Mapping[int, int], now: float,
               minutes: int = CHART_MINUTES) -> list[tuple[int, int]]:
    """(minute, rows finished in it) for the last `minutes` minutes, oldest first, the
    current (partial) minute last; minutes without rows are 0."""
    last = minute_of(now)
    return [(m, int(counts.get(m, 0))) for m in range(last - minutes + 1, last + 1)]


def chart_minutes(created_at: float, now: float) -> int:
    """Minutes the chart covers: since the batch was created, within the bounds above."""
    since = minute_of(now) - minute_of(created_at) + 1
    return max(CHART_MIN_MINUTES, min(CHART_MINUTES, since))


def recent_rate(finished: int, first_at: float | None, now: float,
                window_s: float = RATE_WINDOW_S) -> float:
    """Rows per minute over the recent window: `finished` rows ended in it, the first at
    `first_at`. The window starts no earlier than that first row (a batch that began two
    minutes ago is not averaged over five) and spans at least MIN_SPAN_S."""
    if finished <= 0 or first_at is None:
        return 0.0
    start = max(now - window_s, min(first_at, now))
    span = max(now - start, MIN_SPAN_S)
    return finished * 60.0 / span


def eta_s(rows_left: int, rate_per_min: float) -> float | None:
    """Seconds until the rows left are done at this rate; 0 with none left, None when
    nothing is moving."""
    if rows_left <= 0:
        return 0.0
    if rate_per_min <= 0:
        return None
    return rows_left * 60.0 / rate_per_min


def duration_text(seconds: float | None) -> str:
    """A duration for people: `45s`, `12m 05s`, `3h 05m`, `2d 4h`; an em dash for None."""
    if seconds is None:
        return "—"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"

"""Scenario 7's figures: the dispatcher's passes and the database's sizes per backlog size,
and whether the largest backlog costs what the smallest does (pure functions, no I/O).

A pass's cost is judged by its time and its SQL statements (from the dispatcher's
PIAPI_BULK_DISPATCHER_STATS lines, `scheduler.passstats`), the once-a-second housekeeping
passes apart from the others. Statement counts take a few fixed values (a pass that leases
creates runs three more than one that does not), so their median moves with the workload's
mix; the most a pass ran is the figure that would grow with the backlog, and is judged.
PostgreSQL's own counters cross-check: rows read by sequential scans of `jobs` per pass, as
a share of the backlog, are what "not flat" looks like. Sizes grow with the rows by nature,
so they are judged per row.
"""

from __future__ import annotations

import math
from typing import Any

from bench.targets import Target

PASS_SLACK_MS = 2.0
"""Absolute slack on pass-time medians: a millisecond or two is scheduling noise."""
HOUSEKEEPING_SLACK_MS = 5.0
REDIS_SLACK_MB = 1.0
"""Redis's used_memory moves by a fraction of a MB with client buffers and the messages
queued at the instant it is sampled (2.1 vs 2.8 MB seen between two equal quick runs)."""
FLAT = (
    Target("pass_p50_over_allowed", "<=", 1.0,
           "pass time p50 at the largest backlog <= 1.5x the smallest's + 2 ms"),
    Target("housekeeping_p50_over_allowed", "<=", 1.0,
           "housekeeping pass p50 at the largest backlog <= 1.5x the smallest's + 5 ms"),
    Target("statements_max_diff", "<=", 1.0,
           "SQL statements per pass (the most a pass ran): equal within 1"),
    Target("housekeeping_statements_max_diff", "<=", 1.0,
           "SQL statements per housekeeping pass (the most): equal within 1"),
    Target("redis_used_over_allowed", "<=", 1.0, "Redis used_memory (max in the window) at "
           "the largest backlog <= 1.2x the smallest's + 1 MB"),
    Target("jobs_bytes_per_row_ratio", "<=", 1.2,
           "jobs table + indexes per row, largest / smallest (sizes grow with rows)"),
    Target("seq_read_share_per_pass", "<=", 0.01,
           "rows of jobs read by sequential scans per pass / backlog, at the largest "
           "(PostgreSQL)"),
)


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank `q` percentile (0-100) of `values`; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def pass_figures(passes: list[dict[str, Any]]) -> dict[str, Any]:
    """Pass time (ms) and statements per pass, p50/p95/max, for ordinary and housekeeping
    passes apart (housekeeping runs once a second and does more by design)."""
    out: dict[str, Any] = {"passes": len(passes)}
    for label, keep in (("", False), ("housekeeping_", True)):
        chosen = [p for p in passes if bool(p.get("housekept")) is keep]
        ms = [1000 * float(p["took_s"]) for p in chosen]
        stmts = [float(p["statements"]) for p in chosen]
        out[f"{label}passes" if label else "ordinary_passes"] = len(chosen)
        for q in (50, 95):
            out[f"{label}pass_ms_p{q}"] = _r(percentile(ms, q))
            out[f"{label}statements_p{q}"] = percentile(stmts, q)
        out[f"{label}pass_ms_max"] = _r(max(ms)) if ms else None
        out[f"{label}statements_max"] = max(stmts) if stmts else None
    return out


def deltas(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """after - before for every counter in `after` (a missing `before` counts as 0)."""
    return {k: int(v) - int(before.get(k, 0)) for k, v in after.items()}


def per_row(size_bytes: int | None, rows: int) -> float | None:
    """Bytes per row (None without a size or rows)."""
    return None if size_bytes is None or rows <= 0 else round(size_bytes / rows, 1)


def seq_read_share(seq_tup_read: int | None, passes: int, backlog: int) -> float | None:
    """Rows read by sequential scans per pass, as a share of the backlog: about 0 when
    every per-pass query is index-bounded, about 1 (or more) when each pass reads it all."""
    if seq_tup_read is None or passes <= 0 or backlog <= 0:
        return None
    return round(seq_tup_read / passes / backlog, 6)


def _allowed_ratio(big: float | None, small: float | None, slack: float,
                   factor: float = 1.5) -> float | None:
    if big is None or small is None:
        return None
    return round(big / (factor * small + slack), 4)


def _ratio(big: float | None, small: float | None) -> float | None:
    if big is None or small is None or small == 0:
        return None
    return round(big / small, 4)


def _diff(big: float | None, small: float | None) -> float | None:
    return None if big is None or small is None else abs(big - small)


def compare(smallest: dict[str, Any], largest: dict[str, Any]) -> dict[str, Any]:
    """The flatness figures: the largest backlog's run against the smallest's (each a run's
    figures), for the targets in FLAT."""
    return {
        "backlogs": [smallest.get("backlog"), largest.get("backlog")],
        "pass_ms_p50": [smallest.get("pass_ms_p50"), largest.get("pass_ms_p50")],
        "pass_p50_ratio": _ratio(largest.get("pass_ms_p50"), smallest.get("pass_ms_p50")),
        "pass_p50_over_allowed": _allowed_ratio(largest.get("pass_ms_p50"),
                                                smallest.get("pass_ms_p50"), PASS_SLACK_MS),
        "housekeeping_p50_over_allowed": _allowed_ratio(
            largest.get("housekeeping_pass_ms_p50"), smallest.get("housekeeping_pass_ms_p50"),
            HOUSEKEEPING_SLACK_MS),
        "statements_p50_diff": _diff(largest.get("statements_p50"),
                                     smallest.get("statements_p50")),
        "statements_max_diff": _diff(largest.get("statements_max"),
                                     smallest.get("statements_max")),
        "housekeeping_statements_max_diff": _diff(
            largest.get("housekeeping_statements_max"),
            smallest.get("housekeeping_statements_max")),
        "redis_used_ratio": _ratio(largest.get("redis_used_mb_max"),
                                   smallest.get("redis_used_mb_max")),
        "redis_used_over_allowed": _allowed_ratio(largest.get("redis_used_mb_max"),
                                                  smallest.get("redis_used_mb_max"),
                                                  REDIS_SLACK_MB, 1.2),
        "jobs_bytes_per_row_ratio": _ratio(largest.get("jobs_bytes_per_row_after"),
                                           smallest.get("jobs_bytes_per_row_after")),
        "seq_read_share_per_pass": largest.get("jobs_seq_read_share_per_pass"),
    }

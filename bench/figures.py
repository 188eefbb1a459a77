"""The reported figures, computed from what a run observed (pure functions, no I/O).

- ideal = sum over tasks of (ended_at - created_at) from the emulator's ledger, divided by C:
  the makespan of a perfect runner that keeps all C slots busy from the first instant.
- utilization = the emulator's in-flight integral (task-seconds in flight during the run)
  divided by C x makespan: the share of the account's slot-time that held a task.
- GETs per task = every GET request to the API (task GETs, /account/active_tasks,
  /account/info, task history) / tasks created; task GETs alone are `task_gets_per_task`.
  Creates per row = tasks created / rows; requests per row = every API request / rows.
- The emulator queues creates beyond C (pending) and counts them in flight, so a runner
  that oversubscribes would inflate both ideal and utilization: `oversubscribed` flags a run
  whose peak in flight exceeded C, and `utilization_processing` (processing tasks only,
  never above C) is shown beside it.
- CPU per 1,000 tasks = CPU seconds of our processes / tasks created x 1000.
"""

from __future__ import annotations

from typing import Any

from bench.emu import LedgerSummary, http_429s

RATIO_KEYS = ("makespan_s", "makespan_over_ideal", "utilization", "gets_per_task",
              "requests_per_row", "creates_per_row", "cpu_s_per_1000_tasks", "peak_rss_mb_max")
"""Figures shown as system / baseline."""
HEADROOM_RATIO_KEYS = ("sustained_rows_per_s", "best_steady_rows_per_s_any_step")
"""Scenario 3's figures shown as system / baseline (above 1: more rows/s than the baseline)."""


def _div(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _r(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def timeline_point(t: float, finished: int, stats: dict[str, Any]) -> dict[str, Any]:
    """One sample of a run's progress: harness time, rows finished, emulator counters."""
    return {
        "t": round(t, 3), "finished": finished, "in_flight": stats["in_flight"],
        "integral": round(stats["in_flight_integral_s"], 3), "creates": stats["creates"],
        "gets": stats["requests"]["get"], "requests": stats["requests"]["total"],
        "http_429": http_429s(stats),
    }


def load_figures(*, concurrency: int, rows: int, makespan_s: float, stats_end: dict[str, Any],
                 stats_final: dict[str, Any], ledger: LedgerSummary,
                 finished_rows: int) -> dict[str, Any]:
    """Makespan, ideal, utilization and request figures of one run (system or baseline)."""
    tasks = int(stats_final["creates"])
    requests = stats_final["requests"]
    task_gets = int(requests["get"])
    gets = task_gets + sum(int(requests.get(k, 0))
                           for k in ("active_tasks", "account_info", "histories"))
    ideal = ledger.busy_s / concurrency if concurrency else None
    return {
        "rows": rows,
        "rows_finished": finished_rows,
        "tasks": tasks,
        "tasks_ended": ledger.ended,
        "tasks_by_status": ledger.by_status,
        "makespan_s": _r(makespan_s, 3),
        "ideal_s": _r(ideal, 3),
        "makespan_over_ideal": _r(_div(makespan_s, ideal)),
        "longest_task_s": _r(ledger.longest_s, 3),
        "utilization": _r(_div(stats_end["in_flight_integral_s"], concurrency * makespan_s)),
        "utilization_processing": _r(_div(stats_end["processing_integral_s"],
                                          concurrency * makespan_s)),
        "in_flight_integral_s": _r(stats_end["in_flight_integral_s"], 3),
        "peak_in_flight": stats_end["peak_in_flight"],
        "oversubscribed": stats_end["peak_in_flight"] > concurrency,
        "gets_per_task": _r(_div(gets, tasks)),
        "task_gets_per_task": _r(_div(task_gets, tasks)),
        "creates_per_row": _r(_div(tasks, rows)),
        "requests_per_row": _r(_div(int(requests["total"]), rows)),
        "max_creates_per_input": stats_final.get("max_creates_per_input"),
        "rows_per_s": _r(_div(finished_rows, makespan_s), 2),
        "requests": stats_final["requests"],
        "http_429": http_429s(stats_final),
        "webhooks": stats_final.get("webhooks"),
        "tasks_with_webhook": ledger.with_webhook,
    }


def resource_figures(resources: dict[str, Any], tasks: int) -> dict[str, Any]:
    """CPU (ours, per 1,000 tasks, and the emulator's and PostgreSQL's apart) and peak RSS."""
    roles = resources["by_role"]
    return {
        "cpu_s": resources["cpu_s"],
        "cpu_s_per_1000_tasks": _r(_div(resources["cpu_s"] * 1000, tasks), 3),
        "peak_rss_mb_max": resources["peak_rss_mb_max"],
        "peak_rss_mb_sum": resources["peak_rss_mb_sum"],
        "emulator_cpu_s": roles.get("emulator", {}).get("cpu_s"),
        "postgres_backend_cpu_s": roles.get("postgres", {}).get("cpu_s"),
        "by_role": roles,
    }


def steady_state(timeline: list[dict[str, Any]], rows: int, concurrency: int,
                 lo: float = 0.1, hi: float = 0.9) -> dict[str, Any]:
    """Utilization and rows/s between the samples where `lo` and `hi` of the rows had finished.

    Leaves out the ramp-up (processes starting, the first creates) and the tail (the last
    tasks draining), so it shows what the system sustains.
    """
    a = next((p for p in timeline if p["finished"] >= lo * rows), None)
    b = next((p for p in timeline if p["finished"] >= hi * rows), None)
    if a is None or b is None or b["t"] <= a["t"]:
        return {"window_s": None, "utilization": None, "rows_per_s": None}
    span = b["t"] - a["t"]
    return {
        "window_s": round(span, 3),
        "utilization": _r((b["integral"] - a["integral"]) / (concurrency * span)),
        "rows_per_s": _r((b["finished"] - a["finished"]) / span, 2),
    }


def windows_429(timeline: list[dict[str, Any]], window_s: float = 10.0) -> list[dict[str, Any]]:
    """429 answers and requests per `window_s` window from the start of the run."""
    out: list[dict[str, Any]] = []
    if not timeline:
        return out
    start = {"t": 0.0, "requests": 0, "http_429": 0}
    edge = window_s
    for point in timeline:
        if point["t"] + 1e-9 >= edge:
            requests = point["requests"] - start["requests"]
            limited = point["http_429"] - start["http_429"]
            out.append({"start_s": round(edge - window_s, 1), "requests": requests,
                        "http_429": limited, "rate": _r(_div(limited, requests))})
            start = point
            edge += window_s
    return out


def settle_s(windows: list[dict[str, Any]], threshold: float = 0.01) -> float | None:
    """Start of the first window from which every window's 429 rate is below `threshold`."""
    settled: float | None = None
    for w in windows:
        if w["rate"] is not None and w["rate"] >= threshold:
            settled = None
        elif settled is None:
            settled = w["start_s"]
    return settled


def baseline_ratios(system: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float | None]:
    """system / baseline for each figure of RATIO_KEYS, or of HEADROOM_RATIO_KEYS for a
    headroom sweep's figures (those with `steps`); below 1: smaller than the baseline's."""
    keys = HEADROOM_RATIO_KEYS if "steps" in system else RATIO_KEYS
    return {key: _r(_div(system.get(key), baseline.get(key)), 3) for key in keys}


def downsample(points: list[dict[str, Any]], limit: int = 240) -> list[dict[str, Any]]:
    """At most `limit` evenly spaced points, always keeping the last."""
    if len(points) <= limit:
        return points
    step = len(points) / limit
    picked = [points[int(i * step)] for i in range(limit - 1)]
    return [*picked, points[-1]]

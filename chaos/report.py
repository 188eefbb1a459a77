"""Recovery after each disruption, from the timeline (the report is written by
`bench.report.write_json`).

For every disruption at time t (seconds since the fleet started):
- `progress_resumed_s`: until the jobs table next changes (a row finished, a poll or a create);
- `throughput_recovered_s`: until rows finish, over 5 s, at half the rate of the 10 s before;
- dispatcher kill: `takeover_s`, until another dispatcher holds the lock;
- Redis restart: `new_epoch_s`, until a dispatcher has set a new Redis epoch;
- PostgreSQL restart: `db_back_s`, until the harness reads the database again.
None means it did not happen before the run ended.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

RATE_BEFORE_S = 10.0
RATE_AFTER_S = 5.0
RECOVERED_SHARE = 0.5


def _finished_at(timeline: list[dict[str, Any]], t: float) -> int | None:
    """Rows finished as of the last read at or before `t`."""
    value = None
    for point in timeline:
        if point["t"] > t:
            break
        if point["finished"] is not None:
            value = int(point["finished"])
    return value


def _first_after(timeline: list[dict[str, Any]], t: float,
                 test: Callable[[dict[str, Any]], bool]) -> float | None:
    for point in timeline:
        at = float(point["t"])
        if at > t and test(point):
            return round(at - t, 2)
    return None


def recovery(event: dict[str, Any], timeline: list[dict[str, Any]]) -> dict[str, Any]:
    """The recovery figures of one disruption (see the module docstring)."""
    t = float(event["t"])
    before = [p for p in timeline if p["t"] <= t and p["signature"] is not None]
    out: dict[str, Any] = {}
    if before:
        sig = before[-1]["signature"]
        out["progress_resumed_s"] = _first_after(
            timeline, t, lambda p: p["signature"] is not None and p["signature"] != sig)
    done_then, done_earlier = _finished_at(timeline, t), _finished_at(timeline, t - RATE_BEFORE_S)
    if done_then is not None and done_earlier is not None and done_then > done_earlier:
        need = RECOVERED_SHARE * (done_then - done_earlier) / RATE_BEFORE_S * RATE_AFTER_S

        def recovered(p: dict[str, Any]) -> bool:
            then = _finished_at(timeline, p["t"] - RATE_AFTER_S)
            return (p["t"] >= t + RATE_AFTER_S and p["finished"] is not None
                    and then is not None and p["finished"] - then >= need)

        out["throughput_recovered_s"] = _first_after(timeline, t, recovered)
    kind = event["kind"]
    if kind == "dispatcher_sigkill":
        out["takeover_s"] = _first_after(timeline, t, lambda p: p["leader_pid"] not in (
            None, event["pid"]))
    elif kind == "redis_restart_flushed":
        out["new_epoch_s"] = _first_after(timeline, t, lambda p: p["epoch"] not in (
            None, event.get("epoch_before")))
    elif kind == "postgres_restart":
        out["db_back_s"] = _first_after(timeline, t, lambda p: p["db_up"])
    return out


def disruption_summary(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Disruptions done by kind, and the longest recovery of each kind."""
    done = [e for e in events if not e.get("skipped")]
    summary: dict[str, Any] = {"done": dict(Counter(e["kind"] for e in done))}
    worst: dict[str, dict[str, float]] = {}
    for e in done:
        for key, value in e.get("recovery", {}).items():
            if value is not None:
                slot = worst.setdefault(e["kind"], {})
                slot[key] = max(slot.get(key, 0.0), float(value))
    summary["longest_recovery_s"] = worst
    summary["skipped"] = [e["kind"] for e in events if e.get("skipped")]
    return summary


def disruptions_check(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Every kind of disruption was done (a run that ended before them tested less)."""
    done = Counter(e["kind"] for e in events if not e.get("skipped"))
    need = ("worker_sigkill", "dispatcher_sigkill", "redis_restart_flushed", "postgres_restart")
    missing = [k for k in need if not done.get(k)]
    return {"check": "disruptions_done", "value": dict(done), "pass": not missing,
            "missing": missing}

"""The issue's targets and how a measured figure is judged against one.

Each check records the target, the measured value, pass/fail (None when it could not be
measured) and by how much: `slack` is positive when within the target (target - measured for
an upper bound, measured - target for a lower bound), `ratio` is measured / target.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt, "==": operator.eq,
}


@dataclass(frozen=True)
class Target:
    """`figure op value`, e.g. utilization >= 0.95."""

    figure: str
    op: str
    value: float
    note: str = ""

    def check(self, measured: float | None) -> dict[str, Any]:
        """Judge `measured` against this target."""
        out: dict[str, Any] = {"figure": self.figure, "target": f"{self.op} {self.value:g}",
                               "measured": measured, "pass": None, "slack": None,
                               "ratio": None}
        if self.note:
            out["note"] = self.note
        if measured is None:
            return out
        out["pass"] = _OPS[self.op](measured, self.value)
        if self.op in ("<=", "<"):
            out["slack"] = round(self.value - measured, 4)
        elif self.op in (">=", ">"):
            out["slack"] = round(measured - self.value, 4)
        else:
            out["slack"] = round(-abs(measured - self.value), 4)
        out["ratio"] = round(measured / self.value, 4) if self.value else None
        return out


S1 = (
    Target("makespan_over_ideal", "<=", 1.05),
    Target("utilization", ">=", 0.95),
    Target("gets_per_task", "<=", 2.0),
    Target("cpu_s_per_1000_tasks", "<=", 2.0),
    Target("redis_peak_mb", "<", 50.0),
)
S2_POLLING = (Target("gets_per_task", "<=", 3.0), Target("utilization", ">=", 0.97))
S2_WEBHOOKS = (Target("gets_per_task", "<=", 1.2), Target("utilization", ">=", 0.97))
S3 = (Target("sustained_rows_per_s", ">=", 150.0,
              "issue 13's figure for this 2-core machine (the first benchmark asked 300)"),)
S3_STEP = Target("steady_utilization", ">=", 0.95, "a step counts as kept up with at >= 95%")
S4_PG = (Target("ingest_s", "<", 60.0), Target("peak_rss_mb", "<", 300.0))
S4_SQLITE = (Target("peak_rss_mb", "<", 300.0),)
S8 = (Target("utilization", ">=", 0.95), Target("gets_per_task", "<=", 1.3))
"""Scenario 8: latency (150 ms, creates 1 s) with a completion signal."""
S9 = (Target("utilization", ">=", 0.90), Target("gets_per_task", "<=", 3.0))
"""Scenario 9: the same latency, no completion signal."""
BASELINE_REQUESTS_SHARE = 0.5
"""Scenario 10: at most this share of the baseline's requests per row."""


def relative_to_baseline(base: dict[str, Any]) -> tuple[Target, ...]:
    """Scenario 10: ahead of the baseline's run (its `figures`) on makespan and slot use,
    with at most half its requests per row; a figure the baseline lacks is not judged."""
    share = BASELINE_REQUESTS_SHARE
    wanted = (("makespan_s", "<", 1.0, "the baseline's makespan"),
              ("utilization", ">", 1.0, "the baseline's slot use"),
              ("requests_per_row", "<=", share, f"{share:g} x the baseline's requests per row"))
    return tuple(Target(figure, op, round(factor * float(base[figure]), 4), note)
                 for figure, op, factor, note in wanted if base.get(figure) is not None)


S6_CORRECT = (Target("http_429", "==", 0.0, "PIAPI_RPM equal to the emulator's --rpm"),)
S6_WRONG = (Target("settled_by_s", "<=", 60.0,
                   "PIAPI_RPM = 2x the emulator's: every 10 s window from then on < 1% 429s"),)


def apply(targets: tuple[Target, ...], figures: dict[str, Any]) -> list[dict[str, Any]]:
    """Check every target against the figure of the same name."""
    return [t.check(figures.get(t.figure)) for t in targets]


def unjudged(result: dict[str, Any]) -> dict[str, Any]:
    """Mark a run the targets do not judge (a baseline, a profiled run, one judged with
    others): no checks, verdict 'n/a'."""
    result["checks"], result["verdict"] = [], "n/a"
    return result


def verdict(checks: list[dict[str, Any]]) -> str:
    """'pass', 'fail' or 'n/a' for a list of checks."""
    judged = [c["pass"] for c in checks if c["pass"] is not None]
    if not judged:
        return "n/a"
    return "pass" if all(judged) else "fail"

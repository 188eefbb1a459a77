"""Scenario 6, rate limit: the emulator enforces --rpm R; piapi-bulk runs with PIAPI_RPM = R
(correct: no 429 of ours at all) and = 2R (wrong: the 429 rate must fall below 1% within a
minute). The workload is scenario 1's (captions, C = 50, 0.2-0.6 s), which wants more
requests than R allows, so the budget binds; each run lasts a fixed time, not to completion.
429s are counted per 10 s window from the emulator's counters sampled every second.
"""

from __future__ import annotations

from typing import Any

from bench import figures as fig
from bench import targets as tg
from bench.runs import RunSpec, emulator_args, run_system
from bench.scenarios import CAPTIONS_REAL_S, Env, judged, skipped

WINDOW_S = 10.0
BURST_S = 1.0
"""The emulator's bucket starts full with this many seconds of rate (--rpm-burst-s)."""
JUDGED_FROM_S = 60.0
"""The wrong setting must have settled by then; a run must last past it to be judged."""


def _spec(env: Env, db: str, variant: str, our_rpm: int) -> RunSpec:
    p = env.plan
    args = emulator_args(env.ctx.seed, p.s6_concurrency, p.s1_time_scale,
                         {"joycaption": CAPTIONS_REAL_S}, "--rpm", str(p.s6_rpm))
    return RunSpec("s6_rate_limit", variant, db, env.manifest("s6"), p.s6_rows,
                   p.s6_concurrency, args, deadline_s=p.s6_run_s + 60,
                   env={"PIAPI_RPM": str(our_rpm)}, run_for_s=p.s6_run_s)


def _rate_figures(result: dict[str, Any], env: Env) -> None:
    figures = result["figures"]
    if not figures:
        return
    windows = fig.windows_429(result.get("timeline", []), WINDOW_S)
    settled = fig.settle_s(windows)
    long_enough = env.plan.s6_run_s >= JUDGED_FROM_S + WINDOW_S
    seconds = figures.get("makespan_s") or 0.0
    budget = env.plan.s6_rpm / 60.0 * (seconds + BURST_S)
    figures.update({
        "emulator_rpm": env.plan.s6_rpm,
        "windows_429": windows,
        "settled_by_s_measured": settled,
        "settled_by_s": settled if long_enough else None,
        "requests_per_s": round(figures["requests"]["total"] / seconds, 2) if seconds else None,
        "budget_used": round(figures["requests"]["total"] / budget, 4) if budget else None,
    })
    if not long_enough:
        result["note"] = (f"run of {env.plan.s6_run_s:g} s is too short to judge 'below 1% "
                          f"within a minute' (needs > {JUDGED_FROM_S + WINDOW_S:g} s)")


def s6_rate_limit(env: Env) -> None:
    """Scenario 6 on each database, with the right and a wrong PIAPI_RPM."""
    rpm = env.plan.s6_rpm
    for db in env.dbs:
        for variant, ours, targets in (("correct", rpm, tg.S6_CORRECT),
                                       ("wrong_2x", 2 * rpm, tg.S6_WRONG)):
            if db in env.skipped_dbs:
                env.add(skipped("s6_rate_limit", variant, db, env.skipped_dbs[db]))
                continue
            result = run_system(_spec(env, db, variant, ours), env.ctx)
            _rate_figures(result, env)
            env.add(judged(result, targets))

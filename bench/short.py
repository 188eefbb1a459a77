"""Scenario 10: short tasks and no completion signal, where a fast-polling runner shines.

2,000 Joycaption rows (500 with --quick) at C = 20, tasks of 0.15 to 0.45 s (15-45 s at time
scale 1/100), no webhooks, and `/account/active_tasks` as PiAPI documents it (it does not
count Joycaption, the emulator's default), so only a poll tells that a task ended and its
slot is free. The asyncio baseline here polls every 25 ms (`bench.baseline.short_poll_s`:
12 polls a mean task, the runner issue 13 measured beside piapi-bulk: 13.6 GETs a task),
which keeps its slots full at the price of many requests.

It runs first, so that piapi-bulk's runs are judged against it: ahead on makespan and on
slot use, with at most half its requests per row (`targets.relative_to_baseline`).
"""

from __future__ import annotations

from typing import Any

from bench import manifests
from bench import targets as tg
from bench.baseline import short_poll_s
from bench.baseline_run import run_baseline
from bench.runs import RunSpec, emulator_args, run_system
from bench.scenarios import CAPTION_MEAN_REAL_S, CAPTIONS_REAL_S, Env, judged, skipped

NAME = "s10_short_polling"
CONCURRENCY = 20
TIME_SCALE = 0.01
"""15-45 s -> 0.15-0.45 s."""
MEAN_TASK_S = CAPTION_MEAN_REAL_S * TIME_SCALE


def _spec(env: Env, db: str | None, variant: str) -> RunSpec:
    rows = env.plan.s10_rows
    if "s10" not in env.manifests:
        env.manifests["s10"] = manifests.captions_jsonl(env.ctx.workdir / "s10.jsonl", rows,
                                                        prefix="short")
    args = emulator_args(env.ctx.seed, CONCURRENCY, TIME_SCALE,
                         {"joycaption": CAPTIONS_REAL_S})
    ideal = rows * MEAN_TASK_S / CONCURRENCY
    return RunSpec(NAME, variant, db, env.manifests["s10"], rows, CONCURRENCY, args,
                   deadline_s=max(120.0, 10 * ideal), stats_every_s=0.5)


def _baseline(env: Env) -> dict[str, Any]:
    spec = _spec(env, None, "baseline")
    spec.poll_s = short_poll_s(MEAN_TASK_S)
    result = run_baseline(spec, env.ctx)
    env.add(tg.unjudged(result))  # the targets are the system's
    return result


def s10_short(env: Env) -> None:
    """The baseline, then piapi-bulk on each database, judged against the baseline."""
    base = _baseline(env)
    targets = tg.relative_to_baseline(base["figures"] if base["status"] == "ok" else {})
    for db in env.dbs:
        if db in env.skipped_dbs:
            env.add(skipped(NAME, "polling", db, env.skipped_dbs[db]))
        else:
            env.add(judged(run_system(_spec(env, db, "polling"), env.ctx), targets))

"""Scenario 3, headroom: raise the offered task rate until utilization drops below 95%.

The offered rate is C / mean task duration: C stays at the plan's value and the emulator's
time scale shortens Joycaption tasks (15-45 s real, mean 30 s) so that C slots turn over
`rate` times a second. Each step is a fresh run of `rate x window` rows; its figures are
taken in the steady part (between 10% and 90% of rows finished), leaving out start-up and
drain. The result is the highest steady rows/s among the steps that stayed at or above 95%
(0 when none did). The sweep goes on past the first step below 95%, to show the capacity
curve, and stops once a step delivers less than half its offered rate or does not finish.
"""

from __future__ import annotations

from typing import Any

from bench import figures as fig
from bench import manifests
from bench import targets as tg
from bench.runs import RunSpec, emulator_args, run_system
from bench.scenarios import CAPTION_MEAN_REAL_S, CAPTIONS_REAL_S, Env, judged, skipped

STEP_KEYS = ("makespan_s", "makespan_over_ideal", "utilization", "gets_per_task",
             "creates_per_row", "cpu_s", "cpu_s_per_1000_tasks", "emulator_cpu_s",
             "postgres_backend_cpu_s", "peak_rss_mb_max", "redis_peak_mb", "http_429",
             "unattributed_cores")


def _step(env: Env, db: str, rate: float) -> dict[str, Any]:
    p = env.plan
    c = p.s3_concurrency
    mean_s = c / rate
    time_scale = mean_s / CAPTION_MEAN_REAL_S
    rows = max(500, int(rate * p.s3_window_s))
    path = env.ctx.workdir / f"s3-{int(rate)}.jsonl"
    if not path.exists():
        manifests.captions_jsonl(path, rows, prefix=f"s3-{int(rate)}")
    spec = RunSpec("s3_headroom", f"{rate:g}/s", db, path, rows, c,
                   emulator_args(env.ctx.seed, c, time_scale, {"joycaption": CAPTIONS_REAL_S}),
                   deadline_s=max(90.0, 6 * p.s3_window_s), stats_every_s=0.5)
    result = run_system(spec, env.ctx)
    steady = fig.steady_state(result.get("timeline", []), rows, c)
    figures = result.get("figures", {})
    step = {"offered_rows_per_s": rate, "rows": rows, "mean_task_s": round(mean_s, 4),
            "time_scale": time_scale, "status": result["status"], "error": result["error"],
            "steady_utilization": steady["utilization"],
            "steady_rows_per_s": steady["rows_per_s"], "steady_window_s": steady["window_s"],
            **{k: figures.get(k) for k in STEP_KEYS}}
    if "logs" in result:
        step["logs"] = result["logs"]
    step["kept_up"] = bool(result["status"] == "ok"
                           and tg.S3_STEP.check(steady["utilization"])["pass"])
    return step


GIVE_UP_FRACTION = 0.5
"""Stop the sweep when a step's steady rows/s is below this share of the offered rate."""


def _hopeless(step: dict[str, Any]) -> bool:
    delivered = step["steady_rows_per_s"] or 0.0
    return bool(step["status"] != "ok"
                or delivered < GIVE_UP_FRACTION * step["offered_rows_per_s"])


def _one_db(env: Env, db: str) -> dict[str, Any]:
    steps = []
    for rate in env.plan.s3_rates:
        step = _step(env, db, rate)
        steps.append(step)
        if _hopeless(step):
            break
    kept = [s for s in steps if s["kept_up"]]
    sustained = max((s["steady_rows_per_s"] or 0.0 for s in kept), default=0.0)
    status = next((s["status"] for s in steps if s["status"] != "ok"), "ok")
    return {
        "scenario": "s3_headroom", "variant": None, "db": db, "kind": "system",
        "status": status, "error": next((s["error"] for s in steps if s["error"]), None),
        "note": None,
        "params": {"concurrency": env.plan.s3_concurrency, "rates": list(env.plan.s3_rates),
                   "window_s": env.plan.s3_window_s},
        "figures": {
            "sustained_rows_per_s": sustained,
            "highest_offered_kept_up": max((s["offered_rows_per_s"] for s in kept),
                                           default=None),
            "best_steady_rows_per_s_any_step": max(
                (s["steady_rows_per_s"] or 0.0 for s in steps), default=0.0),
            "steps": steps,
        },
    }


def s3_headroom(env: Env) -> None:
    """Scenario 3 on each database."""
    for db in env.dbs:
        if db in env.skipped_dbs:
            env.add(skipped("s3_headroom", None, db, env.skipped_dbs[db]))
            continue
        env.add(judged(_one_db(env, db), tg.S3))

"""Scenario 3, headroom: raise the offered task rate until utilization drops below 95%.

The offered rate is C / mean task duration: C stays at the plan's value and the emulator's
time scale shortens Joycaption tasks (15-45 s real, mean 30 s) so that C slots turn over
`rate` times a second. Each step is a fresh run of `rate x window` rows; its figures are
taken in the steady part (between 10% and 90% of rows finished), leaving out start-up and
drain. The result is the highest steady rows/s among the steps that stayed at or above 95%
(0 when none did). The sweep goes on past the first step below 95%, to show the capacity
curve, and stops once a step delivers less than half its offered rate or does not finish.

After the system's sweeps, the asyncio baseline (bench.baseline) is swept once over the same
steps (same manifests, emulator options and seed; it has no database), polling 12 times per
mean task duration (`bench.baseline.short_poll_s`), by the same give-up rule. It is not
judged; each system sweep gets its `baseline_ratio` (sustained and best steady rows/s).
"""

from __future__ import annotations

from typing import Any

from bench import figures as fig
from bench import manifests
from bench import targets as tg
from bench.baseline import POLLS_PER_MEAN_TASK, short_poll_s
from bench.baseline_run import run_baseline
from bench.runs import RunSpec, emulator_args, run_system
from bench.scenarios import CAPTION_MEAN_REAL_S, CAPTIONS_REAL_S, Env, judged, skipped

STEP_KEYS = ("makespan_s", "makespan_over_ideal", "utilization", "gets_per_task",
             "creates_per_row", "cpu_s", "cpu_s_per_1000_tasks", "emulator_cpu_s",
             "postgres_backend_cpu_s", "peak_rss_mb_max", "redis_peak_mb", "http_429",
             "unattributed_cores")


def _step(env: Env, db: str | None, rate: float) -> dict[str, Any]:
    """One step at `rate` rows/s offered: piapi-bulk on `db`, or the baseline when `db` is None."""
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
    if db is None:
        spec.variant = f"baseline {rate:g}/s"
        spec.poll_s = short_poll_s(mean_s)
        result = run_baseline(spec, env.ctx)
    else:
        result = run_system(spec, env.ctx)
    steady = fig.steady_state(result.get("timeline", []), rows, c)
    figures = result.get("figures", {})
    step = {"offered_rows_per_s": rate, "rows": rows, "mean_task_s": round(mean_s, 4),
            "time_scale": time_scale, "status": result["status"], "error": result["error"],
            "steady_utilization": steady["utilization"],
            "steady_rows_per_s": steady["rows_per_s"], "steady_window_s": steady["window_s"],
            **{k: figures.get(k) for k in STEP_KEYS}}
    if db is None:
        step["poll_s"] = round(spec.poll_s, 6)
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


def _sweep(env: Env, db: str | None) -> list[dict[str, Any]]:
    """The steps of one sweep, up to the first hopeless one."""
    steps = []
    for rate in env.plan.s3_rates:
        step = _step(env, db, rate)
        steps.append(step)
        if _hopeless(step):
            break
    return steps


def sweep_result(steps: list[dict[str, Any]], db: str | None, params: dict[str, Any]
                 ) -> dict[str, Any]:
    """The result of a sweep: a system's on `db`, or the baseline's when `db` is None."""
    kept = [s for s in steps if s["kept_up"]]
    sustained = max((s["steady_rows_per_s"] or 0.0 for s in kept), default=0.0)
    status = next((s["status"] for s in steps if s["status"] != "ok"), "ok")
    return {
        "scenario": "s3_headroom", "variant": None if db else "baseline", "db": db,
        "kind": "system" if db else "baseline",
        "status": status, "error": next((s["error"] for s in steps if s["error"]), None),
        "note": None,
        "params": params,
        "figures": {
            "sustained_rows_per_s": sustained,
            "highest_offered_kept_up": max((s["offered_rows_per_s"] for s in kept),
                                           default=None),
            "best_steady_rows_per_s_any_step": max(
                (s["steady_rows_per_s"] or 0.0 for s in steps), default=0.0),
            "steps": steps,
        },
    }


def _params(env: Env) -> dict[str, Any]:
    return {"concurrency": env.plan.s3_concurrency, "rates": list(env.plan.s3_rates),
            "window_s": env.plan.s3_window_s}


def _one_db(env: Env, db: str) -> dict[str, Any]:
    return sweep_result(_sweep(env, db), db, _params(env))


def _baseline(env: Env) -> dict[str, Any]:
    params = {**_params(env), "poll_s": f"mean task s / {POLLS_PER_MEAN_TASK:g}"}
    result = sweep_result(_sweep(env, None), None, params)
    return tg.unjudged(result)  # the targets are the system's


def attach_baseline_ratios(systems: list[dict[str, Any]], baseline: dict[str, Any]) -> None:
    """Give each system sweep with figures its rows/s as ratios to the baseline sweep's."""
    if not baseline.get("figures"):
        return
    for r in systems:
        if r.get("kind") == "system" and r.get("figures"):
            r["baseline_ratio"] = fig.baseline_ratios(r["figures"], baseline["figures"])


def s3_headroom(env: Env) -> None:
    """Scenario 3 on each database, then the baseline's sweep (once: it has no database)."""
    systems = []
    for db in env.dbs:
        if db in env.skipped_dbs:
            env.add(skipped("s3_headroom", None, db, env.skipped_dbs[db]))
            continue
        systems.append(judged(_one_db(env, db), tg.S3))
        env.add(systems[-1])
    baseline = _baseline(env)
    attach_baseline_ratios(systems, baseline)
    env.add(baseline)

"""The scenarios of the issue: sizes (full and --quick), the runs each makes, its checks.

1 captions at scale · 2 overnight video (polling and webhooks) · 3 headroom sweep ·
4 ingest of a big CSV · 5 the asyncio baseline on 1 and 2 · 6 rate limit (right and wrong) ·
7 flat cost as the backlog grows (`bench.backlog`) · 8 and 9 (`bench.latency`): 1 with
network latency, with and without a completion signal · 10 (`bench.short`): short tasks and
no completion signal, against a baseline polling every 25 ms.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import figures as fig
from bench import manifests
from bench import targets as tg
from bench.baseline_run import run_baseline
from bench.ingest_run import run_ingest
from bench.runs import Ctx, RunSpec, emulator_args, run_system

CAPTIONS_REAL_S = "15:45"
"""Joycaption duration range in real seconds (mean 30 s), scaled by the time scale."""
CAPTION_MEAN_REAL_S = 30.0
VIDEO_DURATIONS = {family: f"{low:g}:{high:g}"
                   for family, (low, high) in manifests.VIDEO_REAL_S.items()}
"""Scenario 2's video families' 5 s clip durations in real seconds, as emulator options."""
EMULATOR_OVERHEAD = 1.035
"""A task's ledger time over its drawn duration (the scenario's ideal had it before)."""
MODEL_ARGS = ("--model", manifests.CAPTION_MODEL, "--task-type", manifests.CAPTION_TASK)


@dataclass(frozen=True)
class Plan:
    """Sizes of every scenario."""

    s1_rows: int
    s2_rows: int
    s3_rates: tuple[float, ...]
    s3_window_s: float
    s4_rows: int
    s6_run_s: float
    s6_rows: int
    s1_concurrency: int = 50
    s1_time_scale: float = 1 / 75  # 15-45 s -> 0.2-0.6 s
    s2_concurrency: int = 20
    s2_time_scale: float = 1 / 60  # 2-8 min -> 2-8 s
    s3_concurrency: int = 50
    s6_concurrency: int = 50
    s6_rpm: int = 1200
    """20 requests/s: well under what scenario 1's workload asks for, so the budget binds."""
    poll_s: float = 2.0
    s7_backlogs: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    """Scenario 7: rows queued (ingested) before each window."""
    s7_window_rows: int = 3_000
    """Scenario 7: rows run through the dispatcher per backlog size (the rest stays queued)."""
    s89_rows: int = 2_000
    """Scenarios 8 and 9 (bench.latency): rows of each run (3-9 s tasks at C = 50)."""
    s10_rows: int = 2_000
    """Scenario 10 (bench.short): rows of each run (0.15-0.45 s tasks at C = 20)."""


FULL = Plan(s1_rows=20_000, s2_rows=500, s3_rates=(25, 50, 100, 200, 300, 400),
            s3_window_s=15, s4_rows=1_000_000, s6_run_s=72, s6_rows=3_000)
QUICK = Plan(s1_rows=2_000, s2_rows=100, s3_rates=(50, 150, 300), s3_window_s=8,
             s4_rows=100_000, s6_run_s=25, s6_rows=1_000, s7_backlogs=(1_000, 10_000),
             s7_window_rows=500, s89_rows=200, s10_rows=500)


@dataclass
class Env:
    """What scenarios share: settings, the plan, the databases, what piapi-bulk can do."""

    ctx: Ctx
    plan: Plan
    dbs: list[str]
    webhooks_available: bool
    skipped_dbs: dict[str, str] = field(default_factory=dict)
    manifests: dict[str, Path] = field(default_factory=dict)
    results: list[dict[str, Any]] = field(default_factory=list)
    on_result: Callable[[], None] = lambda: None
    """Called after every run, so an interrupted benchmark keeps what it measured."""

    def add(self, result: dict[str, Any]) -> None:
        """Record one run's result."""
        self.results.append(result)
        self.on_result()

    def manifest(self, name: str) -> Path:
        """The manifest of a scenario, written once and shared by its runs."""
        if name not in self.manifests:
            path = self.ctx.workdir / f"{name}.jsonl"
            plan = self.plan
            if name == "s1":
                manifests.captions_jsonl(path, plan.s1_rows)
            elif name == "s2":
                manifests.video_jsonl(path, plan.s2_rows)
            elif name == "s6":
                manifests.captions_jsonl(path, plan.s6_rows)
            elif name == "s4":
                path = manifests.captions_csv(self.ctx.workdir / "s4.csv", plan.s4_rows)
            self.manifests[name] = path
        return self.manifests[name]


def skipped(scenario: str, variant: str | None, db: str | None, why: str) -> dict[str, Any]:
    """A run that was not made, and why."""
    return {"scenario": scenario, "variant": variant, "db": db, "kind": "system",
            "status": "skipped", "error": None, "note": f"skipped: {why}", "figures": {},
            "checks": [], "verdict": "n/a"}


def judged(result: dict[str, Any], targets: tuple[tg.Target, ...]) -> dict[str, Any]:
    """Attach the checks and the verdict to a run result."""
    result["checks"] = tg.apply(targets, result["figures"])
    result["verdict"] = tg.verdict(result["checks"])
    return result


def _s1_spec(env: Env, db: str | None) -> RunSpec:
    p = env.plan
    args = emulator_args(env.ctx.seed, p.s1_concurrency, p.s1_time_scale,
                         {"joycaption": CAPTIONS_REAL_S})
    ideal = p.s1_rows * CAPTION_MEAN_REAL_S * p.s1_time_scale / p.s1_concurrency
    return RunSpec("s1_captions", None, db, env.manifest("s1"), p.s1_rows, p.s1_concurrency,
                   args, deadline_s=max(120.0, 5 * ideal))


def _s2_spec(env: Env, db: str | None, variant: str) -> RunSpec:
    p = env.plan
    args = emulator_args(env.ctx.seed, p.s2_concurrency, p.s2_time_scale, VIDEO_DURATIONS)
    ideal = (manifests.video_real_s(p.s2_rows) * EMULATOR_OVERHEAD * p.s2_time_scale
             / p.s2_concurrency)
    return RunSpec("s2_video", variant, db, env.manifest("s2"), p.s2_rows, p.s2_concurrency,
                   args, deadline_s=max(120.0, 4 * ideal), webhooks=variant == "webhooks")


def s1_captions(env: Env) -> None:
    """Scenario 1 on each database."""
    for db in env.dbs:
        if db in env.skipped_dbs:
            env.add(skipped("s1_captions", None, db, env.skipped_dbs[db]))
            continue
        env.add(judged(run_system(_s1_spec(env, db), env.ctx), tg.S1))


def s2_video(env: Env) -> None:
    """Scenario 2 on each database, polling only and with webhooks."""
    for db in env.dbs:
        for variant, targets in (("polling", tg.S2_POLLING), ("webhooks", tg.S2_WEBHOOKS)):
            if db in env.skipped_dbs:
                env.add(skipped("s2_video", variant, db, env.skipped_dbs[db]))
            elif variant == "webhooks" and not env.webhooks_available:
                env.add(skipped("s2_video", variant, db,
                                   "not implemented (`piapi-bulk webhook --help` fails)"))
            else:
                env.add(judged(run_system(_s2_spec(env, db, variant), env.ctx), targets))


def s5_baseline(env: Env, scenarios: set[int]) -> None:
    """Scenario 5: the asyncio baseline on scenario 1 and/or 2 (whichever ran; both alone)."""
    which = scenarios & {1, 2} or {1, 2}
    for n in sorted(which):
        spec = _s1_spec(env, None) if n == 1 else _s2_spec(env, None, "polling")
        spec.variant = "baseline"
        spec.poll_s = env.plan.poll_s
        rows_time = spec.rows * (env.plan.poll_s + 1.0) / spec.concurrency
        spec.deadline_s = max(spec.deadline_s, 3 * rows_time + 60)
        result = run_baseline(spec, env.ctx)
        env.add(tg.unjudged(result))  # the targets are the system's


def attach_baseline_ratios(results: list[dict[str, Any]]) -> None:
    """Give every system run of scenarios 1 and 2 its figures as ratios to the baseline's."""
    base = {r["scenario"]: r for r in results
            if r.get("kind") == "baseline" and r["status"] == "ok"}
    for r in results:
        ref = base.get(r["scenario"])
        # (the profiled run of scenario 1 has a quarter of its rows: no like-for-like ratio)
        if (r.get("kind") == "system" and ref is not None and r["figures"]
                and r.get("variant") != "profiled"):
            r["baseline_ratio"] = fig.baseline_ratios(r["figures"], ref["figures"])


def s4_ingest(env: Env) -> None:
    """Scenario 4: a big CSV into each database."""
    for db in env.dbs:
        if db in env.skipped_dbs:
            env.add(skipped("s4_ingest", None, db, env.skipped_dbs[db]))
            continue
        result = run_ingest("s4_ingest", db, env.manifest("s4"), env.plan.s4_rows,
                            MODEL_ARGS, env.ctx, timeout_s=900)
        env.add(judged(result, tg.S4_PG if db == "postgresql" else tg.S4_SQLITE))

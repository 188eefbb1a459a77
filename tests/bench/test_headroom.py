"""Scenario 3's pure parts: the baseline's sweep (its steps, poll interval and result) and the
system sweeps' ratios to it (no processes: the runs are replaced by canned results)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import figures, headroom, scenarios
from bench.baseline_run import _baseline_timeline_point
from bench.runs import Ctx, RunSpec


def _stats(t: float, ended: int, in_flight: int) -> dict[str, Any]:
    """Emulator stats after `t` s with `in_flight` tasks running since the start."""
    return {"tasks_by_status": {"completed": ended, "processing": in_flight},
            "in_flight": in_flight, "in_flight_integral_s": in_flight * t,
            "creates": ended + in_flight, "requests": {"get": 12 * ended, "total": 13 * ended}}


def _timeline(rows: int, rate: float, in_flight: int, every_s: float = 0.5
              ) -> list[dict[str, Any]]:
    """A baseline run's timeline: `rate` tasks end a second, `in_flight` held throughout."""
    points, t = [], 0.0
    while True:
        ended = min(rows, int(rate * t))
        points.append(_baseline_timeline_point(t, _stats(t, ended, in_flight)))
        if ended == rows:
            return points
        t += every_s


def test_steady_state_reads_the_baselines_timeline() -> None:
    steady = figures.steady_state(_timeline(1_200, 150.0, 48), 1_200, 50)
    assert steady["rows_per_s"] == 150.0
    assert steady["utilization"] == 0.96
    assert steady["window_s"] == 6.5  # 120 -> 1,080 rows at 0.5 s samples: 1.0 s -> 7.5 s


def _step(rate: float, steady: float | None, util: float | None, kept: bool,
          status: str = "ok") -> dict[str, Any]:
    return {"offered_rows_per_s": rate, "steady_rows_per_s": steady,
            "steady_utilization": util, "kept_up": kept, "status": status, "error": None}


def test_a_baseline_sweep_result_is_unjudged_and_has_no_database() -> None:
    steps = [_step(50, 49.0, 0.97, True), _step(150, 140.0, 0.93, False),
             _step(300, 120.0, 0.4, False)]
    result = headroom.sweep_result(steps, None, {"concurrency": 50})
    assert (result["kind"], result["variant"], result["db"]) == ("baseline", "baseline", None)
    assert result["scenario"] == "s3_headroom" and result["status"] == "ok"
    f = result["figures"]
    assert f["sustained_rows_per_s"] == 49.0 and f["highest_offered_kept_up"] == 50
    assert f["best_steady_rows_per_s_any_step"] == 140.0 and f["steps"] == steps
    system = headroom.sweep_result(steps, "sqlite", {})
    assert (system["kind"], system["variant"], system["db"]) == ("system", None, "sqlite")


def _sweep(db: str | None, sustained: float, best: float) -> dict[str, Any]:
    kind = "system" if db else "baseline"
    return {"scenario": "s3_headroom", "kind": kind, "db": db, "status": "ok",
            "figures": {"sustained_rows_per_s": sustained,
                        "best_steady_rows_per_s_any_step": best, "steps": []}}


def test_each_system_sweep_gets_its_rows_per_s_over_the_baselines() -> None:
    sqlite, pg = _sweep("sqlite", 290.0, 300.0), _sweep("postgresql", 145.0, 150.0)
    skipped = scenarios.skipped("s3_headroom", None, "postgresql", "unreachable")
    base = _sweep(None, 145.0, 200.0)
    headroom.attach_baseline_ratios([sqlite, pg, skipped], base)
    assert sqlite["baseline_ratio"] == {"sustained_rows_per_s": 2.0,
                                        "best_steady_rows_per_s_any_step": 1.5}
    assert pg["baseline_ratio"] == {"sustained_rows_per_s": 1.0,
                                    "best_steady_rows_per_s_any_step": 0.75}
    assert "baseline_ratio" not in skipped and "baseline_ratio" not in base
    no_step_kept_up = _sweep(None, 0.0, 120.0)
    headroom.attach_baseline_ratios([sqlite], no_step_kept_up)
    assert sqlite["baseline_ratio"] == {"sustained_rows_per_s": None,
                                        "best_steady_rows_per_s_any_step": 2.5}
    failed = {**_sweep(None, 0.0, 0.0), "status": "error", "figures": {}}
    headroom.attach_baseline_ratios([pg], failed)
    assert pg["baseline_ratio"]["sustained_rows_per_s"] == 1.0  # left as it was


def test_the_benchmarks_own_ratio_pass_keeps_scenario_3s_ratios() -> None:
    """`python -m bench` runs scenarios.attach_baseline_ratios over every run after each one:
    on scenario 3 it must compute the same rows/s ratios, not scenario 1's figures."""
    system, base = _sweep("sqlite", 290.0, 300.0), _sweep(None, 145.0, 200.0)
    s1 = {"scenario": "s1_captions", "kind": "system", "status": "ok",
          "figures": {"utilization": 0.9, "gets_per_task": 1.0}}
    s1_base = {"scenario": "s1_captions", "kind": "baseline", "status": "ok",
               "figures": {"utilization": 0.6, "gets_per_task": 4.0}}
    scenarios.attach_baseline_ratios([system, base, s1, s1_base])
    assert system["baseline_ratio"] == {"sustained_rows_per_s": 2.0,
                                        "best_steady_rows_per_s_any_step": 1.5}
    assert set(s1["baseline_ratio"]) == set(figures.RATIO_KEYS)
    assert s1["baseline_ratio"]["utilization"] == 1.5
    assert s1["baseline_ratio"]["gets_per_task"] == 0.25


def test_a_baseline_step_runs_the_systems_manifest_polling_12_times_a_mean_task(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    specs: list[tuple[str, RunSpec]] = []

    def fake(kind: str) -> Any:
        def run(spec: RunSpec, _ctx: Ctx) -> dict[str, Any]:
            specs.append((kind, spec))
            timeline = _timeline(spec.rows, 140.0, 47)
            return {"status": "ok", "error": None, "timeline": timeline,
                    "figures": {"gets_per_task": 12.5, "utilization": 0.9}}
        return run

    monkeypatch.setattr(headroom, "run_baseline", fake("baseline"))
    monkeypatch.setattr(headroom, "run_system", fake("system"))
    ctx = Ctx(tmp_path, 7, "k", 2, 16, False)
    env = scenarios.Env(ctx, scenarios.QUICK, ["sqlite"], False)
    system = headroom._step(env, "sqlite", 150.0)
    step = headroom._step(env, None, 150.0)
    (_, sys_spec), (kind, spec) = specs
    assert kind == "baseline" and spec.db is None and sys_spec.db == "sqlite"
    assert spec.manifest == sys_spec.manifest and spec.rows == sys_spec.rows == 1_200
    assert spec.emulator_args == sys_spec.emulator_args and "7" in spec.emulator_args
    assert spec.stats_every_s == 0.5
    mean_s = 50 / 150.0
    assert step["mean_task_s"] == round(mean_s, 4)
    assert spec.poll_s == pytest.approx(mean_s / 12) and step["poll_s"] == round(mean_s / 12, 6)
    assert "poll_s" not in system
    assert step["steady_rows_per_s"] == 140.0 and step["steady_utilization"] == 0.94
    assert step["gets_per_task"] == 12.5 and step["kept_up"] is False
    assert headroom._hopeless(step) is False
    assert headroom._hopeless({**step, "steady_rows_per_s": 74.0}) is True

"""Smoke test of the benchmark harness's pure parts: targets, figures, the table (no processes)."""

from __future__ import annotations

from bench import figures, report
from bench.emu import parse_time, summarise_ledger
from bench.targets import Target, verdict


def test_targets_judge_both_directions_and_missing_values() -> None:
    upper = Target("gets_per_task", "<=", 2.0).check(1.5)
    lower = Target("utilization", ">=", 0.95).check(0.9)
    assert upper["pass"] is True and upper["slack"] == 0.5
    assert lower["pass"] is False and lower["slack"] == -0.05
    assert Target("x", "<", 1.0).check(None)["pass"] is None
    assert verdict([upper, lower]) == "fail" and verdict([upper]) == "pass"


def test_ledger_times_and_ideal() -> None:
    assert parse_time("0001-01-01T00:00:00Z") is None
    assert parse_time("1970-01-01T00:00:01.500000000Z") == 1.5
    ledger = summarise_ledger([
        {"status": "completed", "created_at": "1970-01-01T00:00:01Z",
         "ended_at": "1970-01-01T00:00:03Z"},
        {"status": "pending", "created_at": "1970-01-01T00:00:02Z",
         "ended_at": "0001-01-01T00:00:00Z"},
    ])
    assert (ledger.tasks, ledger.ended, ledger.busy_s) == (2, 1, 2.0)


def test_429_windows_and_settling() -> None:
    points = [{"t": float(t), "requests": 10 * t, "http_429": min(t, 12)} for t in range(41)]
    windows = figures.windows_429(points)
    assert [w["http_429"] for w in windows] == [10, 2, 0, 0]
    assert figures.settle_s(windows) == 20.0


def test_table_renders_a_run() -> None:
    run = {"scenario": "s1_captions", "variant": None, "db": "sqlite", "status": "ok",
           "verdict": "fail", "figures": {"utilization": 0.5, "makespan_s": 10.0},
           "checks": [Target("utilization", ">=", 0.95).check(0.5)],
           "baseline_ratio": {"utilization": 2.0}}
    doc = {"meta": {"quick": True, "started_at": "now", "version": {"git_commit": "abc"},
                    "machine": {"nproc": 2}, "duration_s": 60}, "runs": [run], "summary": {}}
    text = report.table(doc)
    assert "s1 sqlite" in text and "50.0%✗ x2.00" in text


def test_latency_scenarios_render_and_the_baseline_outwaits_the_slowest_create() -> None:
    from bench import baseline, latency

    assert latency.CREATE_LATENCY_MAX_S < baseline.TIMEOUT_S
    runs = [{"scenario": name, "variant": variant, "db": "sqlite", "status": "ok",
             "verdict": "pass", "figures": {"utilization": 0.96, "gets_per_task": 1.1},
             "checks": []} for name, variant in latency.SCENARIOS.values()]
    doc = {"meta": {"quick": True, "started_at": "now", "version": {"git_commit": "abc"},
                    "machine": {"nproc": 2}, "duration_s": 60}, "runs": runs, "summary": {}}
    text = report.table(doc)
    assert "Scenarios 8 and 9" in text
    assert "s8 webhooks sqlite" in text and "s9 polling sqlite" in text

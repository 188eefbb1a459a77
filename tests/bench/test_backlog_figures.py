"""Scenario 7's pure parts: pass figures, per-row sizes, and the flatness comparison."""

from __future__ import annotations

from typing import Any

from bench import flatness, report
from bench.targets import apply, verdict


def _passes(ms: list[float], statements: int, housekept_every: int = 5) -> list[dict[str, Any]]:
    return [{"took_s": m / 1000, "statements": statements + (8 if i % housekept_every == 0
                                                              else 0),
             "housekept": i % housekept_every == 0} for i, m in enumerate(ms)]


def test_percentile_is_nearest_rank() -> None:
    assert flatness.percentile([], 50) is None
    assert flatness.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert flatness.percentile([float(i) for i in range(1, 101)], 95) == 95.0


def test_pass_figures_keep_housekeeping_apart() -> None:
    figs = flatness.pass_figures(_passes([1.0] * 10, 3))
    assert figs["passes"] == 10 and figs["housekeeping_passes"] == 2
    assert figs["statements_p50"] == 3 and figs["housekeeping_statements_p50"] == 11
    assert figs["pass_ms_p50"] == 1.0


def _run(backlog: int, pass_ms: float, statements: float, bytes_per_row: float,
         seq_share: float) -> dict[str, Any]:
    return {"backlog": backlog, "pass_ms_p50": pass_ms, "housekeeping_pass_ms_p50": 4 * pass_ms,
            "statements_max": statements, "housekeeping_statements_max": statements + 8,
            "statements_p50": statements, "redis_used_mb_max": 2.0,
            "jobs_bytes_per_row_after": bytes_per_row,
            "jobs_seq_read_share_per_pass": seq_share}


def test_a_flat_backlog_passes_and_a_scan_per_pass_fails() -> None:
    small = _run(10_000, 4.0, 6, 900.0, 0.001)
    flat = flatness.compare(small, _run(1_000_000, 5.0, 6, 700.0, 0.0))
    assert verdict(apply(flatness.FLAT, flat)) == "pass"
    scanning = flatness.compare(small, _run(1_000_000, 300.0, 6, 700.0, 1.0))
    failed = {c["figure"] for c in apply(flatness.FLAT, scanning) if c["pass"] is False}
    assert failed == {"pass_p50_over_allowed", "housekeeping_p50_over_allowed",
                      "seq_read_share_per_pass"}
    assert flatness.compare(small, _run(1_000_000, 4.0, 9, 700.0, 0.0))[
        "statements_max_diff"] == 3
    grown = flatness.compare(small, {**_run(1_000_000, 4.0, 6, 700.0, 0.0),
                                     "redis_used_mb_max": 4.0})
    assert grown["redis_used_over_allowed"] == round(4.0 / (1.2 * 2.0 + 1.0), 4) > 1


def test_sizes_and_scans() -> None:
    assert flatness.per_row(1_000_000, 1_000) == 1000.0 and flatness.per_row(None, 5) is None
    assert flatness.deltas({"seq_scan": 2}, {"seq_scan": 5, "idx_scan": 7}) == {
        "seq_scan": 3, "idx_scan": 7}
    assert flatness.seq_read_share(3_000, 100, 1_000_000) == 0.00003
    assert flatness.seq_read_share(None, 100, 10) is None


def test_table_shows_a_backlog_run() -> None:
    figs = {**_run(10_000, 4.0, 6, 900.0, 0.0), "pass_ms_p95": 9.0, "jobs_seq_scan": 3,
            "rows_per_s": 120.0, "slot_use": 0.95}
    run = {"scenario": "s7_backlog", "variant": "10000", "db": "postgresql", "status": "ok",
           "verdict": "n/a", "figures": figs, "checks": []}
    doc = {"meta": {"quick": True, "started_at": "now", "version": {"git_commit": "abc"},
                    "machine": {"nproc": 2}, "duration_s": 60}, "runs": [run], "summary": {}}
    assert "10,000 queued: pass p50/p95 4.0/9.0 ms" in report.table(doc)

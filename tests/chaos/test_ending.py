"""The end both harnesses share: the report written, logs kept only when wanted, and the
verdict line each prints, when a run's loop ends (no processes)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from chaos.ending import Outcome, save_report, verdict
from chaos.watch import Progress


def _doc(passed: bool) -> dict[str, object]:
    return {"pass": passed, "figures": {"elapsed_s": 12.5}}


def test_a_passing_run_removes_its_logs_and_a_failing_one_names_them(tmp_path: Path) -> None:
    out = tmp_path / "results"
    for passed in (True, False):
        workdir = tmp_path / f"work-{passed}"
        workdir.mkdir()
        doc = _doc(passed)
        path = save_report(doc, out, "2026-11-30T02:56:23Z", workdir, keep_logs=False)
        assert path == out / "20261130T025623Z.json"
        assert workdir.exists() is not passed
        assert json.loads(path.read_text()).get("logs") == (None if passed else str(workdir))
    assert json.loads((out / "latest.json").read_text())["pass"] is False


def test_keep_logs_keeps_a_passing_run_s_logs(tmp_path: Path) -> None:
    doc = _doc(True)
    save_report(doc, tmp_path / "results", "2026-11-30T02:56:23Z", tmp_path, keep_logs=True)
    assert tmp_path.exists() and doc["logs"] == str(tmp_path)


def test_the_verdict_line_keeps_only_the_notes_given() -> None:
    report = Path("chaos/results/x.json")
    assert verdict("chaos", _doc(False), ["failed: no_row_lost", None], report) == (
        "[chaos] FAIL in 12.5 s; failed: no_row_lost; report: chaos/results/x.json")
    assert verdict("fleet", _doc(True), [None], report) == (
        "[fleet] PASS in 12.5 s; report: chaos/results/x.json")


def test_a_run_is_over_when_its_rows_and_its_own_work_are_done_or_its_time_is_up() -> None:
    done, busy = Progress({"completed": 3}, 0, 0), Progress({"completed": 1, "running": 2}, 0, 0)
    later, gone = time.monotonic() + 60, time.monotonic() - 1
    late = "rows still active after {t:.0f} s"
    out = Outcome()
    assert not out.over(busy, 5.0, settled=True, stop_at=later, late=late, digits=1)
    assert not out.over(done, 5.0, settled=False, stop_at=later, late=late, digits=1)
    assert not out.over(None, 5.0, settled=True, stop_at=later, late=late, digits=1)
    assert out.over(done, 5.4321, settled=True, stop_at=later, late=late, digits=3)
    assert (out.status, out.times["work_s"], out.final_counts) == ("ok", 5.432, {"completed": 3})
    timed_out = Outcome()
    assert timed_out.over(busy, 61.7, settled=True, stop_at=gone, late=late, digits=1)
    assert (timed_out.status, timed_out.error) == ("timeout", "rows still active after 62 s")
    assert timed_out.final_counts == {"completed": 1, "running": 2} and not timed_out.times

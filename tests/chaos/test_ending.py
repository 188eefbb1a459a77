"""The end both harnesses share: the report written, logs kept only when wanted, and the
verdict line each prints (no processes)."""

from __future__ import annotations

import json
from pathlib import Path

from chaos.ending import save_report, verdict


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

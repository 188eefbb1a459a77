"""A task that stays pending far past its kind's learned tail is cancelled and re-created."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.e2e import (
    caption_rows,
    emulator,
    finish,
    read_results,
    run_env,
    start_run,
    write_jsonl,
)

pytestmark = pytest.mark.integration


def test_a_stuck_pending_task_is_cancelled_and_retried_within_the_limit(
        tmp_path: Path, sqlite_url: str) -> None:
    rows = caption_rows(30)
    stuck = {"id": "stuck", "model": "Qubico/joycaption", "task_type": "joycaption-beta-one",
             "input": {"image": "https://example.test/[[stuck]].png"}}
    manifest = write_jsonl(tmp_path / "m.jsonl", [*rows, stuck])
    emu = emulator(tmp_path, "--time-scale", "0.02", "--concurrency", "10")
    try:
        env = run_env(tmp_path, emu, sqlite_url)
        code = finish(start_run(tmp_path, env, str(manifest), "-o", "out.jsonl",
                                "--max-attempts", "2"), 240)
        ledger = emu.ledger()
    finally:
        emu.stop()
    results = {r["id"]: r for r in read_results(tmp_path / "out.jsonl")}
    assert code == 1
    assert all(results[r["id"]]["status"] == "completed" for r in rows)
    row = results["stuck"]
    assert row["status"] == "failed" and row["attempts"] == 2
    assert "stuck pending" in row["error"]["message"]
    # Two tasks were made for the row, each cancelled while pending: neither was charged.
    stuck_tasks = [t for t in ledger if t["status"] != "completed"]
    assert {t["task_id"] for t in stuck_tasks} >= {row["task_id"]}
    assert len(stuck_tasks) == 2 and not any(t["charged"] for t in stuck_tasks)

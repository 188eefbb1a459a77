"""No row waits for ever: tasks stuck far past their kind's learned tail, end to end.

A stuck pending task is cancelled at PiAPI and re-created; a task stuck processing (which
PiAPI cannot cancel) is abandoned and, by `--on-stuck`, replaced (`retry`), failed (`fail`)
or waited for (`wait`). Real `piapi-bulk run` processes against the emulator, whose
`[[stuck-processing]]` marker (or `--fault-stuck`) makes tasks that, with a large
`--stuck-timeout-factor`, never end within the test. Checked against the emulator's ledger.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from tests.helpers import MakeEmulator, opened, wait_until
from tests.integration.e2e import (
    RunRows,
    caption_rows,
    finish,
    piapi_bulk,
    run_env,
    start_run,
    write_jsonl,
)
from workers.catalog import prior_duration_s
from workers.durations import load
from workers.models import Job
from workers.polling import stuck_after_s

JOY = ("Qubico/joycaption", "joycaption-beta-one")
TIME_SCALE = "0.01"
"""Joycaption tasks of 0.15-0.45 s: the stuck limit learned from them (4x the longest) is
about 2 s, so stuck tasks are found within seconds."""
NEVER_ENDS = ("--stuck-timeout-factor", "1000")
"""Stuck tasks end ('task timeout') after 1000 x their 0.15-0.45 s: not within a test."""
LIMIT = 10


def marked(row_id: str, marker: str) -> dict[str, Any]:
    return {"id": row_id, "model": JOY[0], "task_type": JOY[1],
            "input": {"image": f"https://example.test/{marker}/{row_id}.png"}}


def run_batch(run_rows: RunRows, database_url: str, rows: list[dict[str, Any]], *args: str,
              emulator_args: tuple[str, ...] = (), limit: int = LIMIT, **env_extra: str,
              ) -> tuple[int, dict[str, Any], list[Any], dict[str, Any]]:
    """Run a manifest to the end with `limit` tasks in flight at most (the emulator's
    account limit too): (exit code, results by id, ledger, emulator stats)."""
    out = run_rows(database_url, rows,
                   ["--time-scale", TIME_SCALE, "--concurrency", str(limit), *emulator_args], 240,
                   ("--concurrency", str(limit), *args), **env_extra)
    return out.code, {r["id"]: r for r in out.results}, out.ledger, out.stats


def check_paid_once(results: dict[str, Any], ledger: list[Any], stats: dict[str, Any],
                    limit: int = LIMIT) -> None:
    """Every completed row holds a completed task of the ledger; no input was charged twice
    (abandoned stuck tasks never end here, so they are never charged); the account's limit
    held although abandoned tasks kept their slots."""
    by_id = {t["task_id"]: t for t in ledger}
    for r in results.values():
        if r["status"] == "completed":
            assert by_id[r["task_id"]]["status"] == "completed"
    charged = Counter(t["input_key"] for t in ledger if t["charged"])
    assert max(charged.values()) == 1
    assert stats["peak_in_flight"] <= limit


def test_a_stuck_pending_task_is_cancelled_and_retried_within_the_limit(
        sqlite_url: str, run_rows: RunRows) -> None:
    rows = caption_rows(30)
    code, results, ledger, stats = run_batch(run_rows, sqlite_url,
                                             [*rows, marked("stuck", "[[stuck]]")],
                                             "--max-attempts", "2")
    assert code == 1
    assert all(results[r["id"]]["status"] == "completed" for r in rows)
    row = results["stuck"]
    assert row["status"] == "failed" and row["attempts"] == 2
    assert row["error"]["kind"] == "stuck" and "stuck pending" in row["error"]["message"]
    [first] = row["other_tasks"]
    assert first["state"] == "cancelled" and "cancelled at PiAPI (refunded)" in first["error"]
    # Two tasks were made for the row, each cancelled while pending: neither was charged.
    stuck_tasks = [t for t in ledger if t["status"] != "completed"]
    assert {t["task_id"] for t in stuck_tasks} == {row["task_id"], first["task_id"]}
    assert not any(t["charged"] for t in stuck_tasks)
    check_paid_once(results, ledger, stats)


def test_stuck_processing_tasks_are_replaced_and_the_run_still_ends(
        tmp_path: Path, database_url: str, run_rows: RunRows) -> None:
    # Three rows whose tasks always get stuck processing come first, so their abandoned
    # tasks hold slots while the rest of the batch runs; one task in thirty of the others
    # gets stuck too (half pending, half processing). None of them ever ends, so each
    # processing one holds a slot of the account for good: the limit is 20 so that enough
    # are left. Slots are counted from the database only (PiAPI counts no Joycaption tasks
    # in active_tasks), so only counting abandoned tasks keeps the account within its limit.
    forever = [marked(f"forever-{i}", "[[stuck-processing]]") for i in (1, 2, 3)]
    rows = caption_rows(150)
    code, results, ledger, stats = run_batch(
        run_rows, database_url, [*forever, *rows], "--max-attempts", "2", limit=20,
        emulator_args=("--fault-stuck", "0.03", *NEVER_ENDS), PIAPI_BULK_ACTIVE_TASKS="off")
    assert code == 1, (tmp_path / "run.out").read_text()[-3000:]
    # Every row completes, replacing its stuck tasks, unless both its tasks got stuck.
    replaced = [results[r["id"]] for r in rows if results[r["id"]]["other_tasks"]]
    assert replaced, "the seed should make some tasks stuck"
    for r in replaced:
        for other in r["other_tasks"]:
            assert other["state"] in ("abandoned", "cancelled") and " stuck " in other["error"]
    unlucky = [results[r["id"]] for r in rows if results[r["id"]]["status"] != "completed"]
    assert len(unlucky) <= 2
    for r in unlucky:
        assert (r["status"], r["attempts"], r["error"]["kind"]) == ("failed", 2, "stuck")
        assert r["error"]["message"].startswith("stuck: 2 of 2 attempts used; last: task ")
    # Out of attempts: each such row fails, kind stuck, after two tasks, both abandoned.
    by_id = {t["task_id"]: t for t in ledger}
    for f in forever:
        row = results[f["id"]]
        assert (row["status"], row["attempts"], row["error"]["kind"]) == ("failed", 2, "stuck")
        assert row["error"]["message"].startswith("stuck: 2 of 2 attempts used; last: task ")
        [other] = row["other_tasks"]
        assert other["state"] == "abandoned"
        assert by_id[row["task_id"]]["status"] == by_id[other["task_id"]]["status"] == \
            "processing"
    assert stats["in_flight"] >= 6  # the run ended with abandoned tasks still at PiAPI
    check_paid_once(results, ledger, stats, limit=20)


def test_on_stuck_fail_fails_the_row_at_once(tmp_path: Path, sqlite_url: str,
                                             run_rows: RunRows) -> None:
    rows = caption_rows(25)
    code, results, ledger, stats = run_batch(
        run_rows, sqlite_url, [*rows, marked("forever", "[[stuck-processing]]")],
        "--on-stuck", "fail", emulator_args=NEVER_ENDS)
    assert code == 1
    assert all(results[r["id"]]["status"] == "completed" for r in rows)
    row = results["forever"]
    assert (row["status"], row["attempts"], row["error"]["kind"]) == ("failed", 1, "stuck")
    assert row["error"]["message"].endswith("(--on-stuck fail)")
    assert len(ledger) == 26  # never replaced
    check_paid_once(results, ledger, stats)
    env = {**os.environ, "DATABASE_URL": sqlite_url}
    out = piapi_bulk(tmp_path, env, "status")
    assert "failed: stuck 1" in out.stdout, out.stderr
    assert "abandoned tasks: 1 (1 still watched; --on-stuck fail)" in out.stdout


def test_on_stuck_wait_keeps_the_row_waiting(tmp_path: Path, sqlite_url: str,
                                             make_emulator: MakeEmulator) -> None:
    rows = caption_rows(25)
    manifest = write_jsonl(tmp_path / "m.jsonl", [*rows, marked("forever", "[[stuck-processing]]")])
    emu = make_emulator("--time-scale", TIME_SCALE, "--concurrency", str(LIMIT), *NEVER_ENDS)
    env = run_env(tmp_path, emu, sqlite_url)
    proc = start_run(tmp_path, env, str(manifest), "--on-stuck", "wait")
    try:
        row = wait_until(lambda: long_stuck(sqlite_url), 120,
                         what="the stuck row to wait 3x past its stuck limit")
    finally:
        os.killpg(proc.pid, signal.SIGINT)
    assert finish(proc, 60) == 130
    assert (row.state, row.attempts) == ("running", 1)


def long_stuck(database_url: str) -> Job | None:
    """The stuck row, once every other row completed and it has waited three times its
    learned stuck limit (polled all the while) without being given up on."""
    with opened(database_url) as engine:
        with Session(engine) as s:
            jobs = {j.row_key: j for j in s.exec(select(Job))}
        learned = load(engine, *JOY)
    row = jobs.get("forever")
    assert row is None or (row.state, row.attempts) in (("queued", 0), ("submitting", 0),
                                                        ("running", 1)), row
    if not learned.learned or row is None or row.submitted_at is None:
        return None
    others_done = len(jobs) == 26 and all(j.state == "completed" for k, j in jobs.items()
                                          if k != "forever")
    limit = stuck_after_s(learned, prior_duration_s(*JOY))
    waited = time.time() - row.submitted_at > 3 * limit and row.polls >= 3
    return row if others_done and waited else None

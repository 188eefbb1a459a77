"""Creates whose answer is lost, in each of their outcomes, end to end on real parts."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.helpers import MakeEmulator, Spawn, opened
from tests.integration.e2e import (
    RunRows,
    caption_rows,
    run_in,
    run_manifest,
    webhook_run_env,
)
from workers.db import create_tables
from workers.findings import Findings, store

SCALE = ("--time-scale", "0.02")


def test_a_task_made_by_a_lost_create_is_found_and_adopted(tmp_path: Path, database_url: str,
                                                          run_rows: RunRows) -> None:
    # Every create makes its task, then the connection drops before the answer.
    code, results, stats, _ = run_rows(database_url, caption_rows(12),
                                       [*SCALE, "--fault-ambiguous", "1.0"])
    assert code == 0, (tmp_path / "run.out").read_text()[-2000:]
    assert {r["status"] for r in results} == {"completed"}
    assert stats["max_creates_per_input"] == 1 and stats["creates"] == 12  # never twice
    assert all(r["attempts"] == 1 for r in results)
    assert stats["requests"]["histories"] > 0


def test_a_create_that_made_no_task_is_posted_again(sqlite_url: str,
                                                    run_rows: RunRows) -> None:
    # A third of the creates are lost on the way in: nothing is created, no answer comes.
    # "Never created" needs a later create of ours in the listing, so a lost create with
    # none after it (the batch's last) cannot be told apart and fails, never paid twice.
    # It also needs to know that the listing shows pending tasks: here the doctor saw so.
    with opened(sqlite_url) as engine:
        create_tables(engine)
        store(engine, Findings(checked_at=time.time(), history_lists_pending=True))
    code, results, stats, _ = run_rows(sqlite_url, caption_rows(30),
                                       [*SCALE, "--fault-lost", "0.3"],
                                       PIAPI_BULK_RECONCILE_TIMEOUT_S="20")
    assert stats["faults"]["lost"] > 0
    assert stats["max_creates_per_input"] == 1  # each row's one task, however many posts
    failed = [r for r in results if r["status"] != "completed"]
    assert all(r["error"]["kind"] == "ambiguous" for r in failed), failed
    assert len(failed) <= 2, failed
    assert sum(r["attempts"] > 1 or r["status"] == "completed" for r in results) >= 28
    assert code == (1 if failed else 0)


def test_a_lost_create_whose_task_waits_unlisted_is_never_posted_again(
        tmp_path: Path, sqlite_url: str, make_emulator: MakeEmulator) -> None:
    # Found by an exploratory run: a history that leaves pending tasks out, and long queue
    # waits in which later tasks overtake earlier ones. Later tasks of ours were listed
    # while a lost create's task still waited unlisted; it was judged never created and
    # posted again, and both tasks were paid.
    emu = make_emulator(*SCALE, "--no-history-lists-pending", "--history-lag-s", "0",
                        "--fault-ambiguous", "0.5", "--seed", "7")
    emu.configure(queue_wait_fraction=[0.0, 40.0])  # joycaption: up to ~36 s pending
    code, results, stats, _ = run_manifest(emu, tmp_path, sqlite_url, caption_rows(12),
                                           PIAPI_BULK_RECONCILE_TIMEOUT_S="90")
    assert stats["max_creates_per_input"] == 1, stats  # each row's one task
    assert stats["creates"] == 12
    assert {r["status"] for r in results} == {"completed"}, results
    assert code == 0


def test_without_history_a_lost_create_fails_and_is_never_posted_twice(
        sqlite_url: str, run_rows: RunRows) -> None:
    code, results, stats, _ = run_rows(
        sqlite_url, caption_rows(4), [*SCALE, "--fault-ambiguous", "1.0",
                                      "--history-fault-rate", "1.0"],
        PIAPI_BULK_RECONCILE_TIMEOUT_S="4")
    assert code == 1
    for r in results:
        assert r["status"] == "failed" and r["error"]["kind"] == "ambiguous"
        assert "history" in r["error"]["message"]
    assert stats["max_creates_per_input"] == 1


@pytest.mark.parametrize("shape", ["documented", "full"])
def test_a_lost_create_is_found_whatever_the_history_lists(tmp_path: Path, sqlite_url: str,
                                                           shape: str, run_rows: RunRows) -> None:
    # Documented rows carry no input: each candidate is confirmed by a GET of the task,
    # whose echoed input must be this row's.
    code, results, stats, _ = run_rows(
        sqlite_url, caption_rows(16), [*SCALE, "--fault-ambiguous", "0.5", "--history-shape",
                                       shape])
    assert code == 0, (tmp_path / "run.out").read_text()[-2000:]
    assert {r["status"] for r in results} == {"completed"}
    assert stats["max_creates_per_input"] == 1 and stats["creates"] == 16


def test_a_webhook_that_names_the_job_settles_it(tmp_path: Path, sqlite_url: str,
                                                 redis_url: str, make_emulator: MakeEmulator,
                                                 spawn: Spawn) -> None:
    # History is down; only the webhook (which names the job in its URL) can tell.
    emu = make_emulator(*SCALE, "--fault-ambiguous", "1.0", "--history-fault-rate", "1.0")
    env, _ = webhook_run_env(tmp_path, emu, sqlite_url, redis_url, spawn)
    code, results, stats, _ = run_in(env, emu, tmp_path, caption_rows(4), 180)
    assert code == 0, (tmp_path / "run.out").read_text()[-2000:]
    assert {r["status"] for r in results} == {"completed"}
    assert stats["max_creates_per_input"] == 1


def test_policy_fail_never_looks(sqlite_url: str, run_rows: RunRows) -> None:
    code, results, stats, _ = run_rows(sqlite_url, caption_rows(3),
                                       [*SCALE, "--fault-ambiguous", "1.0"],
                                       run_args=("--on-ambiguous", "fail"))
    assert code == 1
    assert {(r["status"], r["error"]["kind"]) for r in results} == {("failed", "ambiguous")}
    assert stats["requests"]["histories"] == 0 and stats["max_creates_per_input"] == 1


def test_policy_retry_posts_again_and_may_pay_twice(sqlite_url: str,
                                                    run_rows: RunRows) -> None:
    code, results, stats, _ = run_rows(sqlite_url, caption_rows(8),
                                       [*SCALE, "--fault-ambiguous", "0.5"],
                                       run_args=("--on-ambiguous", "retry"))
    assert code == 0
    assert {r["status"] for r in results} == {"completed"}
    assert stats["max_creates_per_input"] >= 2  # the documented price of this policy
    assert stats["requests"]["histories"] == 0

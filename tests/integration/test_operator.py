"""Operator controls on real parts: cancel, retry, budget and deadline.

The first tests drive the record directly (SQLite and PostgreSQL): schema upgrade, the
compare-and-set moves, the dispatcher's sweeps and budget arithmetic. The rest run
`piapi-bulk` end to end against the emulator over HTTP and check its ledger: which tasks
PiAPI made, which it cancelled, and that no row was ever created twice.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

import scheduler.operator
from scheduler.admission import Admission
from scheduler.status import batch_status
from tests.helpers import Emulator, MakeEmulator, opened, polled_engine, wait_until
from tests.integration.e2e import (
    JOY_KIND,
    NO_PIAPI,
    add_batch,
    add_old_batch,
    caption_rows,
    count_state,
    finish,
    job,
    piapi_bulk,
    read_results,
    run_env,
    start_run,
    write_jsonl,
)
from workers import leases, spending
from workers import transitions as tr
from workers.catalog import UNKNOWN_PRICE_USD
from workers.db import create_tables, session
from workers.models import Batch, Job
from workers.piapi import TaskView, Usage
from workers.prices import upper_usd
from workers.reconcile import records as amb
from workers.states import ErrorKind, JobState
from workers.transitions import operator

NOW = 1_000_000.0
LEASE = 30.0
JOY = ("Qubico/joycaption", "joycaption-beta-one")


# --- the record ----------------------------------------------------------------------------
def put(engine: Engine, job_id: int, **values: Any) -> None:
    """Test setup: place a row where a test needs it."""
    with session(engine) as s:
        row = s.get_one(Job, job_id)
        for name, value in values.items():
            setattr(row, name, value)


def batch_row(engine: Engine, batch_id: str = "b1") -> Batch:
    with Session(engine) as s:
        return s.get_one(Batch, batch_id)


def view(task_id: str, status: str = "pending") -> TaskView:
    return TaskView(task_id=task_id, model=JOY[0], task_type=JOY[1], status=status, output=None,
                    usage=Usage("llm", 0, 100000), error=None, created_at=None,
                    started_at=None, ended_at=None)


def running(engine: Engine, job_id: int, task_id: str) -> None:
    claim = tr.claim_for_submit(engine, job_id, NOW, LEASE)
    assert claim is not None
    assert tr.record_created(engine, claim, view(task_id), NOW, NOW + 60)


def failed_ambiguous(engine: Engine, job_id: int) -> None:
    """A create whose answer was lost and never reconciled: failed, kind ambiguous."""
    claim = tr.claim_for_submit(engine, job_id, NOW, LEASE)
    assert claim is not None
    assert tr.record_ambiguous(engine, claim, NOW + 1, "read timeout")
    assert tr.resolve_ambiguous_as_failed(engine, NOW + 2) >= 1


def test_an_older_database_gains_the_new_columns(engine: Engine) -> None:
    with engine.begin() as conn:  # the schema as the previous version made it, before Alembic
        conn.execute(text("DROP TABLE alembic_version"))
        for column in ("retry_base", "reconcile_from"):
            conn.execute(text(f"ALTER TABLE jobs DROP COLUMN {column}"))
        for column in ("budget_usd", "deadline_at", "cancel_mode", "cancelled_at", "paused"):
            conn.execute(text(f"ALTER TABLE batches DROP COLUMN {column}"))
        add_old_batch(conn, "failed", attempts=3)
    create_tables(engine)
    create_tables(engine)  # idempotent
    with Session(engine) as s:
        old = s.exec(select(Job)).one()
        assert (old.retry_base, old.reconcile_from) == (0, None)
    st = batch_status(engine, "old")
    assert st is not None and st.budget_usd is None and st.controls() == []
    assert scheduler.operator.retry(engine, "old", failed_only=True, keys=None).requeued == 1


def test_cancel_moves_waiting_rows_and_a_late_claim_loses(engine: Engine) -> None:
    queued, waiting, run, lost, done, leased = add_batch(engine, rows=6)
    put(engine, waiting, state=JobState.RETRY_WAIT.value, next_at=NOW - 1)
    running(engine, run, "t-run")
    running(engine, done, "t-done")
    put(engine, done, state=JobState.COMPLETED.value)
    put(engine, lost, state=JobState.AMBIGUOUS.value, next_at=NOW + 5)
    put(engine, leased, lease_until=NOW + 60, lease_epoch="e")  # a submit message is out

    report = scheduler.operator.cancel(engine, "b1", now_mode=False, now=NOW)

    assert (report.cancelled_now, report.running, report.reconciling) == (3, 1, 1)
    for j in (queued, waiting, leased):
        row = job(engine, j)
        assert (row.state, row.error_kind, row.error_message) == (
            "cancelled", "cancelled", "cancelled by operator")
        assert row.lease_until is None and row.finished_at == NOW
    assert tr.claim_many(engine, [queued, waiting, leased], NOW, LEASE) == []  # lost cleanly
    assert (job(engine, run).state, job(engine, run).next_at) == ("running", NOW)  # poll now
    assert job(engine, lost).state == "ambiguous"  # reconciliation goes on
    assert job(engine, done).state == "completed"
    [target] = tr.load_poll_targets(engine, [run])
    assert target.cancel_mode == "finish"
    b = batch_row(engine)
    assert (b.cancel_mode, b.cancelled_at) == ("finish", NOW)

    again = scheduler.operator.cancel(engine, "b1", now_mode=True, now=NOW + 10)
    assert again.cancelled_now == 1 and again.reconciling == 0
    row = job(engine, lost)
    assert row.state == "cancelled" and "a task may exist at PiAPI" in (row.error_message or "")
    b = batch_row(engine)
    assert (b.cancel_mode, b.cancelled_at) == ("now", NOW)  # first cancel's time kept
    with pytest.raises(scheduler.operator.ConfigError, match="no batch nope"):
        scheduler.operator.cancel(engine, "nope", now_mode=False)


def test_cancelling_an_ended_batch_changes_nothing(engine: Engine) -> None:
    """Every row ended: the batch is left as it is (not stamped cancelled), and said so."""
    done, failed = add_batch(engine, rows=2)
    put(engine, done, state=JobState.COMPLETED.value)
    put(engine, failed, state=JobState.FAILED.value)
    report = scheduler.operator.cancel(engine, "b1", now_mode=True, now=NOW)
    assert report.ended and report.summary() == (
        "batch b1 has ended (every row completed, failed, cancelled or invalid): nothing to "
        "cancel")
    b = batch_row(engine)
    assert (b.cancel_mode, b.cancelled_at) == (None, None)


def test_cancel_counts_the_tasks_running_as_it_takes_effect(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    # A live fleet acts on the cancel as soon as it commits: its next poll of a pending
    # task cancels that task and the row leaves `running` before the command counts.
    pending, processing, queued = add_batch(engine, rows=3)
    running(engine, pending, "t-pending")
    running(engine, processing, "t-processing")
    waiting_rows = operator.cancel_waiting

    def fleet_first(eng: Engine, batch_id: str, at: float) -> int:
        put(eng, pending, state=JobState.CANCELLED.value, finished_at=at)
        return waiting_rows(eng, batch_id, at)

    monkeypatch.setattr(operator, "cancel_waiting", fleet_first)
    report = scheduler.operator.cancel(engine, "b1", now_mode=False, now=NOW)
    assert (report.cancelled_now, report.running) == (1, 2)
    assert job(engine, queued).state == "cancelled"


def test_the_dispatcher_sweeps_cancelled_and_expired_batches(engine: Engine) -> None:
    a1, a2, a3 = add_batch(engine, "b1", rows=3)
    d1, d2, d3 = add_batch(engine, "b2", rows=3, deadline_at=NOW - 1)
    add_batch(engine, "b3", rows=1)
    running(engine, a3, "t-a3")
    scheduler.operator.cancel(engine, "b1", now_mode=False, now=NOW)
    # After the cancel, a create comes back refused (retryable): the row waits again.
    put(engine, a1, state=JobState.RETRY_WAIT.value, next_at=NOW + 5, error_kind=None)
    running(engine, d3, "t-d3")
    put(engine, d2, state=JobState.RETRY_WAIT.value, next_at=NOW + 5)

    admission = Admission(engine)
    batches = {b.id: b for b in leases.open_batches(engine)}
    admission.refresh(batches.values(), NOW + 1, "e")

    assert job(engine, a1).state == "cancelled" and job(engine, a3).state == "running"
    row = job(engine, d1)
    assert row.state == "cancelled" and row.error_kind == "cancelled"
    assert (row.error_message or "").startswith("not started before the deadline ")
    assert job(engine, d2).error_message == "deadline passed while waiting to retry"
    assert job(engine, d3).state == "running"  # running tasks finish
    assert admission.room(batches["b1"], 5, NOW + 1) == 0
    assert admission.room(batches["b2"], 5, NOW + 1) == 0
    assert admission.room(batches["b3"], 5, NOW + 1) == 5
    # A retry lifts the cancel; a sweep that looked before it must not take the rows back.
    assert scheduler.operator.retry(engine, "b1", failed_only=False, keys=None).requeued == 2
    assert operator.sweep_cancelled(engine, "b1", NOW + 2, "finish") == 0
    assert {job(engine, j).state for j in (a1, a2)} == {"queued"}


def test_retry_requeues_and_sends_unknown_creates_to_reconciliation(engine: Engine) -> None:
    provider, lost, lost_cancelled, cancelled, done, invalid, active = add_batch(
        engine, rows=7, max_attempts=3)
    running(engine, provider, "t-p")
    put(engine, provider, state=JobState.FAILED.value, attempts=3, posts=3, tries=2, polls=4,
        error_kind=ErrorKind.PROVIDER.value, error_message="failed 3 of 3", finished_at=NOW)
    failed_ambiguous(engine, lost)
    failed_ambiguous(engine, lost_cancelled)
    put(engine, lost_cancelled, state=JobState.CANCELLED.value, error_kind="cancelled")
    put(engine, cancelled, state=JobState.CANCELLED.value, error_kind="cancelled")
    put(engine, done, state=JobState.COMPLETED.value, task_id="t-done", attempts=1)
    put(engine, invalid, state=JobState.INVALID.value, error_kind="invalid")
    running(engine, active, "t-active")
    with session(engine) as s:
        s.get_one(Batch, "b1").paused = "budget: ..."

    only_failed = scheduler.operator.retry(engine, "b1", failed_only=True, keys=None, now=NOW + 100)
    assert (only_failed.requeued, only_failed.reconciling) == (1, 1)
    assert only_failed.skipped == Counter({"cancelled (not selected)": 2, "still active": 1,
                                           "completed (never re-run)": 1,
                                           "invalid (never re-run)": 1})
    row = job(engine, provider)
    assert (row.state, row.retry_base, row.tries, row.polls, row.task_id, row.error_kind,
            row.finished_at) == ("queued", 3, 0, 0, None, None, None)
    row = job(engine, lost)
    assert (row.state, row.next_at, row.reconcile_from, row.retry_base) == (
        "ambiguous", NOW + 100, NOW + 100, 0)
    [target] = amb.load_ambiguous(engine, [lost])
    assert target.lost_at < NOW + 10 and target.undecided_since == NOW + 100  # fresh period
    assert batch_row(engine).paused is None and not batch_row(engine).done

    rest = scheduler.operator.retry(engine, "b1", failed_only=False, keys=None, now=NOW + 200)
    assert (rest.requeued, rest.reconciling) == (1, 1)
    assert job(engine, lost_cancelled).state == "ambiguous"
    assert job(engine, cancelled).state == "queued"
    assert (job(engine, done).state, job(engine, done).task_id) == ("completed", "t-done")
    assert job(engine, invalid).state == "invalid" and job(engine, active).state == "running"

    # By row id: only those named; completed ones are reported, never re-run.
    put(engine, provider, state=JobState.FAILED.value, error_kind="provider")
    put(engine, cancelled, state=JobState.FAILED.value, error_kind="provider")
    keyed = scheduler.operator.retry(engine, "b1", failed_only=True,
                           keys=[str(1), str(5), "nope"], now=NOW + 300)
    assert (keyed.requeued, keyed.reconciling, keyed.unknown_ids) == (1, 0, ["nope"])
    assert keyed.skipped == Counter({"completed (never re-run)": 1})
    assert job(engine, provider).state == "queued" and job(engine, cancelled).state == "failed"


def test_budget_allowance_pause_and_resume(engine: Engine) -> None:
    ids = add_batch(engine, "b1", rows=10, budget_usd=0.05)
    for j in ids[:2]:
        put(engine, j, state=JobState.COMPLETED.value, usage_consume=100_000)
    running(engine, ids[2], "t-run")
    spend = spending.batch_spend(engine, "b1", NOW, "e")
    assert spend.spent_usd == pytest.approx(0.02) and spend.frozen_usd == pytest.approx(0.01)
    assert (spend.next_usd, spend.waiting, spend.in_flight) == (pytest.approx(0.01), 7, 1)

    admission = Admission(engine)
    [b1] = leases.open_batches(engine)
    admission.refresh([b1], NOW, "e")
    assert admission.room(b1, 5, NOW) == 2  # 0.02 + 0.01 + 2 x 0.01 = 0.05
    leased = leases.lease_submits(engine, "b1", admission.room(b1, 5, NOW), NOW, "e", LEASE)
    admission.took("b1", len(leased))
    assert len(leased) == 2 and admission.room(b1, 5, NOW) == 0
    assert batch_row(engine).paused is None

    # Leased creates count as in flight: the next look finds the budget reached.
    later = Admission(engine)
    later.refresh(leases.open_batches(engine), NOW + 1, "e")
    assert later.room(b1, 5, NOW + 1) == 0
    paused = batch_row(engine).paused
    assert paused == ("budget: spent $0.02 + frozen $0.03 of $0.05; re-run with a higher "
                      "--budget-usd to continue")
    st = batch_status(engine, "b1")
    assert st is not None and st.to_json()["paused"] == paused
    assert st.to_json()["budget_usd"] == 0.05 and f"paused: {paused}" in st.controls()

    scheduler.operator.set_limits(engine, "b1", budget_usd=1.0)  # a higher budget lifts the pause
    assert batch_row(engine).paused is None
    resumed = Admission(engine)
    resumed.refresh(leases.open_batches(engine), NOW + 2, "e")
    assert resumed.room(b1, 5, NOW + 2) == 5 and batch_row(engine).paused is None

    # A batch with nothing completed prices its kind at the tariff's dearest options, not
    # at what other batches paid (their rows may have taken cheaper options); a kind nobody
    # knows the price of is assumed dear.
    for j in ids[:2]:
        put(engine, j, usage_consume=300_000)
    add_batch(engine, "b2", rows=2, budget_usd=1.0)
    add_batch(engine, "b3", rows=1, kind=("Qubico/diffrhythm", "txt2audio-base"),
              budget_usd=1.0)  # a model sent unchecked
    assert spending.batch_spend(engine, "b2", NOW, "e").next_usd == pytest.approx(
        upper_usd(*JOY_KIND))
    unknown = spending.batch_spend(engine, "b3", NOW, "e")
    assert unknown.next_usd == UNKNOWN_PRICE_USD
    assert spending.allowance(1.0, unknown.spent_usd, unknown.frozen_usd, unknown.next_usd) == 0


# --- the commands ----------------------------------------------------------------------------
def test_commands_report_and_refuse_bad_input(engine: Engine, tmp_path: Path, database_url: str,
                                              redis_url: str) -> None:
    ids = add_batch(engine, "b1", rows=3)
    running(engine, ids[0], "t-1")
    env = run_env(tmp_path, NO_PIAPI, database_url, REDIS_URL=redis_url)
    manifest = write_jsonl(tmp_path / "m.jsonl", caption_rows(2))

    out = piapi_bulk(tmp_path, env, "cancel", "nope")
    assert out.returncode == 2 and out.stderr.strip() == "piapi-bulk: no batch nope"
    out = piapi_bulk(tmp_path, env, "cancel", "b1")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("batch b1 cancelled: 2 row(s) cancelled now; 1 running task(s)")
    assert lines[1].startswith("no dispatcher is running")
    out = piapi_bulk(tmp_path, env, "status", "b1", "--json")
    [st] = json.loads(out.stdout)["batches"]
    assert st["cancelled"] == "finish" and st["counts"]["cancelled"] == 2
    assert "cancelled" in piapi_bulk(tmp_path, env, "status", "b1").stdout

    out = piapi_bulk(tmp_path, env, "retry", "b1", "--ids", str(tmp_path / "missing"))
    assert out.returncode == 2 and out.stderr.startswith("piapi-bulk: cannot read ids file")
    out = piapi_bulk(tmp_path, env, "retry", "b1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("batch b1: 2 row(s) requeued, 0 sent to reconciliation")
    assert "1 still active" in out.stdout

    for bad in (("--deadline", "soon"), ("--deadline", "2001-01-01T00:00"),
                ("--budget-usd", "0")):
        for command in ("run", "submit"):
            out = piapi_bulk(tmp_path, env, command, str(manifest), *bad)
            assert out.returncode == 2, (command, bad, out.stderr)
            assert len(out.stderr.strip().splitlines()) == 1 and bad[0] in out.stderr

    out = piapi_bulk(tmp_path, env, "submit", str(manifest), "--budget-usd", "2.5",
                     "--deadline", "2h")
    assert out.returncode == 0, out.stderr
    batch_id = out.stdout.strip().splitlines()[-1]
    [st] = json.loads(piapi_bulk(tmp_path, env, "status", batch_id, "--json").stdout)["batches"]
    assert st["budget_usd"] == 2.5 and abs(st["deadline_at"] - (time.time() + 7200)) < 120
    assert "  budget $2.50, spent $0.00\n" in out.stderr  # submit says what is in effect
    out = piapi_bulk(tmp_path, env, "submit", str(manifest))  # not given: both kept
    [st] = json.loads(piapi_bulk(tmp_path, env, "status", batch_id, "--json").stdout)["batches"]
    assert st["budget_usd"] == 2.5 and st["deadline_at"] is not None
    assert "  budget $2.50, spent $0.00\n" in out.stderr and "  deadline " in out.stderr


# --- end to end --------------------------------------------------------------------------------
def only_batch(database_url: str) -> str:
    with opened(database_url) as eng, Session(eng) as s:
        return str(s.exec(select(Batch.id)).one())


def remote_status(database_url: str, keys: list[str]) -> list[str | None]:
    with Session(polled_engine(database_url)) as s:
        rows = s.exec(select(Job).where(col(Job.row_key).in_(keys))).all()
        return [r.remote_status if r.state == "running" else None for r in rows]


def stuck_rows(n: int) -> list[dict[str, Any]]:
    return [{"id": f"stuck-{i}", "model": JOY[0], "task_type": JOY[1],
             "input": {"image": f"https://example.test/[[stuck]]/{i}.png"}}
            for i in range(1, n + 1)]


def ledger_by_task(emu: Emulator) -> dict[str, dict[str, Any]]:
    return {t["task_id"]: t for t in emu.ledger()}


@pytest.mark.parametrize("mode", ["finish", "now"])
def test_cancel_a_running_batch(tmp_path: Path, database_url: str, mode: str,
                                make_emulator: MakeEmulator) -> None:
    # Two tasks that take 30-32 s (with --now, abandoned, 60-62 s), so they are still
    # processing when the cancel comes however slowly a loaded machine starts the command (at
    # 12-14 s, seen processing only by a late poll, one had completed first), two that stay
    # pending at PiAPI, ten never started. Once cancelled, the emulator's clock is moved on
    # past the long tasks' end, so the run does not wait for it.
    rows = caption_rows(2, "long") + stuck_rows(2) + caption_rows(10, "later")
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)
    long_s = "30:32" if mode == "finish" else "60:62"
    emu = make_emulator("--duration", f"joycaption={long_s}")
    env = run_env(tmp_path, emu, database_url)
    proc = start_run(tmp_path, env, str(manifest), "-o", "out.jsonl", "--concurrency", "4")
    wait_until(lambda: remote_status(database_url, ["long-1", "long-2"])
               == ["processing", "processing"], 90, what="both long tasks processing")
    assert count_state(database_url, "running") == 4
    args = ["cancel", only_batch(database_url)] + (["--now"] if mode == "now" else [])
    out = piapi_bulk(tmp_path, env, *args)
    assert out.returncode == 0, out.stderr
    assert "10 row(s) cancelled now; 4 running task(s)" in out.stdout
    if mode == "finish":  # the long tasks end at their next poll, not 30 s from now
        emu.advance(40)
    code = finish(proc, 120)
    ledger = ledger_by_task(emu)
    stats = emu.stats()
    said = (tmp_path / "run.out").read_text()
    assert code == 1, said[-3000:]
    # The run's last words: the cancelled rows, and the command that runs them after all.
    assert "rows cancelled (a deadline, or piapi-bulk cancel)" in said, said[-3000:]
    assert (f"to try them again: piapi-bulk retry {args[1]} && piapi-bulk run "
            f"{tmp_path / 'm.jsonl'}") in said.replace("\n", " "), said[-3000:]
    results = {r["id"]: r for r in read_results(tmp_path / "out.jsonl")}
    assert stats["creates"] == 4 and stats["max_creates_per_input"] == 1  # none after the cancel
    for i in range(1, 11):
        r = results[f"later-{i}"]
        assert (r["status"], r["task_id"], r["error"]["message"]) == (
            "cancelled", None, "cancelled by operator")
    for i in (1, 2):
        r = results[f"stuck-{i}"]
        assert r["status"] == "cancelled" and "cancelled at PiAPI while pending" in \
            r["error"]["message"]
        task = ledger[r["task_id"]]
        assert task["error"]["raw_message"] == "task canceled" and not task["charged"]
    for i in (1, 2):
        r = results[f"long-{i}"]
        if mode == "finish":  # processing tasks run to completion
            assert r["status"] == "completed" and ledger[r["task_id"]]["status"] == "completed"
        else:  # abandoned: said so, and PiAPI may still finish (and charge) the task
            assert r["status"] == "cancelled" and "may still finish and be charged" in \
                r["error"]["message"]
            assert ledger[r["task_id"]]["status"] in ("processing", "completed")
    if mode == "now":
        _abandoned_tasks_hold_their_slots(tmp_path, env, emu)


def _abandoned_tasks_hold_their_slots(tmp_path: Path, env: dict[str, str],
                                      emu: Emulator) -> None:
    """The two tasks `cancel --now` abandoned still run at PiAPI (for about 50 s more): they
    are watched and go on counting against the limit, so another manifest's run, given all 4
    slots, uses only the 2 they leave, and the account never has more than 4 in flight."""
    status = json.loads(piapi_bulk(tmp_path, env, "status", "--json").stdout)
    assert [(b["abandoned"], b["watched"]) for b in status["batches"]] == [(2, 2)]
    emu.configure(durations_s={"joycaption": [1.0, 1.5]})  # the new tasks are short
    manifest = write_jsonl(tmp_path / "next.jsonl", caption_rows(4, "next"))
    code = finish(start_run(tmp_path, env, str(manifest), "-o", "next.jsonl.out",
                            "--concurrency", "4", name="next"), 120)
    assert code == 0, (tmp_path / "next.out").read_text()[-3000:]
    # (The check means something only while the abandoned tasks still ran.)
    still = [t["status"] for t in emu.ledger() if "/long/" in t["input"]["image"]]
    assert still == ["processing", "processing"]
    assert emu.stats()["peak_in_flight"] <= 4, emu.stats()


def test_retry_by_id_then_every_failed_row(tmp_path: Path, database_url: str,
                                           make_emulator: MakeEmulator) -> None:
    rows = caption_rows(12)
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)
    emu = make_emulator("--time-scale", "0.02", "--fault-fail", "0.5")
    env = run_env(tmp_path, emu, database_url)
    args = (str(manifest), "-o", "out.jsonl", "--max-attempts", "1")
    assert finish(start_run(tmp_path, env, *args), 120) == 1
    first = {r["id"]: r for r in read_results(tmp_path / "out.jsonl")}
    failed = sorted(k for k, r in first.items() if r["status"] == "failed")
    completed = sorted(k for k, r in first.items() if r["status"] == "completed")
    assert failed and completed and len(failed) + len(completed) == 12
    assert all(first[k]["error"]["message"].startswith("failed 1 of 1") for k in failed)
    emu.configure(fault_fail=0.0)
    batch = only_batch(database_url)
    # The run ended by saying what failed, by kind, and the exact commands to retry.
    said = (tmp_path / "run.out").read_text()
    assert f"{len(failed)} row{'s' if len(failed) > 1 else ''} failed (" in said
    assert (f"to try them again: piapi-bulk retry {batch} --failed && piapi-bulk run "
            f"{manifest} -o out.jsonl --max-attempts 1") in said

    ids = tmp_path / "ids.txt"
    ids.write_text(f"# one failed row, one completed row, one unknown\n{failed[0]}\n\n"
                   f"{completed[0]}\nno-such-row\n")
    out = piapi_bulk(tmp_path, env, "retry", batch, "--ids", str(ids))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"batch {batch}: 1 row(s) requeued, 0 sent")
    assert "1 completed (never re-run)" in out.stdout and "no-such-row" in out.stdout
    code = finish(start_run(tmp_path, env, *args, name="run2"), 120)
    second = {r["id"]: r for r in read_results(tmp_path / "out.jsonl")}
    assert code == (1 if len(failed) > 1 else 0)
    assert second[failed[0]]["status"] == "completed"
    assert all(second[k]["status"] == "failed" for k in failed[1:])

    out = piapi_bulk(tmp_path, env, "retry", batch, "--failed")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"batch {batch}: {len(failed) - 1} row(s) requeued")
    assert finish(start_run(tmp_path, env, *args, name="run3"), 120) == 0
    third = {r["id"]: r for r in read_results(tmp_path / "out.jsonl")}
    ledger = emu.ledger()
    stats = emu.stats()
    assert {r["status"] for r in third.values()} == {"completed"}
    per_input = Counter(t["input_key"] for t in ledger)
    key_of = {t["task_id"]: t["input_key"] for t in ledger}
    for k in completed:  # never re-run: the same task, and PiAPI made no other for the row
        assert third[k]["task_id"] == first[k]["task_id"]
        assert per_input[key_of[third[k]["task_id"]]] == 1
    for k in failed:  # exactly one new task each
        assert third[k]["task_id"] != first[k]["task_id"] and third[k]["attempts"] == 2
        assert per_input[key_of[third[k]["task_id"]]] == 2
    assert stats["creates"] == 12 + len(failed)


def test_retry_of_a_lost_create_adopts_its_task(tmp_path: Path, database_url: str,
                                                make_emulator: MakeEmulator) -> None:
    # The answers are lost and the history is down: the rows fail (kind ambiguous) although
    # PiAPI made their tasks. A retry must find those tasks, not pay for new ones.
    manifest = write_jsonl(tmp_path / "m.jsonl", caption_rows(3))
    emu = make_emulator("--time-scale", "0.02", "--fault-ambiguous", "1.0",
                        "--history-fault-rate", "1.0")
    # A reconcile timeout under the first look's 2 s: the first run gives up at that look,
    # not at the next one 10 s later.
    env = run_env(tmp_path, emu, database_url, PIAPI_BULK_RECONCILE_TIMEOUT_S="1")
    assert finish(start_run(tmp_path, env, str(manifest), "-o", "out.jsonl"), 120) == 1
    first = read_results(tmp_path / "out.jsonl")
    assert {(r["status"], r["error"]["kind"]) for r in first} == {("failed", "ambiguous")}
    assert emu.stats()["creates"] == 3
    emu.configure(fault_ambiguous=0.0, history_fault_rate=0.0)
    out = piapi_bulk(tmp_path, env, "retry", only_batch(database_url))
    assert out.returncode == 0, out.stderr
    assert "0 row(s) requeued, 3 sent to reconciliation first" in out.stdout
    # Older than the reconcile timeout, but the retry gives each a fresh period.
    code = finish(start_run(tmp_path, env, str(manifest), "-o", "out.jsonl", name="run2"),
                  120)
    stats = emu.stats()
    ledger = ledger_by_task(emu)
    assert code == 0, (tmp_path / "run2.out").read_text()[-3000:]
    results = read_results(tmp_path / "out.jsonl")
    assert {r["status"] for r in results} == {"completed"}
    assert stats["creates"] == 3 and stats["max_creates_per_input"] == 1  # adopted, not re-posted
    assert all(r["task_id"] in ledger and r["attempts"] == 1 for r in results)


def test_budget_stops_admission_and_a_higher_budget_resumes(
        tmp_path: Path, database_url: str, make_emulator: MakeEmulator) -> None:
    rows = caption_rows(20)  # $0.01 a task at the emulator
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)
    emu = make_emulator("--time-scale", "0.02")
    env = run_env(tmp_path, emu, database_url)
    args = (str(manifest), "-o", "out.jsonl")
    code = finish(start_run(tmp_path, env, *args, "--concurrency", "3", "--budget-usd", "0.05"),
                  120)
    out = (tmp_path / "run.out").read_text()
    assert code == 3, out[-3000:]
    assert "re-run with a higher --budget-usd to continue" in out
    first = read_results(tmp_path / "out.jsonl")
    created = emu.stats()["creates"]
    assert 0 < created <= 5  # never past $0.05
    statuses = Counter(r["status"] for r in first)
    assert statuses == Counter({"completed": created, "pending": 20 - created})
    status = piapi_bulk(tmp_path, env, "status", only_batch(database_url), "--json")
    [st] = json.loads(status.stdout)["batches"]
    assert st["budget_usd"] == 0.05 and st["paused"].startswith("budget: spent $0.05")
    assert st["spent_usd"] == pytest.approx(0.01 * created)

    # The rest at up to 10 in flight: 2 rounds of tasks, not 5 (the budget holds either way).
    code = finish(start_run(tmp_path, env, *args, "--budget-usd", "1", "--concurrency", "10",
                            name="run2"), 120)
    stats = emu.stats()
    assert code == 0, (tmp_path / "run2.out").read_text()[-3000:]
    second = read_results(tmp_path / "out.jsonl")
    assert {r["status"] for r in second} == {"completed"}
    assert stats["creates"] == 20 and stats["max_creates_per_input"] == 1
    done_first = {r["id"]: r["task_id"] for r in first if r["status"] == "completed"}
    assert all(r["task_id"] == done_first[r["id"]] for r in second if r["id"] in done_first)


def test_nothing_starts_after_the_deadline(tmp_path: Path, database_url: str,
                                           make_emulator: MakeEmulator) -> None:
    # Tasks of 12-14 s, so the two running ones are still running when the deadline
    # passes; once it has (the six waiting rows cancelled), the emulator's clock is moved on
    # past their end, so the run does not wait for it.
    manifest = write_jsonl(tmp_path / "m.jsonl", caption_rows(8))
    emu = make_emulator("--duration", "joycaption=12:14")
    env = run_env(tmp_path, emu, database_url)
    proc = start_run(tmp_path, env, str(manifest), "-o", "out.jsonl", "--concurrency", "2")
    wait_until(lambda: count_state(database_url, "running") == 2, 90, what="two tasks running")
    # The deadline, given again for the same manifest, applies to the running batch.
    out = piapi_bulk(tmp_path, env, "submit", str(manifest), "--deadline", "1s")
    assert out.returncode == 0, out.stderr
    wait_until(lambda: count_state(database_url, "cancelled") == 6, 60,
               what="the waiting rows cancelled at the deadline")
    emu.advance(20)  # they end at their next poll, not 12 s from now
    code = finish(proc, 120)
    stats = emu.stats()
    assert code == 1, (tmp_path / "run.out").read_text()[-3000:]
    results = read_results(tmp_path / "out.jsonl")
    done = [r for r in results if r["status"] == "completed"]
    cancelled = [r for r in results if r["status"] == "cancelled"]
    assert len(done) == stats["creates"] == 2  # the running tasks finished; none started after
    assert len(cancelled) == 6
    for r in cancelled:
        assert r["error"]["kind"] == "cancelled" and r["task_id"] is None
        assert r["error"]["message"].startswith("not started before the deadline 20")

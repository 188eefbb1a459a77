"""The chaos run's end checks and recovery figures on hand-made evidence (no processes)."""

from __future__ import annotations

import json
from typing import Any

from chaos import checks, report
from emulator.parsing import input_key

MODEL, TASK = "Qubico/joycaption", "joycaption-beta-one"
T0 = "2026-01-01T00:00:0{}Z"
NEVER = "0001-01-01T00:00:00Z"


def _input(i: int) -> dict[str, Any]:
    return {"image": f"https://example.test/{i}.jpg"}


def _task(tid: str, i: int, status: str, consume: int, created: int, ended: int | None,
          output: Any = None) -> dict[str, Any]:
    return {"task_id": tid, "input_key": input_key(MODEL, TASK, _input(i)), "status": status,
            "consume": consume, "created_at": T0.format(created),
            "ended_at": T0.format(ended) if ended is not None else NEVER, "output": output,
            "error": {"raw_message": "no available account" if status == "failed" else ""}}


def _job(i: int, state: str, task_id: str | None, kind: str | None = None) -> dict[str, Any]:
    return {"id": i, "seq": i, "row_key": f"r{i}", "state": state, "attempts": 1, "posts": 1,
            "task_id": task_id, "error_kind": kind, "error_message": "why" if kind else None,
            "input_json": json.dumps(_input(i)), "model": MODEL, "task_type": TASK}


def _line(i: int, status: str, task_id: str | None, output: Any = None,
          kind: str | None = None) -> dict[str, Any]:
    return {"id": f"r{i}", "status": status, "task_id": task_id, "output": output,
            "error": {"kind": kind, "message": "why"} if kind else None}


def _evidence() -> checks.Evidence:
    out = {"text": "a caption"}
    return checks.Evidence(
        manifest=[{"id": f"r{i}"} for i in (1, 2, 3, 4)],
        jobs=[_job(1, "completed", "t1"), _job(2, "completed", "t2"),
              _job(3, "failed", "t3", "provider"), _job(4, "failed", None, "retries_exhausted")],
        attempts=[{"job_id": 1, "n": 1, "state": "created", "task_id": "t1", "error": None},
                  {"job_id": 2, "n": 1, "state": "created", "task_id": "t2", "error": None},
                  {"job_id": 3, "n": 1, "state": "created", "task_id": "t3", "error": None}],
        results=[_line(1, "completed", "t1", out), _line(2, "completed", "t2", {"text": "x"}),
                 _line(3, "failed", "t3", kind="provider"),
                 _line(4, "failed", None, kind="retries_exhausted")],
        ledger=[_task("t1", 1, "completed", 5, 1, 3, out),
                _task("lost", 1, "completed", 5, 2, 4, out),  # never recorded: paid twice
                _task("t2", 2, "completed", 5, 2, 5, out),  # output differs from results
                _task("t3", 3, "failed", 0, 3, 4)],
        stats={"peak_in_flight": 3, "creates_refused": 7}, concurrency=3)


def test_each_check_finds_its_fault() -> None:
    found, att = checks.run_checks(_evidence())
    by = {c["check"]: c for c in found}
    assert by["rows_lost"]["pass"] and by["rows_lost"]["value"] == 0
    assert by["rows_paid_twice"]["value"] == 1
    assert by["rows_paid_twice"]["examples"][0]["id"] == "r1"
    assert {t["recorded"] for t in by["rows_paid_twice"]["examples"][0]["tasks"]} == {True, False}
    assert by["completed_outputs_match"]["value"] == 1
    assert by["completed_outputs_match"]["examples"][0]["why"] == "output differs"
    assert by["failed_rows_genuine"]["value"] == 1  # r4 gave up; r3 failed at the emulator
    assert by["failed_rows_genuine"]["examples"][0]["id"] == "r4"
    assert by["peak_in_flight"]["pass"] and by["peak_in_flight"]["ledger_recount"] == 3
    assert by["tasks_attributed"]["pass"] and by["tasks_attributed"]["untracked_tasks"] == 1
    assert checks.creates_per_row(_evidence(), att)["histogram"] == {"0": 1, "1": 2, "2": 1}


def test_a_missing_line_is_a_lost_row_and_peak_counts_ends_first() -> None:
    ev = _evidence()
    ev.results = ev.results[:3]
    assert checks.rows_lost(ev)["value"] == 1
    tasks = [_task("a", 1, "completed", 1, 1, 2), _task("b", 2, "completed", 1, 2, 3)]
    assert checks.ledger_peak(tasks) == 1


def test_recovery_figures_from_the_timeline() -> None:
    timeline = [{"t": float(t), "finished": 10 * t if t < 20 or t >= 26 else 190,
                 "signature": [10 * t if t < 20 or t >= 26 else 190, 0, 0],
                 "db_up": not 20 <= t < 23, "leader_pid": 1 if t < 20 else (None if t < 24 else 2),
                 "epoch": "a"} for t in range(40)]
    event = {"t": 19.5, "kind": "dispatcher_sigkill", "pid": 1}
    rec = report.recovery(event, timeline)
    assert rec["takeover_s"] == 4.5 and rec["progress_resumed_s"] == 6.5
    assert rec["throughput_recovered_s"] is not None
    pg = report.recovery({"t": 19.5, "kind": "postgres_restart"}, timeline)
    assert pg["db_back_s"] == 3.5  # down at 20, 21 and 22 s
    summary = report.disruption_summary([{**event, "recovery": rec}])
    assert summary["done"] == {"dispatcher_sigkill": 1}


def _stuck_row(fates: tuple[str, ...], statuses: tuple[str, ...]) -> checks.Evidence:
    """Row r5: tasks s0.. with these fates and statuses, all its attempts; it failed `stuck`."""
    ids = [f"s{n}" for n in range(len(fates))]
    tasks = enumerate(zip(ids, fates, statuses, strict=True))
    ledger = [{**_task(tid, 5, status, 0, n, n + 1 if status != "processing" else None),
               "fate": fate} for n, (tid, fate, status) in tasks]
    return checks.Evidence(
        manifest=[{"id": "r5"}], jobs=[_job(5, "failed", ids[-1], "stuck")],
        attempts=[{"job_id": 5, "n": n + 1, "state": "failed", "task_id": tid, "error": None}
                  for n, tid in enumerate(ids)],
        results=[_line(5, "failed", ids[-1], kind="stuck")], ledger=ledger,
        stats={"peak_in_flight": 1, "creates_refused": 0}, concurrency=3)


def test_a_row_out_of_attempts_on_a_hung_task_failed_genuinely() -> None:
    fates = ("fail_transient", "fail_transient", "stuck_processing")
    for last in ("processing", "failed"):  # still hung at the end, or timed out by PiAPI since
        found, _ = checks.run_checks(_stuck_row(fates, ("failed", "failed", last)))
        assert {c["check"]: c for c in found}["failed_rows_genuine"]["pass"], last
    # piapi-bulk judging a task stuck that PiAPI was not hanging is giving up, not PiAPI failing
    found, _ = checks.run_checks(_stuck_row(("fail_transient", "complete"),
                                            ("failed", "processing")))
    bad = {c["check"]: c for c in found}["failed_rows_genuine"]
    assert bad["value"] == 1
    problems = bad["examples"][0]["problems"]
    assert "kind 'stuck' is piapi-bulk giving up, not PiAPI failing" in problems
    # and a hung task does not excuse another task of the row that completed
    found, _ = checks.run_checks(_stuck_row(("complete", "stuck_processing"),
                                            ("completed", "processing")))
    assert {c["check"]: c for c in found}["failed_rows_genuine"]["value"] == 1


def _lost_last_create(later_start: float | None, row_tasks: tuple[str, ...] = ()
                      ) -> checks.Evidence:
    """Row r6's create was lost at t=100 (worker killed) and it failed `ambiguous`; row r7's
    create began at `later_start` (None: r7 has no create). The ledger holds `row_tasks`
    (status by fate) for r6."""
    ledger = [_task(f"x{n}", 6, status, 0, n, n + 1) for n, status in enumerate(row_tasks)]
    attempts = [{"job_id": 6, "n": 1, "state": "ambiguous", "task_id": None,
                 "error": "the worker stopped", "started_at": 80.0, "ended_at": 100.0}]
    if later_start is not None:
        attempts.append({"job_id": 7, "n": 1, "state": "created", "task_id": "t7",
                         "error": None, "started_at": later_start, "ended_at": None})
        ledger.append(_task("t7", 7, "completed", 5, 8, 9, {"text": "c"}))
    return checks.Evidence(
        manifest=[{"id": "r6"}, {"id": "r7"}],
        jobs=[_job(6, "failed", None, "ambiguous"), _job(7, "completed", "t7")],
        attempts=attempts,
        results=[_line(6, "failed", None, kind="ambiguous"),
                 _line(7, "completed", "t7", {"text": "c"})],
        ledger=ledger, stats={"peak_in_flight": 1, "creates_refused": 0}, concurrency=3)


def test_a_lost_last_create_nothing_could_prove_absent_is_the_documented_case() -> None:
    def genuine(ev: checks.Evidence) -> dict[str, Any]:
        found, _ = checks.run_checks(ev)
        return {c["check"]: c for c in found}["failed_rows_genuine"]

    # No create of ours after the loss, no task at the emulator: README's "Not promised".
    for later in (None, 90.0):  # r7's create began before r6's was declared lost
        check = genuine(_lost_last_create(later))
        assert check["pass"] and check["unprovable_lost_creates"] == ["r6"], later
    # An earlier task of the row that failed at PiAPI does not change that.
    assert genuine(_lost_last_create(None, ("failed",)))["pass"]
    # A later create of ours was there to prove it: giving up is piapi-bulk's fault.
    check = genuine(_lost_last_create(120.0))
    assert not check["pass"] and check["examples"][0]["id"] == "r6"
    # The lost create did make a task (the emulator has it): never excused.
    check = genuine(_lost_last_create(None, ("completed",)))
    assert not check["pass"] and check["unprovable_lost_creates"] == []

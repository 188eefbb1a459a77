"""The fleet's ledger checks on a hand-made ledger, and how a check is printed."""

from __future__ import annotations

import json
import time
from typing import Any

from chaos.checks import Evidence
from fleet import checks

W1, W2 = "10.0.0.41", "10.0.0.42"
T0 = 1_750_000_000.0


def stamp(t: float) -> str:
    whole = int(t)
    frac = int((t - whole) * 1e6)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{frac:06d}Z"


def task(tid: str, row: int, by: str, created: float, seen_by: str, seen: float,
         status: str = "completed") -> dict[str, Any]:
    return {"task_id": tid, "input_key": f"k{row}", "status": status, "consume": 1,
            "created_at": stamp(created), "ended_at": stamp(seen - 0.1),
            "created_by": by, "end_seen_by": seen_by, "end_seen_at": stamp(seen),
            "output": None, "error": None}


def evidence(ledger: list[dict[str, Any]], rows: int = 3) -> Evidence:
    jobs = [{"id": i, "row_key": f"r{i}", "state": "completed", "model": "m", "task_type": "t",
             "input_json": json.dumps({"i": i}), "task_id": None} for i in range(rows)]
    return Evidence(manifest=[{"id": f"r{i}"} for i in range(rows)], jobs=jobs, attempts=[],
                    results=[{"id": f"r{i}", "status": "completed"} for i in range(rows)],
                    ledger=ledger, stats={"peak_in_flight": 2}, concurrency=5)


def attributed(ev: Evidence) -> Any:
    from chaos.checks import Attribution
    att = Attribution()
    for t in ev.ledger:
        att.tasks_by_row.setdefault(f"r{t['input_key'][1:]}", []).append(t)
        att.tracked[t["task_id"]] = f"r{t['input_key'][1:]}"
    return att


def test_rows_w1_held_at_the_cut_finished_by_w2_pass() -> None:
    ev = evidence([task("a", 0, W1, T0, W2, T0 + 30), task("b", 1, W1, T0 - 5, W1, T0 - 1),
                   task("c", 2, W2, T0 + 1, W2, T0 + 3)])
    att = attributed(ev)
    assert checks.held_at(ev.ledger, att, W1, T0 + 0.5) == ["r0"]
    got = checks.taken_over(ev, att, W1, W2, T0 + 0.5, T0 + 60)
    assert got["pass"] and got["held_at_cut"] == 1 and got["finished_by"] == {"other": 1}
    assert checks.completed_once(ev, att)["pass"]


def test_a_held_row_seen_done_by_w1_while_it_was_cut_off_fails() -> None:
    ev = evidence([task("a", 0, W1, T0, W1, T0 + 30)], rows=1)
    got = checks.taken_over(ev, attributed(ev), W1, W2, T0 + 0.5, T0 + 60)
    assert not got["pass"] and got["examples"][0]["end_seen_by"] == W1


def test_a_second_create_by_w1_after_it_came_back_fails() -> None:
    ev = evidence([task("a", 0, W2, T0, W2, T0 + 5),
                   task("b", 0, W1, T0 + 61, W1, T0 + 65)], rows=1)
    att = attributed(ev)
    got = checks.no_create_after_return(ev, att, W1, T0 + 60)
    assert not got["pass"] and got["value"] == 1
    assert not checks.completed_once(ev, att)["pass"]  # two completed tasks for one row


def test_takeover_needs_another_host_and_every_disruption() -> None:
    events = [{"kind": k} for k in ("cut", "rejoin", "impair", "heal", "unpartition")]
    events.append({"kind": "partition", "host": "ctl1", "new_leader_host": "ctl2",
                   "takeover_s": 9.5})
    assert checks.takeover(events)["pass"] and checks.disruptions_done(events)["pass"]
    events[-1]["new_leader_host"] = "ctl1"
    assert not checks.takeover(events)["pass"]
    assert checks.disruptions_done(events[:2])["missing"] == ["impair", "heal", "partition",
                                                             "unpartition"]


def test_line_marks_pass_and_fail() -> None:
    ok = checks.line({"check": "x", "value": 3, "pass": True, "limit": 5, "examples": []})
    bad = checks.line({"check": "y", "value": 1, "pass": False})
    assert ok == "  ✓ x: 3 (limit=5)" and bad == "  ✗ y: 1"

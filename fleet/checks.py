"""The fleet run's checks against the emulator's ledger (pure): the chaos run's checks for
"nothing paid twice", "the limit held" and every task attributed, plus every row completed
once, the cut-off worker's rows taken over by the other worker host, no create twice after
it came back, the standby's takeover; and their ✓/✗ lines."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bench.emu import parse_time
from chaos.checks import (
    Attribution,
    Evidence,
    attribute,
    attribution_complete,
    in_flight,
    paid_twice,
)

EXAMPLES = 10


def _check(name: str, value: Any, ok: bool, **detail: Any) -> dict[str, Any]:
    return {"check": name, "value": value, "pass": ok, **detail}


def completed_once(ev: Evidence, att: Attribution) -> dict[str, Any]:
    """Every manifest row completed (DB, results file) with exactly one completed task."""
    states = {str(j["row_key"]): str(j["state"]) for j in ev.jobs}
    lines = {str(r["id"]): r.get("status") for r in ev.results}
    bad = []
    for row in ev.manifest:
        rid = str(row["id"])
        done = [t for t in att.tasks_by_row.get(rid, []) if t["status"] == "completed"]
        if states.get(rid) != "completed" or lines.get(rid) != "completed" or len(done) != 1:
            bad.append({"id": rid, "db_state": states.get(rid), "result": lines.get(rid),
                        "completed_tasks": len(done)})
    return _check("every_row_completed_once", len(ev.manifest) - len(bad), not bad,
                  rows=len(ev.manifest), examples=bad[:EXAMPLES])


def _t(task: Mapping[str, Any], key: str) -> float | None:
    value = task.get(key)
    return parse_time(str(value)) if value else None


def held_at(ledger: Sequence[Mapping[str, Any]], att: Attribution, client: str,
            at: float) -> list[str]:
    """Rows whose task `client` had created before `at` and nobody had yet seen end: what
    that worker host was working on at that instant."""
    rows = {str(t["task_id"]): r for r, tasks in att.tasks_by_row.items() for t in tasks}
    held = []
    for task in ledger:
        created, seen = _t(task, "created_at"), _t(task, "end_seen_at")
        if task.get("created_by") == client and created is not None and created < at \
                and (seen is None or seen >= at) and str(task["task_id"]) in rows:
            held.append(rows[str(task["task_id"])])
    return sorted(set(held))


def taken_over(ev: Evidence, att: Attribution, cut: str, other: str, cut_at: float,
               back_at: float) -> dict[str, Any]:
    """The rows the cut-off host held at the cut were finished by the other host: each
    completed once, its completion first seen by `other` (w1 could not see anything
    while cut off; back before it, it may finish a few itself, reported)."""
    held = held_at(ev.ledger, att, cut, cut_at)
    by: dict[str, int] = {}
    bad = []
    for row in held:
        done = [t for t in att.tasks_by_row.get(row, []) if t["status"] == "completed"]
        who = str(done[0].get("end_seen_by")) if len(done) == 1 else None
        seen = _t(done[0], "end_seen_at") if len(done) == 1 else None
        label = "other" if who == other else "cut_host_after_return" \
            if who == cut and seen is not None and seen >= back_at else "wrong"
        by[label] = by.get(label, 0) + 1
        if label == "wrong":
            bad.append({"id": row, "completed_tasks": len(done), "end_seen_by": who})
    ok = bool(held) and not bad and by.get("other", 0) > 0
    return _check("cut_off_rows_taken_over", by.get("other", 0), ok, held_at_cut=len(held),
                  finished_by=by, examples=bad[:EXAMPLES])


def no_create_after_return(ev: Evidence, att: Attribution, cut: str,
                           back_at: float) -> dict[str, Any]:
    """After the cut-off host came back, it created no task for a row that already had
    one (a stale create sent again)."""
    twice = []
    for row, tasks in att.tasks_by_row.items():
        ordered = sorted(tasks, key=lambda t: _t(t, "created_at") or 0.0)
        for later in ordered[1:]:
            created = _t(later, "created_at")
            if later.get("created_by") == cut and created is not None and created >= back_at:
                twice.append({"id": row, "task_id": later["task_id"]})
    after = sum(1 for t in ev.ledger if t.get("created_by") == cut
                and (_t(t, "created_at") or 0.0) >= back_at)
    return _check("no_second_create_after_return", len(twice), not twice,
                  creates_by_it_after_return=after, examples=twice[:EXAMPLES])


def takeover(events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The partitioned dispatcher's standby, on another host, took the lock meanwhile."""
    part = next((e for e in events if e["kind"] == "partition"), None)
    if part is None:
        return _check("standby_took_over", None, False, why="the partition was not done")
    seconds = part.get("takeover_s")
    ok = seconds is not None and part.get("new_leader_host") not in (None, part["host"])
    return _check("standby_took_over", seconds, ok, partitioned=part["host"],
                  new_leader=part.get("new_leader_host"))


def disruptions_done(events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Each disruption started and ended during the run."""
    done = [str(e["kind"]) for e in events]
    need = ("cut", "rejoin", "impair", "heal", "partition", "unpartition")
    missing = [k for k in need if k not in done]
    return _check("disruptions_done", len(need) - len(missing), not missing, missing=missing)


def run_checks(ev: Evidence, events: Sequence[Mapping[str, Any]], clients: Mapping[str, str],
               cut_at: float, back_at: float) -> list[dict[str, Any]]:
    """Every check, in the issue's order. `clients`: host → address; times are unix."""
    att = attribute(ev)
    return [completed_once(ev, att), paid_twice(ev, att), in_flight(ev),
            taken_over(ev, att, clients["w1"], clients["w2"], cut_at, back_at),
            no_create_after_return(ev, att, clients["w1"], back_at),
            takeover(events), disruptions_done(events), attribution_complete(att)]


def line(check: Mapping[str, Any]) -> str:
    """One check as printed: ✓ or ✗, its name, its value and the detail that matters."""
    mark = "✓" if check["pass"] else "✗"
    skip = {"check", "value", "pass", "examples", "unattributed", "conflicts",
            "untracked_examples"}
    detail = ", ".join(f"{k}={v}" for k, v in check.items() if k not in skip)
    return f"  {mark} {check['check']}: {check['value']}" + (f" ({detail})" if detail else "")

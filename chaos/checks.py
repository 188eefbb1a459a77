"""What must hold after a chaos run, judged from the DB, the results file and the emulator's
own ledger (pure functions: no processes, no I/O).

Every emulator task is attributed to the manifest row it belongs to in two independent
ways: by the task ids our database recorded (jobs.task_id, attempts.task_id) and by its
input (the emulator's `input_key`: a hash of model, task type and the input as sent; each
manifest row has its own image URL). So a task piapi-bulk never recorded (a lost create it
lost track of) is still charged to its row.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.emu import parse_time
from emulator.parsing import input_key

TERMINAL_RESULTS = frozenset({"completed", "failed", "cancelled", "invalid"})
GENUINE_KINDS = frozenset({"provider", "input", "invalid"})
"""Error kinds of a row that genuinely failed: PiAPI failed every task it ran for the row,
or refused its input; `invalid` rows never reached PiAPI. Anything else (retries_exhausted,
ambiguous, not_found, account, cancelled) is piapi-bulk giving up, not PiAPI failing, with one
exception: `stuck`, where PiAPI hung a task the emulator was told to hang (STUCK_FATES) and the
row had no attempt left to replace it (the other tasks failed at PiAPI)."""
STUCK_FATES = frozenset({"stuck_pending", "stuck_processing"})
"""The emulator's fates (the ledger's `fate`) of tasks it never ends on its own account."""
EXAMPLES = 10


@dataclass
class Evidence:
    """The run's final record, as read at the end."""

    manifest: list[dict[str, Any]]
    """Manifest rows in order: id, model, task_type, input."""
    jobs: list[dict[str, Any]]
    """The batch's jobs table rows."""
    attempts: list[dict[str, Any]]
    """The attempts rows of those jobs."""
    results: list[dict[str, Any]]
    """The exported results file, line by line."""
    ledger: list[dict[str, Any]]
    """GET /_emulator/ledger: every task the emulator made."""
    stats: dict[str, Any]
    concurrency: int


@dataclass
class Attribution:
    """Which row each emulator task belongs to."""

    tasks_by_row: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    tracked: dict[str, str] = field(default_factory=dict)
    """task id -> row id, from our database."""
    unattributed: list[str] = field(default_factory=list)
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    untracked: list[dict[str, Any]] = field(default_factory=list)
    """Tasks found only by input: made for a row, never recorded by piapi-bulk."""


def row_key(model: Any, task_type: Any, input_json: str | None) -> str:
    """The emulator's input_key for a job as piapi-bulk sends it."""
    return input_key(model, task_type, json.loads(input_json or "{}"))


def attribute(ev: Evidence) -> Attribution:
    """Attribute every ledger task to a row by recorded task id and by input."""
    att = Attribution()
    job_row = {int(j["id"]): str(j["row_key"]) for j in ev.jobs}
    by_input: dict[str, str] = {}
    for j in ev.jobs:
        by_input[row_key(j["model"], j["task_type"], j["input_json"])] = str(j["row_key"])
        if j.get("task_id"):
            att.tracked[str(j["task_id"])] = str(j["row_key"])
    for a in ev.attempts:
        if a.get("task_id") and int(a["job_id"]) in job_row:
            att.tracked[str(a["task_id"])] = job_row[int(a["job_id"])]
    for task in ev.ledger:
        tid = str(task["task_id"])
        by_id, by_key = att.tracked.get(tid), by_input.get(str(task["input_key"]))
        if by_id and by_key and by_id != by_key:
            att.conflicts.append({"task_id": tid, "recorded_for": by_id, "input_of": by_key})
        row = by_id or by_key
        if row is None:
            att.unattributed.append(tid)
            continue
        if by_id is None:
            att.untracked.append(_task_brief(task, row))
        att.tasks_by_row.setdefault(row, []).append(task)
    return att


def _task_brief(task: Mapping[str, Any], row: str | None = None) -> dict[str, Any]:
    brief = {"task_id": task["task_id"], "status": task["status"],
             "consume": task["consume"], "created_at": task["created_at"],
             "ended_at": task["ended_at"],
             "error": (task.get("error") or {}).get("raw_message") or None}
    if row is not None:
        brief["row"] = row
    return brief


def _check(name: str, value: Any, ok: bool, **detail: Any) -> dict[str, Any]:
    return {"check": name, "value": value, "pass": ok, **detail}


def rows_lost(ev: Evidence) -> dict[str, Any]:
    """Every manifest row has a terminal status in the DB and a results line, in order."""
    states = {str(j["row_key"]): str(j["state"]) for j in ev.jobs}
    lines = {str(r["id"]): r for r in ev.results}
    lost: list[dict[str, Any]] = []
    for row in ev.manifest:
        rid = str(row["id"])
        line = lines.get(rid)
        if rid not in states or line is None or line.get("status") not in TERMINAL_RESULTS \
                or states[rid] not in TERMINAL_RESULTS:
            lost.append({"id": rid, "db_state": states.get(rid),
                         "result_status": line.get("status") if line else None})
    order_ok = [str(r["id"]) for r in ev.results] == [str(r["id"]) for r in ev.manifest]
    return _check("rows_lost", len(lost), not lost and order_ok,
                  results_lines=len(ev.results), manifest_rows=len(ev.manifest),
                  results_in_manifest_order=order_ok, examples=lost[:EXAMPLES])


def _db_view(ev: Evidence, row: str) -> dict[str, Any]:
    """A row's job and attempts as the database holds them (evidence for a failed check)."""
    job = next((j for j in ev.jobs if str(j["row_key"]) == row), {})
    keep = ("id", "state", "attempts", "posts", "task_id", "error_kind", "error_message")
    return {"job": {k: job.get(k) for k in keep},
            "attempts": [{k: a.get(k) for k in ("n", "state", "task_id", "error")}
                         for a in ev.attempts if a["job_id"] == job.get("id")]}


def paid_twice(ev: Evidence, att: Attribution) -> dict[str, Any]:
    """No row has two emulator tasks that both consumed credit."""
    twice = []
    for row, tasks in att.tasks_by_row.items():
        paid = [t for t in tasks if int(t.get("consume") or 0) > 0]
        if len(paid) > 1:
            twice.append({"id": row, "tasks": [
                {**_task_brief(t), "recorded": str(t["task_id"]) in att.tracked} for t in paid],
                "all_tasks": [_task_brief(t) for t in tasks], "db": _db_view(ev, row)})
    return _check("rows_paid_twice", len(twice), not twice, examples=twice[:EXAMPLES])


def outputs_match(ev: Evidence, att: Attribution) -> dict[str, Any]:
    """A completed row's output is the emulator's output for its task id (a completed task
    of that row's input)."""
    ledger = {str(t["task_id"]): t for t in ev.ledger}
    keys = {str(j["row_key"]): row_key(j["model"], j["task_type"], j["input_json"])
            for j in ev.jobs}
    bad: list[dict[str, Any]] = []
    completed = 0
    for line in ev.results:
        if line.get("status") != "completed":
            continue
        completed += 1
        task = ledger.get(str(line.get("task_id")))
        why = None
        if task is None:
            why = "task id unknown to the emulator"
        elif task["status"] != "completed":
            why = f"emulator status {task['status']}"
        elif task["input_key"] != keys.get(str(line["id"])):
            why = "the task is another row's"
        elif task["output"] != line.get("output"):
            why = "output differs"
        if why:
            bad.append({"id": line["id"], "task_id": line.get("task_id"), "why": why,
                        "db": _db_view(ev, str(line["id"]))})
    return _check("completed_outputs_match", len(bad), not bad, completed=completed,
                  examples=bad[:EXAMPLES])


def _ended_genuinely(task: Mapping[str, Any], hung: bool) -> bool:
    """The task failed at the emulator, or (`hung`: its row failed `stuck`) it was one the
    emulator hung on purpose."""
    return task.get("status") == "failed" or (hung and task.get("fate") in STUCK_FATES)


def _unprovable(own: list[dict[str, Any]], every: list[dict[str, Any]]) -> bool:
    """The row's last create was lost with no answer, and no create of ours that made a task
    began after it was declared lost: the README's "Not promised" case, where nothing can
    prove PiAPI's listing covers the lost create (the last creates of a run), so the row
    fails `ambiguous` rather than risk paying twice."""
    last = max(own, key=lambda a: int(a["n"]), default=None)
    if last is None or last.get("state") != "ambiguous" or last.get("task_id"):
        return False
    lost = last.get("ended_at")
    return lost is not None and not any(
        a.get("task_id") and a.get("started_at") is not None
        and float(a["started_at"]) > float(lost) for a in every)


def failed_genuinely(ev: Evidence, att: Attribution) -> dict[str, Any]:
    """Rows that did not complete: a reason each, and every attempt genuinely failed (or,
    kind `ambiguous`, the last create was lost, made no task, and nothing could prove so)."""
    jobs = {str(j["row_key"]): j for j in ev.jobs}
    ledger = {str(t["task_id"]): t for t in ev.ledger}
    attempts: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for a in ev.attempts:
        attempts[int(a["job_id"])].append(a)
    bad: list[dict[str, Any]] = []
    unprovable: list[str] = []
    failed = [r for r in ev.results if r.get("status") in ("failed", "cancelled")]
    for line in failed:
        job = jobs.get(str(line["id"]), {})
        error = line.get("error") or {}
        kind, message = error.get("kind"), error.get("message")
        tasks = att.tasks_by_row.get(str(line["id"]), [])
        hung = kind == "stuck" and any(t.get("fate") in STUCK_FATES for t in tasks)
        own = attempts.get(int(job.get("id", -1)), [])
        if (kind == "ambiguous" and _unprovable(own, ev.attempts)
                and all(_ended_genuinely(t, False) for t in tasks)):
            unprovable.append(str(line["id"]))
            continue
        problems = []
        if not kind or not message:
            problems.append("no error kind or message")
        if kind not in GENUINE_KINDS and not hung:
            problems.append(f"kind {kind!r} is piapi-bulk giving up, not PiAPI failing")
        if kind == "provider" and not tasks:
            problems.append("no emulator task for this row")
        if not all(_ended_genuinely(t, hung) for t in tasks):
            problems.append("emulator tasks of this row did not fail")
        if any(a.get("task_id") and not _ended_genuinely(ledger.get(str(a["task_id"]), {}), hung)
               for a in own):
            problems.append("an attempt's task did not fail at the emulator")
        if problems:
            bad.append({"id": line["id"], "kind": kind, "message": message,
                        "problems": problems, "db_state": job.get("state"),
                        "attempts": [{k: a.get(k) for k in ("n", "state", "task_id", "error")}
                                     for a in own],
                        "emulator_tasks": [_task_brief(t) for t in tasks]})
    reasons = Counter(f"{(r.get('error') or {}).get('kind')}: "
                      f"{((r.get('error') or {}).get('message') or '')[:120]}" for r in failed)
    return _check("failed_rows_genuine", len(bad), not bad, failed_rows=len(failed),
                  reasons=dict(reasons.most_common(EXAMPLES)), examples=bad[:EXAMPLES],
                  unprovable_lost_creates=unprovable)


def ledger_peak(tasks: Iterable[Mapping[str, Any]]) -> int:
    """Most tasks pending or processing at once, from the ledger's created/ended times
    (an end at the same instant as a create counts first, as the emulator does)."""
    events: list[tuple[float, int]] = []
    for task in tasks:
        created = parse_time(str(task["created_at"]))
        if created is None:
            continue
        events.append((created, 1))
        ended = parse_time(str(task["ended_at"]))
        if ended is not None:
            events.append((ended, -1))
    peak = level = 0
    for _, delta in sorted(events):
        level += delta
        peak = max(peak, level)
    return peak


def in_flight(ev: Evidence) -> dict[str, Any]:
    """Peak in-flight never above the account's limit (the emulator's count, and the
    ledger's times recounted)."""
    peak = int(ev.stats.get("peak_in_flight", 0))
    recount = ledger_peak(ev.ledger)
    return _check("peak_in_flight", peak, peak <= ev.concurrency and recount <= ev.concurrency,
                  limit=ev.concurrency, ledger_recount=recount,
                  creates_refused_over_limit=int(ev.stats.get("creates_refused", 0)))


def attribution_complete(att: Attribution) -> dict[str, Any]:
    """Every emulator task belongs to exactly one row (else the other checks are blind)."""
    n = len(att.unattributed) + len(att.conflicts)
    return _check("tasks_attributed", n, n == 0, unattributed=att.unattributed[:EXAMPLES],
                  conflicts=att.conflicts[:EXAMPLES],
                  untracked_tasks=len(att.untracked),
                  untracked_examples=att.untracked[:EXAMPLES])


def run_checks(ev: Evidence) -> tuple[list[dict[str, Any]], Attribution]:
    """Every check, in the issue's order, and the attribution they used."""
    att = attribute(ev)
    return [rows_lost(ev), paid_twice(ev, att), outputs_match(ev, att),
            failed_genuinely(ev, att), in_flight(ev), attribution_complete(att)], att


def creates_per_row(ev: Evidence, att: Attribution) -> dict[str, Any]:
    """Emulator tasks per row: mean and histogram (a row with 2+ had a task fail, get
    stuck, or a lost create)."""
    per_row = Counter(len(att.tasks_by_row.get(str(r["id"]), [])) for r in ev.manifest)
    rows = max(1, len(ev.manifest))
    return {"mean": round(len(ev.ledger) / rows, 4),
            "histogram": {str(k): v for k, v in sorted(per_row.items())}}


def counts(values: Sequence[Mapping[str, Any]], key: str) -> dict[str, int]:
    """How many of `values` have each value of `key`."""
    return dict(Counter(str(v.get(key)) for v in values).most_common())

"""The end every harness run shares (the chaos run and `fleet`): the emulator drained, the
results exported and the evidence read; then the report written with its logs kept or
removed, and the verdict line. One home, so the two harnesses judge and report alike.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.emu import Emu
from bench.procs import BenchError, Proc
from bench.report import write_json
from chaos.checks import Evidence
from chaos.watch import Db, Progress

EXPORT_S = 120.0
"""How long `piapi-bulk export` may take at the end of a run."""
_JOBS = ("SELECT id, seq, row_key, state, attempts, posts, task_id, error_kind, error_message, "
         "input_json, model, task_type FROM jobs WHERE batch_id = %s ORDER BY seq")
_ATTEMPTS = ("SELECT a.job_id, a.n, a.state, a.task_id, a.error, a.started_at, a.ended_at "
             "FROM attempts a "
             "JOIN jobs j ON j.id = a.job_id WHERE j.batch_id = %s ORDER BY a.job_id, a.n")
_JOB_COLS = ("id", "seq", "row_key", "state", "attempts", "posts", "task_id", "error_kind",
             "error_message", "input_json", "model", "task_type")
_ATTEMPT_COLS = ("job_id", "n", "state", "task_id", "error", "started_at", "ended_at")


@dataclass
class Outcome:
    """What a run did and saw, for the report (each harness adds what only it sees)."""

    status: str = "ok"
    error: str | None = None
    times: dict[str, float] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    evidence: Evidence | None = None
    final_counts: dict[str, int] = field(default_factory=dict)

    def over(self, progress: Progress | None, t: float, *, settled: bool, stop_at: float,
             late: str, digits: int) -> bool:
        """Whether a run's loop ends now: every row terminal and the harness's own work
        `settled` (the work's time, rounded to `digits`, and the final counts noted); or
        past `stop_at` (monotonic), a timeout whose error is `late` ({t}: seconds)."""
        if progress is not None and progress.total and progress.active == 0 and settled:
            self.times["work_s"] = round(t, digits)
            self.final_counts = progress.counts
            return True
        if time.monotonic() > stop_at:
            self.status, self.error = "timeout", late.format(t=t)
            self.final_counts = progress.counts if progress else {}
            return True
        return False


def drain(emu: Emu, limit_s: float) -> dict[str, Any]:
    """Wait up to `limit_s` for the emulator's in-flight to reach zero (a task we lost track
    of would still be running there): how long it took and how many were left."""
    began = time.monotonic()
    stats = emu.stats()
    while stats.get("in_flight", 0) and time.monotonic() - began < limit_s:
        time.sleep(0.5)
        stats = emu.stats()
    return {"seconds": round(time.monotonic() - began, 3),
            "emulator_in_flight_left": int(stats.get("in_flight", 0))}


@dataclass(frozen=True)
class Record:
    """Where the run's record is: its database, batch, manifest and emulator."""

    db: Db
    batch_id: str
    manifest: Path
    emu: Emu
    concurrency: int


def read_evidence(export: Proc, results: Path, record: Record) -> Evidence:
    """Once `export` (writing `results`) has ended: everything the checks judge."""
    if export.wait(EXPORT_S) != 0:
        export.stop(5)
        raise BenchError(f"piapi-bulk export failed:\n{export.log_tail()}")
    return Evidence(
        manifest=read_jsonl(record.manifest), jobs=_table(record, _JOBS, _JOB_COLS),
        attempts=_table(record, _ATTEMPTS, _ATTEMPT_COLS), results=read_jsonl(results),
        ledger=record.emu.ledger(), stats=record.emu.stats(), concurrency=record.concurrency)


def _table(record: Record, sql: str, cols: tuple[str, ...]) -> list[dict[str, Any]]:
    rows = record.db.rows(sql, (record.batch_id,))
    if rows is None:
        raise BenchError("the database did not answer at the end of the run")
    return [dict(zip(cols, r, strict=True)) for r in rows]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSONL file we wrote (a manifest, the exported results)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def utc_stamp() -> str:
    """Now in UTC, as the report's `started_at` (and, without separators, its file name)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def save_report(doc: dict[str, Any], out_dir: Path, started: str, workdir: Path,
                keep_logs: bool) -> Path:
    """The logs kept when asked or when the run failed (named in the report), else removed;
    the report written to `out_dir`; its path."""
    if keep_logs or not doc["pass"]:
        doc["logs"] = str(workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return write_json(doc, out_dir, started.replace("-", "").replace(":", ""))[0]


def verdict(tag: str, doc: dict[str, Any], notes: list[str | None], report: Path) -> str:
    """The last line a run prints: PASS or FAIL, how long, any notes, where the report is."""
    head = f"[{tag}] {'PASS' if doc['pass'] else 'FAIL'} in {doc['figures']['elapsed_s']} s"
    return head + "".join(f"; {note}" for note in notes if note) + f"; report: {report}"


def raise_interrupt(_sig: int, _frame: object) -> None:
    """A SIGTERM handler: stop the run as Ctrl-C does (its teardown runs)."""
    raise KeyboardInterrupt

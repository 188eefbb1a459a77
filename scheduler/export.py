"""The results manifest: one JSON line per manifest row, in input order, streamed from the DB."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from scheduler.atomic_file import atomic_text
from scheduler.results_csv import csv_writer
from workers.downloads import files_of
from workers.models import Attempt, Job
from workers.spending import USD_PER_UNIT
from workers.states import JobState

RESULT_STATUSES = {
    JobState.COMPLETED.value: "completed",
    JobState.FAILED.value: "failed",
    JobState.CANCELLED.value: "cancelled",
    JobState.INVALID.value: "invalid",
}
"""Terminal states map to themselves; a row still in progress exports as `pending`."""
FETCH_ROWS = 2000


def find_urls(value: Any) -> list[str]:
    """Every http(s) URL anywhere in `value`, in document order, without repeats."""
    found: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, str):
            s = v.strip()
            if s.startswith(("http://", "https://")) and s not in found:
                found.append(s)
        elif isinstance(v, dict):
            for item in v.values():
                walk(item)
        elif isinstance(v, list):
            for item in v:
                walk(item)

    walk(value)
    return found


def _loads(text: str | None) -> Any:
    return json.loads(text) if text else None


def other_task(attempt: Attempt) -> dict[str, Any]:
    """One of a row's tasks that did not give its result, for `other_tasks`: how it ended
    (`failed`, `cancelled`, `abandoned` as stuck...) and why, and what PiAPI charged."""
    usage = None if attempt.consume is None else {
        "consume": attempt.consume, "usd": round(attempt.consume * USD_PER_UNIT, 7)}
    return {"task_id": attempt.task_id, "state": attempt.state, "error": attempt.error,
            "usage": usage}


def result_line(job: Job, others: list[dict[str, Any]] | None = None,
                origin_batch: str | None = None,
                kept: dict[str, list[Any]] | None = None) -> dict[str, Any]:
    """The results-manifest object for one job (see the README's contract); `others`: its
    tasks other than `task_id`, oldest first (`other_task`). A row sent without catalogue
    checks also carries `"unchecked": true`; a row that took a twin's task instead of
    paying, `"reused_from": {"batch", "task_id"}` (`origin_batch`: the paid-for job's
    batch) and a usage of 0. A row with output files downloaded (`kept`, from
    `workers.downloads.files_of`) carries `files` ({url, path, bytes, sha256}) and, for
    files that could not be kept, `download_errors` ({url, error})."""
    output = _loads(job.output_json)
    status = RESULT_STATUSES.get(job.state, "pending")
    error = None
    if status in ("failed", "cancelled", "invalid"):
        error = {"kind": job.error_kind or status, "message": job.error_message or ""}
    usage = None
    if job.usage_consume is not None:
        usage = {"consume": job.usage_consume, "usd": round(job.usage_consume * USD_PER_UNIT, 7)}
    elif job.reused_from is not None:
        usage = {"consume": 0, "usd": 0.0}
    line = {
        "id": job.row_key,
        "line": job.line,
        "status": status,
        "model": job.model,
        "task_type": job.task_type,
        "input": _loads(job.input_json),  # as sent (None: an invalid row never had one)
        "task_id": job.task_id,
        "output": output,
        "urls": find_urls(output),
        "error": error,
        "attempts": job.attempts,
        "other_tasks": others or [],
        "usage": usage,
        "metadata": _loads(job.metadata_json),
    }
    if job.unchecked:  # only on such rows, so every other line keeps its exact shape
        line["unchecked"] = True
    if job.reused_from is not None:  # likewise
        line["reused_from"] = {"batch": origin_batch, "task_id": job.task_id}
    if kept:  # likewise: only rows whose files were downloaded
        line["files"] = kept["files"]
        if kept["download_errors"]:
            line["download_errors"] = kept["download_errors"]
    return line


def iter_results(engine: Engine, batch_id: str) -> Iterator[dict[str, Any]]:
    """Result objects of a batch in manifest order, fetched in pages."""
    with Session(engine) as s:
        last = 0
        while True:
            page = list(s.scalars(
                select(Job).where(col(Job.batch_id) == batch_id, col(Job.seq) > last)
                .order_by(col(Job.seq)).limit(FETCH_ROWS)
            ))
            if not page:
                return
            others = _other_tasks(s, page)
            origins = _origin_batches(s, page)
            kept = files_of(s.connection(), [int(job.id) for job in page if job.id])
            for job in page:
                yield result_line(job, others.get(int(job.id or 0)),
                                  origins.get(job.reused_from or 0), kept.get(int(job.id or 0)))
            last = page[-1].seq
            s.expunge_all()


def _origin_batches(s: Session, page: list[Job]) -> dict[int, str]:
    """For the rows of a page that took a twin's task: the paid-for job's batch, by job id."""
    origins = {job.reused_from for job in page if job.reused_from is not None}
    if not origins:
        return {}
    rows = s.execute(select(col(Job.id), col(Job.batch_id))
                     .where(col(Job.id).in_(sorted(origins)))).all()
    return {int(job_id): str(batch_id) for job_id, batch_id in rows}


def _other_tasks(s: Session, page: list[Job]) -> dict[int, list[dict[str, Any]]]:
    """For the rows of a page that had more than one task: the others, oldest first."""
    # A reused row's own tasks (if any failed before) are all "other": it took a twin's.
    own = {int(job.id): job.task_id for job in page if job.id is not None
           and (job.attempts > 1 or (job.attempts and job.reused_from is not None))}
    found: dict[int, list[dict[str, Any]]] = {}
    if not own:
        return found
    attempts = s.scalars(select(Attempt).where(col(Attempt.job_id).in_(list(own)),
                                               col(Attempt.task_id).is_not(None))
                         .order_by(col(Attempt.job_id), col(Attempt.n)))
    for attempt in attempts:
        if attempt.task_id != own[attempt.job_id]:
            found.setdefault(attempt.job_id, []).append(other_task(attempt))
    return found


def export(engine: Engine, batch_id: str, path: Path, fmt: str = "jsonl") -> int:
    """Write the batch's results to `path` atomically (temp file + rename); returns rows.

    `fmt`: `jsonl` (the results lines) or `csv` (`scheduler.results_csv`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    with atomic_text(path, newline="") as out:
        write = csv_writer(out) if fmt == "csv" else _jsonl_writer(out)
        for obj in iter_results(engine, batch_id):
            write(obj)
            rows += 1
    return rows


def _jsonl_writer(out: IO[str]) -> Callable[[dict[str, Any]], None]:
    """A function writing one results line to `out`, compact JSON."""

    def write(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n")

    return write

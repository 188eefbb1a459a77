"""The JSON model of the run page (`/api/batches`): the newest batches with their counts and
cost (`scheduler.status`), rows per minute, the recent rate and ETA, failures by kind with a
few sample rows, and the slowest rows.

Every query is bounded and indexed, so a batch of a million rows costs no more than its
status: the rate and the slowest finished rows read only the last minutes of
`ix_jobs_batch_finished`, samples and in-flight rows walk `ix_jobs_batch_state_seq` with a
LIMIT. Inputs are never read; error messages lose URL query strings (tokens hide there).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, Integer, cast, func, select
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session, col

from scheduler.status import BatchStatus, batch_models, batch_status
from scheduler.web import rates
from workers.db import transaction
from workers.halt import halted_since
from workers.models import JOBS, Batch
from workers.states import JobState

MAX_BATCHES = 20
"""The page (and /metrics) show the newest this many batches."""
SAMPLES = 3
"""Sample rows shown per failure kind."""
MAX_KINDS = 8
"""Failure kinds given samples (the commonest first)."""
SLOWEST = 5
SLOWEST_FINISHED_S = 900.0
"""The slowest finished rows are looked for among those that ended this recently."""
ERROR_CHARS = 200
IN_FLIGHT = (JobState.SUBMITTING.value, JobState.RUNNING.value)
j = JOBS.c
_URL_QUERY = re.compile(r"(https?://[^\s?#\"']+)[?#][^\s\"']*")


def scrub(message: str | None) -> str:
    """An error message for the page: URL query strings and fragments dropped (signed URLs
    carry their tokens there), at most ERROR_CHARS characters."""
    text = _URL_QUERY.sub(r"\1?…", message or "")
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 1] + "…"


def newest_batches(engine: Engine, limit: int = MAX_BATCHES) -> list[BatchStatus]:
    """The statuses of the newest `limit` batches, newest first."""
    with Session(engine) as s:
        ids = [str(b) for b in s.scalars(select(col(Batch.id))
                                         .order_by(col(Batch.created_at).desc()).limit(limit))]
    return [st for st in (batch_status(engine, b) for b in ids) if st is not None]


class ModelCache:
    """(model, task type, rows) of each batch (`status.batch_models`), kept once its ingest
    is over: a row's model never changes, and reading them scans the whole batch."""

    LIMIT = 1000

    def __init__(self) -> None:
        self._known: dict[tuple[str, float], list[tuple[str, str, int]]] = {}

    def get(self, engine: Engine, st: BatchStatus) -> list[tuple[str, str, int]]:
        key = (st.id, st.created_at)
        found = self._known.get(key)
        if found is None:
            found = batch_models(engine, st.id)
            if st.ingested:
                if len(self._known) >= self.LIMIT:
                    self._known.clear()
                self._known[key] = found
        return found


def _minute(conn: Connection) -> ColumnElement[int]:
    """floor(finished_at / 60) on this database (SQLite's CAST truncates, which is the
    floor for the positive times here; PostgreSQL's rounds, hence floor there)."""
    if conn.dialect.name == "sqlite":
        return cast(j.finished_at / 60, Integer)
    return cast(func.floor(j.finished_at / 60), BigInteger)


def _finished_since(batch_id: str, since: float) -> ColumnElement[bool]:
    return ((j.batch_id == batch_id) & j.finished_at.is_not(None)  # the partial index's own
            & (j.finished_at >= since))


@dataclass(frozen=True)
class Activity:
    """What a batch did lately: rows finished per minute, the recent rate, samples."""

    per_minute: list[tuple[int, int]]
    rate_per_min: float
    failure_samples: dict[str, list[dict[str, Any]]]
    in_flight: list[dict[str, Any]]
    slowest_finished: list[dict[str, Any]]


def activity(engine: Engine, st: BatchStatus, now: float) -> Activity:
    """The bounded queries behind one batch's panel."""
    with transaction(engine) as conn:
        minute = _minute(conn)
        minutes = rates.chart_minutes(st.created_at, now)
        since = (rates.minute_of(now) - minutes + 1) * 60.0
        counts = {int(m): int(n) for m, n in conn.execute(
            select(minute, func.count()).where(_finished_since(st.id, since))
            .group_by(minute)).all()}
        recent, first = conn.execute(
            select(func.count(), func.min(j.finished_at))
            .where(_finished_since(st.id, now - rates.RATE_WINDOW_S))).one()
        samples = _failure_samples(conn, st)
        in_flight = _in_flight(conn, st.id, now)
        slowest = _slowest_finished(conn, st.id, now)
    rate = rates.recent_rate(int(recent), first, now)
    return Activity(rates.per_minute(counts, now, minutes), rate, samples, in_flight, slowest)


def _failure_samples(conn: Connection, st: BatchStatus) -> dict[str, list[dict[str, Any]]]:
    kinds = sorted(st.failures, key=lambda k: (-st.failures[k], k))[:MAX_KINDS]
    found = {}
    for kind in kinds:
        of_kind = j.error_kind.is_(None) if kind == "unknown" else j.error_kind == kind
        rows = conn.execute(
            select(j.row_key, j.line, j.error_message)
            .where(j.batch_id == st.id, j.state == JobState.FAILED.value, of_kind)
            .order_by(j.seq).limit(SAMPLES)).all()
        found[kind] = [{"id": key, "line": int(line), "error": scrub(msg)}
                       for key, line, msg in rows]
    return found


def _in_flight(conn: Connection, batch_id: str, now: float) -> list[dict[str, Any]]:
    """The longest-running rows in flight (submitting or running), oldest first."""
    rows = conn.execute(
        select(j.row_key, j.line, j.model, j.task_type, j.state, j.submitted_at)
        .where(j.batch_id == batch_id, j.state.in_(IN_FLIGHT), j.submitted_at.is_not(None))
        .order_by(j.submitted_at).limit(SLOWEST)).all()
    return [{"id": key, "line": int(line), "model": model, "task_type": task_type,
             "state": state, "age_s": round(max(0.0, now - float(at)), 1)}
            for key, line, model, task_type, state, at in rows]


def _slowest_finished(conn: Connection, batch_id: str, now: float) -> list[dict[str, Any]]:
    """The rows that took longest among those completed in the last SLOWEST_FINISHED_S."""
    took = j.finished_at - j.submitted_at
    rows = conn.execute(
        select(j.row_key, j.line, j.model, j.task_type, took)
        .where(_finished_since(batch_id, now - SLOWEST_FINISHED_S),
               j.state == JobState.COMPLETED.value, j.submitted_at.is_not(None))
        .order_by(took.desc()).limit(SLOWEST)).all()
    return [{"id": key, "line": int(line), "model": model, "task_type": task_type,
             "took_s": round(float(t), 1)} for key, line, model, task_type, t in rows]


def batch_json(engine: Engine, st: BatchStatus, now: float,
               models: ModelCache) -> dict[str, Any]:
    """One batch's object in `/api/batches`: `status --json`'s fields, then the page's."""
    act = activity(engine, st, now)
    return {
        **st.to_json(),
        "phase": st.phase,
        "controls": st.controls(spent=False),  # the page shows the cost by itself
        "models": [{"model": m, "task_type": t, "rows": n} for m, t, n in models.get(engine, st)],
        "in_flight": sum(st.counts.get(s, 0) for s in IN_FLIGHT),
        "rows_left": st.active,
        "rate": {
            "per_minute": [[m * 60, n] for m, n in act.per_minute],
            "recent_per_min": round(act.rate_per_min, 2),
            "eta_s": None if st.paused else rates.eta_s(st.active, act.rate_per_min),
        },
        "failure_samples": act.failure_samples,
        "slowest": {"in_flight": act.in_flight, "finished": act.slowest_finished},
        "results_url": f"/batches/{st.id}/results",
    }


def dashboard(engine: Engine, now: float, flower_url: str, limit: int = MAX_BATCHES,
              models: ModelCache | None = None) -> dict[str, Any]:
    """The whole `/api/batches` object."""
    known = models or ModelCache()
    batches = [batch_json(engine, st, now, known) for st in newest_batches(engine, limit)]
    halt = halted_since(engine)
    return {
        "generated_at": now,
        "flower_url": flower_url,
        "in_flight": sum(b["in_flight"] for b in batches),
        "halted": halt._asdict() if halt else None,
        "batches": batches,
    }

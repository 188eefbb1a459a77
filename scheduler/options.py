"""Ingest options that are not part of a batch's identity: `--strict`, `--service-mode`
(and the parsing of `--set`, which is).

The same manifest is the same batch whatever these say (its rows are never sent twice), so
`submit` and `run` check here that the options given can apply to a batch that existed
already, and report the rows the batch sends unchecked.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from scheduler.ingest import IngestResult
from scheduler.validate import RESERVED
from workers.catalog import SERVICE_MODES
from workers.models import JOBS
from workers.states import ACTIVE


def parse_service_mode(value: str | None) -> str | None:
    """`--service-mode`: public, private, or empty (the workspace default); None when not
    given. Raises ValueError for anything else."""
    if value is None:
        return None
    mode = value.strip().lower()
    if mode not in ("", *SERVICE_MODES):
        raise ValueError(f"--service-mode must be public, private or empty, got {value!r}")
    return mode


def parse_set(values: list[str] | None) -> dict[str, str]:
    """`--set KEY=VALUE` (repeatable) as input fields; ValueError for a malformed one, a
    reserved field (`id`, `model`, ...) or a key given twice."""
    fields: dict[str, str] = {}
    for text in values or []:
        key, sep, value = text.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set takes KEY=VALUE, got {text!r}")
        if key in RESERVED:
            flag = "--" + key.replace("_", "-")
            raise ValueError(f"--set {key}: not an input field (give it as {flag} or in "
                             "the manifest)")
        if key in fields:
            raise ValueError(f"--set {key} given twice")
        fields[key] = value
    return fields


def unchecked_lines(result: IngestResult) -> list[str]:
    """One line per kind of row the batch sends unchecked, for `submit` and `run`."""
    return [f"model {model} task type {task_type} is not in piapi-bulk's catalogue: "
            f"{n} row{'s' if n != 1 else ''} will be sent unchecked (--strict refuses them)"
            for model, task_type, n in result.unchecked]


def option_conflict(engine: Engine, result: IngestResult, *, strict: bool,
                    service_mode: str | None) -> str | None:
    """Why `--strict` or `--service-mode` cannot apply to the batch `result` names (it
    existed already), or None. Nothing should be sent for the batch then."""
    if result.created:
        return None
    if service_mode is not None and (service_mode or None) != result.service_mode:
        first = f"--service-mode {result.service_mode}" if result.service_mode else \
            "no --service-mode"
        return (f"batch {result.batch_id} was ingested with {first}; its rows keep the "
                "service mode they were stored with: run it again with the same option")
    if strict and result.unchecked:
        with engine.connect() as conn:
            waiting = int(conn.execute(
                select(func.count()).select_from(JOBS)
                .where(JOBS.c.batch_id == result.batch_id, JOBS.c.unchecked.is_not(None),
                       JOBS.c.state.in_([s.value for s in ACTIVE]))).scalar_one())
        if waiting:
            return (f"--strict: batch {result.batch_id} was ingested without it and still has "
                    f"{waiting} unchecked row(s) to run; cancel it (piapi-bulk cancel "
                    f"{result.batch_id}) or run it without --strict")
    return None

"""Read-only JSON views of the engine: account info, active tasks, history page, ledger."""

from __future__ import annotations

from typing import Any

from emulator.catalog import ACTIVE_FAMILIES, CATALOG, UNITS_PER_USD
from emulator.clock import format_time
from emulator.engine import Engine
from emulator.history import HistoryQuery, documented_row, full_row
from emulator.tasks import PENDING, PROCESSING, Task

ACCOUNT_ID = "00000000-0000-4000-8000-00000000e1a7"


def account_info(engine: Engine) -> dict[str, Any]:
    """`data` of GET /account/info: balance and the concurrency limit."""
    m = engine.metrics
    remain = engine.config.balance_points - m.consumed_units - m.frozen_units
    info: dict[str, Any] = {
        "account_name": "emulator",
        "account_id": ACCOUNT_ID,
        "max_concurrent_task_count": engine.config.concurrency,
    }
    if engine.config.account_balance:
        info["equivalent_in_usd"] = remain / UNITS_PER_USD
        info["wallet"] = {
            "point_remain": remain,
            "point_frozen": m.frozen_units,
            "point_used": m.consumed_units,
        }
    return info


def _family_counts(tasks: list[Task]) -> dict[str, Any]:
    return {
        "pending_count": sum(1 for t in tasks if t.status == PENDING),
        "processing_count": sum(1 for t in tasks if t.status == PROCESSING),
        "staged_count": 0,
        "active_tasks": [{"task_id": t.task_id, "status": t.status} for t in tasks],
    }


def active_tasks(engine: Engine) -> dict[str, Any]:
    """`data` of GET /account/active_tasks: pending/processing tasks per family.

    documented (default): the six families PiAPI is seen to report, zeros when idle; tasks
    of other models (Joycaption, Wan, Hailuo, ...) are counted nowhere here, though they
    hold concurrency slots. all: every family the emulator has, each model in its own.
    """
    if engine.config.active_tasks_families == "all":
        return {family: _family_counts(list(tasks.values()))
                for family, tasks in engine.active.items()}
    grouped: dict[str, list[Task]] = {family: [] for family in ACTIVE_FAMILIES}
    for tasks in engine.active.values():
        for task in tasks.values():
            family = CATALOG[(task.model, task.task_type)].active_family
            if family is not None:
                grouped[family].append(task)
    return {family: _family_counts(tasks) for family, tasks in grouped.items()}


def history_page(engine: Engine, q: HistoryQuery) -> dict[str, Any]:
    """`data` of GET /api/open/tasks/histories for query `q`.

    A task is listed history_lag_s x time_scale seconds after its creation; pending tasks
    only when history_lists_pending.
    """
    config = engine.config
    visible_until = engine.clock.now() - config.history_lag_s * config.time_scale
    tasks, total = engine.history.query(
        q, visible_until, match=config.history_model_filter,
        with_pending=config.history_lists_pending,
    )
    row = full_row if config.history_shape == "full" else documented_row
    return {"data": [row(t) for t in tasks], "page": q.page, "size": len(tasks), "total": total}


def ledger_row(task: Task) -> dict[str, Any]:
    """One task as /_emulator/ledger reports it, for end-to-end checks."""
    return {
        "task_id": task.task_id,
        "model": task.model,
        "task_type": task.task_type,
        "input_key": task.input_key,
        "input": task.input,
        "status": task.status,
        "fate": task.fate.value,
        "created_at": format_time(task.created_at),
        "ended_at": format_time(task.ended_at),
        "consume": task.consume,
        "output": task.output,
        "error": task.error,
        "charged": task.consume > 0 and task.ended_at is not None,
        "webhook_endpoint": task.webhook_endpoint,
        "created_by": task.created_by,
        "polls_by": dict(task.polls_by),
        "end_seen_by": task.end_seen_by,
        "end_seen_at": None if task.end_seen_at is None else format_time(task.end_seen_at),
    }


def ledger(engine: Engine, input_key: str | None = None) -> dict[str, Any]:
    """Every task (or those of one input key), in creation order."""
    engine.advance()
    tasks = engine.tasks.values() if input_key is None else engine.by_input.get(input_key, [])
    return {"tasks": [ledger_row(t) for t in tasks]}

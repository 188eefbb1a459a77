"""Read-only JSON views of the engine: account info, active tasks, history page, ledger."""

from __future__ import annotations

from typing import Any

from emulator.catalog import UNITS_PER_USD
from emulator.clock import format_time
from emulator.engine import Engine
from emulator.history import HistoryQuery, history_row
from emulator.tasks import PENDING, PROCESSING, Task

ACCOUNT_ID = "00000000-0000-4000-8000-00000000e1a7"


def account_info(engine: Engine) -> dict[str, Any]:
    """`data` of GET /account/info: balance and the concurrency limit."""
    m = engine.metrics
    remain = engine.config.balance_points - m.consumed_units - m.frozen_units
    return {
        "account_name": "emulator",
        "account_id": ACCOUNT_ID,
        "equivalent_in_usd": remain / UNITS_PER_USD,
        "max_concurrent_task_count": engine.config.concurrency,
        "wallet": {
            "point_remain": remain,
            "point_frozen": m.frozen_units,
            "point_used": m.consumed_units,
        },
    }


def active_tasks(engine: Engine) -> dict[str, Any]:
    """`data` of GET /account/active_tasks: pending/processing tasks per model family."""
    out: dict[str, Any] = {}
    for family, tasks in engine.active.items():
        rows = [{"task_id": t.task_id, "status": t.status} for t in tasks.values()]
        out[family] = {
            "pending_count": sum(1 for t in tasks.values() if t.status == PENDING),
            "processing_count": sum(1 for t in tasks.values() if t.status == PROCESSING),
            "staged_count": 0,
            "active_tasks": rows,
        }
    return out


def history_page(engine: Engine, q: HistoryQuery) -> dict[str, Any]:
    """`data` of GET /api/open/tasks/histories for query `q`."""
    now = engine.clock.now()
    tasks, total = engine.history.query(q, visible_until=now - engine.config.history_lag_s)
    full = engine.config.history_shape == "full"
    return {
        "data": [history_row(t, full) for t in tasks],
        "page": q.page,
        "size": len(tasks),
        "total": total,
    }


def ledger_row(task: Task) -> dict[str, Any]:
    """One task as /_emulator/ledger reports it, for end-to-end checks."""
    return {
        "task_id": task.task_id,
        "model": task.model,
        "task_type": task.task_type,
        "input_key": task.input_key,
        "status": task.status,
        "created_at": format_time(task.created_at),
        "ended_at": format_time(task.ended_at),
        "consume": task.consume,
        "output": task.output,
        "error": task.error,
        "charged": task.consume > 0 and task.ended_at is not None,
        "webhook_endpoint": task.webhook_endpoint,
    }


def ledger(engine: Engine, input_key: str | None = None) -> dict[str, Any]:
    """Every task (or those of one input key), in creation order."""
    engine.advance()
    tasks = engine.tasks.values() if input_key is None else engine.by_input.get(input_key, [])
    return {"tasks": [ledger_row(t) for t in tasks]}

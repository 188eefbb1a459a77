"""The account's task history: tasks by creation time, overall and per model, paged by bisection."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

from emulator.clock import format_time
from emulator.tasks import Task


@dataclass
class _Series:
    times: list[float] = field(default_factory=list)
    tasks: list[Task] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """Filters and paging of GET /api/open/tasks/histories; times are unix seconds."""

    page: int = 1
    page_size: int = 10
    model: str = ""
    start_time: float | None = None
    end_time: float | None = None


class HistoryIndex:
    """Append-only, creation-ordered lists: a page costs O(log n + page_size)."""

    def __init__(self) -> None:
        self._all = _Series()
        self._by_model: dict[str, _Series] = {}

    def add(self, task: Task) -> None:
        """Record a new task (creation times never decrease)."""
        for series in (self._all, self._by_model.setdefault(task.model, _Series())):
            series.times.append(task.created_at)
            series.tasks.append(task)

    def query(self, q: HistoryQuery, visible_until: float) -> tuple[list[Task], int]:
        """Tasks of page `q.page`, newest first, and how many match in all."""
        series = self._by_model.get(q.model) if q.model else self._all
        if series is None:
            return [], 0
        end = visible_until if q.end_time is None else min(q.end_time, visible_until)
        lo = 0 if q.start_time is None else bisect.bisect_left(series.times, q.start_time)
        hi = bisect.bisect_right(series.times, end)
        total = max(0, hi - lo)
        stop = hi - (q.page - 1) * q.page_size
        start = max(lo, stop - q.page_size)
        if stop <= lo:
            return [], total
        return series.tasks[start:stop][::-1], total


def history_row(task: Task, full: bool) -> dict[str, Any]:
    """One row of the history listing."""
    return {
        "id": task.seq,
        "taskId": task.task_id,
        "taskModel": task.model,
        "action": task.task_type,
        "status": task.status,
        "createdAt": format_time(task.created_at),
        "updatedAt": format_time(task.updated_at),
        "usage": task.consume,
        "usageType": task.usage_type,
        "serviceMode": task.config["service_mode"],
        "detail": task.data() if full else None,
    }

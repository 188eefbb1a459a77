"""The account's task history: tasks by creation time (overall, per model, per documented
family), paged by bisection, and its rows in the documented or the full shape.

Leaving pending tasks out keeps pages O(log n + page_size): each series counts its listed
(non-pending) tasks in a Fenwick tree, updated when a task leaves `pending` (it never returns).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any, Literal

from emulator.catalog import CATALOG, HISTORY_FAMILIES
from emulator.clock import format_time
from emulator.tasks import COMPLETED, PENDING, Task

ModelFilter = Literal["family", "exact", "both"]
DOCUMENTED_STATUS = {COMPLETED: "finished"}
"""History statuses that differ from the task's: PiAPI lists a completed task as finished."""


class _Fenwick:
    """Prefix sums over a growing list of 0/1 flags (binary indexed tree, 1-based inside)."""

    def __init__(self) -> None:
        self._tree = [0]

    def append(self, flag: int) -> None:
        """Add an element at the end."""
        index = len(self._tree)
        total, j, stop = flag, index - 1, index - (index & -index)
        while j > stop:  # node `index` covers (stop, index]: sum the nodes covering (stop, j]
            total += self._tree[j]
            j -= j & -j
        self._tree.append(total)

    def add(self, position: int, delta: int) -> None:
        """Change the element at 0-based `position` by `delta`."""
        j = position + 1
        while j < len(self._tree):
            self._tree[j] += delta
            j += j & -j

    def prefix(self, count: int) -> int:
        """Sum of the first `count` elements."""
        total = 0
        while count > 0:
            total += self._tree[count]
            count -= count & -count
        return total

    def find(self, rank: int) -> int:
        """0-based position of the `rank`-th (1-based) element that is 1."""
        position, size = 0, len(self._tree) - 1
        step = 1 << size.bit_length()
        while step:
            nxt = position + step
            if nxt <= size and self._tree[nxt] < rank:
                position = nxt
                rank -= self._tree[nxt]
            step >>= 1
        return position


@dataclass
class _Series:
    times: list[float] = field(default_factory=list)
    tasks: list[Task] = field(default_factory=list)
    listed: _Fenwick = field(default_factory=_Fenwick)
    """1 for a task no longer pending."""

    def add(self, task: Task) -> int:
        self.times.append(task.created_at)
        self.tasks.append(task)
        self.listed.append(0 if task.status == PENDING else 1)
        return len(self.tasks) - 1


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
        self._by_family: dict[str, _Series] = {f: _Series() for f in HISTORY_FAMILIES}
        self._pending: dict[str, list[tuple[_Series, int]]] = {}

    def add(self, task: Task) -> None:
        """Record a new task (creation times never decrease)."""
        series = [self._all, self._by_model.setdefault(task.model, _Series())]
        family = CATALOG[(task.model, task.task_type)].history_family
        if family is not None:
            series.append(self._by_family[family])
        slots = [(s, s.add(task)) for s in series]
        if task.status == PENDING:
            self._pending[task.task_id] = slots

    def left_pending(self, task: Task) -> None:
        """`task` is no longer pending: list it even where pending tasks are left out."""
        for series, position in self._pending.pop(task.task_id, ()):
            series.listed.add(position, 1)

    def _series(self, model: str, match: ModelFilter) -> _Series | None:
        if not model:
            return self._all
        if match != "exact" and model in self._by_family:
            return self._by_family[model]
        if match != "family":
            return self._by_model.get(model)
        return None

    def query(
        self, q: HistoryQuery, visible_until: float, match: ModelFilter = "exact",
        with_pending: bool = True,
    ) -> tuple[list[Task], int]:
        """Tasks of page `q.page`, newest first, and how many match in all.

        `match` says what `q.model` names (a documented family, a model, either);
        `with_pending` False leaves out tasks still pending.
        """
        series = self._series(q.model, match)
        if series is None:
            return [], 0
        end = visible_until if q.end_time is None else min(q.end_time, visible_until)
        lo = 0 if q.start_time is None else bisect.bisect_left(series.times, q.start_time)
        hi = max(lo, bisect.bisect_right(series.times, end))
        if with_pending:
            base, top = lo, hi
        else:  # ranks among listed tasks
            base, top = series.listed.prefix(lo), series.listed.prefix(hi)
        stop = top - (q.page - 1) * q.page_size
        start = max(base, stop - q.page_size)
        if stop <= base:
            return [], top - base
        if with_pending:
            return series.tasks[start:stop][::-1], top - base
        return [series.tasks[series.listed.find(r)] for r in range(stop, start, -1)], top - base


def documented_row(task: Task) -> dict[str, Any]:
    """A row as PiAPI documents it: snake_case, `finished` for completed, never the input."""
    return {
        "task_id": task.task_id,
        "task_model": task.model,
        "action": task.task_type,
        "status": DOCUMENTED_STATUS.get(task.status, task.status),
        "usage": task.consume,
        "usage_type": task.usage_type,
        "service_mode": task.config["service_mode"],
        "detail": {"model": task.model, "task_id": task.task_id,
                   "workflow_type": task.workflow_type},
        "created_at": format_time(task.created_at),
        "updated_at": format_time(task.updated_at),
    }


def full_row(task: Task) -> dict[str, Any]:
    """A row of the generous listing (the emulator's shape before issue 9): camelCase, and a
    `detail` that is the whole task data, input included."""
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
        "detail": task.data(),
    }

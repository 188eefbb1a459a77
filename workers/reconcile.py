"""Deciding what happened to a create whose answer was lost (pure logic).

PiAPI has no idempotency key, so a lost answer leaves two possibilities: a paid task
exists, or the request never arrived. The account's task history settles it: a task of the
same model, created in the attempt's time window, with the same input, that no other row
of ours owns, is this attempt's task (adopt it, never post again). If the history, once it
has had time to catch up, shows no such task, the create never happened (post again). If
the history cannot say (it lists no inputs and shows unknown tasks in the window, or it is
unreachable), the answer is "not yet", and past a time bound the row fails rather than risk
paying twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from workers.piapi import HistoryRow

WINDOW_SLACK_S = 30.0
"""Tasks created this long before or after the attempt still count (clock skew)."""
SETTLE_S = 20.0
"""How long after the attempt the history must have had to list its task, before an
absence counts as "never created"."""


class Verdict(StrEnum):
    """What reconciliation concluded."""

    ADOPT = "adopt"  # this task is the attempt's: record it, poll it
    ABSENT = "absent"  # the create never made a task: it may be posted again
    UNKNOWN = "unknown"  # cannot tell (yet)


@dataclass(frozen=True)
class Decision:
    """A verdict, the task to adopt (for ADOPT) and why."""

    verdict: Verdict
    task_id: str | None = None
    why: str = ""


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return float(a) == float(b)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    return bool(a == b)


def input_matches(sent: Mapping[str, Any], echoed: Mapping[str, Any]) -> bool:
    """True when PiAPI's echo of an input is this input.

    PiAPI echoes inputs normalised: defaults filled in, unknown keys dropped. So every
    field we sent that the echo carries must be equal, and at least one must be there.
    """
    shared = [k for k in sent if k in echoed]
    return bool(shared) and all(_same(sent[k], echoed[k]) for k in shared)


def decide(
    *,
    sent: Mapping[str, Any],
    model: str,
    task_type: str,
    window: tuple[float, float],
    rows: Iterable[HistoryRow],
    owned: set[str],
    now: float,
) -> Decision:
    """Judge an ambiguous attempt from the history rows of its model around its window.

    `window` is (when the attempt was recorded, when its outcome was lost); `owned` holds
    the task ids that other rows of ours already own.
    """
    start, end = window[0] - WINDOW_SLACK_S, window[1] + WINDOW_SLACK_S
    candidates = [
        r for r in rows
        if r.task_id not in owned and (not r.model or r.model == model)
        and (not r.task_type or r.task_type == task_type)
        and (r.created_at is None or start <= r.created_at <= end)
    ]
    with_input = [r for r in candidates if r.input is not None]
    matches = [r for r in with_input if input_matches(sent, r.input or {})]
    if matches:
        chosen = min(matches, key=lambda r: r.created_at or 0.0)
        return Decision(Verdict.ADOPT, chosen.task_id,
                        f"history lists task {chosen.task_id} with this input")
    settled = now >= window[1] + SETTLE_S
    if not settled:
        return Decision(Verdict.UNKNOWN, why="the history may not list the task yet")
    if len(with_input) == len(candidates):
        return Decision(Verdict.ABSENT, why="the history lists no task with this input")
    return Decision(Verdict.UNKNOWN, why=f"the history lists {len(candidates)} task(s) in the "
                                         "window without their inputs")

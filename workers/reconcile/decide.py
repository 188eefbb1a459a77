"""Deciding what happened to a create whose answer was lost (pure logic).

PiAPI has no idempotency key, so a lost answer leaves two possibilities: a paid task
exists, or the request never arrived. The account's task history settles it, read the way
PiAPI documents it: rows carry no input, the `model` filter takes family names only, and
how soon (or whether, while pending) a new task is listed is unknown. So:

- Candidates are the listed tasks created in the attempt's time window that no other
  attempt of ours owns, whose model matches loosely (the listed `task_model` or
  `detail.model` may be the model, its family, or missing) and whose action is this task
  type (or missing).
- A candidate is this attempt's task only when its input is this row's input: from the
  listing when it carries inputs, else from a GET of the task (PiAPI echoes `data.input`).
  A GET that echoes no input proves nothing.
- "Never created" needs positive evidence that the listing covers the window: a task of
  ours created after the lost create (its attempt began after the answer was lost) is in
  the same listing, and every candidate was looked at and is someone else's. An empty or
  lagging listing, a filter that matches nothing, or candidates that cannot be checked
  all mean "not yet"; past a time bound the row fails rather than risk paying twice. A
  batch's last creates have no later create: for them, a task of ours created about when
  the lost one was, listed once the lost one's task would have ended, is the evidence.
- It also needs evidence that the listing shows tasks still `pending`, which the docs
  leave open: a pending row in it, or the doctor having seen its probe listed while
  pending. Without that, a lost create's task may be waiting in PiAPI's queue, unlisted,
  while later tasks already ran and are listed; so the absence counts only once that task
  would have ended (`ended_by`: its kind's stuck limit after the create) and been listed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from workers.piapi import HistoryRow, Outcome

WINDOW_SLACK_S = 30.0
"""Tasks created this long before or after the attempt still count (clock skew)."""
SETTLE_S = 20.0
"""How long after the attempt the history must have had to list its task, before an
absence counts as "never created" (longer when the doctor measured a longer lag)."""
MAX_CHECKS = 8
"""Candidates confirmed by a GET in one look (nearest the lost create first): bounds the
GETs a lost create costs per look."""


class Verdict(StrEnum):
    """What reconciliation concluded."""

    ADOPT = "adopt"  # this task is the attempt's: record it, poll it
    ABSENT = "absent"  # the create never made a task: it may be posted again
    CHECK = "check"  # these candidates must be read (GET) before anything can be said
    UNKNOWN = "unknown"  # cannot tell (yet)


@dataclass(frozen=True)
class Decision:
    """A verdict, the task to adopt (ADOPT) or the tasks to read (CHECK), and why."""

    verdict: Verdict
    task_id: str | None = None
    why: str = ""
    to_check: tuple[str, ...] = ()


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


def model_matches(listed: Iterable[str], model: str, family: str | None) -> bool:
    """Loosely: a listed model name that is the model, its family, or a part of either
    (`joycaption` for `Qubico/joycaption`); an unnamed row may be anyone's."""
    names = [n.strip().lower() for n in listed if n and n.strip()]
    if not names:
        return True
    want = {model.lower(), model.lower().rsplit("/", 1)[-1]}
    if family:
        want.add(family.lower())
    return any(n in want or any(n in w or w in n for w in want) for n in names)


def candidates(rows: Iterable[HistoryRow], *, model: str, family: str | None, task_type: str,
               window: tuple[float, float], owned: set[str]) -> list[HistoryRow]:
    """Listed tasks that may be the lost create's task."""
    start, end = window[0] - WINDOW_SLACK_S, window[1] + WINDOW_SLACK_S
    return [r for r in rows
            if r.task_id not in owned
            and model_matches((r.model, r.detail_model), model, family)
            and (not r.task_type or r.task_type == task_type)
            and (r.created_at is None or start <= r.created_at <= end)]


def decide(
    *,
    sent: Mapping[str, Any],
    model: str,
    task_type: str,
    window: tuple[float, float],
    rows: Iterable[HistoryRow],
    owned: set[str],
    now: float,
    family: str | None = None,
    ours_later: set[str] | None = None,
    ours_near: set[str] | None = None,
    checked: Mapping[str, bool | None] | None = None,
    settle_s: float = SETTLE_S,
    lists_pending: bool | None = None,
    ended_by: float | None = None,
) -> Decision:
    """Judge an ambiguous attempt from one listing of the history around its window.

    `window` is (when the attempt was recorded, when its outcome was lost); `owned` holds
    the task ids other attempts of ours own; `ours_later` the task ids of our creates that
    began after the answer was lost (the evidence that the listing covers the window);
    `ours_near` those of our creates sent about when the lost one was (the evidence once
    `ended_by` has passed: a batch's last creates have no later one); `checked` what GETs
    of candidates said: True (this input), False (another input),
    None (no input echoed: cannot tell); `lists_pending` whether the doctor saw a pending
    task listed; `ended_by` when a task the lost create made would have ended even if it
    waited pending (None: no bound, so only a listing that shows pending tasks can tell).
    """
    rows = list(rows)
    checked = checked or {}
    found = candidates(rows, model=model, family=family, task_type=task_type, window=window,
                       owned=owned)
    verdicts: dict[str, bool | None] = {}
    for r in found:
        if r.input is not None:
            verdicts[r.task_id] = input_matches(sent, r.input)
        elif r.task_id in checked:
            verdicts[r.task_id] = checked[r.task_id]
    matches = [r for r in found if verdicts.get(r.task_id) is True]
    if matches:
        chosen = min(matches, key=lambda r: r.created_at or 0.0)
        return Decision(Verdict.ADOPT, chosen.task_id,
                        f"task {chosen.task_id} has this row's input")
    unread = [r for r in found if r.task_id not in verdicts]
    if unread:
        lost_at = window[1]
        unread.sort(key=lambda r: abs((r.created_at or lost_at) - lost_at))
        return Decision(Verdict.CHECK, why=f"{len(unread)} candidate task(s) to read",
                        to_check=tuple(r.task_id for r in unread[:MAX_CHECKS]))
    blind = sum(1 for r in found if verdicts.get(r.task_id) is None)
    if blind:
        return Decision(Verdict.UNKNOWN, why=f"{blind} candidate task(s) whose input PiAPI "
                                             "did not echo")
    if now < window[1] + settle_s:
        return Decision(Verdict.UNKNOWN, why="the history may not list the task yet")
    listed = {r.task_id for r in rows}
    waited = ended_by is not None and now >= ended_by
    if not (ours_later or set()) & listed and not (waited and (ours_near or set()) & listed):
        return Decision(Verdict.UNKNOWN, why="no task of ours created after the lost create "
                        "is listed yet (the listing may lag), nor, once its task would have "
                        "ended, one created with it")
    shows_pending = lists_pending or any(r.outcome is Outcome.PENDING for r in rows)
    if not shows_pending and (ended_by is None or now < ended_by):
        return Decision(Verdict.UNKNOWN, why="the history shows no pending task, so the lost "
                                             "create's task may be waiting unlisted; looking "
                                             "until it would have ended")
    return Decision(Verdict.ABSENT, why=f"the history lists later tasks of ours and none of "
                                        f"its {len(found)} candidate(s) has this input")

"""Judging a lost create from PiAPI's history (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from workers.piapi import HistoryRow, parse_history_row
from workers.reconcile import SETTLE_S, WINDOW_SLACK_S, Verdict, decide, input_matches

SENT = {"image": "https://x/1.png", "caption_length": "any"}
T0 = 1000.0


def row(task_id: str, created: float | None = T0 + 1, inp: dict[str, Any] | None = None,
        model: str = "Qubico/joycaption") -> HistoryRow:
    return HistoryRow(task_id, model, "joycaption-beta-one", "completed", created,
                      inp if inp is not None else None)


def judge(rows: list[HistoryRow], owned: set[str] | None = None,
          now: float = T0 + 100) -> tuple[Verdict, str | None]:
    d = decide(sent=SENT, model="Qubico/joycaption", task_type="joycaption-beta-one",
               window=(T0, T0 + 2), rows=rows, owned=owned or set(), now=now)
    return d.verdict, d.task_id


@pytest.mark.parametrize(
    ("sent", "echoed", "expected"),
    [
        (SENT, {**SENT, "prompt_style": "Descriptive"}, True),  # defaults filled in
        ({**SENT, "workflow_type": "x"}, SENT, True),            # an unknown key dropped
        (SENT, {**SENT, "image": "https://x/2.png"}, False),
        ({"duration": 5}, {"duration": 5.0}, True),
        ({"watermark": False}, {"watermark": 0}, False),
        ({"a": 1}, {"b": 1}, False),                              # nothing in common
    ],
)
def test_input_matches(sent: dict[str, Any], echoed: dict[str, Any], expected: bool) -> None:
    assert input_matches(sent, echoed) is expected


def test_the_task_with_this_input_is_adopted() -> None:
    rows = [row("other", inp={**SENT, "image": "https://x/9.png"}),
            row("mine", inp={**SENT, "prompt_style": "Descriptive"})]
    assert judge(rows) == (Verdict.ADOPT, "mine")


def test_a_task_another_row_owns_is_not_adopted() -> None:
    assert judge([row("mine", inp=SENT)], owned={"mine"}) == (Verdict.ABSENT, None)


def test_tasks_outside_the_window_do_not_count() -> None:
    late = row("late", created=T0 + 2 + WINDOW_SLACK_S + 1, inp=SENT)
    assert judge([late]) == (Verdict.ABSENT, None)


def test_absence_counts_only_once_the_history_had_time() -> None:
    assert judge([], now=T0 + 2 + SETTLE_S - 1)[0] is Verdict.UNKNOWN
    assert judge([], now=T0 + 2 + SETTLE_S + 1) == (Verdict.ABSENT, None)


def test_a_listing_without_inputs_cannot_attribute_unknown_tasks() -> None:
    assert judge([row("someone", inp=None)])[0] is Verdict.UNKNOWN
    # ...but with no unknown task at all in the window, nothing was created.
    assert judge([row("known", inp=None)], owned={"known"}) == (Verdict.ABSENT, None)


def test_other_models_are_not_candidates() -> None:
    assert judge([row("wan", inp=SENT, model="Wan")]) == (Verdict.ABSENT, None)


def test_history_rows_in_both_shapes() -> None:
    listing = {"id": 7, "taskId": "t1", "taskModel": "Wan", "action": "wan26-txt2video",
               "status": "Completed", "createdAt": "2025-12-17T10:28:49.8528496Z",
               "detail": {"task_id": "t1", "input": {"prompt": "p"}}}
    r = parse_history_row(listing)
    assert r is not None and (r.task_id, r.model, r.status) == ("t1", "Wan", "completed")
    assert r.input == {"prompt": "p"} and r.created_at is not None
    summary = parse_history_row({**listing, "detail": None})
    assert summary is not None and summary.input is None
    assert parse_history_row({"status": "x"}) is None


class _FlakyHistory:
    """A history whose first request fails with a 503."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, float, int]] = []

    def task_history(self, model: str, start: float, end: float, page: int = 1,
                     page_size: int = 100) -> Any:
        from workers.piapi import HistoryPage, ServerError

        self.calls.append((start, end, page))
        if len(self.calls) == 1:
            raise ServerError("HTTP 503", status=503)
        return HistoryPage([row("t1")], 1)


def test_history_is_read_over_the_judged_window_and_a_failed_page_asked_again() -> None:
    # Found by the chaos run: at a high create rate the window read (up to lost_at + 120 s)
    # needed so many pages that, with one request in ten failing, no look ever completed.
    from workers.settle import _history
    from workers.transitions.ambiguous import AmbiguousTarget
    from workers.work import Tally, WorkerContext

    client = _FlakyHistory()
    ctx = WorkerContext(engine=None, client=client, lease_s=1.0, max_tries=1)  # type: ignore[arg-type]
    target = AmbiguousTarget(1, "b", "Qubico/joycaption", "joycaption-beta-one", SENT, 1,
                             T0, T0 + 2, None, 0, None)
    rows, complete = _history(ctx, target, T0 + 500, Tally())
    assert complete and [r.task_id for r in rows] == ["t1"]
    assert client.calls == [(T0 - WINDOW_SLACK_S, T0 + 2 + WINDOW_SLACK_S, 1)] * 2

"""A message's summary, the line Flower shows as a task's result: batch, row ids, outcomes."""

from __future__ import annotations

import pytest

from workers.piapi import TaskView, Usage
from workers.transitions import PollOutcome, PollTarget
from workers.work.summary import (
    SKIPPED,
    MessageSummary,
    RowOutcome,
    of_polls,
    render,
    row_span,
    seconds,
)

NOW = 1_000_000.0


def rows(*keys: str, start: int = 1037, step: int = 1) -> list[tuple[int, str]]:
    return [(start + k * step, key) for k, key in enumerate(keys)]


@pytest.mark.parametrize(("given", "shown"), [
    (rows("img-1"), "img-1"),
    (rows("img-1", "img-2"), "img-1, img-2"),
    (rows(*(f"img-{i:04}" for i in range(1, 17))), "img-0001…img-0016"),
    (rows("a", "b", "c", step=2), "a, b, c"),
    (rows("a", "b", "c", "d", "e", step=3), "a, b, c +2 more"),
    (list(reversed(rows("x", "y", "z"))), "x…z"),  # by job id (manifest order)
    (rows("p" * 60, "q"), "p" * 39 + "…, q"),
])
def test_row_ids_a_range_when_contiguous_else_the_first_few(
        given: list[tuple[int, str]], shown: str) -> None:
    assert row_span(given) == shown


def summary(*outcomes: tuple[RowOutcome, int], keys: int = 16,
            batches: tuple[str, ...] = ("b82c0e4a91f3d",)) -> MessageSummary:
    s = MessageSummary(batches=list(batches))
    for k in range(keys):
        s.row(1037 + k, f"img-{k + 1:04}")
    for outcome, n in outcomes:
        s.add(outcome, n)
    return s


@pytest.mark.parametrize(("s", "line"), [
    (summary((RowOutcome("created"), 14), (RowOutcome("retry", 3.2), 1),
             (RowOutcome("retry", 11.5), 1)),
     "batch b82c0e4a91f3d: rows img-0001…img-0016: 14 created, 2 retry in 12 s"),
    (summary((RowOutcome("completed", usd=0.01), 3), (RowOutcome("still running"), 13)),
     "batch b82c0e4a91f3d: rows img-0001…img-0016: 13 still running, 3 completed ($0.03)"),
    (summary((RowOutcome(SKIPPED), 4), keys=0),
     "batch b82c0e4a91f3d: 4 skipped (not due)"),
    (summary(keys=0, batches=()), "nothing to do"),
    (summary((RowOutcome("created"), 1), keys=1, batches=("b1", "b2")),
     "batches b1, b2: row img-0001: 1 created"),
    (summary((RowOutcome("created"), 1), keys=1, batches=("batch-" + "x" * 30,)),
     "batch batch-xxxxxxxxx…: row img-0001: 1 created"),
    (summary((RowOutcome("poll error, read again", 300.0), 1), keys=1, batches=()),
     "row img-0001: 1 poll error, read again in 5 min"),
])
def test_the_line_flower_shows(s: MessageSummary, line: str) -> None:
    assert render(s) == line
    assert repr(s) == str(s) == line  # unquoted in Flower (a str result would be quoted)


def test_a_count_of_zero_is_left_out() -> None:
    assert render(summary((RowOutcome("created"), 1), (RowOutcome(SKIPPED), 0), keys=1)) \
        == "batch b82c0e4a91f3d: row img-0001: 1 created"


@pytest.mark.parametrize(("s", "text"), [(0.2, "1 s"), (12.0, "12 s"), (89.5, "90 s"),
                                         (90.0, "2 min"), (-3.0, "0 s")])
def test_waits_in_words(s: float, text: str) -> None:
    assert seconds(s) == text


def target(job_id: int, key: str) -> PollTarget:
    return PollTarget(job_id=job_id, task_id=f"t{job_id}", polls=1, poll_errors=0, attempts=1,
                      max_attempts=3, model="m", task_type="t", submitted_at=NOW - 5,
                      row_key=key)


def test_a_poll_message_in_row_terms() -> None:
    a, b, c = target(5, "img-5"), target(6, "img-6"), target(7, "img-7")
    paid = TaskView(task_id="t5", model="m", task_type="t", status="completed", output={},
                    usage=Usage("llm", 0, 100_000), error=None, created_at=None,
                    started_at=None, ended_at=None)
    polled = [PollOutcome(a, "completed", paid),
              PollOutcome(b, "progress", next_at=NOW + 4),
              PollOutcome(c, "retry", next_at=NOW + 12)]
    line = render(of_polls([a, b, c], polled, asked=4, now=NOW))
    assert line == ("rows img-5…img-7: 1 completed ($0.01), 1 still running, "
                    "1 retry (new task) in 12 s, 1 skipped (not running)")

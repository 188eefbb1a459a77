"""Judging a lost create from PiAPI's history (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from workers.piapi import HistoryRow, parse_history_row
from workers.reconcile.decide import (
    MAX_CHECKS,
    SETTLE_S,
    WINDOW_SLACK_S,
    Verdict,
    decide,
    input_matches,
    model_matches,
)

SENT = {"image": "https://x/1.png", "caption_length": "any"}
T0 = 1000.0


def row(task_id: str, created: float | None = T0 + 1, inp: dict[str, Any] | None = None,
        model: str = "Qubico/joycaption") -> HistoryRow:
    return HistoryRow(task_id, model, "joycaption-beta-one", "completed", created,
                      inp if inp is not None else None)


def judge(rows: list[HistoryRow], owned: set[str] | None = None, now: float = T0 + 100,
          ours_later: set[str] | None = None, checked: dict[str, bool | None] | None = None,
          family: str | None = None) -> tuple[Verdict, str | None]:
    later = {"ours"} if ours_later is None else ours_later
    d = decide(sent=SENT, model="Qubico/joycaption", task_type="joycaption-beta-one",
               window=(T0, T0 + 2), rows=rows, owned=(owned or set()) | {"ours"}, now=now,
               family=family, ours_later=later, checked=checked)
    return d.verdict, d.task_id


LATER = HistoryRow("ours", "Qubico/joycaption", "joycaption-beta-one", "pending", T0 + 5, None)
"""A task of ours (another attempt owns it) created after the lost create: the listing
covers the window."""


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
    assert judge([row("mine", inp=SENT), LATER], owned={"mine"}) == (Verdict.ABSENT, None)


def test_tasks_outside_the_window_do_not_count() -> None:
    late = row("late", created=T0 + 2 + WINDOW_SLACK_S + 1, inp=SENT)
    assert judge([late, LATER]) == (Verdict.ABSENT, None)


def test_absence_counts_only_once_the_history_had_time() -> None:
    assert judge([LATER], now=T0 + 2 + SETTLE_S - 1)[0] is Verdict.UNKNOWN
    assert judge([LATER], now=T0 + 2 + SETTLE_S + 1) == (Verdict.ABSENT, None)


def test_absence_needs_a_later_task_of_ours_in_the_same_listing() -> None:
    # An empty listing, a filter that matched nothing or a listing that lags: "not yet".
    assert judge([])[0] is Verdict.UNKNOWN
    assert judge([row("someone-else", inp={**SENT, "image": "https://x/9.png"})])[0] \
        is Verdict.UNKNOWN
    # Our later task exists but is not listed yet: still "not yet".
    assert judge([], ours_later={"ours"})[0] is Verdict.UNKNOWN
    assert judge([LATER], ours_later=set())[0] is Verdict.UNKNOWN


LATER_RAN = HistoryRow("ours", "Qubico/joycaption", "joycaption-beta-one", "finished", T0 + 5,
                      None)
"""The same later task, listed only once it ended: the listing shows no pending task."""


def absent_without_pending_rows(now: float, lists_pending: bool | None = None,
                                ended_by: float | None = T0 + 600) -> Verdict:
    return decide(sent=SENT, model="Qubico/joycaption", task_type="joycaption-beta-one",
                  window=(T0, T0 + 2), rows=[LATER_RAN], owned={"ours"}, now=now,
                  ours_later={"ours"}, lists_pending=lists_pending, ended_by=ended_by).verdict


def test_a_listing_without_pending_rows_proves_absence_only_once_the_task_would_have_ended(
) -> None:
    # Later tasks of ours already ran and are listed, but a history that leaves pending
    # tasks out would not list the lost create's task while it waits in PiAPI's queue.
    assert absent_without_pending_rows(T0 + 100) is Verdict.UNKNOWN
    assert absent_without_pending_rows(T0 + 599) is Verdict.UNKNOWN
    assert absent_without_pending_rows(T0 + 601) is Verdict.ABSENT
    assert absent_without_pending_rows(T0 + 10_000, ended_by=None) is Verdict.UNKNOWN
    # The doctor saw a pending task listed: the listing covers it as it is.
    assert absent_without_pending_rows(T0 + 100, lists_pending=True) is Verdict.ABSENT
    # A pending row in the listing (anyone's) is the same evidence.
    other = HistoryRow("x", "Qubico/flux1-dev", "txt2img", "pending", T0 + 6, None)
    assert decide(sent=SENT, model="Qubico/joycaption", task_type="joycaption-beta-one",
                  window=(T0, T0 + 2), rows=[LATER_RAN, other], owned={"ours"}, now=T0 + 100,
                  ours_later={"ours"}).verdict is Verdict.ABSENT


def test_a_batchs_last_lost_create_is_judged_by_a_task_sent_with_it() -> None:
    # Found by an exploratory run: a lost create with no create of ours after it (the
    # batch's last) could never be settled, not even after `retry`.
    near = HistoryRow("sent-with-it", "Qubico/joycaption", "joycaption-beta-one", "finished",
                      T0 + 1, None)

    def verdict(now: float) -> Verdict:
        return decide(sent=SENT, model="Qubico/joycaption", task_type="joycaption-beta-one",
                      window=(T0, T0 + 2), rows=[near], owned={"sent-with-it"}, now=now,
                      ours_later=set(), ours_near={"sent-with-it"}, ended_by=T0 + 600).verdict

    assert verdict(T0 + 100) is Verdict.UNKNOWN  # its task might still be on its way
    assert verdict(T0 + 601) is Verdict.ABSENT
    assert decide(sent=SENT, model="Qubico/joycaption", task_type="joycaption-beta-one",
                  window=(T0, T0 + 2), rows=[], owned=set(), now=T0 + 601, ours_later=set(),
                  ours_near={"sent-with-it"}, ended_by=T0 + 600).verdict is Verdict.UNKNOWN


def test_candidates_without_input_are_read_before_anything_is_decided() -> None:
    d = decide(sent=SENT, model="Qubico/joycaption", task_type="joycaption-beta-one",
               window=(T0, T0 + 2), rows=[row("far", created=T0 - 20), row("near"), LATER],
               owned={"ours"}, now=T0 + 100, ours_later={"ours"})
    assert d.verdict is Verdict.CHECK and d.to_check == ("near", "far")
    # What the GETs said decides: the one echoing this input is adopted...
    assert judge([row("a"), row("b"), LATER], checked={"a": False, "b": True}) \
        == (Verdict.ADOPT, "b")
    # ...none of them: never created (the listing covers the window)...
    assert judge([row("a"), row("b"), LATER], checked={"a": False, "b": False}) \
        == (Verdict.ABSENT, None)
    # ...a GET that echoed no input proves nothing.
    assert judge([row("a"), LATER], checked={"a": None})[0] is Verdict.UNKNOWN


def test_reads_per_look_are_bounded() -> None:
    rows = [row(f"t{i}", created=T0 + 1 + i / 100) for i in range(30)] + [LATER]
    d = decide(sent=SENT, model="Qubico/joycaption", task_type="joycaption-beta-one",
               window=(T0, T0 + 2), rows=rows, owned={"ours"}, now=T0 + 100,
               ours_later={"ours"})
    assert d.verdict is Verdict.CHECK and len(d.to_check) == MAX_CHECKS


def test_other_models_are_not_candidates() -> None:
    assert judge([row("wan", inp=None, model="Wan"), LATER]) == (Verdict.ABSENT, None)


@pytest.mark.parametrize(("listed", "expected"), [
    (("Qubico/joycaption",), True), (("joycaption",), True), (("",), True), ((), True),
    (("JOYCAPTION", "Qubico/joycaption"), True), (("Wan",), False),
    (("Qubico/flux1-dev",), False), (("flux",), False)])
def test_models_match_loosely(listed: tuple[str, ...], expected: bool) -> None:
    assert model_matches(listed, "Qubico/joycaption", None) is expected


def test_a_family_name_matches_its_models() -> None:
    assert model_matches(("wan",), "Wan", "wan")
    assert model_matches(("flux",), "Qubico/flux1-dev", "flux")
    assert not model_matches(("kling",), "Qubico/flux1-dev", "flux")


def test_history_rows_in_every_shape() -> None:
    documented = {"task_id": "t1", "task_model": "Wan", "action": "wan26-txt2video",
                  "status": "finished", "usage": 4000000, "usage_type": "point",
                  "service_mode": "public",
                  "detail": {"model": "Wan", "task_id": "t1", "workflow_type": ""},
                  "created_at": "2025-12-17T10:28:49.8528496Z",
                  "updated_at": "2025-12-17T10:31:02Z"}
    r = parse_history_row(documented)
    assert r is not None and (r.task_id, r.model, r.task_type, r.outcome) == (
        "t1", "Wan", "wan26-txt2video", "completed")
    assert r.input is None and r.created_at is not None and r.detail_model == "Wan"
    listing = {"id": 7, "taskId": "t1", "taskModel": "Wan", "action": "wan26-txt2video",
               "status": "Completed", "createdAt": "2025-12-17T10:28:49.8528496Z",
               "detail": {"task_id": "t1", "input": {"prompt": "p"}}}
    r = parse_history_row(listing)
    assert r is not None and (r.task_id, r.model, r.outcome) == ("t1", "Wan", "completed")
    assert r.input == {"prompt": "p"} and r.created_at is not None
    summary = parse_history_row({**listing, "detail": None})
    assert summary is not None and summary.input is None
    assert parse_history_row({"status": "x"}) is None
    unix = parse_history_row({**documented, "created_at": 1765967329})
    assert unix is not None and unix.created_at == 1765967329.0


class _FlakyHistory:
    """A history whose first request fails with a 503."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, float, int]] = []

    def task_history(self, model: str | None, start: float, end: float, page: int = 1,
                     page_size: int = 100) -> Any:
        from workers.piapi import HistoryPage, ServerError

        self.calls.append((start, end, page))
        if len(self.calls) == 1:
            raise ServerError("HTTP 503", status=503)
        return HistoryPage([row("t1")], 1)


def test_history_is_read_over_the_judged_window_and_a_failed_page_asked_again() -> None:
    # Found by the chaos run: at a high create rate the window read (up to lost_at + 120 s)
    # needed so many pages that, with one request in ten failing, no look ever completed.
    from workers.reconcile.settle import _history
    from workers.work import Tally, WorkerContext

    client = _FlakyHistory()
    ctx = WorkerContext(engine=None, client=client, lease_s=1.0, max_tries=1)  # type: ignore[arg-type]
    rows, complete = _history(ctx, None, T0 - WINDOW_SLACK_S, T0 + 2 + WINDOW_SLACK_S,
                              Tally())
    assert complete and [r.task_id for r in rows] == ["t1"]
    assert client.calls == [(T0 - WINDOW_SLACK_S, T0 + 2 + WINDOW_SLACK_S, 1)] * 2


def test_filters_follow_the_family_and_the_doctor() -> None:
    from workers.findings import Findings
    from workers.reconcile.settle import filters_for, settle_s

    assert filters_for("Qubico/joycaption", None) == [None]
    assert filters_for("Wan", None) == ["wan", None]
    assert filters_for("Wan", Findings(0.0, history_filter="exact")) == ["Wan", None]
    assert filters_for("Wan", Findings(0.0, history_filter="none")) == [None]
    assert settle_s(None) == SETTLE_S
    assert settle_s(Findings(0.0, history_lag_s=30.0)) == 62.0

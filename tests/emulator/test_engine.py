"""The simulated account on a fake clock: lifecycle, concurrency, integrals, cancel, usage."""

from __future__ import annotations

import json

import pytest

from emulator.clock import format_time
from emulator.engine import OverLimit
from emulator.history import HistoryQuery
from emulator.tasks import Task
from emulator.validation import InvalidRequest
from tests.emulator.conftest import Harness, joy, wan


def test_lifecycle_times_are_exact(h: Harness) -> None:
    task = h.engine.create(joy())
    assert (task.status, task.started_at, task.output) == ("pending", None, None)
    h.at(0.999)
    assert h.engine.get(task.task_id) is task and task.status == "pending"
    h.at(1.0)
    h.engine.advance()
    assert task.status == "processing" and task.started_at == h.t0 + 1.0
    h.at(10.999)
    h.engine.advance()
    assert task.status == "processing"
    h.at(11.0)
    h.engine.advance()
    assert task.status == "completed" and task.ended_at == h.t0 + 11.0
    assert task.output is not None and "https://example.test/a.png" in task.output["text"]


def test_state_is_exact_without_a_timer_even_long_after(h: Harness) -> None:
    task = h.engine.create(wan())
    h.at(3600)
    assert h.engine.get(task.task_id) is task
    assert task.status == "completed"
    assert (task.started_at, task.ended_at) == (h.t0 + 1.0, h.t0 + 11.0)
    data = task.data()
    assert data["meta"]["ended_at"] == format_time(h.t0 + 11.0)
    assert data["output"]["video_url"].startswith("http://127.0.0.1:9/ephemeral/")
    assert data["output"]["video_url"].endswith(".mp4")


def test_envelope_matches_the_doc_example_shape(h: Harness) -> None:
    task = h.engine.create(joy())
    body = json.loads(task.envelope())
    assert list(body) == ["code", "data", "message"]
    assert (body["code"], body["message"]) == (200, "success")
    data = body["data"]
    assert list(data) == ["task_id", "model", "task_type", "status", "config", "input", "output",
                          "meta", "detail", "logs", "error"]
    assert data["meta"]["started_at"] == data["meta"]["ended_at"] == "0001-01-01T00:00:00Z"
    assert data["meta"]["usage"] == {"type": "llm", "frozen": 0, "consume": 100000}
    assert data["error"] == {"code": 0, "raw_message": "", "message": "", "detail": None}
    assert (data["detail"], data["logs"], data["meta"]["is_using_private_pool"]) == (
        None, [], False)


def test_queue_mode_runs_at_most_c_and_starts_fifo_as_slots_free() -> None:
    h = Harness(concurrency=2)
    tasks = [h.engine.create(joy(f"http://x/{i}.png")) for i in range(5)]
    assert h.engine.metrics.in_flight == 5
    h.at(1.0)
    h.engine.advance()
    assert [t.status for t in tasks] == ["processing"] * 2 + ["pending"] * 3
    h.at(100)
    h.engine.advance()
    assert all(t.status == "completed" for t in tasks)
    starts = [t.started_at for t in tasks]
    assert starts == [h.t0 + 1, h.t0 + 1, h.t0 + 11, h.t0 + 11, h.t0 + 21]
    assert h.engine.metrics.peak_in_flight == 5


def test_refuse_mode_refuses_over_the_limit_until_a_slot_frees() -> None:
    h = Harness(concurrency=2, over_limit="refuse")
    first = h.engine.create(joy("http://x/1.png"))
    h.at(5.0)
    h.engine.create(joy("http://x/2.png"))
    with pytest.raises(OverLimit):
        h.engine.create(joy("http://x/3.png"))
    assert h.engine.metrics.creates == 2
    h.at(11.0)
    assert h.engine.get(first.task_id) is first and first.status == "completed"
    h.engine.create(joy("http://x/3.png"))
    assert h.engine.metrics.in_flight == 2


def test_invalid_request_creates_nothing(h: Harness) -> None:
    with pytest.raises(InvalidRequest):
        h.engine.create(wan(duration="5"))
    assert h.engine.metrics.creates == 0 and not h.engine.tasks


def test_in_flight_and_processing_integrals_are_exact() -> None:
    h = Harness(queue_wait_fraction=(0.0, 0.0))
    h.engine.create(joy("http://x/1.png"))  # 0..10
    h.at(5)
    h.engine.create(joy("http://x/2.png"))  # 5..15
    h.at(20)
    h.engine.advance()
    snap = h.engine.metrics.snapshot(h.clock.now())
    assert snap["in_flight_integral_s"] == pytest.approx(20.0)
    assert snap["processing_integral_s"] == pytest.approx(20.0)
    assert snap["peak_in_flight"] == 2 and snap["in_flight"] == 0


def test_pending_time_counts_in_flight_but_not_processing() -> None:
    h = Harness(concurrency=1, queue_wait_fraction=(0.0, 0.0))
    h.engine.create(joy("http://x/1.png"))  # processing 0..10
    h.engine.create(joy("http://x/2.png"))  # pending 0..10, processing 10..20
    h.at(30)
    h.engine.advance()
    snap = h.engine.metrics.snapshot(h.clock.now())
    assert snap["in_flight_integral_s"] == pytest.approx(30.0)
    assert snap["processing_integral_s"] == pytest.approx(20.0)


def test_cancel_only_while_pending_refunds_and_reads_failed(h: Harness) -> None:
    task = h.engine.create(wan())
    assert task.frozen == 4_000_000
    assert h.engine.cancel(task.task_id) == "canceled"
    assert task.status == "failed" and task.error["message"] == "task canceled"
    assert (task.frozen, task.consume) == (0, 0)
    assert h.engine.metrics.frozen_units == 0 and h.engine.metrics.in_flight == 0
    assert h.engine.cancel(task.task_id) == "not_pending"
    assert h.engine.cancel("no-such-id") == "not_found"
    h.at(100)
    h.engine.advance()
    assert task.status == "failed" and task.started_at is None


def test_cancel_status_can_be_cancelled_and_processing_cannot_be_cancelled() -> None:
    h = Harness(cancel_status="cancelled")
    a = h.engine.create(joy("http://x/1.png"))
    b = h.engine.create(joy("http://x/2.png"))
    assert h.engine.cancel(a.task_id) == "canceled" and a.status == "cancelled"
    h.at(2)
    assert h.engine.cancel(b.task_id) == "not_pending" and b.status == "processing"
    assert h.engine.metrics.snapshot(h.clock.now())["tasks_by_status"] == {
        "cancelled": 1, "processing": 1}


def test_point_usage_is_frozen_then_consumed(h: Harness) -> None:
    task = h.engine.create(wan(resolution="1080P"))
    assert (task.usage_type, task.frozen, task.consume) == ("point", 6_000_000, 0)
    assert (h.engine.metrics.frozen_units, h.engine.metrics.consumed_units) == (6_000_000, 0)
    h.at(100)
    h.engine.advance()
    assert (task.frozen, task.consume) == (0, 6_000_000)
    assert (h.engine.metrics.frozen_units, h.engine.metrics.consumed_units) == (0, 6_000_000)


def test_ten_second_wan_takes_twice_as_long(h: Harness) -> None:
    task = h.engine.create(wan(duration=10))
    assert task.duration_s == 20.0 and task.frozen == 8_000_000


def test_transient_failure_is_refunded(h: Harness) -> None:
    llm = h.engine.create(joy("http://x/[[fail]].png"))
    point = h.engine.create(wan("[[fail]]"))
    assert llm.consume == 100_000
    h.at(100)
    h.engine.advance()
    for task in (llm, point):
        assert task.status == "failed" and (task.frozen, task.consume) == (0, 0)
        assert task.error["raw_message"] == "no available account, please retry later"
        assert task.started_at is not None and task.output is None
    assert h.engine.metrics.consumed_units == 0


def test_moderation_fails_permanently_before_processing(h: Harness) -> None:
    task = h.engine.create(wan("[[moderation]] something"))
    h.at(1.0)
    h.engine.advance()
    assert task.status == "failed" and task.started_at is None
    assert task.error == {"code": 10000, "raw_message": "content moderation failed",
                          "message": "failed to do request", "detail": None}


def test_stuck_pending_holds_a_slot_until_timeout_and_can_be_cancelled() -> None:
    h = Harness(over_limit="refuse", concurrency=1)
    stuck = h.engine.create(joy("http://x/[[stuck]].png"))
    h.at(199.9)
    h.engine.advance()
    assert stuck.status == "pending"
    with pytest.raises(OverLimit):
        h.engine.create(joy())
    h.at(200.0)  # 20 x 10 s
    h.engine.advance()
    assert stuck.status == "failed" and stuck.error["raw_message"] == "task timeout"
    again = h.engine.create(joy("http://x/[[stuck]].png"))
    assert h.engine.cancel(again.task_id) == "canceled"


def test_stuck_processing_blocks_the_queue_until_it_times_out() -> None:
    h = Harness(concurrency=1, stuck_timeout_factor=5)
    stuck = h.engine.create(joy("http://x/[[stuck-processing]].png"))
    waiting = h.engine.create(joy("http://x/next.png"))
    h.at(50.9)
    h.engine.advance()
    assert (stuck.status, waiting.status) == ("processing", "pending")
    h.at(51.0)  # started at 1, 5 x 10 s later
    h.engine.advance()
    assert stuck.status == "failed" and stuck.error["raw_message"] == "task timeout"
    assert waiting.status == "processing" and waiting.started_at == h.t0 + 51.0


def test_fault_rates_decide_fates_and_are_counted() -> None:
    h = Harness(fault_fail=1.0)
    task = h.engine.create(joy())
    h.at(100)
    h.engine.advance()
    assert task.status == "failed" and h.counters.faults["fail"] == 1
    h2 = Harness(fault_stuck=1.0)
    stuck = [h2.engine.create(joy(f"http://x/{i}.png")) for i in range(20)]
    h2.at(50)
    h2.engine.advance()
    statuses = {t.status for t in stuck}
    assert statuses == {"pending", "processing"} and h2.counters.faults["stuck"] == 20


def test_a_marker_wins_over_fault_rates_without_a_draw() -> None:
    h = Harness(fault_fail=1.0)
    h.engine.create(joy("http://x/[[moderation]].png"))
    assert h.counters.faults["fail"] == 0


def test_repeat_creates_are_histogrammed_per_input(h: Harness) -> None:
    for _ in range(3):
        h.engine.create(joy("http://x/same.png"))
    h.engine.create(joy("http://x/other.png"))
    snap = h.engine.metrics.snapshot(h.clock.now())
    assert snap["max_creates_per_input"] == 3
    assert snap["creates_per_input_histogram"] == {"1": 1, "3": 1}


def test_webhook_events_on_processing_and_terminal(h: Harness) -> None:
    body = {**joy(), "config": {"webhook_config": {"endpoint": "http://127.0.0.1:1/h",
                                                   "secret": "s"}}}
    task = h.engine.create(body)
    h.engine.create(joy("http://x/no-hook.png"))
    h.at(100)
    h.engine.advance()
    events = h.engine.outbox
    assert [e.status for e in events] == ["processing", "completed"]
    assert all(e.task_id == task.task_id and e.secret == "s" for e in events)
    payload = json.loads(events[1].body)
    assert payload["timestamp"] == int(h.t0 + 11.0)
    assert payload["data"] == json.loads(task.envelope())["data"]


def _by_ids(tasks: list[Task]) -> list[int]:
    return [t.seq for t in tasks]


def test_history_pages_newest_first_with_filters() -> None:
    h = Harness()
    for i in range(25):
        h.at(i)
        h.engine.create(joy(f"http://x/{i}.png") if i % 5 else wan(f"w{i}"))
    index, now = h.engine.history, h.clock.now()
    page1, total = index.query(HistoryQuery(page=1, page_size=10), now)
    assert total == 25 and _by_ids(page1) == list(range(25, 15, -1))
    page3, _ = index.query(HistoryQuery(page=3, page_size=10), now)
    assert _by_ids(page3) == [5, 4, 3, 2, 1]
    assert index.query(HistoryQuery(page=4, page_size=10), now) == ([], 25)
    wans, total = index.query(HistoryQuery(model="Wan", page_size=100), now)
    assert total == 5 and _by_ids(wans) == [21, 16, 11, 6, 1]
    window, total = index.query(HistoryQuery(start_time=h.t0 + 10, end_time=h.t0 + 12), now)
    assert total == 3 and _by_ids(window) == [13, 12, 11]
    lagging, total = index.query(HistoryQuery(), visible_until=now - 5)
    assert total == 20 and lagging[0].seq == 20


def test_reset_forgets_everything(h: Harness) -> None:
    h.engine.create(joy())
    h.engine.reset()
    assert not h.engine.tasks and h.engine.next_event_time() is None
    assert h.engine.metrics.snapshot(h.clock.now())["creates"] == 0


def test_same_seed_same_creates_same_tasks_whatever_the_timing() -> None:
    def run(step_s: float) -> list[tuple[str, float, str]]:
        h = Harness(fault_fail=0.5, fault_stuck=0.2, durations_s={"joycaption": (1, 30)})
        out = []
        for i in range(20):
            h.at(i * step_s)  # with a big step, earlier tasks complete in between
            task = h.engine.create(joy(f"http://x/{i}.png"))
            out.append((task.task_id, task.duration_s, task.fate.value))
        h.at(10_000)
        h.engine.advance()
        return out

    assert run(0.0) == run(50.0)

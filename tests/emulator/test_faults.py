"""Faults a client must survive: tasks stuck processing, provider-pool credit failures, the
reasons failed tasks carry in `logs`, and the families /account/active_tasks reports."""

from __future__ import annotations

from typing import Any

import pytest

from emulator.catalog import CATALOG
from emulator.engine import OverLimit
from emulator.tasks import CREDITS_ERROR
from emulator.views import active_tasks
from tests.emulator.conftest import Harness, joy, wan

KLING = {"model": "kling", "task_type": "video_generation", "input": {"prompt": "p"}}
FLUX = {"model": "Qubico/flux1-schnell", "task_type": "txt2img", "input": {"prompt": "p"}}
MJ = {"model": "midjourney", "task_type": "imagine", "input": {"prompt": "p"}}
UDIO = {"model": "music-u", "task_type": "generate_music", "input": {"lyrics": "la"}}
HAILUO = {"model": "hailuo", "task_type": "video_generation", "input": {"prompt": "p"}}
TTS = {"model": "Qubico/tts", "task_type": "zero-shot",
       "input": {"gen_text": "hi", "ref_audio": "http://x/a.wav"}}
DOCUMENTED = {"flux", "kling", "luma", "midjourney", "music-s", "music-u"}


def test_stuck_processing_fault_holds_its_slot_and_never_ends_when_factor_is_zero() -> None:
    h = Harness(fault_stuck_processing=1.0, stuck_timeout_factor=0, concurrency=1)
    stuck = h.engine.create(joy())
    assert h.counters.faults["stuck_processing"] == 1
    h.engine.config.fault_stuck_processing = 0.0
    waiting = h.engine.create(joy("http://x/next.png"))
    h.at(10**7)
    h.engine.advance()
    assert (stuck.status, waiting.status) == ("processing", "pending")
    assert h.engine.next_event_time() is None  # nothing will ever change on its own
    assert h.engine.cancel(stuck.task_id) == "not_pending"
    assert h.engine.metrics.in_flight == 2 and h.engine.metrics.processing == 1


def test_stuck_processing_counts_toward_the_limit_in_refuse_mode() -> None:
    h = Harness(over_limit="refuse", concurrency=1, stuck_timeout_factor=0)
    stuck = h.engine.create(joy("http://x/[[stuck-processing]].png"))
    h.at(10**6)
    h.engine.advance()
    assert stuck.status == "processing"
    with pytest.raises(OverLimit):
        h.engine.create(joy())


def test_stuck_processing_fault_times_out_with_the_default_factor() -> None:
    h = Harness(fault_stuck_processing=1.0)
    task = h.engine.create(joy())
    h.at(1 + 20 * 10 - 0.001)  # starts at 1, times out 20 x 10 s later
    h.engine.advance()
    assert task.status == "processing"
    h.at(1 + 20 * 10)
    h.engine.advance()
    assert task.status == "failed" and task.logs == ("task timeout",)


def test_stuck_pending_with_factor_zero_waits_until_cancelled() -> None:
    h = Harness(stuck_timeout_factor=0)
    task = h.engine.create(joy("http://x/[[stuck]].png"))
    h.at(10**7)
    h.engine.advance()
    assert task.status == "pending"
    assert h.engine.cancel(task.task_id) == "canceled"
    assert task.data()["logs"] == ["task canceled"]


@pytest.mark.parametrize("how", ["fault", "marker"])
def test_provider_pool_out_of_credits_fails_the_task_with_its_reason_in_logs(how: str) -> None:
    if how == "fault":
        h = Harness(fault_fail_credits=1.0)
        task = h.engine.create(wan())
        assert h.counters.faults["fail_credits"] == 1
    else:
        h = Harness()
        task = h.engine.create(wan("[[fail-credits]]"))
    h.at(1000)
    h.engine.advance()
    data = task.data()
    assert data["status"] == "failed" and data["output"] is None
    assert data["error"] == {"code": 10000, "raw_message": "doesn't have enough credits",
                             "message": "failed to do request", "detail": None}
    assert data["error"] == CREDITS_ERROR
    assert data["logs"] == ["doesn't have enough credits"]
    assert (task.frozen, task.consume) == (0, 0)  # refunded like any failure


@pytest.mark.parametrize(
    ("text", "reason"),
    [("[[moderation]]", "content moderation failed"),
     ("[[fail]]", "no available account, please retry later")],
)
def test_every_failed_task_carries_its_reason_in_logs(text: str, reason: str) -> None:
    h = Harness()
    task = h.engine.create(wan(text))
    assert task.data()["logs"] == []
    h.at(1000)
    h.engine.advance()
    assert task.data()["logs"] == [reason] == [task.error["raw_message"]]


def test_a_completed_task_has_empty_logs(h: Harness) -> None:
    task = h.engine.create(joy())
    h.at(1000)
    h.engine.advance()
    assert task.status == "completed" and task.data()["logs"] == []


def _counts(data: dict[str, Any], family: str) -> tuple[int, int]:
    return data[family]["pending_count"], data[family]["processing_count"]


def test_active_tasks_lists_only_the_documented_families_zero_when_idle() -> None:
    h = Harness()
    idle = active_tasks(h.engine)
    assert set(idle) == DOCUMENTED
    assert all(v == {"pending_count": 0, "processing_count": 0, "staged_count": 0,
                     "active_tasks": []} for v in idle.values())
    for body in (KLING, FLUX, MJ, UDIO, joy(), wan(), HAILUO, TTS):
        h.engine.create(body)
    data = active_tasks(h.engine)
    assert set(data) == DOCUMENTED
    for family in ("kling", "flux", "midjourney", "music-u"):
        assert _counts(data, family) == (1, 0), family
    assert _counts(data, "luma") == _counts(data, "music-s") == (0, 0)
    counted = sum(p + q for p, q in (_counts(data, f) for f in DOCUMENTED))
    assert counted == 4 and h.engine.metrics.in_flight == 8  # the others still hold slots


def test_active_tasks_all_families_counts_every_model() -> None:
    h = Harness(active_tasks_families="all")
    for body in (joy(), wan(), HAILUO, TTS, KLING):
        h.engine.create(body)
    data = active_tasks(h.engine)
    assert {f for f in data if data[f]["pending_count"]} == {
        "joycaption", "wan", "hailuo", "tts", "kling"}


def test_every_catalogue_entry_has_its_active_tasks_family_or_none() -> None:
    families = {spec.model: spec.active_family for spec in CATALOG.values()}
    assert {m: f for m, f in families.items() if f} == {
        "Qubico/flux1-schnell": "flux", "Qubico/flux1-dev": "flux",
        "Qubico/flux1-dev-advanced": "flux", "kling": "kling", "midjourney": "midjourney",
        "music-u": "music-u"}

"""The task history as PiAPI documents it: row fields, family filter, lag, pending tasks."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emulator.catalog import CATALOG, HISTORY_FAMILIES, MODEL_FAMILIES
from emulator.history import HistoryQuery, _Fenwick
from emulator.views import history_page
from tests.emulator.conftest import Harness, joy, wan

RFC3339 = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$"
FLUX = {"model": "Qubico/flux1-dev", "task_type": "txt2img", "input": {"prompt": "p"}}
ADVANCED = {"model": "Qubico/flux1-dev-advanced", "task_type": "txt2img-lora",
            "input": {"prompt": "p"}}


def page(h: Harness, **query: Any) -> dict[str, Any]:
    h.engine.advance()
    return history_page(h.engine, HistoryQuery(**query))


def test_documented_rows_carry_only_the_documented_fields_and_never_the_input() -> None:
    h = Harness(history_lag_s=0)
    created = h.engine.create({**joy("http://x/secret.png"),
                               "input": {"image": "http://x/secret.png",
                                         "workflow_type": "joycaption-beta-one"},
                               "config": {"service_mode": "public"}})
    h.engine.create(wan())
    h.at(1000)
    rows = page(h)["data"]
    assert [set(r) for r in rows] == [{
        "task_id", "task_model", "action", "status", "usage", "usage_type", "service_mode",
        "detail", "created_at", "updated_at"}] * 2
    joy_row = rows[1]
    assert joy_row == {
        "task_id": created.task_id, "task_model": "Qubico/joycaption",
        "action": "joycaption-beta-one", "status": "finished", "usage": 100_000,
        "usage_type": "llm", "service_mode": "public",
        "detail": {"model": "Qubico/joycaption", "task_id": created.task_id,
                   "workflow_type": "joycaption-beta-one"},
        "created_at": joy_row["created_at"], "updated_at": joy_row["updated_at"],
    }
    assert rows[0]["detail"]["workflow_type"] == ""  # the input had none
    for row in rows:
        assert row["created_at"] < row["updated_at"]
        assert re.match(RFC3339, row["created_at"])
    assert "secret" not in str(rows)


def test_statuses_other_than_completed_are_listed_as_they_are() -> None:
    h = Harness(history_lag_s=0, concurrency=1)
    failed = h.engine.create(wan("[[fail]]"))
    h.engine.create(wan("second"))
    h.at(5)
    by_id = {r["task_id"]: r["status"] for r in page(h)["data"]}
    assert by_id[failed.task_id] == "processing" and "pending" in by_id.values()
    h.at(1000)
    assert {r["status"] for r in page(h)["data"]} == {"failed", "finished"}
    assert page(h)["data"][1]["usage"] == 0  # refunded


@pytest.mark.parametrize(
    ("match", "listed"),
    [
        ("family", {"wan": 1, "flux": 2, "Wan": 0, "Qubico/flux1-dev": 0,
                    "Qubico/joycaption": 0, "joycaption": 0, "mj": 0, "nope": 0, "": 4}),
        ("exact", {"wan": 0, "flux": 0, "Wan": 1, "Qubico/flux1-dev": 1,
                   "Qubico/joycaption": 1, "joycaption": 0, "": 4}),
        ("both", {"wan": 1, "flux": 2, "Wan": 1, "Qubico/flux1-dev": 1,
                  "Qubico/joycaption": 1, "nope": 0, "": 4}),
    ],
)
def test_model_filter_by_family_exact_name_or_both(match: str, listed: dict[str, int]) -> None:
    h = Harness(history_lag_s=0, history_model_filter=match)
    for body in (joy(), wan(), FLUX, ADVANCED):
        h.engine.create(body)
    for model, total in listed.items():
        assert page(h, model=model)["total"] == total, model
        assert len(page(h, model=model)["data"]) == total, model


def test_joycaption_and_seedance_are_found_only_unfiltered() -> None:
    assert MODEL_FAMILIES["Qubico/joycaption"] == MODEL_FAMILIES["seedance"] == (None, None)
    h = Harness(history_lag_s=0)
    task = h.engine.create({"model": "seedance", "task_type": "seedance-2-preview",
                            "input": {"prompt": "p"}})
    assert [r["task_id"] for r in page(h)["data"]] == [task.task_id]
    assert all(page(h, model=family)["total"] == 0 for family in HISTORY_FAMILIES)


def test_every_catalogue_entry_has_a_documented_history_family_or_none() -> None:
    expected = {
        "Wan": "wan", "Qubico/flux1-schnell": "flux", "Qubico/flux1-dev": "flux",
        "Qubico/flux1-dev-advanced": "flux", "kling": "kling", "hailuo": "hailuo",
        "Qubico/tts": "tts", "music-u": "music-u", "midjourney": "mj",
        "Qubico/hunyuan": "hunyuan", "Qubico/trellis": "trellis",
        "Qubico/image-toolkit": "image_toolkit", "Qubico/diffrhythm": "diffrhythm",
        "Qubico/joycaption": None, "seedance": None,
    }
    assert {spec.model: spec.history_family for spec in CATALOG.values()} == expected


def test_new_tasks_are_listed_after_the_lag_in_model_seconds() -> None:
    h = Harness(time_scale=0.01)  # default history_lag_s 3.0 -> 0.03 s
    assert h.config.history_lag_s == 3.0
    h.engine.create(joy())
    h.at(0.0299)
    assert page(h)["total"] == 0
    h.at(0.03)
    assert page(h)["total"] == 1


def test_pending_tasks_can_be_left_out_and_are_listed_once_they_move_on() -> None:
    h = Harness(history_lag_s=0, history_lists_pending=False, concurrency=1)
    tasks = [h.engine.create(joy(f"http://x/{i}.png")) for i in range(4)]
    assert page(h) == {"data": [], "page": 1, "size": 0, "total": 0}
    h.at(1)  # the first starts; the others wait for the one slot
    assert [r["task_id"] for r in page(h)["data"]] == [tasks[0].task_id]
    h.at(21)  # first two done, third processing
    listed = page(h, page_size=2)
    assert listed["total"] == 3
    assert [r["task_id"] for r in listed["data"]] == [tasks[2].task_id, tasks[1].task_id]
    assert [r["task_id"] for r in page(h, page=2, page_size=2)["data"]] == [tasks[0].task_id]
    h.engine.config.history_lists_pending = True
    assert page(h)["total"] == 4


def test_a_cancelled_pending_task_is_listed_when_pending_ones_are_not() -> None:
    h = Harness(history_lag_s=0, history_lists_pending=False)
    task = h.engine.create(wan())
    assert h.engine.cancel(task.task_id) == "canceled"
    rows = page(h, model="wan")["data"]
    assert [(r["task_id"], r["status"]) for r in rows] == [(task.task_id, "failed")]


@settings(max_examples=80, deadline=None)
@given(
    flags=st.lists(st.booleans(), max_size=70),
    flips=st.lists(st.integers(min_value=0, max_value=69), max_size=30),
)
def test_fenwick_matches_a_plain_list(flags: list[bool], flips: list[int]) -> None:
    tree, plain = _Fenwick(), []
    for flag in flags:
        tree.append(int(flag))
        plain.append(int(flag))
    for position in flips:
        if position < len(plain) and not plain[position]:
            tree.add(position, 1)
            plain[position] = 1
    for count in range(len(plain) + 1):
        assert tree.prefix(count) == sum(plain[:count])
    ones = [i for i, v in enumerate(plain) if v]
    assert [tree.find(rank) for rank in range(1, len(ones) + 1)] == ones

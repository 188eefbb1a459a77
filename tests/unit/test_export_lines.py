"""Results lines: URL extraction and the exact contract shape."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from scheduler.dispatcher import chunks
from scheduler.export import find_urls, result_line
from workers.models import Job


def test_find_urls_everywhere_in_order_without_repeats() -> None:
    output = {"video_url": "https://a/x.mp4", "clips": {"1": {}, "2": {"audio_url": "http://b/y"}},
              "list": ["https://a/x.mp4", "ftp://no", " https://c/z.png "], "n": 3}
    assert find_urls(output) == ["https://a/x.mp4", "http://b/y", "https://c/z.png"]


def test_find_urls_of_nothing() -> None:
    assert find_urls(None) == [] and find_urls({"text": "a caption"}) == []


def _job(**kw: object) -> Job:
    base: dict[str, object] = dict(id=1, batch_id="b1", seq=1, line=2, row_key="r1",
                                   model="Wan", task_type="wan26-txt2video", state="completed")
    base.update(kw)
    return Job(**base)  # type: ignore[arg-type]


def test_completed_line_has_every_contract_field() -> None:
    line = result_line(_job(task_id="t1", attempts=1, usage_consume=4_000_000,
                            output_json=json.dumps({"video_url": "https://v/1.mp4"}),
                            metadata_json=json.dumps({"k": [1]})))
    assert list(line) == ["id", "line", "status", "model", "task_type", "task_id", "output",
                          "urls", "error", "attempts", "other_tasks", "usage", "metadata"]
    assert line["other_tasks"] == []
    assert line["status"] == "completed" and line["error"] is None
    assert line["urls"] == ["https://v/1.mp4"]
    assert line["usage"] == {"consume": 4_000_000, "usd": 0.4}
    assert line["metadata"] == {"k": [1]}


def test_failed_and_invalid_lines_carry_an_error() -> None:
    failed = result_line(_job(state="failed", error_kind="ambiguous", error_message="m"))
    assert failed["error"] == {"kind": "ambiguous", "message": "m"}
    invalid = result_line(_job(state="invalid", error_kind="invalid", error_message="bad"))
    assert invalid["status"] == "invalid" and invalid["error"]["kind"] == "invalid"


def test_unfinished_rows_export_as_pending() -> None:
    assert result_line(_job(state="running"))["status"] == "pending"


@given(st.lists(st.integers(), max_size=200), st.integers(1, 20), st.integers(1, 40))
def test_chunks_keep_every_id_once_in_order(ids: list[int], size: int, spread: int) -> None:
    parts = chunks(ids, size, spread)
    assert [i for p in parts for i in p] == ids
    assert all(0 < len(p) <= size for p in parts)

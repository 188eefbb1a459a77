"""Results lines: URL extraction and the exact contract shape."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.dispatcher import chunks
from scheduler.export import find_urls, result_line
from workers.models import Job


def test_find_urls_everywhere_in_order_without_repeats() -> None:
    output = {"video_url": "https://a/x.mp4", "clips": {"1": {}, "2": {"audio_url": "http://b/y"}},
              "list": ["https://a/x.mp4", "ftp://no", " https://c/z.png "], "n": 3}
    assert find_urls(output) == ["https://a/x.mp4", "http://b/y", "https://c/z.png"]


DOCS = Path("/work/shared/piapi-docs")


def _doc_example(name: str) -> dict[str, Any]:
    """The JSON example of a PiAPI doc page (the first object starting with "code")."""
    text = (DOCS / name).read_text()
    start = text.index('{\n  "code"')
    value, _ = json.JSONDecoder().raw_decode(text, start)
    assert isinstance(value, dict)
    return value


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


@pytest.mark.skipif(not DOCS.exists(), reason="shared docs not present")
def test_every_clip_url_of_the_documented_song_is_collected() -> None:
    output = _doc_example("song-get-task.txt")["data"]["output"]
    clips = output["clips"]
    assert isinstance(clips, dict) and {} in clips.values()  # a map, some entries empty
    expected = {s for s in _strings(clips) if s.startswith("https://")}
    assert expected >= {"https://xxx.mp4", "https://xxx.mp3", "https://xxx.jpeg"}
    assert set(find_urls(output)) == expected


def test_urls_in_nested_outputs_of_every_shape() -> None:
    song = {"clips": {
        "c1": {"audio_url": "https://cdn/c1.mp3", "video_url": "https://cdn/c1.mp4",
               "image_url": "https://cdn/c1.jpg", "metadata": {"duration": 102}},
        "c2": {},
        "c3": {"audio_url": "https://cdn/c3.mp3", "image_large_url": "https://cdn/c3-l.jpg"},
    }}
    assert find_urls(song) == ["https://cdn/c1.mp3", "https://cdn/c1.mp4", "https://cdn/c1.jpg",
                               "https://cdn/c3.mp3", "https://cdn/c3-l.jpg"]
    midjourney = {"image_url": "https://img/grid.png", "image_urls": [
        "https://img/1.png", "https://img/2.png"], "temporary_image_urls": None,
        "discord_image_url": ""}
    assert find_urls(midjourney) == ["https://img/grid.png", "https://img/1.png",
                                     "https://img/2.png"]
    trellis = {"model_file": "https://img/model.glb", "combined_video": "https://img/v.mp4",
               "no_background_image": "https://img/nb.png"}
    assert find_urls(trellis) == ["https://img/model.glb", "https://img/v.mp4",
                                  "https://img/nb.png"]


def test_find_urls_of_nothing() -> None:
    assert find_urls(None) == [] and find_urls({"text": "a caption"}) == []


def _job(**kw: object) -> Job:
    base: dict[str, object] = dict(id=1, batch_id="b1", seq=1, line=2, row_key="r1",
                                   model="Wan", task_type="wan26-txt2video", state="completed")
    base.update(kw)
    return Job(**base)  # type: ignore[arg-type]


def test_completed_line_has_every_contract_field() -> None:
    line = result_line(_job(task_id="t1", attempts=1, usage_consume=4_000_000,
                            input_json='{"duration":5,"prompt":"a lake"}',
                            output_json=json.dumps({"video_url": "https://v/1.mp4"}),
                            metadata_json=json.dumps({"k": [1]})))
    assert list(line) == ["id", "line", "status", "model", "task_type", "input", "task_id",
                          "output", "urls", "error", "attempts", "other_tasks", "usage",
                          "metadata"]
    assert line["input"] == {"duration": 5, "prompt": "a lake"}
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
    assert invalid["input"] is None  # an invalid row stores no input


def test_unchecked_rows_say_so_and_only_they() -> None:
    line = result_line(_job(model="Qubico/diffrhythm", task_type="txt2audio-base",
                            unchecked=True, output_json=json.dumps({"audio_url": "https://a"})))
    assert list(line)[-1] == "unchecked" and line["unchecked"] is True
    assert line["urls"] == ["https://a"]
    assert "unchecked" not in result_line(_job()) and "unchecked" not in result_line(
        _job(unchecked=None))


def test_unfinished_rows_export_as_pending() -> None:
    assert result_line(_job(state="running"))["status"] == "pending"


@given(st.lists(st.integers(), max_size=200), st.integers(1, 20), st.integers(1, 40))
def test_chunks_keep_every_id_once_in_order(ids: list[int], size: int, spread: int) -> None:
    parts = chunks(ids, size, spread)
    assert [i for p in parts for i in p] == ids
    assert all(0 < len(p) <= size for p in parts)


def test_a_reused_row_names_its_origin_and_costs_nothing() -> None:
    job = Job(id=7, batch_id="b2", seq=1, line=2, row_key="img-1", model="Qubico/joycaption",
              task_type="joycaption-beta-one", state="completed", task_id="t-1",
              output_json='{"text": "a cat"}', reused_from=3)
    line = result_line(job, origin_batch="b1")
    assert line["reused_from"] == {"batch": "b1", "task_id": "t-1"}
    assert line["usage"] == {"consume": 0, "usd": 0.0} and line["status"] == "completed"
    paid = result_line(Job(id=3, batch_id="b1", seq=1, line=2, row_key="img-1",
                           state="completed", task_id="t-1", usage_consume=100_000))
    assert "reused_from" not in paid and paid["usage"]["consume"] == 100_000

"""The expected duration of a row (`workers.expected`): table tests of the estimate, of
the order it puts rows in, and of the stored rank."""

from __future__ import annotations

import math
from typing import Any

import pytest

from workers.expected import MAX_RANK, expected_s, input_factor, rank, stored_factor

WAN = ("Wan", "wan26-txt2video")
KLING = ("kling", "video_generation")
MJ = ("midjourney", "imagine")


@pytest.mark.parametrize(("kind", "data", "factor"), [
    (WAN, {"prompt": "p"}, 1.0),  # PiAPI's default: 5 s at 720P
    (WAN, {"duration": 5}, 1.0),
    (WAN, {"duration": 10}, 2.0),
    (WAN, {"duration": 15}, 3.0),
    (WAN, {"duration": 10, "resolution": "1080P"}, 3.0),
    (KLING, {"duration": 10}, 2.0),
    (KLING, {"duration": 5, "mode": "pro"}, 0.46 / 0.26),
    (KLING, {"duration": 3, "version": "3.0"}, 0.6),  # per second: 3 of the default 5
    (KLING, {"duration": 10, "version": "3.0", "mode": "pro"}, 2.8),
    (("seedance", "seedance-2-preview"), {"duration": 10}, 2.0),
    (("Qubico/flux1-dev", "txt2img"), {"batch_size": 4}, 4.0),
    # Speed options: dearer is faster here, so not read from the price.
    (MJ, {"process_mode": "fast"}, 1.0),
    (MJ, {"process_mode": "turbo"}, 0.5),
    (MJ, {"process_mode": "relax"}, 3.0),
    # No reference (TTS's text has no default) or no say (the toolkit's megapixels): 1.
    (("Qubico/tts", "zero-shot"), {"gen_text": "x" * 5000}, 1.0),
    (("Qubico/image-toolkit", "upscale"), {"scale": 4}, 1.0),
    (("Qubico/joycaption", "joycaption-beta-one"), {"image": "u"}, 1.0),
    # A model the catalogue does not know: its clip length, read leniently.
    (("luma/new", "video"), {"duration": 10}, 2.0),
    (("luma/new", "video"), {"duration": "10s"}, 2.0),
    (("luma/new", "video"), {"video_length": 15}, 3.0),
    (("luma/new", "video"), {"duration": "long"}, 1.0),
    (("luma/new", "video"), {"duration": True}, 1.0),
    (("luma/new", "video"), {"duration": 3600}, 1.0),  # not a clip length
    (("luma/new", "video"), {"prompt": "p"}, 1.0),
])
def test_input_factor(kind: tuple[str, str], data: dict[str, Any], factor: float) -> None:
    assert input_factor(*kind, data) == pytest.approx(factor)
    assert input_factor(*kind, data) == pytest.approx(factor)  # and again, from the cache


def test_an_option_that_is_not_a_plain_value_is_estimated_uncached() -> None:
    assert input_factor(*WAN, {"duration": [10]}) == pytest.approx(3.0)  # the dearest case


@pytest.mark.parametrize(("kind", "data", "typical_s", "seconds"), [
    (WAN, {"duration": 10}, None, 360.0),  # the catalogue's prior: 180 s
    (WAN, {"duration": 10}, 250.0, 500.0),  # the kind's learned mean
    (WAN, {"duration": 10}, 0.0, 360.0),  # a learned mean of nothing: the prior
    (("Qubico/joycaption", "joycaption-beta-one"), None, None, 30.0),
    (("luma/new", "video"), {"duration": 10}, None, 120.0),  # unknown kind: 60 s prior
])
def test_expected_s(kind: tuple[str, str], data: dict[str, Any] | None,
                    typical_s: float | None, seconds: float) -> None:
    assert expected_s(*kind, data, typical_s) == pytest.approx(seconds)


def test_a_mixed_batch_is_ordered_longest_first() -> None:
    rows = [
        ("caption", ("Qubico/joycaption", "joycaption-beta-one"), {"image": "u"}),
        ("wan 5 s", WAN, {"duration": 5}),
        ("kling 10 s pro", KLING, {"duration": 10, "mode": "pro"}),
        ("wan 15 s", WAN, {"duration": 15}),
        ("flux", ("Qubico/flux1-schnell", "txt2img"), {"prompt": "p"}),
        ("kling 5 s", KLING, {"duration": 5}),
    ]
    ordered = sorted(rows, key=lambda r: -rank(expected_s(*r[1], r[2])))
    assert [name for name, _, _ in ordered] == [
        "kling 10 s pro", "wan 15 s", "kling 5 s", "wan 5 s", "caption", "flux"]


@pytest.mark.parametrize(("seconds", "stored"), [
    (359.6, 360), (0.4, 0), (0.0, 0), (-5.0, 0), (math.nan, 0), (math.inf, 0),
    (1e12, MAX_RANK),
])
def test_rank(seconds: float, stored: int) -> None:
    assert rank(seconds) == stored


@pytest.mark.parametrize(("kind", "input_json", "factor"), [
    (KLING, '{"duration":10,"prompt":"p"}', 2.0),  # as ingest stores it
    (WAN, '{"duration":15}', 3.0),
    (MJ, '{"process_mode":"turbo"}', 0.5),
    (KLING, None, 1.0),  # no input
    (KLING, "", 1.0),
    (KLING, "[10]", 1.0),  # not an object
    (KLING, "{not json", 1.0),
])
def test_the_factor_of_a_stored_input(kind: tuple[str, str], input_json: str | None,
                                      factor: float) -> None:
    assert stored_factor(*kind, input_json) == pytest.approx(factor)

"""Validation and normalisation of create bodies, per model."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emulator.catalog import CATALOG, UNITS_PER_USD, lookup
from emulator.config import FAMILIES
from emulator.parsing import input_key, parse_create
from emulator.tasks import Fate
from emulator.validation import InvalidRequest
from tests.emulator.conftest import joy, wan

FLUX = {"model": "Qubico/flux1-schnell", "task_type": "txt2img"}


def test_joycaption_input_is_normalised_like_the_doc_example() -> None:
    req = parse_create({
        **joy("https://piapi.ai/workspace/flux/input_example.png"),
        "input": {
            "workflow_type": "joycaption-beta-one", "prompt_style": "Descriptive",
            "caption_length": "any", "image": "https://piapi.ai/workspace/flux/input_example.png",
        },
    })
    assert list(req.input) == ["caption_length", "image", "prompt_style"]
    assert "workflow_type" not in req.input
    assert req.config == {"service_mode": "", "webhook_config": {"endpoint": "", "secret": ""}}


def test_defaults_are_filled_and_keys_sorted() -> None:
    req = parse_create(wan("x"))
    assert req.input == {
        "aspect_ratio": "16:9", "duration": 5, "prompt": "x", "resolution": "720P", "seed": 0,
        "watermark": False,
    }
    assert list(req.input) == sorted(req.input)
    flux = parse_create({**FLUX, "input": {"prompt": "p"}})
    assert flux.input == {"height": 1024, "prompt": "p", "width": 1024}


def test_img2video_has_no_aspect_ratio_default_and_needs_an_image() -> None:
    body = {"model": "Wan", "task_type": "wan26-img2video", "input": {"prompt": "p"}}
    with pytest.raises(InvalidRequest, match=r"input\.image is required"):
        parse_create(body)
    req = parse_create({**body, "input": {"prompt": "p", "image": "http://x/i.png"}})
    assert "aspect_ratio" not in req.input


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ([], "must be a JSON object"),
        ({"task_type": "x", "input": {}}, "model is required"),
        ({"model": "nope", "task_type": "x", "input": {}}, "model nope is not supported"),
        ({"model": "Wan", "task_type": "nope", "input": {}}, "task_type nope is not supported"),
        ({"model": "Wan", "task_type": "wan26-txt2video"}, "input is required"),
        ({"model": "Wan", "task_type": "wan26-txt2video", "input": "x"}, "must be an object"),
        (wan(""), r"input\.prompt is required"),
        (wan(duration="5"), r"input\.duration must be an integer"),
        (wan(duration=7), r"input\.duration must be one of 5, 10, 15"),
        (wan(duration=5.0), r"input\.duration must be an integer"),
        (wan(duration=True), r"input\.duration must be an integer"),
        (wan(resolution="4K"), r"input\.resolution must be one of 720P, 1080P"),
        (wan(watermark="no"), r"input\.watermark must be a boolean"),
        (joy(image=3), r"input\.image must be a string"),
        ({**FLUX, "input": {"prompt": "p", "width": 2048, "height": 1024}}, "at most 1048576"),
        ({**FLUX, "input": {"prompt": "p", "batch_size": 5}}, r"batch_size must be at most 4"),
        ({**FLUX, "input": {"prompt": "p", "guidance_scale": "high"}}, "must be a number"),
        ({**wan(), "config": {"webhook_config": {"endpoint": 5}}}, "endpoint must be a string"),
        ({**wan(), "config": []}, "config must be an object"),
        ({"model": "kling", "task_type": "video_generation", "input": {"prompt": "p",
                                                                        "mode": "max"}},
         r"input\.mode must be one of std, pro"),
    ],
)
def test_invalid_bodies_are_rejected_with_a_reason(body: Any, reason: str) -> None:
    with pytest.raises(InvalidRequest, match=reason):
        parse_create(body)


@given(st.one_of(
    st.text(), st.floats(allow_nan=False), st.booleans(), st.lists(st.integers(), max_size=2),
    st.integers().filter(lambda n: n not in (5, 10, 15)),
))
def test_any_wrong_wan_duration_is_a_400(value: object) -> None:
    with pytest.raises(InvalidRequest):
        parse_create(wan(duration=value))


@given(st.dictionaries(st.text(min_size=1, max_size=8), st.integers(), max_size=5))
def test_unknown_keys_are_always_dropped(extra: dict[str, int]) -> None:
    req = parse_create(joy(**{k: v for k, v in extra.items() if k not in {
        "image", "prompt_style", "caption_length"}}))
    assert set(req.input) == {"image", "prompt_style", "caption_length"}


def test_input_key_ignores_key_order_but_not_content() -> None:
    a = input_key("Wan", "wan26-txt2video", {"prompt": "x", "duration": 5})
    b = input_key("Wan", "wan26-txt2video", {"duration": 5, "prompt": "x"})
    c = input_key("Wan", "wan26-txt2video", {"duration": 10, "prompt": "x"})
    assert a == b != c
    assert parse_create(wan("x")).input_key == input_key("Wan", "wan26-txt2video", {"prompt": "x"})


@pytest.mark.parametrize(
    ("text", "fate"),
    [
        ("plain", None),
        ("a [[moderation]] b", Fate.FAIL_MODERATION),
        ("[[fail]]", Fate.FAIL_TRANSIENT),
        ("[[stuck]]", Fate.STUCK_PENDING),
        ("[[stuck-processing]]", Fate.STUCK_PROCESSING),
        ("[[fail]] [[moderation]]", Fate.FAIL_MODERATION),
    ],
)
def test_markers_force_a_fate(text: str, fate: Fate | None) -> None:
    assert parse_create(wan(text)).forced_fate is fate
    assert parse_create(wan("p", negative_prompt=text)).forced_fate is fate


@pytest.mark.parametrize(
    ("body", "price"),
    [
        (joy(), 100_000),
        (wan(), 4_000_000),
        (wan(resolution="1080P"), 6_000_000),
        (wan(duration=10), 8_000_000),
        ({**FLUX, "input": {"prompt": "p"}}, 20_000),
        ({"model": "Qubico/flux1-dev", "task_type": "img2img",
          "input": {"prompt": "p", "image": "http://x/i.png"}}, 150_000),
        ({"model": "kling", "task_type": "video_generation", "input": {"prompt": "p"}},
         2_600_000),
        ({"model": "hailuo", "task_type": "video_generation", "input": {"prompt": "p"}},
         2_000_000),
    ],
)
def test_prices_in_units(body: dict[str, Any], price: int) -> None:
    req = parse_create(body)
    assert req.spec.price(req.input) == price


def test_every_model_has_a_family_and_usage_type() -> None:
    assert UNITS_PER_USD == 10_000_000
    for spec in CATALOG.values():
        assert spec.family in FAMILIES
        assert spec.usage_type in {"llm", "point"}
        assert lookup(spec.model, spec.task_type) is spec

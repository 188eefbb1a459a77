"""The models added for issue 9: validation, prices, durations, output shapes, service_mode."""

from __future__ import annotations

import re
from typing import Any

import pytest

from emulator.catalog import CATALOG
from emulator.config import DEFAULT_DURATIONS_S, FAMILIES
from emulator.parsing import parse_create
from emulator.responses import FILE_BODIES
from emulator.validation import InvalidRequest
from tests.emulator.conftest import Harness, joy

URL = re.compile(r"^http://127\.0\.0\.1:9/ephemeral/[0-9a-f-]{36}\.(\w+)$")


def body(model: str, task_type: str, config: dict[str, Any] | None = None,
         **input_: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"model": model, "task_type": task_type, "input": input_}
    if config is not None:
        out["config"] = config
    return out


def kling(**input_: Any) -> dict[str, Any]:
    return body("kling", "video_generation", **{"prompt": "p", **input_})


def advanced(task_type: str, **input_: Any) -> dict[str, Any]:
    return body("Qubico/flux1-dev-advanced", task_type, **{"prompt": "p", **input_})


LORA = [{"lora_type": "anime", "lora_strength": 0.8}]
CONTROL = [{"control_type": "depth", "control_image": "http://x/c.png", "control_strength": 0.5}]
TTS = {"gen_text": "hello", "ref_audio": "http://x/r.wav"}

VALID: list[tuple[dict[str, Any], int, dict[str, str]]] = [
    # (body, price in units, output key -> extension of its URL)
    (kling(version="3.0", duration=3), 3_000_000, {"video": "mp4"}),
    (kling(version="3.0", duration=15, mode="pro"), 21_000_000, {"video": "mp4"}),
    (kling(duration=10), 5_200_000, {"video_url": "mp4"}),
    (body("hailuo", "video_generation", image_url="http://x/i.png"), 2_000_000,
     {"video_url": "mp4", "download_url": "mp4", "cover_url": "png"}),
    (advanced("txt2img-lora", lora_settings=LORA), 200_000, {"image_url": "png"}),
    (advanced("img2img-lora", image="http://x/i.png", lora_settings=LORA), 200_000,
     {"image_url": "png"}),
    (advanced("controlnet-lora", control_net_settings=CONTROL), 200_000, {"image_url": "png"}),
    (body("Qubico/tts", "zero-shot", **TTS), 1_250, {"audio_url": "mp3"}),
    (body("Qubico/tts", "zero-shot", gen_text="x" * 10_000, ref_audio="a", ref_text="t"),
     2_500_000, {"audio_url": "mp3"}),
    (body("Qubico/image-toolkit", "face-swap", target_image="a", swap_image="b"), 100_000,
     {"image_url": "png"}),
    (body("Qubico/image-toolkit", "background-remove", image="a"), 10_000,
     {"image_url": "png"}),
    (body("Qubico/image-toolkit", "upscale", image="a", scale=4), 200_000,
     {"image_url": "png"}),
    (body("midjourney", "imagine", prompt="p"), 700_000, {"image_url": "png"}),
    (body("midjourney", "imagine", prompt="p", process_mode="relax"), 400_000,
     {"image_url": "png"}),
    (body("midjourney", "imagine", prompt="p", process_mode="turbo"), 1_400_000,
     {"image_url": "png"}),
    (body("Qubico/hunyuan", "txt2video", prompt="p"), 900_000, {"video_url": "mp4"}),
    (body("seedance", "seedance-2-preview", prompt="p", duration=10), 6_000_000,
     {"video": "mp4"}),
    (body("Qubico/trellis", "image-to-3d", image="http://x/i.png", seed=3), 400_000,
     {"model_file": "glb", "combined_video": "mp4", "no_background_image": "png"}),
    (body("music-u", "generate_music", gpt_description_prompt="jazz"), 500_000, {}),
    (body("Qubico/diffrhythm", "txt2audio-base", lyrics="la la", style_prompt="pop"),
     200_000, {"audio_url": "mp3"}),
]


@pytest.mark.parametrize(("create", "price", "files"), VALID)
def test_each_new_model_is_priced_and_completes_with_its_output_shape(
    create: dict[str, Any], price: int, files: dict[str, str]
) -> None:
    h = Harness()
    task = h.engine.create(create)
    assert task.price == price and task.frozen == price
    h.at(100_000)
    h.engine.advance()
    assert task.status == "completed" and task.consume == price
    assert task.output is not None
    for key, ext in files.items():
        match = URL.match(task.output[key])
        assert match and match.group(1) == ext and ext in FILE_BODIES, key


def test_midjourney_imagine_output_and_defaults() -> None:
    req = parse_create(body("midjourney", "imagine", prompt="a fox"))
    assert req.input == {"aspect_ratio": "1:1", "process_mode": "fast", "prompt": "a fox",
                         "skip_prompt_check": False}
    h = Harness()
    task = h.engine.create(body("midjourney", "imagine", prompt="a fox"))
    h.at(1000)
    h.engine.advance()
    assert task.output is not None
    assert set(task.output) == {"image_url", "image_urls", "temporary_image_urls"}
    assert len(task.output["image_urls"]) == len(task.output["temporary_image_urls"]) == 4
    urls = [task.output["image_url"], *task.output["image_urls"],
            *task.output["temporary_image_urls"]]
    assert len(set(urls)) == 9 and all(URL.match(u) for u in urls)


def test_udio_answers_a_map_of_clips_with_an_empty_entry() -> None:
    h = Harness()
    task = h.engine.create(body("music-u", "generate_music", lyrics="la la",
                                lyrics_type="user", negative_tags="metal", seed=4))
    assert task.input["lyrics_type"] == "user"
    h.at(1000)
    h.engine.advance()
    assert task.output is not None and set(task.output) == {"clips"}
    clips = task.output["clips"]
    assert isinstance(clips, dict) and len(clips) == 3
    assert next(iter(clips.values())) == {}
    real = [(clip_id, clip) for clip_id, clip in clips.items() if clip]
    assert len(real) == 2
    for clip_id, clip in real:
        assert clip["id"] == clip_id and clip["status"] == "complete"
        for key, ext in (("audio_url", "mp3"), ("video_url", "mp4"), ("image_url", "jpeg")):
            match = URL.match(clip[key])
            assert match and match.group(1) == ext
        assert clip["title"] and clip["metadata"]["prompt"] == "la la"
    h2 = Harness()  # same seed, same creates: the same clip ids and URLs, whenever polled
    again = h2.engine.create(body("music-u", "generate_music", lyrics="la la",
                                  lyrics_type="user", negative_tags="metal", seed=4))
    h2.at(5000)
    h2.engine.advance()
    assert again.output == task.output


def test_kling3_is_priced_per_second_and_takes_longer() -> None:
    h = Harness()
    short = h.engine.create(kling(version="3.0", duration=3))
    long = h.engine.create(kling(version="3.0", duration=15))
    assert long.price == 5 * short.price and long.duration_s == 5 * short.duration_s


@pytest.mark.parametrize(
    ("create", "reason"),
    [
        (kling(version="3.0", duration=2), "between 3 and 15 for version 3.0"),
        (kling(version="3.0", duration=16), "between 3 and 15"),
        (kling(version="3.0", duration=7.5), r"input\.duration must be an integer"),
        (kling(duration=7), r"input\.duration must be one of 5, 10"),
        (kling(version="2.6", duration=15), "must be one of 5, 10"),
        (body("hailuo", "video_generation"), r"input\.prompt is required"),
        (body("hailuo", "video_generation", prompt="x" * 2001), "at most 2000 characters"),
        (advanced("txt2img-lora", lora_settings={"lora_type": "anime"}),
         r"input\.lora_settings must be a list"),
        (advanced("txt2img-lora", lora_settings=[{"lora_strength": 1}]),
         r"input\.lora_settings\[0\]\.lora_type is required"),
        (advanced("txt2img-lora", lora_settings=["anime"]),
         r"input\.lora_settings\[0\] must be an object"),
        (advanced("img2img-lora", lora_settings=LORA), r"input\.image is required"),
        (advanced("controlnet-lora"), r"input\.control_net_settings is required"),
        (advanced("controlnet-lora", control_net_settings=[]),
         r"input\.control_net_settings is required"),
        (advanced("controlnet-lora", control_net_settings=[{"control_type": "depth"}]),
         r"control_net_settings\[0\]\.control_image is required"),
        (advanced("txt2img-lora", width=2048, height=1024), "at most 1048576"),
        (body("Qubico/tts", "zero-shot", ref_audio="a"), r"input\.gen_text is required"),
        (body("Qubico/tts", "zero-shot", gen_text="hi"), r"input\.ref_audio is required"),
        (body("Qubico/tts", "zero-shot", gen_text="x" * 10_001, ref_audio="a"),
         "at most 10000 characters"),
        (body("Qubico/image-toolkit", "face-swap", target_image="a"),
         r"input\.swap_image is required"),
        (body("Qubico/image-toolkit", "background-remove"), r"input\.image is required"),
        (body("Qubico/image-toolkit", "upscale", image="a", scale=3),
         r"input\.scale must be one of 2, 4"),
        (body("midjourney", "imagine"), r"input\.prompt is required"),
        (body("midjourney", "imagine", prompt="p", process_mode="slow"),
         "must be one of relax, fast, turbo"),
        (body("midjourney", "imagine", prompt="p", skip_prompt_check="yes"),
         "must be a boolean"),
        (body("Qubico/hunyuan", "txt2video"), r"input\.prompt is required"),
        (body("seedance", "seedance-2-preview", prompt="p", duration=15), "one of 5, 10"),
        (body("Qubico/trellis", "image-to-3d"), r"input\.image is required"),
        (body("music-u", "generate_music", lyrics_type="user"),
         "at least one of gpt_description_prompt, lyrics"),
        (body("music-u", "generate_music", lyrics="x", lyrics_type="spoken"),
         "must be one of generate, user, instrumental"),
        (body("Qubico/diffrhythm", "txt2audio-base"),
         "at least one of lyrics, style_prompt"),
        (body("Qubico/diffrhythm", "txt2audio-full", lyrics="x"), "task_type txt2audio-full"),
    ],
)
def test_new_models_reject_bad_input(create: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidRequest, match=reason):
        parse_create(create)


def test_hailuo_needs_no_prompt_for_image_to_video_and_normalises() -> None:
    req = parse_create({"model": "hailuo", "task_type": "video_generation",
                        "input": {"model": "i2v-01", "image_url": "http://x/i.png"}})
    assert req.input == {"image_url": "http://x/i.png", "model": "i2v-01"}
    assert parse_create(body("hailuo", "video_generation", prompt="p")).input == {"prompt": "p"}


def test_lora_and_controlnet_lists_are_normalised_item_by_item() -> None:
    req = parse_create(advanced("controlnet-lora", lora_settings=[{"lora_type": "a", "x": 1}],
                                control_net_settings=CONTROL))
    assert req.input["lora_settings"] == [{"lora_type": "a"}]
    assert req.input["control_net_settings"] == CONTROL


@pytest.mark.parametrize(
    ("create", "modes"),
    [
        (joy(), ("", "public", "private")),
        (kling(), ("", "public", "private")),
        (body("hailuo", "video_generation", prompt="p"), ("", "public")),
        (body("Qubico/tts", "zero-shot", **TTS), ("", "public")),
    ],
)
def test_service_mode_is_checked_per_model_and_echoed(
    create: dict[str, Any], modes: tuple[str, ...]
) -> None:
    for mode in ("", "public", "private", "hya", "PUBLIC"):
        attempt = {**create, "config": {"service_mode": mode}}
        if mode in modes:
            assert parse_create(attempt).config["service_mode"] == mode
        else:
            with pytest.raises(InvalidRequest, match=r"config\.service_mode must be one of"):
                parse_create(attempt)
    h = Harness()
    task = h.engine.create({**create, "config": {"service_mode": "public"}})
    assert task.data()["config"]["service_mode"] == "public"


def test_every_family_has_a_duration_and_every_output_extension_a_file() -> None:
    assert set(DEFAULT_DURATIONS_S) == set(FAMILIES)
    assert {spec.family for spec in CATALOG.values()} == set(FAMILIES)
    assert {"png", "mp4", "mp3", "jpeg", "glb"} <= set(FILE_BODIES)


def test_diffrhythm_completes_like_any_model() -> None:
    # The client's catalogue does not know it: it is how tests exercise pass-through.
    h = Harness()
    task = h.engine.create(body("Qubico/diffrhythm", "txt2audio-base", style_prompt="lofi"))
    assert task.input == {"style_prompt": "lofi"}
    h.at(1000)
    h.engine.advance()
    assert task.status == "completed" and task.output is not None
    assert set(task.output) == {"audio_url"} and task.output["audio_url"].endswith(".mp3")

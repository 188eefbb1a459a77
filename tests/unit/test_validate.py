"""Row validation: table-driven cases and properties (never raises, typed output, idempotent)."""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.fieldtypes import LOCAL_FILE, NOT_URL, url_problem
from scheduler.manifest import RawRow
from scheduler.validate import Defaults, Invalid, JobSpec, validate_row
from workers.catalog import MODELS, SPECS, Kind, TaskSpec, lookup

JOY = Defaults("Qubico/joycaption", "joycaption-beta-one")
NONE = Defaults()
WAN = {"model": "Wan", "task_type": "wan26-txt2video", "prompt": "a cat"}
FLUX = {"model": "Qubico/flux1-dev", "task_type": "txt2img", "prompt": "a cat"}
IMG = "https://example.com/a.jpg"
KLING = {"model": "kling", "task_type": "video_generation", "prompt": "p"}
HAILUO = {"model": "hailuo", "task_type": "video_generation"}
LORA = {"model": "Qubico/flux1-dev-advanced", "task_type": "txt2img-lora", "prompt": "a cat"}
TTS = {"model": "Qubico/tts", "task_type": "zero-shot", "gen_text": "hello", "ref_audio": IMG}
UDIO = {"model": "music-u", "task_type": "generate_music"}


def check(fields: dict[str, Any], defaults: Defaults = JOY, *,
          csv: bool = True) -> JobSpec | Invalid:
    return validate_row(RawRow(4, 7, fields, csv), defaults)


# (name, fields, from_csv, defaults, expected input)
VALID: list[tuple[str, dict[str, Any], bool, Defaults, dict[str, Any]]] = [
    ("csv columns with defaults", {"image": IMG, "prompt_style": "descriptive",
                                   "caption_length": "long"}, True, JOY,
     {"image": IMG, "prompt_style": "descriptive", "caption_length": "long"}),
    ("row model beats default", {**WAN}, True, JOY, {"prompt": "a cat"}),
    ("int from string", {**WAN, "duration": "10", "seed": "+5"}, True, NONE,
     {"prompt": "a cat", "duration": 10, "seed": 5}),
    ("int from integral float string", {**WAN, "duration": " 15.0 "}, True, NONE,
     {"prompt": "a cat", "duration": 15}),
    ("int from JSON", {**WAN, "duration": 5, "seed": -3}, False, NONE,
     {"prompt": "a cat", "duration": 5, "seed": -3}),
    ("bool words", {**WAN, "audio": "Yes", "watermark": "FALSE", "prompt_extend": "1"}, True,
     NONE, {"prompt": "a cat", "audio": True, "watermark": False, "prompt_extend": True}),
    ("bool JSON 0/1", {**WAN, "audio": 0}, False, NONE, {"prompt": "a cat", "audio": False}),
    ("number", {**FLUX, "guidance_scale": "7.5", "steps": "20"}, True, NONE,
     {"prompt": "a cat", "guidance_scale": 7.5, "steps": 20}),
    ("number exponent", {**FLUX, "guidance_scale": "1e1"}, True, NONE,
     {"prompt": "a cat", "guidance_scale": 10.0}),
    ("string from number", {"image": IMG, "prompt_style": 12, "caption_length": 1.5}, False,
     JOY, {"image": IMG, "prompt_style": "12", "caption_length": "1.5"}),
    ("explicit input merged with columns",
     {"input": '{"image": "' + IMG + '"}', "prompt_style": "x"}, True, JOY,
     {"image": IMG, "prompt_style": "x"}),
    ("same value both ways is fine", {"input": '{"duration": 10}', "duration": "10", **WAN},
     True, NONE, {"prompt": "a cat", "duration": 10}),
    ("empty one side: the other is used", {"input": {"image": ""}, "image": IMG}, False, JOY,
     {"image": IMG}),
    ("null input fields dropped", {"input": {"image": IMG, "workflow_type": None}}, False, JOY,
     {"image": IMG}),
    ("open fields pass through", {"model": "kling", "task_type": "video_generation",
                                  "prompt": "p", "camera": {"x": 1}}, False, NONE,
     {"prompt": "p", "camera": {"x": 1}}),
    ("hailuo's own 'model' input goes in input",
     {"model": "hailuo", "task_type": "video_generation", "input": {"prompt": "p",
                                                                     "model": "t2v-01"}},
     False, NONE, {"prompt": "p", "model": "t2v-01"}),
    ("flux area at the limit", {**FLUX, "width": "1024", "height": "1024"}, True, NONE,
     {"prompt": "a cat", "width": 1024, "height": 1024}),
    ("music from a description", {"model": "music-u", "task_type": "generate_music",
                                  "gpt_description_prompt": "a calm song"},
     False, NONE, {"gpt_description_prompt": "a calm song"}),
    ("music from lyrics", {**UDIO, "lyrics": "[Verse] la la", "lyrics_type": "user",
                           "seed": "7"}, True, NONE,
     {"lyrics": "[Verse] la la", "lyrics_type": "user", "seed": 7}),
    ("kling 3.0 any duration 3-15", {**KLING, "version": "3.0", "duration": "7"}, True, NONE,
     {"prompt": "p", "version": "3.0", "duration": 7}),
    ("kling 3.0 as a JSON number", {**KLING, "version": 3.0, "duration": 15}, False, NONE,
     {"prompt": "p", "version": "3.0", "duration": 15}),
    ("kling 2.x 10 s", {**KLING, "version": "2.6", "duration": "10"}, True, NONE,
     {"prompt": "p", "version": "2.6", "duration": 10}),
    ("hailuo image to video needs no prompt", {**HAILUO, "image_url": IMG}, True, NONE,
     {"image_url": IMG}),
    ("hailuo public", {**HAILUO, "prompt": "p", "service_mode": "public"}, True, NONE,
     {"prompt": "p"}),
    ("flux lora list from a CSV cell",
     {**LORA, "lora_settings": '[{"lora_type": "mjv6", "lora_strength": "0.8"}]'}, True, NONE,
     {"prompt": "a cat", "lora_settings": [{"lora_type": "mjv6", "lora_strength": 0.8}]}),
    ("flux lora list from JSON, extra item keys pass",
     {**LORA, "lora_settings": [{"lora_type": "anime", "x": 1}]}, False, NONE,
     {"prompt": "a cat", "lora_settings": [{"lora_type": "anime", "x": 1}]}),
    ("flux img2img-lora", {**LORA, "task_type": "img2img-lora", "image": IMG, "denoise": "0.5"},
     True, NONE, {"prompt": "a cat", "image": IMG, "denoise": 0.5}),
    ("flux controlnet-lora",
     {**LORA, "task_type": "controlnet-lora", "control_net_settings": [
         {"control_type": "depth", "control_image": IMG, "control_strength": 0.45}]},
     False, NONE, {"prompt": "a cat", "control_net_settings": [
         {"control_type": "depth", "control_image": IMG, "control_strength": 0.45}]}),
    ("tts", {**TTS, "ref_text": "hi"}, True, NONE,
     {"gen_text": "hello", "ref_audio": IMG, "ref_text": "hi"}),
    ("tts at the length limit", {**TTS, "gen_text": "x" * 10_000}, True, NONE,
     {"gen_text": "x" * 10_000, "ref_audio": IMG}),
    ("face swap", {"model": "Qubico/image-toolkit", "task_type": "face-swap",
                   "target_image": IMG, "swap_image": IMG}, True, NONE,
     {"target_image": IMG, "swap_image": IMG}),
    ("background remove", {"model": "Qubico/image-toolkit", "task_type": "background-remove",
                           "image": IMG}, True, NONE, {"image": IMG}),
    ("upscale", {"model": "Qubico/image-toolkit", "task_type": "upscale", "image": IMG,
                 "scale": "4"}, True, NONE, {"image": IMG, "scale": 4}),
    ("midjourney", {"model": "midjourney", "task_type": "imagine", "prompt": "a cat",
                    "aspect_ratio": "16:9", "process_mode": "turbo",
                    "skip_prompt_check": "true"}, True, NONE,
     {"prompt": "a cat", "aspect_ratio": "16:9", "process_mode": "turbo",
      "skip_prompt_check": True}),
    ("hunyuan", {"model": "Qubico/hunyuan", "task_type": "txt2video", "prompt": "p",
                 "aspect_ratio": "16:9"}, True, NONE, {"prompt": "p", "aspect_ratio": "16:9"}),
    ("seedance", {"model": "seedance", "task_type": "seedance-2-preview", "prompt": "p",
                  "duration": "10", "image_url": IMG}, True, NONE,
     {"prompt": "p", "duration": 10, "image_url": IMG}),
    ("trellis", {"model": "Qubico/trellis", "task_type": "image-to-3d", "image": IMG,
                 "seed": "3"}, True, NONE, {"image": IMG, "seed": 3}),
]


@pytest.mark.parametrize(("fields", "from_csv", "defaults", "expected"),
                         [c[1:] for c in VALID], ids=[c[0] for c in VALID])
def test_valid_rows(fields: dict[str, Any], from_csv: bool, defaults: Defaults,
                    expected: dict[str, Any]) -> None:
    spec = check(fields, defaults, csv=from_csv)
    assert isinstance(spec, JobSpec), spec
    assert spec.input == expected
    assert (spec.seq, spec.line) == (4, 7)


# (name, fields, from_csv, defaults, reason)
INVALID: list[tuple[str, dict[str, Any], bool, Defaults, str]] = [
    ("missing model", {"image": IMG}, True, NONE,
     "missing model (no 'model' field and no default model)"),
    ("missing task_type", {"model": "Wan", "prompt": "p"}, True, NONE,
     "missing task_type for model 'Wan' (known: wan26-img2video, wan26-txt2video)"),
    ("unknown task_type", {"model": "Wan", "task_type": "t2v", "prompt": "p"}, True, NONE,
     "unknown task_type 't2v' for model 'Wan' (known: wan26-img2video, wan26-txt2video)"),
    ("model not a string", {"model": 5}, False, JOY, "field 'model' must be a string, got 5"),
    ("missing required", {"prompt_style": "x"}, True, JOY,
     "missing required input field 'image'"),
    ("blank required", {"input": {"image": "  "}}, False, JOY,
     "missing required input field 'image'"),
    ("unknown field", {"image": IMG, "foo": "1"}, True, JOY,
     "unknown input field 'foo' for Qubico/joycaption joycaption-beta-one "
     "(known: caption_length, image, prompt_style, workflow_type)"),
    ("unknown fields", {"image": IMG, "foo": "1", "bar": "2"}, True, JOY,
     "unknown input fields 'foo', 'bar' for Qubico/joycaption joycaption-beta-one "
     "(known: caption_length, image, prompt_style, workflow_type)"),
    ("bad int", {**WAN, "duration": "abc"}, True, NONE,
     "field 'duration' must be an integer, got 'abc'"),
    ("fractional int", {**WAN, "seed": "5.5"}, True, NONE,
     "field 'seed' must be an integer, got '5.5'"),
    ("bool is not an int", {**WAN, "seed": True}, False, NONE,
     "field 'seed' must be an integer, got true"),
    ("empty int", {**WAN, "seed": ""}, False, NONE, "field 'seed' must be an integer, got ''"),
    ("choice", {**WAN, "duration": "7"}, True, NONE,
     "field 'duration' must be one of 5, 10, 15, got 7"),
    ("string choice", {**WAN, "resolution": "720p"}, True, NONE,
     "field 'resolution' must be one of '720P', '1080P', got '720p'"),
    ("below min", {**FLUX, "steps": "0"}, True, NONE, "field 'steps' must be at least 1, got 0"),
    ("above max", {**FLUX, "width": "4096"}, True, NONE,
     "field 'width' must be at most 2048, got 4096"),
    ("number range", {"model": "kling", "task_type": "video_generation", "prompt": "p",
                      "cfg_scale": "1.5"}, True, NONE,
     "field 'cfg_scale' must be at most 1, got 1.5"),
    ("not a number", {**FLUX, "guidance_scale": "nan"}, True, NONE,
     "field 'guidance_scale' must be a number, got 'nan'"),
    ("bad bool", {**WAN, "audio": "maybe"}, True, NONE,
     "field 'audio' must be a boolean (true/false/1/0/yes/no), got 'maybe'"),
    ("object for a URL", {"image": {"url": IMG}}, False, JOY,
     "field 'image' must be an http(s) URL, got an object"),
    ("object for a string", {"image": IMG, "prompt_style": {"a": 1}}, False, JOY,
     "field 'prompt_style' must be a string, got an object"),
    ("flux area", {**FLUX, "width": "2048", "height": "1024"}, True, NONE,
     "width*height must be at most 1048576 for Qubico/flux1-dev, got 2048x1024 = 2097152"),
    ("input not JSON", {"input": "{nope", "image": IMG}, True, JOY,
     "field 'input' is not valid JSON: Expecting property name enclosed in double quotes "
     "at column 2"),
    ("input not an object", {"input": "[1]", "image": IMG}, True, JOY,
     "field 'input' must be a JSON object, got an array"),
    ("JSONL input must be an object", {"input": '{"image": "x"}'}, False, JOY,
     "field 'input' must be a JSON object, got '{\"image\": \"x\"}'"),
    ("conflict", {"input": {"image": "a.jpg"}, "image": "b.jpg"}, False, JOY,
     "field 'image' differs between 'input' ('a.jpg') and its own column ('b.jpg')"),
    ("bad id", {"id": [1], "image": IMG}, False, JOY,
     "field 'id' must be a string or an integer, got an array"),
    ("long value shortened", {**WAN, "duration": "x" * 100}, True, NONE,
     "field 'duration' must be an integer, got '" + "x" * 37 + "...'"),
    ("known model, unknown task type is never passed through",
     {"model": "kling", "task_type": "text_to_video", "prompt": "p"}, True, NONE,
     "unknown task_type 'text_to_video' for model 'kling' (known: video_generation)"),
    ("unknown model without a task type", {"model": "Qubico/diffrhythm", "x": "1"}, True, NONE,
     "missing task_type for model 'Qubico/diffrhythm' (a model not in piapi-bulk's catalogue "
     "is sent unchecked, but needs its task_type)"),
    ("unknown model name too long", {"model": "m" * 65, "task_type": "t"}, True, NONE,
     "field 'model' must be at most 64 characters, without NUL, got '" + "m" * 37 + "...'"),
    ("kling 2.x duration", {**KLING, "duration": "7"}, True, NONE,
     "field 'duration' must be one of 5, 10 (3 to 15 only with version 3.0), got 7"),
    ("kling 3.0 over 15 s", {**KLING, "version": "3.0", "duration": "16"}, True, NONE,
     "field 'duration' must be at most 15, got 16"),
    ("kling 3.0 under 3 s", {**KLING, "version": "3.0", "duration": 2}, False, NONE,
     "field 'duration' must be at least 3, got 2"),
    ("hailuo needs a prompt or an image", {**HAILUO, "expand_prompt": "true"}, True, NONE,
     "missing required input field: 'prompt' or 'image_url'"),
    ("hailuo prompt too long", {**HAILUO, "prompt": "p" * 2001}, True, NONE,
     "field 'prompt' must be at most 2000 characters, got 2001"),
    ("hailuo is public only", {**HAILUO, "prompt": "p", "service_mode": "private"}, True, NONE,
     "service_mode 'private' is not accepted by hailuo (only public, or empty)"),
    ("tts is public only by default too", {**TTS}, True, Defaults(service_mode="private"),
     "service_mode 'private' is not accepted by Qubico/tts (only public, or empty)"),
    ("bad service mode", {**WAN, "service_mode": "PAYG"}, True, NONE,
     "field 'service_mode' must be public, private or empty, got 'PAYG'"),
    ("tts needs the reference audio", {**TTS, "ref_audio": ""}, False, NONE,
     "missing required input field 'ref_audio'"),
    ("tts text too long", {**TTS, "gen_text": "x" * 10_001}, True, NONE,
     "field 'gen_text' must be at most 10000 characters, got 10001"),
    ("plain flux has no lora_settings", {**FLUX, "lora_settings": "mjv6"}, True, NONE,
     "unknown input field 'lora_settings' for Qubico/flux1-dev txt2img (known: batch_size, "
     "guidance_scale, height, negative_prompt, prompt, steps, width)"),
    ("lora settings must be a list", {**LORA, "lora_settings": "mjv6"}, True, NONE,
     "field 'lora_settings' must be a JSON array, got 'mjv6'"),
    ("lora settings of objects", {**LORA, "lora_settings": '["mjv6"]'}, True, NONE,
     "field 'lora_settings[0]' must be an object, got 'mjv6'"),
    ("lora item needs its type", {**LORA, "lora_settings": [{"lora_strength": 1}]}, False, NONE,
     "field 'lora_settings[0]' needs 'lora_type'"),
    ("lora strength is a number", {**LORA, "lora_settings": [
        {"lora_type": "a", "lora_strength": "strong"}]}, False, NONE,
     "field 'lora_settings[0].lora_strength' must be a number, got 'strong'"),
    ("controlnet needs its settings", {**LORA, "task_type": "controlnet-lora"}, True, NONE,
     "missing required input field 'control_net_settings'"),
    ("controlnet item needs its image", {**LORA, "task_type": "controlnet-lora",
                                         "control_net_settings": [{"control_type": "depth"}]},
     False, NONE, "field 'control_net_settings[0]' needs 'control_image'"),
    ("img2img-lora needs an image", {**LORA, "task_type": "img2img-lora"}, True, NONE,
     "missing required input field 'image'"),
    ("udio needs a description or lyrics", {**UDIO, "negative_tags": "metal"}, True, NONE,
     "missing required input field: 'gpt_description_prompt' or 'lyrics'"),
    ("udio lyrics type", {**UDIO, "lyrics": "la", "lyrics_type": "auto"}, True, NONE,
     "field 'lyrics_type' must be one of 'generate', 'user', 'instrumental', got 'auto'"),
    ("midjourney process mode", {"model": "midjourney", "task_type": "imagine", "prompt": "p",
                                 "process_mode": "slow"}, True, NONE,
     "field 'process_mode' must be one of 'relax', 'fast', 'turbo', got 'slow'"),
    ("face swap needs both images", {"model": "Qubico/image-toolkit", "task_type": "face-swap",
                                     "target_image": IMG}, True, NONE,
     "missing required input field 'swap_image'"),
    ("upscale scale", {"model": "Qubico/image-toolkit", "task_type": "upscale", "image": IMG,
                       "scale": "3"}, True, NONE, "field 'scale' must be one of 2, 4, got 3"),
    ("seedance duration", {"model": "seedance", "task_type": "seedance-2-preview",
                           "prompt": "p", "duration": "15"}, True, NONE,
     "field 'duration' must be one of 5, 10, got 15"),
    ("trellis needs an image", {"model": "Qubico/trellis", "task_type": "image-to-3d"}, True,
     NONE, "missing required input field 'image'"),
]


@pytest.mark.parametrize(("fields", "from_csv", "defaults", "reason"),
                         [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_rows(fields: dict[str, Any], from_csv: bool, defaults: Defaults,
                      reason: str) -> None:
    result = check(fields, defaults, csv=from_csv)
    assert isinstance(result, Invalid), result
    assert result.reason == reason
    assert "\n" not in result.reason


# --- Models the catalog does not know: passed through unchecked, or refused with --strict ---

DIFF = {"model": "Qubico/diffrhythm", "task_type": "txt2audio-base"}


def test_unknown_model_is_passed_through_unchecked_from_jsonl() -> None:
    fields = {**DIFF, "id": "s1", "metadata": {"k": 1}, "lyrics": "[00:01.00]la",
              "style_prompt": "jazz", "n": 5, "flags": {"a": [1, True]}, "gone": None}
    job = check(fields, NONE, csv=False)
    assert isinstance(job, JobSpec), job
    assert job.unchecked and (job.model, job.task_type) == ("Qubico/diffrhythm", "txt2audio-base")
    assert job.input == {"lyrics": "[00:01.00]la", "style_prompt": "jazz", "n": 5,
                         "flags": {"a": [1, True]}}
    assert (job.row_key, job.metadata, job.service_mode) == ("s1", {"k": 1}, None)


def test_unknown_model_csv_cells_stay_strings_unless_json_objects_or_arrays() -> None:
    fields = {"id": "r", "n": "5", "yes": "true", "obj": ' {"a": 1}', "arr": "[1, 2]",
              "lyrics": "[Verse]\nla la", "broken": "{nope", "service_mode": "private",
              "input": '{"seed": 3, "n": 5}'}
    job = check(fields, Defaults(DIFF["model"], DIFF["task_type"]))
    assert isinstance(job, JobSpec) and job.unchecked, job
    assert job.input == {"n": 5, "yes": "true", "obj": {"a": 1}, "arr": [1, 2],
                         "lyrics": "[Verse]\nla la", "broken": "{nope", "seed": 3}
    assert job.service_mode == "private"


def test_unknown_model_conflicting_input_and_column_is_invalid() -> None:
    result = check({**DIFF, "input": '{"n": 5}', "n": "6"}, NONE)
    assert isinstance(result, Invalid)
    assert result.reason == "field 'n' differs between 'input' (5) and its own column ('6')"


@pytest.mark.parametrize(("fields", "defaults", "reason"), [
    ({"model": "Nope/x", "task_type": "t", "image": IMG}, NONE,
     "unknown model 'Nope/x' (known: " + ", ".join(sorted(MODELS)) + ")"),
    ({"image": IMG}, Defaults("Nope/x", "t"),
     "unknown model 'Nope/x' (known: " + ", ".join(sorted(MODELS)) + ")"),
    ({"model": "Nope/x"}, NONE,
     "unknown model 'Nope/x' (known: " + ", ".join(sorted(MODELS)) + ")"),
])
def test_strict_refuses_unknown_models(fields: dict[str, Any], defaults: Defaults,
                                       reason: str) -> None:
    result = validate_row(RawRow(4, 7, fields, True), defaults, strict=True)
    assert isinstance(result, Invalid) and result.reason == reason


def test_strict_changes_nothing_for_known_models() -> None:
    raw = RawRow(4, 7, {"image": IMG}, True)
    assert validate_row(raw, JOY, strict=True) == validate_row(raw, JOY)


@pytest.mark.parametrize(("row_mode", "default", "expected"), [
    (None, None, None), ("", "public", "public"), (None, "private", "private"),
    ("public", "private", "public"), (" private ", None, "private"), ("", None, None),
])
def test_service_mode_row_beats_default(row_mode: str | None, default: str | None,
                                        expected: str | None) -> None:
    fields = {"image": IMG} if row_mode is None else {"image": IMG, "service_mode": row_mode}
    job = check(fields, Defaults(JOY.model, JOY.task_type, default), csv=False)
    assert isinstance(job, JobSpec) and job.service_mode == expected
    assert "service_mode" not in job.input


def test_invalid_keeps_what_could_be_read() -> None:
    result = check({"id": "r1", "model": "Wan", "task_type": "wan26-txt2video",
                    "metadata": '{"k": [1, 2]}'})
    assert isinstance(result, Invalid)
    assert (result.row_key, result.model, result.task_type) == ("r1", "Wan", "wan26-txt2video")
    assert result.metadata == {"k": [1, 2]}


@pytest.mark.parametrize(("fields", "from_csv", "key"), [
    ({}, True, "4"),
    ({"id": "abc"}, True, "abc"),
    ({"id": 17}, False, "17"),
    ({"id": ""}, False, "4"),
    ({"id": None}, False, "4"),
])
def test_row_key(fields: dict[str, Any], from_csv: bool, key: str) -> None:
    result = check({**fields, "image": IMG}, csv=from_csv)
    assert result.row_key == key


@pytest.mark.parametrize(("metadata", "from_csv", "expected"), [
    ('{"a": 1}', True, {"a": 1}),
    ("123", True, 123),
    ("plain words", True, "plain words"),
    ("NaN", True, "NaN"),
    ("123", False, "123"),  # JSONL: a string stays a string
    ({"a": [1, None]}, False, {"a": [1, None]}),
])
def test_metadata_passes_through(metadata: Any, from_csv: bool, expected: Any) -> None:
    result = check({"image": IMG, "metadata": metadata}, csv=from_csv)
    assert isinstance(result, JobSpec)
    assert result.metadata == expected


# --- Properties --------------------------------------------------------------------------

_scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
            | st.sampled_from(["5", "10", "+5", "5.0", "1e3", "yes", "0", "720P", "", " "]))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)
_field_names = [*sorted({name for spec in SPECS for name in spec.fields}), "foo", "id"]
_urlish = (st.sampled_from([IMG, "http://h:8080/x?q=1", "./cat.jpg", "file:///c.jpg", "ftp://h/x",
                            "https://", "HTTPS://E.COM/A.PNG"]) | st.text(min_size=1, max_size=8)
           | st.builds(lambda a, b: f"{a}{b}", st.sampled_from(["http://", "https://", "file:"]),
                       st.text(max_size=12)))


@st.composite
def rows(draw: st.DrawFn) -> tuple[RawRow, Defaults]:
    """Rows aimed at one catalog spec, so that many (not all) come out valid."""
    from_csv = draw(st.booleans())
    spec = draw(st.sampled_from(SPECS))
    cell = st.text(max_size=8) | st.sampled_from(["5", "10", "true", "720P", "1024", "0.5"])
    value = cell if from_csv else _values | cell
    names = st.sampled_from(sorted(spec.fields) or ["prompt"]) | st.sampled_from(_field_names)
    fields: dict[str, Any] = draw(st.dictionaries(names, value, max_size=5))
    for name in spec.required:
        if draw(st.integers(0, 9)):
            field = spec.fields.get(name)
            url = field is not None and field.kind is Kind.URL
            fields[name] = draw(_urlish if url else st.text(min_size=1, max_size=8))
    model, task_type = draw(st.sampled_from([(spec.model, spec.task_type)] * 4 + [("Nope", "x")]))
    defaults = Defaults()
    if draw(st.booleans()):
        fields["model"], fields["task_type"] = model, task_type
    elif draw(st.integers(0, 9)):
        defaults = Defaults(model, task_type)
    if draw(st.integers(0, 3)) == 0:
        fields["input"] = draw(st.dictionaries(names, _values, max_size=3) | _values)
    if draw(st.booleans()):
        fields["metadata"] = draw(_values)
    if draw(st.integers(0, 5)) == 0:
        fields["service_mode"] = draw(st.sampled_from(["public", "private", "", "x"]))
    return RawRow(draw(st.integers(1, 10**6)), draw(st.integers(1, 10**7)), fields,
                  from_csv), defaults


def conforms(value: Any, kind: Kind) -> bool:
    if kind is Kind.INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is Kind.NUM:
        return (isinstance(value, int | float) and not isinstance(value, bool)
                and math.isfinite(value))
    if kind is Kind.BOOL:
        return isinstance(value, bool)
    if kind is Kind.ARRAY:
        return isinstance(value, list) and all(isinstance(item, dict) for item in value)
    if kind is Kind.URL:
        return isinstance(value, str) and url_problem(value) is None
    return isinstance(value, str)


def assert_conforms(job: JobSpec) -> None:
    spec = lookup(job.model, job.task_type)
    if job.unchecked:
        assert spec is None and job.model not in MODELS
        return
    assert isinstance(spec, TaskSpec)
    for name in spec.required:
        assert isinstance(job.input.get(name), str | int | float) and str(job.input[name]).strip()
    for name, value in job.input.items():
        field = spec.fields.get(name)
        if field is None:
            assert spec.open_fields, name
            continue
        assert conforms(value, field.kind), (name, value)
        assert not field.choices or value in field.choices
        assert field.min is None or value >= field.min
        assert field.max is None or value <= field.max
        assert field.max_len is None or len(value) <= field.max_len
    for name in spec.one_of[:1]:
        assert any(str(job.input.get(n) or "").strip() for n in spec.one_of), name


@settings(max_examples=500, deadline=None)
@given(rows())
def test_never_raises_and_valid_rows_conform(case: tuple[RawRow, Defaults]) -> None:
    raw, defaults = case
    result = validate_row(raw, defaults)
    assert (result.seq, result.line) == (raw.seq, raw.line)
    if isinstance(result, Invalid):
        assert result.reason and "\n" not in result.reason
        return
    assert_conforms(result)


@settings(max_examples=500, deadline=None)
@given(rows())
def test_validating_a_job_spec_again_changes_nothing(case: tuple[RawRow, Defaults]) -> None:
    raw, defaults = case
    first = validate_row(raw, defaults)
    if not isinstance(first, JobSpec):
        return
    again = validate_row(RawRow(first.seq, first.line, {
        "id": first.row_key, "model": first.model, "task_type": first.task_type,
        "input": first.input, "metadata": first.metadata,
        "service_mode": first.service_mode}), Defaults())
    assert again == first


# --- URL fields: a file PiAPI fetches must be an http(s) URL -----------------------------

@pytest.mark.parametrize(("text", "problem"), [
    ("https://example.com/a.jpg", None),
    ("http://127.0.0.1:8080/a.png?x=1#f", None),
    ("HTTPS://EXAMPLE.COM/A.JPG", None),
    (" https://example.com/a.jpg ", None),
    ("./images/cat.jpg", LOCAL_FILE),
    ("/abs/cat.jpg", LOCAL_FILE),
    ("cat.jpg", LOCAL_FILE),
    ("~/cat.jpg", LOCAL_FILE),
    ("file:///home/me/cat.jpg", LOCAL_FILE),
    ("FILE:cat.jpg", LOCAL_FILE),
    ("C:\\images\\cat.jpg", LOCAL_FILE),
    ("ftp://example.com/cat.jpg", NOT_URL),
    ("s3://bucket/cat.jpg", NOT_URL),
    ("data:image/png;base64,iVBORw0KGgo=", NOT_URL),
    ("https://", NOT_URL),
    ("http:///cat.jpg", NOT_URL),
    ("http://[::1/cat.jpg", NOT_URL),
    ("", NOT_URL),
])
def test_url_problem(text: str, problem: str | None) -> None:
    assert url_problem(text) == problem


@given(st.text())
def test_url_problem_never_raises(text: str) -> None:
    assert url_problem(text) in (None, LOCAL_FILE, NOT_URL)


@given(st.from_regex(r"(?i)\s?https?://[^\s]{0,24}", fullmatch=True))
def test_url_problem_agrees_with_urlsplit_on_http_urls(text: str) -> None:
    try:
        host = urlsplit(text.strip()).hostname
    except ValueError:
        host = None
    assert (url_problem(text) is None) == bool(host)


@given(st.from_regex(r"[a-z0-9]{1,10}(\.[a-z]{2,5}){1,2}", fullmatch=True),
       st.sampled_from(["http", "https", "HTTPS"]), st.text(max_size=20))
def test_http_urls_with_a_host_pass(host: str, scheme: str, path: str) -> None:
    assert url_problem(f"{scheme}://{host}/{path}") is None


@given(st.sampled_from(["./", "../", "/", "file://", "file:///", ""]),
       st.from_regex(r"[A-Za-z0-9_-]{1,10}(/[A-Za-z0-9_-]{1,10})?\.jpg", fullmatch=True))
def test_local_paths_are_refused_as_local(prefix: str, path: str) -> None:
    assert url_problem(prefix + path) == LOCAL_FILE


URL_FIELDS = [(spec, name) for spec in SPECS for name, field in spec.fields.items()
              if field.kind is Kind.URL]


def test_the_catalogue_types_the_documented_url_fields() -> None:
    names = {name for _, name in URL_FIELDS}
    assert names == {"image", "image_url", "image_tail_url", "audio_url", "ref_audio",
                     "target_image", "swap_image"}
    for spec in SPECS:  # every image/audio input of a known model is a URL field
        for name, field in spec.fields.items():
            if "image" in name or name.endswith("_url") or name == "ref_audio":
                assert field.kind is Kind.URL, (spec.model, spec.task_type, name)


def _row_with(spec: TaskSpec, name: str, value: str) -> dict[str, Any]:
    """A row of `spec` with its required fields filled in (URLs with IMG) and `name` set."""
    fields: dict[str, Any] = {"model": spec.model, "task_type": spec.task_type}
    for required in (*spec.required, *spec.one_of[:1]):
        kind = spec.fields[required].kind
        fields[required] = IMG if kind is Kind.URL else "x"
    if "control_net_settings" in spec.required:
        fields["control_net_settings"] = [{"control_type": "depth", "control_image": IMG}]
    fields[name] = value
    return fields


@pytest.mark.parametrize(("spec", "name"), URL_FIELDS,
                         ids=[f"{s.model}:{s.task_type}:{n}" for s, n in URL_FIELDS])
@pytest.mark.parametrize(("value", "problem"), [
    ("./images/cat.jpg", LOCAL_FILE), ("/abs/cat.jpg", LOCAL_FILE),
    ("file:///tmp/cat.jpg", LOCAL_FILE), ("cat.jpg", LOCAL_FILE), ("ftp://h/cat.jpg", NOT_URL),
])
def test_url_fields_refuse_local_files_and_other_schemes(
        spec: TaskSpec, name: str, value: str, problem: str) -> None:
    for csv in (True, False):
        result = check(_row_with(spec, name, value), NONE, csv=csv)
        assert isinstance(result, Invalid), result
        assert result.reason == f"field {name!r}: {problem}, got {value!r}"
    ok = check(_row_with(spec, name, IMG), NONE)
    assert isinstance(ok, JobSpec) and ok.input[name] == IMG, ok


@pytest.mark.parametrize(("fields", "reason"), [
    ({"image": "./images/cat.jpg"},
     "field 'image': local files are not uploaded yet; give an http(s) URL, "
     "got './images/cat.jpg'"),
    ({"input": {"image": "file:///home/me/cat.jpg"}},
     "field 'image': local files are not uploaded yet; give an http(s) URL, "
     "got 'file:///home/me/cat.jpg'"),
    ({"image": "ftp://example.com/cat.jpg"},
     "field 'image': not an http(s) URL, got 'ftp://example.com/cat.jpg'"),
    ({"image": 12}, "field 'image': local files are not uploaded yet; give an http(s) URL, "
     "got '12'"),
])
def test_joycaption_image_must_be_a_url(fields: dict[str, Any], reason: str) -> None:
    result = check(fields, JOY, csv=False)
    assert isinstance(result, Invalid) and result.reason == reason


def test_url_items_of_an_array_are_checked() -> None:
    result = check({**LORA, "task_type": "controlnet-lora", "control_net_settings": [
        {"control_type": "depth", "control_image": "./depth.png"}]}, NONE, csv=False)
    assert isinstance(result, Invalid)
    assert result.reason == ("field 'control_net_settings[0].control_image': local files are "
                             "not uploaded yet; give an http(s) URL, got './depth.png'")


def test_unchecked_models_are_not_url_checked() -> None:
    job = check({**DIFF, "image": "./cat.jpg"}, NONE)
    assert isinstance(job, JobSpec) and job.unchecked and job.input == {"image": "./cat.jpg"}

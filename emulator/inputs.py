"""Input fields per model (PiAPI's documented names, types, ranges, defaults) and the checks
that span several fields."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from emulator.validation import FieldSpec, InvalidRequest

Fields = tuple[FieldSpec, ...]

FLUX_MAX_PIXELS = 1_048_576
HAILUO_MAX_PROMPT = 2000
TTS_MAX_CHARS = 10_000
KLING3_SECONDS = (3, 15)
"""Kling 3.0 takes any whole number of seconds in this range; older versions 5 or 10."""
KLING_SECONDS = (5, 10)


def _s(name: str, required: bool = False, default: Any = None, **kw: Any) -> FieldSpec:
    return FieldSpec(name, "str", required=required, default=default, **kw)


JOYCAPTION: Fields = (
    _s("image", required=True),
    _s("prompt_style", default="Descriptive"),
    _s("caption_length", default="any"),
)

_WAN_COMMON: Fields = (
    _s("prompt", required=True),
    _s("negative_prompt"),
    FieldSpec("duration", "int", default=5, choices=(5, 10, 15)),
    FieldSpec("resolution", "str", default="720P", choices=("720P", "1080P")),
    FieldSpec("audio", "bool"),
    _s("audio_url"),
    FieldSpec("seed", "int", default=0),
    _s("shot_type"),
    FieldSpec("watermark", "bool", default=False),
    FieldSpec("prompt_extend", "bool"),
)
WAN_TXT2VIDEO: Fields = (*_WAN_COMMON, _s("aspect_ratio", default="16:9"))
WAN_IMG2VIDEO: Fields = (*_WAN_COMMON, _s("image", required=True))

FLUX_TXT2IMG: Fields = (
    _s("prompt", required=True),
    _s("negative_prompt"),
    FieldSpec("width", "int", default=1024, min_value=1),
    FieldSpec("height", "int", default=1024, min_value=1),
    FieldSpec("steps", "int", min_value=1),
    FieldSpec("guidance_scale", "number"),
    FieldSpec("batch_size", "int", min_value=1, max_value=4),
)
_IMAGE_IN: Fields = (_s("image", required=True), FieldSpec("denoise", "number"))
FLUX_IMG2IMG: Fields = (*FLUX_TXT2IMG, *_IMAGE_IN)

_LORA: Fields = (_s("lora_type", required=True), FieldSpec("lora_strength", "number", min_value=0))
_CONTROLNET: Fields = (
    _s("control_type", required=True),
    _s("control_image", required=True),
    FieldSpec("control_strength", "number", min_value=0),
)
FLUX_TXT2IMG_LORA: Fields = (*FLUX_TXT2IMG, FieldSpec("lora_settings", "list", items=_LORA))
FLUX_IMG2IMG_LORA: Fields = (*FLUX_TXT2IMG_LORA, *_IMAGE_IN)
FLUX_CONTROLNET_LORA: Fields = (
    *FLUX_TXT2IMG_LORA,
    FieldSpec("control_net_settings", "list", required=True, items=_CONTROLNET),
)

KLING: Fields = (
    _s("prompt", required=True),
    _s("negative_prompt"),
    FieldSpec("duration", "int", default=5),
    _s("aspect_ratio"),
    FieldSpec("mode", "str", choices=("std", "pro")),
    _s("version"),
    _s("image_url"),
    FieldSpec("cfg_scale", "number"),
)

HAILUO: Fields = (
    _s("prompt", max_length=HAILUO_MAX_PROMPT),
    _s("model"),
    _s("image_url"),
    FieldSpec("expand_prompt", "bool"),
)

TTS: Fields = (
    _s("gen_text", required=True, max_length=TTS_MAX_CHARS),
    _s("ref_audio", required=True),
    _s("ref_text"),
)

FACE_SWAP: Fields = (_s("target_image", required=True), _s("swap_image", required=True))
BACKGROUND_REMOVE: Fields = (_s("image", required=True),)
UPSCALE: Fields = (_s("image", required=True), FieldSpec("scale", "int", default=2, choices=(2, 4)))

MIDJOURNEY_IMAGINE: Fields = (
    _s("prompt", required=True),
    _s("aspect_ratio", default="1:1"),
    FieldSpec("process_mode", "str", default="fast", choices=("relax", "fast", "turbo")),
    FieldSpec("skip_prompt_check", "bool", default=False),
)

HUNYUAN: Fields = (
    _s("prompt", required=True), _s("negative_prompt"), _s("aspect_ratio", default="16:9"),
)

SEEDANCE: Fields = (
    _s("prompt", required=True),
    _s("image_url"),
    FieldSpec("duration", "int", default=5, choices=(5, 10)),
    _s("aspect_ratio", default="16:9"),
)

TRELLIS: Fields = (_s("image", required=True), FieldSpec("seed", "int", default=0))

UDIO: Fields = (
    _s("gpt_description_prompt"),
    _s("lyrics"),
    FieldSpec("lyrics_type", "str", default="generate",
              choices=("generate", "user", "instrumental")),
    _s("negative_tags"),
    FieldSpec("seed", "int"),
)

DIFFRHYTHM: Fields = (_s("lyrics"), _s("style_prompt"))


# ---- checks across fields (run on the normalised input) -----------------------------------

def flux_check(input_: dict[str, Any]) -> None:
    """Flux caps the pixel count, not each side."""
    if int(input_["width"]) * int(input_["height"]) > FLUX_MAX_PIXELS:
        raise InvalidRequest(f"input.width * input.height must be at most {FLUX_MAX_PIXELS}")


def kling_check(input_: dict[str, Any]) -> None:
    """Kling 3.0 takes 3-15 whole seconds; older versions only 5 or 10."""
    seconds = input_["duration"]
    if input_.get("version") == "3.0":
        low, high = KLING3_SECONDS
        if not low <= seconds <= high:
            raise InvalidRequest(f"input.duration must be between {low} and {high} "
                                 "for version 3.0")
    elif seconds not in KLING_SECONDS:
        raise InvalidRequest("input.duration must be one of 5, 10")


def hailuo_check(input_: dict[str, Any]) -> None:
    """Text to video needs a prompt; with `image_url` (image to video) it is optional."""
    if not input_.get("prompt") and not input_.get("image_url"):
        raise InvalidRequest("input.prompt is required")


def one_of(*names: str) -> Callable[[dict[str, Any]], None]:
    """A check that at least one of `names` is given (non-empty)."""
    def check(input_: dict[str, Any]) -> None:
        if not any(input_.get(name) for name in names):
            raise InvalidRequest(f"input needs at least one of {', '.join(names)}")
    return check

"""What piapi-bulk knows about PiAPI's models: task types, input fields and their types.

Used to validate every manifest row before anything is paid for, to convert flat CSV
cells into the JSON types PiAPI expects, and to give the poll scheduler a prior duration.
A row whose model or task type is not listed here is invalid: an unknown model never
reaches the paid API.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    """The JSON type PiAPI expects for an input field."""

    STR = "string"
    INT = "integer"
    NUM = "number"
    BOOL = "boolean"


@dataclass(frozen=True)
class FieldSpec:
    """One input field: its type and, when PiAPI restricts it, the allowed values."""

    kind: Kind = Kind.STR
    choices: tuple[Any, ...] = ()
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class TaskSpec:
    """A (model, task_type) pair PiAPI accepts."""

    model: str
    task_type: str
    required: tuple[str, ...]
    fields: Mapping[str, FieldSpec] = field(default_factory=dict)
    prior_s: float = 60.0
    """Typical duration in seconds, before anything is learned."""
    open_fields: bool = False
    """True when PiAPI accepts fields beyond those listed (passed through unchecked)."""
    max_pixels: int | None = None
    """Upper bound on width*height, when the model has one."""
    prior_usd: float | None = None
    """What one task may cost at most (its dearest options), before costs are learned;
    None when the price is not known (a high default is used instead)."""


S = FieldSpec()
INT = FieldSpec(Kind.INT)
NUM = FieldSpec(Kind.NUM)
BOOL = FieldSpec(Kind.BOOL)

_JOYCAPTION = {"image": S, "prompt_style": S, "caption_length": S, "workflow_type": S}
_WAN = {
    "prompt": S,
    "negative_prompt": S,
    "duration": FieldSpec(Kind.INT, choices=(5, 10, 15)),
    "resolution": FieldSpec(choices=("720P", "1080P")),
    "audio": BOOL,
    "audio_url": S,
    "seed": INT,
    "shot_type": S,
    "watermark": BOOL,
    "prompt_extend": BOOL,
}
FLUX_MAX_PIXELS = 1_048_576
"""PiAPI's limit on Flux width*height."""
_FLUX = {
    "prompt": S,
    "negative_prompt": S,
    "width": FieldSpec(Kind.INT, min=64, max=2048),
    "height": FieldSpec(Kind.INT, min=64, max=2048),
    "steps": FieldSpec(Kind.INT, min=1, max=100),
    "guidance_scale": NUM,
    "batch_size": FieldSpec(Kind.INT, min=1, max=4),
    "lora_settings": S,
}
_KLING = {
    "prompt": S,
    "negative_prompt": S,
    "duration": FieldSpec(Kind.INT, choices=(5, 10)),
    "aspect_ratio": S,
    "mode": FieldSpec(choices=("std", "pro")),
    "version": S,
    "image_url": S,
    "image_tail_url": S,
    "cfg_scale": FieldSpec(Kind.NUM, min=0, max=1),
}

SPECS: tuple[TaskSpec, ...] = (
    # prior_usd: Joycaption $0.01 a task; Wan $0.08 a second, x1.5 at 1080P (15 s: $1.80);
    # Flux $0.002 (schnell) and $0.015 (dev) an image; Kling $0.26 (std) or $0.46 (pro)
    # per 5 s (10 s pro: $0.92); Hailuo $0.20.
    TaskSpec("Qubico/joycaption", "joycaption-beta-one", ("image",), _JOYCAPTION, prior_s=30,
             prior_usd=0.01),
    TaskSpec("Wan", "wan26-txt2video", ("prompt",), {**_WAN, "aspect_ratio": S}, prior_s=180,
             prior_usd=1.80),
    TaskSpec("Wan", "wan26-img2video", ("prompt", "image"), {**_WAN, "image": S}, prior_s=180,
             prior_usd=1.80),
    TaskSpec("Qubico/flux1-schnell", "txt2img", ("prompt",), _FLUX, prior_s=10,
             max_pixels=FLUX_MAX_PIXELS, prior_usd=0.002),
    TaskSpec("Qubico/flux1-dev", "txt2img", ("prompt",), _FLUX, prior_s=20,
             max_pixels=FLUX_MAX_PIXELS, prior_usd=0.015),
    TaskSpec(
        "Qubico/flux1-schnell", "img2img", ("prompt", "image"),
        {**_FLUX, "image": S, "denoise": NUM}, prior_s=10, max_pixels=FLUX_MAX_PIXELS,
        prior_usd=0.002,
    ),
    TaskSpec(
        "Qubico/flux1-dev", "img2img", ("prompt", "image"),
        {**_FLUX, "image": S, "denoise": NUM}, prior_s=20, max_pixels=FLUX_MAX_PIXELS,
        prior_usd=0.015,
    ),
    TaskSpec("kling", "video_generation", ("prompt",), _KLING, prior_s=240, open_fields=True,
             prior_usd=0.92),
    TaskSpec(
        "hailuo", "video_generation", ("prompt",),
        {"prompt": S, "model": S, "image_url": S, "expand_prompt": BOOL},
        prior_s=120, open_fields=True, prior_usd=0.20,
    ),
    TaskSpec(
        "Qubico/tts", "zero-shot", ("gen_text",),
        {"gen_text": S, "ref_audio": S, "ref_text": S}, prior_s=30,
    ),
    TaskSpec("music-u", "generate_music", (), {
        "gpt_description_prompt": S, "lyrics": S, "lyrics_type": S, "negative_tags": S,
        "seed": INT, "prompt": S,
    }, prior_s=120, open_fields=True),
)

_BY_KEY: dict[tuple[str, str], TaskSpec] = {(s.model, s.task_type): s for s in SPECS}
MODELS: frozenset[str] = frozenset(s.model for s in SPECS)


def lookup(model: str, task_type: str) -> TaskSpec | None:
    """The spec for a (model, task_type) pair, or None when PiAPI has no such pair."""
    return _BY_KEY.get((model, task_type))


def task_types(model: str) -> list[str]:
    """Task types known for a model (empty when the model is unknown)."""
    return sorted(s.task_type for s in SPECS if s.model == model)


def prior_duration_s(model: str, task_type: str) -> float:
    """The prior typical duration of a task, in seconds."""
    spec = lookup(model, task_type)
    return spec.prior_s if spec else 60.0


UNKNOWN_PRICE_USD = 2.0
"""The cost assumed for a task whose price is not known: above the dearest known task."""


def prior_cost_usd(model: str, task_type: str) -> float:
    """What one task may cost before anything is learned (errs on the high side)."""
    spec = lookup(model, task_type)
    return spec.prior_usd if spec and spec.prior_usd is not None else UNKNOWN_PRICE_USD


# --- families: how PiAPI groups models in its history filter and in-flight counts -------
HISTORY_FAMILIES: Mapping[str, str] = {
    "Wan": "wan",
    "Qubico/flux1-schnell": "flux",
    "Qubico/flux1-dev": "flux",
    "Qubico/flux1-dev-advanced": "flux",
    "kling": "kling",
    "hailuo": "hailuo",
    "Qubico/tts": "tts",
    "music-u": "music-u",
    "music-s": "music-s",
    "midjourney": "mj",
    "luma": "luma",
    "Qubico/hunyuan": "hunyuan",
    "Qubico/trellis": "trellis",
    "Qubico/image-toolkit": "image_toolkit",
    "Qubico/skyreels": "skyreels",
    "Qubico/mmaudio": "mmaudio",
    "Qubico/diffrhythm": "diffrhythm",
}
"""Model -> the value of the history's `model` filter, for the models whose family the
docs list (diffrhythm, flux, gpts, hailuo, hug_video, hunyuan, image_toolkit, kling, llm,
luma, mj, mmaudio, music-s, music-u, sd, skyreels, trellis, tts, video_toolkit, wan).
Joycaption has none: its history is read without a filter."""

ACTIVE_FAMILIES: Mapping[str, str] = {
    "Qubico/flux1-schnell": "flux",
    "Qubico/flux1-dev": "flux",
    "Qubico/flux1-dev-advanced": "flux",
    "kling": "kling",
    "luma": "luma",
    "midjourney": "midjourney",
    "music-s": "music-s",
    "music-u": "music-u",
}
"""Model -> its key in /account/active_tasks, for the six families that endpoint is known
to count (flux, kling, luma, midjourney, music-s, music-u). Other models (Joycaption, Wan,
Hailuo, ...) are not known to be counted there: their in-flight tasks come from our own
record."""


def history_family(model: str) -> str | None:
    """The history filter value for `model`, or None (read the history unfiltered)."""
    return HISTORY_FAMILIES.get(model)


def active_family(model: str) -> str | None:
    """The /account/active_tasks key that counts `model`'s tasks, or None if none does."""
    return ACTIVE_FAMILIES.get(model)

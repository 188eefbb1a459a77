"""What piapi-bulk knows about PiAPI's models: task types, input fields and their types.

Used to validate every manifest row before anything is paid for, to convert flat CSV
cells into the JSON types PiAPI expects, and to give the poll scheduler a prior duration
(and budgets a prior price, from `workers/prices.py`). A row whose model is listed here
but whose task type or fields are not is invalid: a malformed task for a known model never
reaches the paid API. A model that is not listed at all is passed through unchecked (see
`scheduler/validate.py`), unless the batch is strict.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from workers.prices import UNKNOWN_PRICE_USD as UNKNOWN_PRICE_USD  # re-exported
from workers.prices import upper_usd


class Kind(StrEnum):
    """The JSON type PiAPI expects for an input field."""

    STR = "string"
    INT = "integer"
    NUM = "number"
    BOOL = "boolean"
    ARRAY = "array"
    """A JSON array (in a CSV cell: the array as JSON text)."""
    URL = "url"
    """A string holding an absolute http(s) URL with a host: a file PiAPI fetches (an image,
    a video, an audio clip). Local paths are refused until uploads exist."""


@dataclass(frozen=True)
class FieldSpec:
    """One input field: its type and, when PiAPI restricts it, the allowed values."""

    kind: Kind = Kind.STR
    choices: tuple[Any, ...] = ()
    min: float | None = None
    max: float | None = None
    max_len: int | None = None
    """Most characters a string may have."""
    items: Mapping[str, FieldSpec] | None = None
    """For an array of objects: the keys piapi-bulk checks in each item (others pass)."""
    item_required: tuple[str, ...] = ()
    """Keys every item of an array of objects must have."""


Check = Callable[[Mapping[str, Any]], str | None]
"""A cross-field check of a typed input: the reason it is refused, or None."""
SERVICE_MODES = ("public", "private")
"""`config.service_mode` values besides empty (the workspace default): `public` is the
pay-as-you-go pool, `private` the account's own connected accounts (HYA)."""


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
    one_of: tuple[str, ...] = ()
    """At least one of these fields must be given (beyond `required`)."""
    check: Check | None = None
    """A cross-field rule, such as a range that depends on another field."""
    service_modes: tuple[str, ...] = SERVICE_MODES
    """The non-empty `service_mode` values the model accepts."""


S = FieldSpec()
INT = FieldSpec(Kind.INT)
NUM = FieldSpec(Kind.NUM)
BOOL = FieldSpec(Kind.BOOL)
URL = FieldSpec(Kind.URL)
"""A file PiAPI fetches by URL (the docs' `image`, `image_url`, `audio_url`, `ref_audio`...)."""

_JOYCAPTION = {"image": URL, "prompt_style": S, "caption_length": S, "workflow_type": S}
_WAN = {
    "prompt": S,
    "negative_prompt": S,
    "duration": FieldSpec(Kind.INT, choices=(5, 10, 15)),
    "resolution": FieldSpec(choices=("720P", "1080P")),
    "audio": BOOL,
    "audio_url": URL,
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
}
_FLUX_IMG2IMG = {**_FLUX, "image": URL, "denoise": NUM}
_LORA = FieldSpec(Kind.ARRAY, items={"lora_type": S, "lora_strength": NUM},
                  item_required=("lora_type",))
_CONTROL_NET = FieldSpec(Kind.ARRAY, items={
    "control_type": S, "control_image": URL, "control_strength": NUM,
}, item_required=("control_type", "control_image"))
_FLUX_ADVANCED = {**_FLUX, "lora_settings": _LORA, "control_net_settings": _CONTROL_NET}

KLING_PER_SECOND_VERSIONS = frozenset({"3.0"})
"""Kling versions that take any whole duration from 3 to 15 s (priced per second)."""
_KLING = {
    "prompt": S,
    "negative_prompt": S,
    "duration": FieldSpec(Kind.INT, min=3, max=15),
    "aspect_ratio": S,
    "mode": FieldSpec(choices=("std", "pro")),
    "version": S,
    "image_url": URL,
    "image_tail_url": URL,
    "cfg_scale": FieldSpec(Kind.NUM, min=0, max=1),
}


def _kling_duration(data: Mapping[str, Any]) -> str | None:
    """Kling 3.0 takes 3 to 15 s (the field's own range); older versions 5 or 10 only."""
    duration = data.get("duration")
    if duration is None or data.get("version") in KLING_PER_SECOND_VERSIONS:
        return None
    if duration in (5, 10):
        return None
    return (f"field 'duration' must be one of 5, 10 (3 to 15 only with version 3.0), "
            f"got {duration}")


_MIDJOURNEY = {"prompt": S, "aspect_ratio": S,
               "process_mode": FieldSpec(choices=("relax", "fast", "turbo")),
               "skip_prompt_check": BOOL}
_UDIO = {"gpt_description_prompt": S, "lyrics": S,
         "lyrics_type": FieldSpec(choices=("generate", "user", "instrumental")),
         "negative_tags": S, "seed": INT}
_SEEDANCE = {"prompt": S, "image_url": URL, "duration": FieldSpec(Kind.INT, choices=(5, 10)),
             "aspect_ratio": S}

SPECS: tuple[TaskSpec, ...] = (
    # Prices (per row, from its options, and their upper bounds): workers/prices.py.
    TaskSpec("Qubico/joycaption", "joycaption-beta-one", ("image",), _JOYCAPTION, prior_s=30),
    TaskSpec("Wan", "wan26-txt2video", ("prompt",), {**_WAN, "aspect_ratio": S}, prior_s=180),
    TaskSpec("Wan", "wan26-img2video", ("prompt", "image"), {**_WAN, "image": URL}, prior_s=180),
    TaskSpec("Qubico/flux1-schnell", "txt2img", ("prompt",), _FLUX, prior_s=10,
             max_pixels=FLUX_MAX_PIXELS),
    TaskSpec("Qubico/flux1-dev", "txt2img", ("prompt",), _FLUX, prior_s=20,
             max_pixels=FLUX_MAX_PIXELS),
    TaskSpec("Qubico/flux1-schnell", "img2img", ("prompt", "image"), _FLUX_IMG2IMG,
             prior_s=10, max_pixels=FLUX_MAX_PIXELS),
    TaskSpec("Qubico/flux1-dev", "img2img", ("prompt", "image"), _FLUX_IMG2IMG, prior_s=20,
             max_pixels=FLUX_MAX_PIXELS),
    TaskSpec("Qubico/flux1-dev-advanced", "txt2img-lora", ("prompt",), _FLUX_ADVANCED,
             prior_s=30, max_pixels=FLUX_MAX_PIXELS),
    TaskSpec("Qubico/flux1-dev-advanced", "img2img-lora", ("prompt", "image"),
             {**_FLUX_ADVANCED, "image": URL, "denoise": NUM}, prior_s=30,
             max_pixels=FLUX_MAX_PIXELS),
    TaskSpec("Qubico/flux1-dev-advanced", "controlnet-lora", ("prompt", "control_net_settings"),
             _FLUX_ADVANCED, prior_s=30, max_pixels=FLUX_MAX_PIXELS),
    TaskSpec("kling", "video_generation", ("prompt",), _KLING, prior_s=240, open_fields=True,
             check=_kling_duration),
    TaskSpec(
        "hailuo", "video_generation", (),
        {"prompt": FieldSpec(max_len=2000), "model": S, "image_url": URL, "expand_prompt": BOOL},
        prior_s=120, open_fields=True, one_of=("prompt", "image_url"),
        service_modes=("public",),
    ),
    TaskSpec(
        "Qubico/tts", "zero-shot", ("gen_text", "ref_audio"),
        {"gen_text": FieldSpec(max_len=10_000), "ref_audio": URL, "ref_text": S}, prior_s=30,
        service_modes=("public",),
    ),
    TaskSpec("music-u", "generate_music", (), _UDIO, prior_s=120,
             one_of=("gpt_description_prompt", "lyrics")),
    TaskSpec("midjourney", "imagine", ("prompt",), _MIDJOURNEY, prior_s=90),
    TaskSpec("Qubico/hunyuan", "txt2video", ("prompt",),
             {"prompt": S, "negative_prompt": S, "aspect_ratio": S}, prior_s=300),
    TaskSpec("seedance", "seedance-2-preview", ("prompt",), _SEEDANCE, prior_s=180),
    TaskSpec("Qubico/trellis", "image-to-3d", ("image",), {"image": URL, "seed": INT},
             prior_s=90),
    TaskSpec("Qubico/image-toolkit", "face-swap", ("target_image", "swap_image"),
             {"target_image": URL, "swap_image": URL}, prior_s=20),
    TaskSpec("Qubico/image-toolkit", "background-remove", ("image",), {"image": URL},
             prior_s=20),
    TaskSpec("Qubico/image-toolkit", "upscale", ("image",),
             {"image": URL, "scale": FieldSpec(Kind.INT, choices=(2, 4))}, prior_s=30),
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


def prior_cost_usd(model: str, task_type: str) -> float:
    """What one task may cost before anything is learned (errs on the high side): its
    dearest options' price (`workers.prices`), or `UNKNOWN_PRICE_USD` when none is known."""
    return upper_usd(model, task_type)


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
Joycaption and Seedance have none (their history is read without a filter), nor does a
model passed through unchecked unless it is listed here."""

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

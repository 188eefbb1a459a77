"""The model table: input fields per (model, task_type), family, pricing and output shapes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from emulator.validation import FieldSpec, InvalidRequest, normalise_input

UNITS_PER_USD = 10_000_000
"""meta.usage units: 10,000,000 = US$1 (REFERENCE.md §9)."""

FLUX_MAX_PIXELS = 1_048_576
OutputKind = Literal["text", "video", "image", "hailuo"]


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """What PiAPI accepts and produces for one (model, task_type)."""

    model: str
    task_type: str
    family: str
    fields: tuple[FieldSpec, ...]
    usage_type: str
    output_kind: OutputKind
    price: Callable[[dict[str, Any]], int]
    """Units charged on success, from the normalised input."""
    charge_at_create: bool = False
    """True: `consume` shows the price from creation (Joycaption); else `frozen` until done."""
    check: Callable[[dict[str, Any]], None] | None = None
    """Cross-field validation of the normalised input; raises InvalidRequest."""
    duration_factor: Callable[[dict[str, Any]], float] = lambda _input: 1.0
    """Multiplier on the family's duration range (longer videos take longer)."""

    def normalise(self, raw: object) -> dict[str, Any]:
        """Validate and normalise a raw `input` object for this task type."""
        normalised = normalise_input(self.fields, raw)
        if self.check is not None:
            self.check(normalised)
        return normalised


def _usd(amount: float) -> int:
    return round(amount * UNITS_PER_USD)


def _per_5s(input_: dict[str, Any]) -> float:
    return float(input_.get("duration", 5)) / 5.0


def _wan_price(input_: dict[str, Any]) -> int:
    factor = 1.5 if input_.get("resolution") == "1080P" else 1.0
    return _usd(0.08 * int(input_["duration"]) * factor)


def _kling_price(input_: dict[str, Any]) -> int:
    per_5s = 0.46 if input_.get("mode") == "pro" else 0.26
    return _usd(per_5s * _per_5s(input_))


def _flat_price(usd: float) -> Callable[[dict[str, Any]], int]:
    units = _usd(usd)
    return lambda _input: units


def _flux_check(input_: dict[str, Any]) -> None:
    if int(input_["width"]) * int(input_["height"]) > FLUX_MAX_PIXELS:
        raise InvalidRequest(f"input.width * input.height must be at most {FLUX_MAX_PIXELS}")


def _s(name: str, required: bool = False, default: Any = None) -> FieldSpec:
    return FieldSpec(name, "str", required=required, default=default)


_JOYCAPTION = (
    _s("image", required=True),
    _s("prompt_style", default="Descriptive"),
    _s("caption_length", default="any"),
)

_WAN_COMMON = (
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

_FLUX_TXT2IMG = (
    _s("prompt", required=True),
    _s("negative_prompt"),
    FieldSpec("width", "int", default=1024, min_value=1),
    FieldSpec("height", "int", default=1024, min_value=1),
    FieldSpec("steps", "int", min_value=1),
    FieldSpec("guidance_scale", "number"),
    FieldSpec("batch_size", "int", min_value=1, max_value=4),
)
_FLUX_IMG2IMG = (*_FLUX_TXT2IMG, _s("image", required=True), FieldSpec("denoise", "number"))

_KLING = (
    _s("prompt", required=True),
    _s("negative_prompt"),
    FieldSpec("duration", "int", default=5, choices=(5, 10)),
    _s("aspect_ratio"),
    FieldSpec("mode", "str", choices=("std", "pro")),
    _s("version"),
    _s("image_url"),
    FieldSpec("cfg_scale", "number"),
)

_HAILUO = (
    _s("prompt", required=True),
    _s("model"),
    _s("image_url"),
    FieldSpec("expand_prompt", "bool"),
)


def _build() -> dict[tuple[str, str], TaskSpec]:
    specs = [
        TaskSpec("Qubico/joycaption", "joycaption-beta-one", "joycaption", _JOYCAPTION, "llm",
                 "text", lambda _i: _usd(0.01), charge_at_create=True),
        TaskSpec("Wan", "wan26-txt2video", "wan",
                 (*_WAN_COMMON, _s("aspect_ratio", default="16:9")), "point", "video",
                 _wan_price, duration_factor=_per_5s),
        TaskSpec("Wan", "wan26-img2video", "wan", (*_WAN_COMMON, _s("image", required=True)),
                 "point", "video", _wan_price, duration_factor=_per_5s),
        TaskSpec("kling", "video_generation", "kling", _KLING, "point", "video", _kling_price,
                 duration_factor=_per_5s),
        TaskSpec("hailuo", "video_generation", "hailuo", _HAILUO, "point", "hailuo",
                 lambda _i: _usd(0.20)),
    ]
    for model, usd in (("Qubico/flux1-schnell", 0.002), ("Qubico/flux1-dev", 0.015)):
        for task_type, fields in (("txt2img", _FLUX_TXT2IMG), ("img2img", _FLUX_IMG2IMG)):
            specs.append(TaskSpec(model, task_type, "flux", fields, "point", "image",
                                  _flat_price(usd), check=_flux_check))
    return {(s.model, s.task_type): s for s in specs}


CATALOG: dict[tuple[str, str], TaskSpec] = _build()
MODELS = frozenset(model for model, _ in CATALOG)


def lookup(model: str, task_type: str) -> TaskSpec:
    """The spec for (model, task_type), or InvalidRequest naming what is unknown."""
    spec = CATALOG.get((model, task_type))
    if spec is not None:
        return spec
    if model not in MODELS:
        raise InvalidRequest(f"model {model} is not supported")
    raise InvalidRequest(f"task_type {task_type} is not supported for model {model}")


def build_output(
    spec: TaskSpec, input_: dict[str, Any], file_url: Callable[[str], str]
) -> dict[str, Any]:
    """The `output` of a completed task; `file_url(ext)` mints a URL on the emulator's files."""
    if spec.output_kind == "text":
        return {"text": (
            f"{input_['prompt_style']} caption ({input_['caption_length']} length) of the image "
            f"at {input_['image']}: a clearly lit subject in the foreground against a softly "
            "blurred background, in natural colours."
        )}
    if spec.output_kind == "image":
        return {"image_url": file_url("png")}
    if spec.output_kind == "video":
        return {"video_url": file_url("mp4")}
    return {
        "video_url": file_url("mp4"),
        "download_url": file_url("mp4"),
        "cover_url": file_url("png"),
        "percent": 100,
    }

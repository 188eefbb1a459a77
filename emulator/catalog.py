"""The model table: per (model, task_type) its inputs, family, price, output shape and the
families PiAPI files it under in the history filter and in /account/active_tasks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from emulator import inputs as i
from emulator import outputs as o
from emulator.outputs import Minter, OutputBuilder
from emulator.validation import FieldSpec, InvalidRequest, normalise_input

UNITS_PER_USD = 10_000_000
"""meta.usage units: 10,000,000 = US$1 (REFERENCE.md §9)."""

SERVICE_MODES = ("", "public", "private")
"""config.service_mode: workspace default, pay-as-you-go pool, own accounts (HYA)."""
PUBLIC_ONLY = ("", "public")
"""Hailuo and F5-TTS run only on the public pool (docs)."""

HISTORY_FAMILIES = (
    "diffrhythm", "flux", "gpts", "hailuo", "hug_video", "hunyuan", "image_toolkit", "kling",
    "llm", "luma", "mj", "mmaudio", "music-s", "music-u", "sd", "skyreels", "trellis", "tts",
    "video_toolkit", "wan",
)
"""The values the history's `model` filter documents (REFERENCE.md §1)."""
ACTIVE_FAMILIES = ("flux", "kling", "luma", "midjourney", "music-s", "music-u")
"""The families /account/active_tasks is seen to count (REFERENCE.md §1)."""

MODEL_FAMILIES: dict[str, tuple[str | None, str | None]] = {
    "Qubico/joycaption": (None, None),
    "Wan": ("wan", None),
    "Qubico/flux1-schnell": ("flux", "flux"),
    "Qubico/flux1-dev": ("flux", "flux"),
    "Qubico/flux1-dev-advanced": ("flux", "flux"),
    "kling": ("kling", "kling"),
    "hailuo": ("hailuo", None),
    "Qubico/tts": ("tts", None),
    "music-u": ("music-u", "music-u"),
    "midjourney": ("mj", "midjourney"),
    "Qubico/hunyuan": ("hunyuan", None),
    "Qubico/trellis": ("trellis", None),
    "Qubico/image-toolkit": ("image_toolkit", None),
    "Qubico/diffrhythm": ("diffrhythm", None),
    "seedance": (None, None),
}
"""Model -> (history filter family, active_tasks family); None: not filed under any, so
found only in the unfiltered history, and counted nowhere in active_tasks."""

Price = Callable[[dict[str, Any]], int]
Check = Callable[[dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """What PiAPI accepts and produces for one (model, task_type)."""

    model: str
    task_type: str
    family: str
    """The emulator's own grouping, for durations (config `durations_s`)."""
    fields: tuple[FieldSpec, ...]
    output: OutputBuilder
    price: Price
    """Units charged on success, from the normalised input."""
    usage_type: str = "point"
    charge_at_create: bool = False
    """True: `consume` shows the price from creation (Joycaption); else `frozen` until done."""
    check: Check | None = None
    """Cross-field validation of the normalised input; raises InvalidRequest."""
    duration_factor: Callable[[dict[str, Any]], float] = lambda _input: 1.0
    """Multiplier on the family's duration range (longer videos take longer)."""
    service_modes: tuple[str, ...] = SERVICE_MODES
    history_family: str | None = None
    active_family: str | None = None

    def normalise(self, raw: object) -> dict[str, Any]:
        """Validate and normalise a raw `input` object for this task type."""
        normalised = normalise_input(self.fields, raw)
        if self.check is not None:
            self.check(normalised)
        return normalised


def _usd(amount: float) -> int:
    return round(amount * UNITS_PER_USD)


def flat(usd: float) -> Price:
    """A price that does not depend on the input."""
    units = _usd(usd)
    return lambda _input: units


def _per_5s(input_: dict[str, Any]) -> float:
    return float(input_.get("duration", 5)) / 5.0


def _wan_price(input_: dict[str, Any]) -> int:
    factor = 1.5 if input_.get("resolution") == "1080P" else 1.0
    return _usd(0.08 * int(input_["duration"]) * factor)


def _kling_price(input_: dict[str, Any]) -> int:
    pro = input_.get("mode") == "pro"
    if input_.get("version") == "3.0":  # per second
        return _usd((0.14 if pro else 0.10) * int(input_["duration"]))
    return _usd((0.46 if pro else 0.26) * _per_5s(input_))


def _tts_price(input_: dict[str, Any]) -> int:
    return _usd(0.025 * len(input_["gen_text"]) / 1000)  # $0.025 per 1,000 characters


def _mj_price(input_: dict[str, Any]) -> int:
    return _usd({"relax": 0.04, "fast": 0.07, "turbo": 0.14}[input_["process_mode"]])


def _spec(model: str, task_type: str, family: str, fields: tuple[FieldSpec, ...],
          output: OutputBuilder, price: Price, **kw: Any) -> TaskSpec:
    history, active = MODEL_FAMILIES[model]
    return TaskSpec(model, task_type, family, fields, output, price,
                    history_family=history, active_family=active, **kw)


def _flux() -> list[TaskSpec]:
    image = o.one_file("image_url", "png")
    specs = []
    for model, usd in (("Qubico/flux1-schnell", 0.002), ("Qubico/flux1-dev", 0.015)):
        for task_type, fields in (("txt2img", i.FLUX_TXT2IMG), ("img2img", i.FLUX_IMG2IMG)):
            specs.append(_spec(model, task_type, "flux", fields, image, flat(usd),
                               check=i.flux_check))
    for task_type, fields in (("txt2img-lora", i.FLUX_TXT2IMG_LORA),
                              ("img2img-lora", i.FLUX_IMG2IMG_LORA),
                              ("controlnet-lora", i.FLUX_CONTROLNET_LORA)):
        specs.append(_spec("Qubico/flux1-dev-advanced", task_type, "flux", fields, image,
                           flat(0.02), check=i.flux_check))
    return specs


def _toolkit() -> list[TaskSpec]:
    image = o.one_file("image_url", "png")
    return [
        _spec("Qubico/image-toolkit", task_type, "image_toolkit", fields, image, flat(usd))
        for task_type, fields, usd in (("face-swap", i.FACE_SWAP, 0.01),
                                       ("background-remove", i.BACKGROUND_REMOVE, 0.001),
                                       ("upscale", i.UPSCALE, 0.02))
    ]


def _build() -> dict[tuple[str, str], TaskSpec]:
    video_url, audio_url = o.one_file("video_url", "mp4"), o.one_file("audio_url", "mp3")
    specs = [
        _spec("Qubico/joycaption", "joycaption-beta-one", "joycaption", i.JOYCAPTION,
              o.caption, flat(0.01), usage_type="llm", charge_at_create=True),
        _spec("Wan", "wan26-txt2video", "wan", i.WAN_TXT2VIDEO, video_url, _wan_price,
              duration_factor=_per_5s),
        _spec("Wan", "wan26-img2video", "wan", i.WAN_IMG2VIDEO, video_url, _wan_price,
              duration_factor=_per_5s),
        _spec("kling", "video_generation", "kling", i.KLING, o.kling, _kling_price,
              check=i.kling_check, duration_factor=_per_5s),
        _spec("hailuo", "video_generation", "hailuo", i.HAILUO, o.hailuo, flat(0.20),
              check=i.hailuo_check, service_modes=PUBLIC_ONLY),
        *_flux(),
        _spec("Qubico/tts", "zero-shot", "tts", i.TTS, audio_url, _tts_price,
              service_modes=PUBLIC_ONLY),
        *_toolkit(),
        _spec("midjourney", "imagine", "midjourney", i.MIDJOURNEY_IMAGINE, o.midjourney,
              _mj_price),
        _spec("Qubico/hunyuan", "txt2video", "hunyuan", i.HUNYUAN, video_url, flat(0.09)),
        _spec("seedance", "seedance-2-preview", "seedance", i.SEEDANCE,
              o.one_file("video", "mp4"), lambda input_: _usd(0.30 * _per_5s(input_)),
              duration_factor=_per_5s),
        _spec("Qubico/trellis", "image-to-3d", "trellis", i.TRELLIS, o.trellis, flat(0.04)),
        _spec("music-u", "generate_music", "music-u", i.UDIO, o.song, flat(0.05),
              check=i.one_of("gpt_description_prompt", "lyrics")),
        _spec("Qubico/diffrhythm", "txt2audio-base", "diffrhythm", i.DIFFRHYTHM, audio_url,
              flat(0.02), check=i.one_of("lyrics", "style_prompt")),
    ]
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


def build_output(spec: TaskSpec, input_: dict[str, Any], mint: Minter) -> dict[str, Any]:
    """The `output` of a completed task; `mint` makes its ids and file URLs."""
    return spec.output(input_, mint)

"""PiAPI's prices as data, each with its source, and what one task costs from its input.

A `Tariff` says how PiAPI prices one (model, task type): US$ per unit (a task, a second
or 5 s of video, an image, 1,000 characters), the unit price chosen by one option (Kling's
`mode`, Midjourney's `process_mode`), multiplied by others (Wan's `resolution`), the number
of units read from the input (`duration`, `batch_size`, the length of `gen_text`), and a
variant chosen by a field (Kling 3.0 is priced per second, older versions per 5 s).
Options a row leaves out take PiAPI's defaults (those the emulator fills in).

`price_usd(model, task_type, input)` is what `estimate` and `run --dry-run` add up, and
`upper_usd(model, task_type)` (the dearest options) is the prior budgets freeze for a task
in flight before its kind's cost is learned (`workers.spending`), so both read one table.
A price that depends on something the input does not say (the image toolkit's is per
megapixel of an image given by URL) is the upper bound and says so; a model with no tariff
costs `UNKNOWN_PRICE_USD`, flagged "unknown price". Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

UNKNOWN_PRICE_USD = 2.5
"""The cost assumed for a task whose price is not known (a model passed through unchecked,
before any of its tasks completed): above the dearest known task."""


class Unit(StrEnum):
    """What one `Tariff.usd` buys."""

    TASK = "task"
    SECOND = "second"
    FIVE_SECONDS = "5 s"
    IMAGE = "image"
    THOUSAND_CHARS = "1,000 characters"


class Basis(StrEnum):
    """How much a price can be trusted."""

    EXACT = "exact"
    """From the row's own options and the tariff."""
    UPPER = "upper bound"
    """The dearest case: the price depends on something the input does not say."""
    UNKNOWN = "unknown price"
    """No tariff: `UNKNOWN_PRICE_USD`, above the dearest known task."""


@dataclass(frozen=True)
class Tariff:
    """How PiAPI prices one (model, task type)."""

    usd: float
    """US$ per `unit` at the default options."""
    source: str
    unit: Unit = Unit.TASK
    by: str | None = None
    """The input field whose value sets the price per unit (`rates`)."""
    rates: Mapping[str, float] = field(default_factory=dict)
    """Value of `by` -> US$ per unit; a missing or other value costs `usd`."""
    factors: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    """Input field -> value -> multiplier (a value not listed: x1)."""
    amount: str | None = None
    """The input field giving the number of units (seconds, images, the text)."""
    default_amount: float = 1.0
    """The amount when the input leaves it out (PiAPI's default), in the input's terms
    (seconds, images, characters)."""
    max_amount: float = 1.0
    """The largest amount a task may have (for the upper bound), likewise."""
    variant_by: str | None = None
    variants: Mapping[str, Tariff] = field(default_factory=dict)
    """Value of `variant_by` -> the tariff that applies instead."""
    exact: bool = True
    """False: the input cannot tell the price; `usd` x `max_amount` is an upper bound."""


@dataclass(frozen=True, slots=True)
class Price:
    """What one task costs, and how far that can be trusted."""

    usd: float
    basis: Basis = Basis.EXACT


_DOCS = "PiAPI docs (REFERENCE.md section 9)"
_TOOLKIT = ("piapi-bulk's earlier catalogue: $0.01 per million pixels of the image, which "
            "the URL does not tell (unverified)")
_FLUX = "piapi.ai/flux-api: per image, batch_size x price"

TARIFFS: Mapping[tuple[str, str], Tariff] = {
    ("Qubico/joycaption", "joycaption-beta-one"): Tariff(0.01, _DOCS + ": 100,000 units"),
    **{("Wan", t): Tariff(
        0.08, "client practice (REFERENCE.md section 9: 5 s 720P = $0.40); x1.5 at 1080P "
        "from piapi-bulk's earlier catalogue (unverified)", Unit.SECOND,
        factors={"resolution": {"720P": 1.0, "1080P": 1.5}}, amount="duration",
        default_amount=5, max_amount=15) for t in ("wan26-txt2video", "wan26-img2video")},
    **{("Qubico/flux1-schnell", t): Tariff(0.0015, _FLUX, Unit.IMAGE, amount="batch_size",
                                           max_amount=4) for t in ("txt2img", "img2img")},
    **{("Qubico/flux1-dev", t): Tariff(0.015, _FLUX, Unit.IMAGE, amount="batch_size",
                                       max_amount=4) for t in ("txt2img", "img2img")},
    **{("Qubico/flux1-dev-advanced", t): Tariff(0.02, _FLUX, Unit.IMAGE, amount="batch_size",
                                                max_amount=4)
       for t in ("txt2img-lora", "img2img-lora", "controlnet-lora")},
    ("kling", "video_generation"): Tariff(
        0.26, "piapi-bulk's earlier catalogue: Kling 2.x $0.26 std, $0.46 pro per 5 s "
        "(unverified)", Unit.FIVE_SECONDS, by="mode", rates={"std": 0.26, "pro": 0.46},
        amount="duration", default_amount=5, max_amount=10, variant_by="version",
        variants={"3.0": Tariff(
            0.10, "REFERENCE.md section 9: Kling 3.0 720p $0.10 a second (docs, second-hand); "
            "pro $0.14 (unverified)", Unit.SECOND, by="mode", rates={"std": 0.10, "pro": 0.14},
            amount="duration", default_amount=5, max_amount=15)}),
    ("hailuo", "video_generation"): Tariff(
        0.20, _DOCS + ": i2v-01, frozen 2,000,000 units; other Hailuo models assumed alike"),
    ("Qubico/tts", "zero-shot"): Tariff(0.025, "PiAPI docs: $0.025 per 1,000 characters",
                                        Unit.THOUSAND_CHARS, amount="gen_text",
                                        default_amount=0, max_amount=10_000),
    ("music-u", "generate_music"): Tariff(0.05, "piapi-bulk's earlier catalogue (unverified)"),
    ("midjourney", "imagine"): Tariff(
        0.07, _DOCS + ": fast imagine $0.07; relax $0.04, turbo $0.14 (unverified)",
        by="process_mode", rates={"relax": 0.04, "fast": 0.07, "turbo": 0.14}),
    ("Qubico/hunyuan", "txt2video"): Tariff(0.09, "piapi-bulk's earlier catalogue (unverified)"),
    ("seedance", "seedance-2-preview"): Tariff(
        0.30, "piapi-bulk's earlier catalogue: $0.30 per 5 s (unverified)", Unit.FIVE_SECONDS,
        amount="duration", default_amount=5, max_amount=10),
    ("Qubico/trellis", "image-to-3d"): Tariff(0.04, "piapi-bulk's earlier catalogue (unverified)"),
    ("Qubico/image-toolkit", "face-swap"): Tariff(0.05, _TOOLKIT, exact=False),
    ("Qubico/image-toolkit", "background-remove"): Tariff(0.05, _TOOLKIT, exact=False),
    ("Qubico/image-toolkit", "upscale"): Tariff(0.70, _TOOLKIT + "; x4 up to 67 MP",
                                                exact=False),
}
"""The known prices. The toolkit's bounds: a 2048x2048 image is 4.2 MP ($0.05), upscaled x4
up to 67 MP ($0.70)."""


def _in_units(tariff: Tariff, amount: float) -> float:
    """`amount` (as the input gives it: seconds, images, characters) in the tariff's units."""
    if tariff.unit is Unit.THOUSAND_CHARS:
        return amount / 1000
    return amount / 5 if tariff.unit is Unit.FIVE_SECONDS else amount


def _units(tariff: Tariff, data: Mapping[str, Any]) -> float:
    """How many of the tariff's units the task is (an amount that is not a number: the
    most)."""
    if tariff.amount is None:
        return 1.0
    value = data.get(tariff.amount)
    if value is None:
        amount = tariff.default_amount
    elif tariff.unit is Unit.THOUSAND_CHARS:
        amount = len(str(value))
    else:
        try:
            amount = float(value)
        except (TypeError, ValueError):
            amount = tariff.max_amount
        if not math.isfinite(amount) or amount < 0:
            amount = tariff.max_amount
    return _in_units(tariff, amount)


def _option(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name)
    return value if isinstance(value, str) else ""


def _tariff_for(tariff: Tariff, data: Mapping[str, Any]) -> Tariff:
    if tariff.variant_by is None:
        return tariff
    return tariff.variants.get(_option(data, tariff.variant_by), tariff)


def _apply(tariff: Tariff, data: Mapping[str, Any]) -> float:
    usd = tariff.rates.get(_option(data, tariff.by), tariff.usd) if tariff.by else tariff.usd
    for name, table in tariff.factors.items():
        usd *= table.get(_option(data, name), 1.0)
    units = _units(tariff, data)
    if tariff.unit is Unit.FIVE_SECONDS and tariff.amount is not None:
        units = max(units, 1.0)  # priced in whole 5 s blocks at least
    return usd * units


def price_usd(model: str, task_type: str, data: Mapping[str, Any] | None) -> Price:
    """What one task of this kind with this (typed, validated) input costs."""
    tariff = TARIFFS.get((model, task_type))
    if tariff is None:
        return Price(UNKNOWN_PRICE_USD, Basis.UNKNOWN)
    if data is None or not tariff.exact:
        return Price(_upper(tariff), Basis.UPPER)
    return Price(_apply(_tariff_for(tariff, data), data))


def _upper(tariff: Tariff) -> float:
    rate = max([tariff.usd, *tariff.rates.values()])
    for table in tariff.factors.values():
        rate *= max([1.0, *table.values()])
    units = _in_units(tariff, tariff.max_amount) if tariff.amount else 1.0
    return max([rate * units, *map(_upper, tariff.variants.values())])


def upper_usd(model: str, task_type: str) -> float:
    """What one task of this kind may cost at most (its dearest options); the unknown
    price for a kind with no tariff."""
    tariff = TARIFFS.get((model, task_type))
    return _upper(tariff) if tariff is not None else UNKNOWN_PRICE_USD

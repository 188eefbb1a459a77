"""How long a row's task is expected to take, from what the client knows: good enough to
start the longest rows of a batch first (pure).

Why: the dispatcher fills free slots with a batch's waiting rows. Taken in manifest order,
a batch that mixes 5 s and 15 s clips (or cheap images and long videos) can end with one
long task running alone while every other slot is idle. Starting the longest expected rows
first (longest processing time first, the classic bound for scheduling on parallel
machines) leaves short rows to fill the gaps at the end. Results keep manifest order: this
only changes which waiting row goes next.

The estimate is a kind's typical duration times a factor from the row's own input:

- **The kind's typical duration**: the mean of its learned durations
  (`workers.durations`) when there are enough of them, else the catalogue's prior
  (`workers.catalog.prior_duration_s`, from PiAPI's docs: Wan about 3 minutes). A learned
  mean averages whatever inputs that kind ran with, so across kinds the estimate is rough;
  within a kind the factor orders rows exactly as the input says.
- **The input's factor**: PiAPI prices the work a task needs: per second or per 5 s of
  video, per image of a batch, per 1,000 characters, more for Kling's `pro` mode and Wan's
  1080P (`workers.prices`). A row's price relative to its kind's default options is the
  public measure of its relative work, so it is the factor. The exception is an option
  that buys speed rather than work: Midjourney's `process_mode` (`turbo` is dearer and
  faster, `relax` cheaper and queued) has its own table, `SPEED`.
- **A model the catalogue does not know** (passed through unchecked) has no price: a
  numeric clip length (`duration`, `video_length`; "10s" read as 10) scales it linearly
  from the 5 s most video models default to.

Nothing here is evidence about how long PiAPI really takes, only about which of two rows
takes longer; `rank` turns the estimate into the integer stored with the row
(`jobs.priority`, larger = longer expected), which the lease orders by.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from workers import catalog
from workers.prices import TARIFFS, Basis, Unit, price_usd

REFERENCE_CLIP_S = 5.0
"""The clip length a video model's prior duration is for (Wan, Kling and Seedance default
to 5 s)."""
CLIP_FIELDS = ("duration", "video_length")
"""Input fields that give a clip's length in seconds, for models with no known price."""
MAX_CLIP_S = 120.0
"""A clip length above this is not a clip length (or not to be believed): not scaled."""
SPEED: Mapping[tuple[str, str], Mapping[str, float]] = {
    ("process_mode", "midjourney"): {"relax": 3.0, "fast": 1.0, "turbo": 0.5},
}
"""(field, model) -> value -> duration multiplier, for options that buy speed, not work.
Midjourney's docs: turbo runs up to 4x faster than fast (0.5 here, as queueing is not
faster), relax waits behind fast jobs for minutes (3x a fast job's minute or so)."""
MAX_RANK = 2**31 - 1
"""The largest `jobs.priority` (a 32-bit integer column)."""

_SECONDS = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*s?\s*$")


def expected_s(model: str, task_type: str, data: Mapping[str, Any] | None,
               typical_s: float | None = None) -> float:
    """The expected duration (seconds) of one task: `typical_s` (the kind's learned mean;
    None: the catalogue's prior) times the input's factor."""
    base = typical_s if typical_s is not None and typical_s > 0 else (
        catalog.prior_duration_s(model, task_type))
    return base * input_factor(model, task_type, data or {})


def stored_factor(model: str, task_type: str, input_json: str | None) -> float:
    """`input_factor` of a row's input as stored (`jobs.input_json`): what the poll schedule
    and the learned durations scale by (`workers.polling`). 1 for no input, or one that is
    not a JSON object."""
    try:
        data = json.loads(input_json) if input_json else None
    except ValueError:
        return 1.0
    return input_factor(model, task_type, data) if isinstance(data, dict) else 1.0


def input_factor(model: str, task_type: str, data: Mapping[str, Any]) -> float:
    """How much more (or less) work this input is than the kind's default options.

    Ingest asks this of every row (a million-row manifest: a million times), so the
    answer is cached on the few fields that can change it (`_fields`: options and
    amounts, a handful of values each).
    """
    values = tuple(map(data.get, _fields(model, task_type)))
    try:
        return _cached_factor(model, task_type, values)
    except TypeError:  # a list or object where an option belongs: not cached
        return _factor(model, task_type, data)


@functools.cache
def _fields(model: str, task_type: str) -> tuple[str, ...]:
    """The input fields the factor of a kind reads (its tariff's, speed options, or the
    clip length fields of a kind with no price). Not a text priced by its length (TTS):
    its kind has no default to compare with, so its factor is 1 whatever the text."""
    tariff = TARIFFS.get((model, task_type))
    names = {name for (name, speed_model) in SPEED if speed_model == model}
    if tariff is None:
        return (*CLIP_FIELDS, *sorted(names))
    for t in (tariff, *tariff.variants.values()):
        amount = None if t.unit is Unit.THOUSAND_CHARS else t.amount
        names |= {n for n in (t.by, t.variant_by, amount, *t.factors) if n is not None}
    return tuple(sorted(names))


@functools.lru_cache(maxsize=4096)
def _cached_factor(model: str, task_type: str, values: tuple[Any, ...]) -> float:
    data = {n: v for n, v in zip(_fields(model, task_type), values, strict=True)
            if v is not None}
    return _factor(model, task_type, data)


def _factor(model: str, task_type: str, data: Mapping[str, Any]) -> float:
    """`input_factor`, computed.

    The price of a speed option is left out (it says nothing about work), and the
    reference keeps the field that picks the tariff's variant (Kling 3.0 is priced per
    second, older versions per 5 s: a 3 s 3.0 clip is less work than a default one).
    """
    speeds = {name: table for (name, speed_model), table in SPEED.items() if speed_model == model}
    work = {k: v for k, v in data.items() if k not in speeds}
    price = price_usd(model, task_type, work)
    if price.basis is Basis.UNKNOWN:
        factor = _clip_factor(data)
    elif price.basis is Basis.UPPER:
        factor = 1.0  # the input does not say (the image toolkit's megapixels)
    else:
        variant_by = TARIFFS[(model, task_type)].variant_by
        default = price_usd(model, task_type,
                            {k: v for k, v in work.items() if k == variant_by})
        # A kind priced by an amount with no default (TTS's text) has no reference: 1.
        factor = price.usd / default.usd if default.usd > 0 else 1.0
    for name, table in speeds.items():
        value = data.get(name)
        if isinstance(value, str):
            factor *= table.get(value, 1.0)
    return factor


def _clip_factor(data: Mapping[str, Any]) -> float:
    """A clip length's share of `REFERENCE_CLIP_S` (1 when there is none to believe)."""
    for name in CLIP_FIELDS:
        seconds = _seconds(data.get(name))
        if seconds is not None:
            return seconds / REFERENCE_CLIP_S
    return 1.0


def _seconds(value: Any) -> float | None:
    """A length in seconds from a number or text such as "10" or "10s"; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        found = _SECONDS.match(value)
        value = found.group(1) if found else None
    try:
        seconds = float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return None
    return seconds if 0 < seconds <= MAX_CLIP_S else None


def rank(seconds: float) -> int:
    """The stored priority of an expected duration: whole seconds (ties keep manifest
    order), within a 32-bit column."""
    if not math.isfinite(seconds) or seconds <= 0:
        return 0
    return min(MAX_RANK, round(seconds))

"""The price table: a task's price from its input, its upper bound, and the balance's reading."""

from __future__ import annotations

from typing import Any

import pytest

from workers.catalog import SPECS, lookup, prior_cost_usd
from workers.piapi import balance_usd
from workers.prices import TARIFFS, UNKNOWN_PRICE_USD, Basis, price_usd, upper_usd

WAN, KLING = ("Wan", "wan26-txt2video"), ("kling", "video_generation")
TTS, MJ = ("Qubico/tts", "zero-shot"), ("midjourney", "imagine")


@pytest.mark.parametrize(("kind", "data", "usd"), [
    (("Qubico/joycaption", "joycaption-beta-one"), {"image": "u"}, 0.01),
    (WAN, {"prompt": "p"}, 0.40),  # PiAPI's defaults: 5 s at 720P
    (WAN, {"prompt": "p", "duration": 10}, 0.80),
    (WAN, {"prompt": "p", "duration": 5, "resolution": "1080P"}, 0.60),
    (WAN, {"prompt": "p", "duration": 15, "resolution": "1080P"}, 1.80),
    (("Wan", "wan26-img2video"), {"duration": 10, "resolution": "720P"}, 0.80),
    (KLING, {"prompt": "p"}, 0.26),  # 2.x std, 5 s
    (KLING, {"duration": 10, "mode": "pro"}, 0.92),
    (KLING, {"duration": 7, "version": "3.0"}, 0.70),  # per second
    (KLING, {"duration": 15, "version": "3.0", "mode": "pro"}, 2.10),
    (("hailuo", "video_generation"), {"prompt": "p"}, 0.20),
    (("Qubico/flux1-schnell", "txt2img"), {"prompt": "p"}, 0.0015),
    (("Qubico/flux1-schnell", "txt2img"), {"prompt": "p", "batch_size": 4}, 0.006),
    (("Qubico/flux1-dev", "img2img"), {"prompt": "p", "batch_size": 2}, 0.03),
    (("Qubico/flux1-dev-advanced", "txt2img-lora"), {"prompt": "p"}, 0.02),
    (TTS, {"gen_text": "x" * 2000}, 0.05),
    (TTS, {"gen_text": "x" * 500}, 0.0125),
    (MJ, {"prompt": "p"}, 0.07),  # fast by default
    (MJ, {"prompt": "p", "process_mode": "relax"}, 0.04),
    (MJ, {"prompt": "p", "process_mode": "turbo"}, 0.14),
    (("seedance", "seedance-2-preview"), {"duration": 10}, 0.60),
    (("music-u", "generate_music"), {"lyrics": "la"}, 0.05),
])
def test_a_task_is_priced_from_its_options(kind: tuple[str, str], data: dict[str, Any],
                                            usd: float) -> None:
    price = price_usd(*kind, data)
    assert price.usd == pytest.approx(usd)
    assert price.basis is Basis.EXACT
    assert price.usd <= upper_usd(*kind) + 1e-12  # the prior budgets use is an upper bound


def test_a_price_the_input_cannot_tell_is_the_upper_bound_and_says_so() -> None:
    price = price_usd("Qubico/image-toolkit", "upscale", {"image": "u", "scale": 2})
    assert (price.usd, price.basis) == (pytest.approx(0.70), Basis.UPPER)
    assert price_usd(*WAN, None) == price_usd(*WAN, None)
    assert price_usd(*WAN, None).usd == pytest.approx(1.80)


def test_an_unknown_model_costs_the_high_default_flagged() -> None:
    price = price_usd("Qubico/diffrhythm", "txt2audio-base", {"lyrics": "la"})
    assert (price.usd, price.basis) == (UNKNOWN_PRICE_USD, Basis.UNKNOWN)
    assert upper_usd("no-such", "x") == UNKNOWN_PRICE_USD


def test_every_catalogue_kind_has_a_sourced_tariff_and_budgets_use_its_upper_bound() -> None:
    for spec in SPECS:
        tariff = TARIFFS[(spec.model, spec.task_type)]
        assert tariff.source
        assert prior_cost_usd(spec.model, spec.task_type) == upper_usd(spec.model, spec.task_type)
    assert all(lookup(*kind) is not None for kind in TARIFFS)
    assert max(upper_usd(*kind) for kind in TARIFFS) < UNKNOWN_PRICE_USD


@pytest.mark.parametrize(("data", "usd"), [
    ({"equivalent_in_usd": 12.5}, 12.5),
    ({"equivalent_in_usd": 0}, 0.0),
    ({"wallet": {"point_remain": 25_000_000}}, 2.5),
    ({"equivalent_in_usd": "lots", "wallet": {"point_remain": 10_000_000}}, 1.0),
    ({"max_concurrent_task_count": 10}, None),
    ({"equivalent_in_usd": True}, None),
])
def test_the_balance_is_read_from_usd_else_the_wallet(data: dict[str, Any],
                                                     usd: float | None) -> None:
    assert balance_usd(data) == usd

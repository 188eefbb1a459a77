"""The chaos run's options as they reach its emulator (no processes)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from chaos import report
from chaos.__main__ import _parse_args
from chaos.plan import FULL, QUICK, Plan


def test_latency_is_off_by_default_and_passed_to_the_emulator_when_asked() -> None:
    assert "--latency-ms" not in QUICK.emulator_args(7)
    args = _parse_args(["--quick", "--latency-ms", "100:50"])
    assert args.latency_ms == "100:50"
    plan = replace(QUICK, latency_ms=args.latency_ms)
    assert plan.emulator_args(7)[-2:] == ["--latency-ms", "100:50"]
    assert _parse_args([]).latency_ms is None


@pytest.mark.parametrize("value", ["fast", "-1", "100:50:1"])
def test_a_bad_latency_is_a_usage_error(value: str) -> None:
    with pytest.raises(SystemExit) as exc:
        _parse_args(["--latency-ms", value])
    assert exc.value.code == 2


@pytest.mark.parametrize("plan", [FULL, QUICK])
def test_one_offs_come_in_order_and_are_the_disruptions_the_report_wants(plan: Plan) -> None:
    shares = [o.at for o in plan.one_offs]
    assert shares == sorted(shares) and all(0 < s < 1 for s in shares)
    wanted = report.disruptions_check([])["missing"]
    assert ["worker_sigkill", *(o.kind for o in plan.one_offs)] == wanted

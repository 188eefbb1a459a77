"""The schedule: every disruption starts and ends, in time order, within the run."""

from __future__ import annotations

import pytest

from fleet.linkemu import release_at
from fleet.plan import FULL, QUICK, Plan, describe, schedule


@pytest.mark.parametrize("plan", [FULL, QUICK])
def test_schedule_has_each_start_before_its_end_in_order(plan: Plan) -> None:
    steps = schedule(plan)
    kinds = [s.kind for s in steps]
    assert sorted(kinds) == sorted(["cut", "rejoin", "impair", "heal", "partition",
                                    "unpartition"])
    for start, end in (("cut", "rejoin"), ("impair", "heal"), ("partition", "unpartition")):
        assert kinds.index(start) < kinds.index(end)
    assert [s.at for s in steps] == sorted(s.at for s in steps)
    assert steps[-1].at < plan.duration_limit_s


def test_disruptions_do_not_overlap_and_the_full_cut_is_a_minute() -> None:
    for plan in (FULL, QUICK):
        assert plan.cut.end <= plan.impair.at
        assert plan.impair.end <= plan.partition.at
        assert plan.partition.s > 10  # longer than the dispatcher lock's TTL
    assert FULL.cut.s == 60 and FULL.delay_ms == 200 and FULL.loss == 0.02


def test_the_report_keeps_the_plan_flat() -> None:
    doc = QUICK.to_json()
    assert (doc["cut_at"], doc["cut_s"], doc["partition_s"]) == (10.0, 30.0, 20.0)
    assert "cut" not in doc and doc["loss"] == 0.02


def test_describe_prints_one_line_per_step() -> None:
    lines = describe(QUICK, schedule(QUICK))
    assert len(lines) == 7 and "t=  10.0s" in lines[1]


def test_frames_keep_their_order_whatever_the_jitter() -> None:
    last = 0.0
    out = []
    for now, jitter in ((0.0, 0.02), (0.001, -0.02), (0.002, 0.0)):
        last = release_at(now, last, 0.2, jitter)
        out.append(last)
    assert out == sorted(out) and out[0] == pytest.approx(0.22)
    assert release_at(5.0, 0.0, 0.0, 0.0) == 5.0  # healed: at once

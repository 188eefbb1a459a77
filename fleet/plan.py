"""What a fleet run does and when: sizes, the emulator's account, and the four disruptions
on a schedule in seconds since the fleet started (pure; printed before the run)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

CAPTION_REAL_S = "15:45"
"""Joycaption tasks take 15-45 s at PiAPI; scaled by `time_scale`."""

FLEET_ENV: dict[str, str] = {
    # Short HTTP timeouts make a create's lease about 20 s, so the rows a cut-off worker
    # held are taken back within the cut (as in the chaos run).
    "PIAPI_CONNECT_TIMEOUT_S": "3",
    "PIAPI_READ_TIMEOUT_S": "10",
    "PIAPI_WRITE_TIMEOUT_S": "3",
    "PIAPI_POOL_TIMEOUT_S": "3",
    "PIAPI_BULK_LEASE_MARGIN_S": "3",
    "PIAPI_BULK_RECONCILE_TIMEOUT_S": "240",
}
"""Settings of every piapi-bulk process that differ from the defaults (in the report)."""


@dataclass(frozen=True)
class Plan:
    """Sizes and timings of one run (times in seconds since the fleet started)."""

    rows: int = 3000
    concurrency: int = 40
    time_scale: float = 0.1
    worker_threads: int = 8
    cut_at: float = 20.0
    cut_s: float = 60.0
    impair_at: float = 95.0
    impair_s: float = 60.0
    delay_ms: float = 200.0
    jitter_ms: float = 20.0
    loss: float = 0.02
    partition_at: float = 170.0
    partition_s: float = 30.0
    """Held at least this long (the lock's TTL is 10 s), and until the standby leads."""
    duration_limit_s: float = 600.0
    drain_s: float = 60.0

    def emulator_args(self, seed: int) -> list[str]:
        """The emulator's account: its limit (over-limit creates queue, so the peak shows
        whether the fleet kept to it), the time scale and task durations."""
        return ["--seed", str(seed), "--concurrency", str(self.concurrency),
                "--time-scale", repr(self.time_scale), "--duration",
                f"joycaption={CAPTION_REAL_S}"]

    def to_json(self) -> dict[str, Any]:
        """The plan as it goes in the report."""
        return asdict(self)


FULL = Plan()
QUICK = replace(FULL, rows=500, concurrency=25, cut_at=10.0, cut_s=30.0, impair_at=45.0,
                impair_s=25.0, partition_at=75.0, partition_s=20.0, duration_limit_s=270.0,
                drain_s=30.0)
"""About 500 rows: the same four disruptions, shorter (a 30 s cut, 25 s of latency and
loss), in about three minutes; what CI runs."""


@dataclass(frozen=True)
class Step:
    """One action of the schedule."""

    at: float
    kind: str
    """cut, rejoin, impair, heal, partition, unpartition."""
    what: str


def schedule(plan: Plan) -> list[Step]:
    """The disruptions' start and end actions, in time order."""
    steps = [
        Step(plan.cut_at, "cut", f"cut w1 off the network for {plan.cut_s:g} s "
             "(its veth down)"),
        Step(plan.cut_at + plan.cut_s, "rejoin", "w1 back on the network"),
        Step(plan.impair_at, "impair", f"{plan.delay_ms:g} ms ± {plan.jitter_ms:g} ms each "
             f"way and {plan.loss:.0%} loss between the workers and api, for "
             f"{plan.impair_s:g} s"),
        Step(plan.impair_at + plan.impair_s, "heal", "the workers' link to api healed"),
        Step(plan.partition_at, "partition", "the active dispatcher's host cut from Redis "
             "(a prohibit route; PostgreSQL still reachable)"),
        Step(plan.partition_at + plan.partition_s, "unpartition",
             "the partition healed (once the standby leads)"),
    ]
    return sorted(steps, key=lambda s: s.at)


def describe(plan: Plan, steps: list[Step]) -> list[str]:
    """The plan as printed before the run."""
    lines = [f"{plan.rows} rows, account limit {plan.concurrency}, tasks 15-45 s x "
             f"{plan.time_scale:g}; hosts data, api, ctl1, ctl2, w1, w2"]
    lines += [f"  t={s.at:6.1f}s  {s.what}" for s in steps]
    return lines

"""What a fleet run does and when: sizes, the emulator's account, and the four disruptions
on a schedule in seconds since the fleet started (pure; printed before the run)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from chaos.plan import FLEET_ENV as CHAOS_ENV
from chaos.plan import emulator_account

FLEET_ENV: dict[str, str] = {
    **CHAOS_ENV,
    # Connects and writes cross the impaired link (200 ms each way, 2% loss; a lost SYN is
    # sent again after 1 s): 3 s where the chaos run, on loopback, allows 2.
    "PIAPI_CONNECT_TIMEOUT_S": "3",
    "PIAPI_WRITE_TIMEOUT_S": "3",
}
"""Settings of every piapi-bulk process that differ from the defaults (in the report): the
chaos run's (short HTTP timeouts make a create's lease about 20 s, so the rows a cut-off
worker held are taken back within the cut)."""


@dataclass(frozen=True)
class Window:
    """When a disruption holds: from `at` (seconds since the fleet started) for `s` seconds."""

    at: float
    s: float

    @property
    def end(self) -> float:
        """When it is undone."""
        return self.at + self.s


@dataclass(frozen=True)
class Plan:
    """Sizes and timings of one run (times in seconds since the fleet started)."""

    rows: int = 3000
    concurrency: int = 40
    """The account's limit at the emulator, and the dispatchers' --concurrency."""
    time_scale: float = 0.1
    """15-45 s tasks take 1.5-4.5 s."""
    worker_threads: int = 8
    """Each of the four worker processes' --concurrency (two on w1, two on w2)."""
    cut: Window = Window(20.0, 60.0)
    """w1 off the network."""
    impair: Window = Window(95.0, 60.0)
    """Latency (each way, ± jitter) and loss between the workers and api:"""
    delay_ms: float = 200.0
    jitter_ms: float = 20.0
    loss: float = 0.02
    partition: Window = Window(170.0, 30.0)
    """The leader's host cut from Redis: held at least this long (the lock's TTL is 10 s),
    and until the standby leads."""
    duration_limit_s: float = 600.0
    """The whole run, set-up and checks included, is stopped past this."""
    drain_s: float = 60.0
    """After the fleet stopped, how long to wait for the emulator's in-flight to drain."""

    def emulator_args(self, seed: int) -> list[str]:
        """The emulator's account: its limit (over-limit creates queue, so the peak shows
        whether the fleet kept to it), the time scale and task durations."""
        return emulator_account(seed, self.concurrency, self.time_scale)

    def to_json(self) -> dict[str, Any]:
        """The plan as it goes in the report, flat as it always was (`cut_at`, `cut_s`...)."""
        doc: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if isinstance(value, dict):
                doc.update({f"{key}_{part}": v for part, v in value.items()})
            else:
                doc[key] = value
        return doc


FULL = Plan()
QUICK = replace(FULL, rows=500, concurrency=25, cut=Window(10.0, 30.0),
                impair=Window(45.0, 25.0), partition=Window(75.0, 20.0),
                duration_limit_s=270.0, drain_s=30.0)
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
        Step(plan.cut.at, "cut", f"cut w1 off the network for {plan.cut.s:g} s "
             "(its veth down)"),
        Step(plan.cut.end, "rejoin", "w1 back on the network"),
        Step(plan.impair.at, "impair", f"{plan.delay_ms:g} ms ± {plan.jitter_ms:g} ms each "
             f"way and {plan.loss:.0%} loss between the workers and api, for "
             f"{plan.impair.s:g} s"),
        Step(plan.impair.end, "heal", "the workers' link to api healed"),
        Step(plan.partition.at, "partition", "the active dispatcher's host cut from Redis "
             "(a prohibit route; PostgreSQL still reachable)"),
        Step(plan.partition.end, "unpartition",
             "the partition healed (once the standby leads)"),
    ]
    return sorted(steps, key=lambda s: s.at)


def describe(plan: Plan, steps: list[Step]) -> list[str]:
    """The plan as printed before the run."""
    lines = [f"{plan.rows} rows, account limit {plan.concurrency}, tasks 15-45 s x "
             f"{plan.time_scale:g}; hosts data, api, ctl1, ctl2, w1, w2"]
    lines += [f"  t={s.at:6.1f}s  {s.what}" for s in steps]
    return lines

"""What a chaos run does: sizes, the emulator's faults, the fleet's settings, the disruptions.

Faults (the issue's list): 5% 5xx, 5% spurious 429, 2% ambiguous creates (the task is made,
the connection dropped), 1% stuck tasks, 3% transient provider failures, and over-limit
`refuse` (a create past the account's limit is a 429).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

FAULTS: dict[str, str] = {
    "--fault-5xx": "0.05",
    "--fault-429": "0.05",
    "--fault-ambiguous": "0.02",
    "--fault-stuck": "0.01",
    "--fault-fail": "0.03",
    "--over-limit": "refuse",
}
CAPTION_REAL_S = "15:45"
"""Joycaption tasks take 15-45 s at PiAPI; scaled by `time_scale`."""


def emulator_account(seed: int, concurrency: int, time_scale: float) -> list[str]:
    """The emulator's account as every harness run sets it (the fleet run too): its seed,
    limit, time scale and the captions' real durations."""
    return ["--seed", str(seed), "--concurrency", str(concurrency),
            "--time-scale", repr(time_scale), "--duration", f"joycaption={CAPTION_REAL_S}"]


FLEET_ENV: dict[str, str] = {
    # Short HTTP timeouts make a create's lease 20 s (default about a minute), so the rows a
    # killed worker held are taken back (and reconciled) within the run.
    "PIAPI_CONNECT_TIMEOUT_S": "2",
    "PIAPI_READ_TIMEOUT_S": "10",
    "PIAPI_WRITE_TIMEOUT_S": "2",
    "PIAPI_POOL_TIMEOUT_S": "3",
    "PIAPI_BULK_LEASE_MARGIN_S": "3",
    # A lost create that history cannot settle fails after 4 min instead of 30 (the history
    # here always lists inputs, so every lost create is settled well before that).
    "PIAPI_BULK_RECONCILE_TIMEOUT_S": "240",
}
"""Settings of every piapi-bulk process that differ from the defaults (in the report); the
fleet run starts from these too (`fleet.plan.FLEET_ENV`)."""


@dataclass(frozen=True)
class OneOff:
    """A disruption done once, when this share of the rows is finished."""

    kind: str
    """dispatcher_sigkill (the active one; a new standby started), redis_restart_flushed
    (Redis restarted empty), postgres_restart (pg_ctl stop -m fast, then start)."""
    at: float


@dataclass(frozen=True)
class Plan:
    """Sizes and timings of one chaos run."""

    rows: int = 3000
    concurrency: int = 50
    """The account's limit at the emulator, and the dispatchers' --concurrency."""
    time_scale: float = 0.08
    """15-45 s tasks take 1.2-3.6 s: 2.5 minutes of work at C = 50 if every slot were always
    busy; with the faults and kills it takes 4-6 (and leaves room for a slow recovery)."""
    stuck_timeout_factor: float = 10.0
    """A stuck task fails at the emulator after 10x its duration (default 20x), so the
    last stuck task of the run does not hold it for minutes."""
    workers: int = 3
    worker_threads: int = 8
    dispatchers: int = 2
    worker_kill_every_s: tuple[float, float] = (15.0, 25.0)
    """A random worker is SIGKILLed every ~20 s (uniform in this range)."""
    one_offs: tuple[OneOff, ...] = (OneOff("dispatcher_sigkill", 0.15),
                                    OneOff("redis_restart_flushed", 0.40),
                                    OneOff("postgres_restart", 0.65))
    """One-off disruptions in the order they are done, each once its share of the rows is
    finished..."""
    disruption_gap_s: float = 25.0
    """...and at least this long after the previous one-off disruption."""
    stall_s: float = 30.0
    """No progress for this long while work is due: the workers are restarted."""
    duration_limit_s: float = 600.0
    """The whole run, set-up and checks included, is stopped past this."""
    drain_s: float = 90.0
    """After every row is terminal, how long to wait for the emulator's in-flight to drain
    (a task we lost track of would still be running there)."""
    fleet_env: dict[str, str] = field(default_factory=lambda: dict(FLEET_ENV))
    latency_ms: str | None = None
    """The emulator's --latency-ms MEAN[:JITTER] (a network on every request, creates
    included); None: loopback as it is."""

    def emulator_args(self, seed: int) -> list[str]:
        """The emulator's options: account, time scale, durations and every fault."""
        args = [*emulator_account(seed, self.concurrency, self.time_scale),
                "--stuck-timeout-factor", repr(self.stuck_timeout_factor)]
        for flag, value in FAULTS.items():
            args += [flag, value]
        if self.latency_ms is not None:
            args += ["--latency-ms", self.latency_ms]
        return args

    def to_json(self) -> dict[str, Any]:
        """The plan as it goes in the report."""
        return asdict(self)


FULL = Plan()
QUICK = replace(FULL, rows=600, concurrency=20, time_scale=0.1, disruption_gap_s=20.0)
"""About 600 rows at C = 20 (1.5-4.5 s tasks, so the run lasts long enough for every kind of
disruption): the same faults and the same kinds of kills in about three minutes."""

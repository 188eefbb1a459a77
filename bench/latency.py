"""Scenarios 8 and 9: scenario 1's captions with a network between client and emulator.

Loopback hides the network: the real PiAPI is 100-300 ms away and a create can take a
second or more, so every step of the refill chain that waits on a round trip costs slot
time that scenario 1 cannot show. Here the emulator delays every API request by 150 ms
± 50 ms and every create by 1 s ± 0.5 s (`--latency-ms`, `--create-latency-ms`: half on
the way in, half on the way back, real time), and tasks last 3-9 s at time scale 1.

- 8, a completion signal: webhooks (`piapi-bulk webhook`). PiAPI's /account/active_tasks
  is not known to count Joycaption, and piapi-bulk reads it only for the families it is
  known to count, so for this family webhooks are the signal.
- 9, none: no webhooks and /account/active_tasks off (404): polls alone find each end.

Both run the asyncio baseline beside them on the same manifest and emulator settings (its
HTTP timeout, bench.baseline.TIMEOUT_S, is well above the longest create), so each figure
has its `baseline_ratio`.
"""

from __future__ import annotations

from pathlib import Path

from bench import manifests
from bench import targets as tg
from bench.baseline_run import run_baseline
from bench.runs import RunSpec, emulator_args, run_system
from bench.scenarios import Env, judged, skipped

DURATION_REAL_S = "3:9"
"""Joycaption tasks of 3 to 9 s, at time scale 1: the network is not scaled either."""
DURATION_MEAN_S = 6.0
TIME_SCALE = 1.0
LATENCY_MS = (150, 50)
"""Every request: (mean, jitter) in ms, uniform in [100, 200] ms."""
CREATE_LATENCY_MS = (1000, 500)
"""Creates: (mean, jitter) in ms, uniform in [0.5, 1.5] s."""
CREATE_LATENCY_MAX_S = sum(CREATE_LATENCY_MS) / 1000
"""The longest create the emulator answers: the baseline's timeout must exceed it."""
CONCURRENCY = 50
BASELINE_POLL_S = 2.0
SCENARIOS = {8: ("s8_latency_signal", "webhooks"), 9: ("s9_latency_polling", "polling")}
"""Scenario number -> (name, variant of its system runs)."""


def _manifest(env: Env) -> Path:
    """The captions manifest of scenarios 8 and 9, written once and shared by their runs."""
    if "s89" not in env.manifests:
        env.manifests["s89"] = manifests.captions_jsonl(env.ctx.workdir / "s89.jsonl",
                                                        env.plan.s89_rows, prefix="lat")
    return env.manifests["s89"]


def _spec(env: Env, n: int, db: str | None) -> RunSpec:
    name, variant = SCENARIOS[n]
    rows = env.plan.s89_rows
    signal = () if n == 8 else ("--no-active-tasks",)
    args = emulator_args(env.ctx.seed, CONCURRENCY, TIME_SCALE, {"joycaption": DURATION_REAL_S},
                         "--latency-ms", "{}:{}".format(*LATENCY_MS),
                         "--create-latency-ms", "{}:{}".format(*CREATE_LATENCY_MS), *signal)
    ideal = rows * DURATION_MEAN_S * 1.035 / CONCURRENCY
    return RunSpec(name, variant, db, _manifest(env), rows, CONCURRENCY, args,
                   deadline_s=max(180.0, 4 * ideal), webhooks=variant == "webhooks")


def _baseline(env: Env, n: int) -> None:
    spec = _spec(env, n, None)
    spec.variant, spec.webhooks, spec.poll_s = "baseline", False, BASELINE_POLL_S
    slot_s = DURATION_MEAN_S + BASELINE_POLL_S + CREATE_LATENCY_MAX_S
    spec.deadline_s = max(spec.deadline_s, 3 * spec.rows * slot_s / spec.concurrency + 60)
    result = run_baseline(spec, env.ctx)
    env.add(tg.unjudged(result))  # the targets are the system's


def latency_scenario(env: Env, n: int) -> None:
    """Scenario `n` (8 or 9) on each database, then the baseline on the same settings."""
    name, variant = SCENARIOS[n]
    targets = tg.S8 if n == 8 else tg.S9
    for db in env.dbs:
        if db in env.skipped_dbs:
            env.add(skipped(name, variant, db, env.skipped_dbs[db]))
        elif variant == "webhooks" and not env.webhooks_available:
            env.add(skipped(name, variant, db,
                            "not implemented (`piapi-bulk webhook --help` fails)"))
        else:
            env.add(judged(run_system(_spec(env, n, db), env.ctx), targets))
    _baseline(env, n)

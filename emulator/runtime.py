"""The emulator's parts wired together, plus the timer that drives state changes and webhooks."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from emulator.clock import Clock, SystemClock, format_time
from emulator.config import STATIC_FIELDS, EmulatorConfig
from emulator.counters import Counters
from emulator.engine import Engine
from emulator.faults import FaultInjector
from emulator.files import Files
from emulator.latency import draw_delay_s
from emulator.ratelimit import RateLimiter
from emulator.uploads import UploadStore
from emulator.webhooks import WebhookSender

_TIMER_SLACK_S = 0.0005
"""Fire a little after an event is due, so one wake-up never finds it still in the future."""


class ConfigError(ValueError):
    """A runtime config patch that cannot be applied."""


def base_url_for(config: EmulatorConfig) -> str:
    """The URL clients use to reach this emulator (for output file links)."""
    host = config.host
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - a URL to reach us, not a bind
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.port}"


class Runtime:
    """Owns config, clock, counters, random streams (tasks, faults, network latency), engine,
    limiter, webhooks and the timer."""

    def __init__(self, config: EmulatorConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.counters = Counters()
        self.task_rng = random.Random()
        self.fault_rng = random.Random()
        self.latency_rng = random.Random()
        self._seed()
        self.faults = FaultInjector(config, self.counters, self.fault_rng)
        self.engine = Engine(config, self.clock, self.faults, self.task_rng, base_url_for(config))
        self.limiter = RateLimiter(config, self.clock)
        self.webhooks = WebhookSender(config, self.counters, self.faults, self._one_way_s)
        self.uploads = UploadStore()
        self.files = Files(config)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None

    def _seed(self) -> None:
        seed = self.config.seed
        self.task_rng.seed(seed)
        # A separate stream for faults, so fault rates do not change task durations.
        self.fault_rng.seed(None if seed is None else f"faults-{seed}")
        self.latency_rng.seed(None if seed is None else f"latency-{seed}")

    def _one_way_s(self) -> float:
        """Half a network round trip (emulator.latency): how long a webhook travels."""
        return draw_delay_s(self.config.network_latency_s, self.latency_rng) / 2

    def poke(self) -> None:
        """Hand queued webhook events to the sender and arm the timer for the next event."""
        engine = self.engine
        if engine.outbox:
            events, engine.outbox = engine.outbox, []
            for event in events:
                self.webhooks.submit(event)
        due = engine.next_event_time()
        if due is None or (self._timer_at is not None and self._timer_at <= due):
            return
        if self._timer is not None:
            self._timer.cancel()
        delay_s = max(0.0, due - self.clock.now()) + _TIMER_SLACK_S
        self._timer = asyncio.get_running_loop().call_later(delay_s, self._on_timer)
        self._timer_at = due

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.engine.advance()
        self.poke()

    def reset(self) -> None:
        """Forget tasks and counters; restart the random streams from the seed."""
        self._cancel_timer()
        self._seed()
        self.counters.reset()
        self.uploads.reset()
        self.files.reset()
        self.limiter.reset()
        self.engine.reset()

    def apply_patch(self, patch: dict[str, Any]) -> None:
        """Change runtime settings (validated as a whole first); ConfigError if refused."""
        static = sorted(STATIC_FIELDS & patch.keys())
        if static:
            raise ConfigError(f"not runtime settings: {', '.join(static)}")
        if isinstance(patch.get("durations_s"), dict):  # per-family: merge over current ranges
            patch = {**patch, "durations_s": {**self.config.durations_s, **patch["durations_s"]}}
        merged = {**self.config.model_dump(), **patch}
        merged["api_key"] = patch.get("api_key", self.config.api_key.get_secret_value())
        try:
            checked = EmulatorConfig.model_validate(merged)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        for name in patch:
            setattr(self.config, name, getattr(checked, name))
        self.engine.on_config_change()
        self.poke()

    def stats(self) -> dict[str, Any]:
        """Everything /_emulator/stats reports."""
        now = self.engine.advance()
        return {
            "started_at": format_time(self.engine.metrics.started_at),
            "uptime_s": now - self.engine.metrics.started_at,
            **self.counters.snapshot(),
            **self.engine.metrics.snapshot(now),
        }

    async def aclose(self) -> None:
        """Stop the timer and webhook deliveries."""
        self._cancel_timer()
        await self.webhooks.aclose()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_at = None

"""Webhook delivery to loopback receivers only: one shared httpx client, bounded retries."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import httpx

from emulator.config import EmulatorConfig
from emulator.counters import Counters
from emulator.engine import WebhookEvent
from emulator.faults import FaultInjector

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
"""The only hosts a webhook may go to: these machines must never send traffic off-host."""
MIN_RETRY_INTERVAL_S = 0.05


def is_loopback_url(url: str) -> bool:
    """Whether `url` is an http(s) URL on a loopback host."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return False
    return parsed.scheme in ("http", "https") and parsed.host.lower() in LOOPBACK_HOSTS


class WebhookSender:
    """Posts webhook events in background tasks; counts sent, failed, skipped, attempts."""

    def __init__(self, config: EmulatorConfig, counters: Counters, faults: FaultInjector,
                 network_delay_s: Callable[[], float] = lambda: 0.0) -> None:
        self.config = config
        self.counters = counters
        self.faults = faults
        self.network_delay_s = network_delay_s
        """One way across the network (emulator.latency), waited before each attempt."""
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, event: WebhookEvent) -> None:
        """Schedule delivery of `event` (needs a running event loop)."""
        if not is_loopback_url(event.endpoint):
            self.counters.webhooks["skipped"] += 1
            logger.warning(
                "webhook for task %s skipped: %r is not a loopback URL", event.task_id,
                event.endpoint,
            )
            return
        for _ in range(self.faults.webhook_copies()):
            task = asyncio.get_running_loop().create_task(self._deliver(event))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, event: WebhookEvent) -> None:
        if self._client is None:
            # trust_env=False: no proxy from the environment may carry this traffic elsewhere.
            self._client = httpx.AsyncClient(
                timeout=self.config.webhook_timeout_s, trust_env=False
            )
        headers = {"content-type": "application/json", "x-webhook-secret": event.secret}
        interval_s = max(
            MIN_RETRY_INTERVAL_S, self.config.webhook_retry_interval_s * self.config.time_scale
        )
        for attempt in range(self.config.webhook_retries + 1):
            if attempt:
                await asyncio.sleep(interval_s)
            delay_s = self.network_delay_s()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            self.counters.webhooks["attempts"] += 1
            try:
                response = await self._client.post(
                    event.endpoint, content=event.body, headers=headers
                )
            except httpx.HTTPError as exc:
                logger.info("webhook for task %s attempt %d: %r", event.task_id, attempt, exc)
                continue
            if response.is_success:
                self.counters.webhooks["sent"] += 1
                return
            logger.info(
                "webhook for task %s attempt %d: HTTP %d", event.task_id, attempt,
                response.status_code,
            )
        self.counters.webhooks["failed"] += 1
        logger.warning("webhook for task %s (%s) gave up", event.task_id, event.status)

    async def aclose(self) -> None:
        """Cancel pending deliveries and close the HTTP client."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

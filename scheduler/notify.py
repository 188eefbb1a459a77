"""`run --notify URL`: a JSON summary POSTed when the batch finishes, ends with rows that
failed, or pauses on its budget, so an overnight run can reach a chat channel.

The body has no inputs and no key: the batch id, the event, counts by state, failures by
kind, the cost, the run's wall time, the results file, and a one-line `text` (which Slack's
and Mattermost's incoming webhooks show as is). A notification never ends the run: three
tries with a back-off, then a warning. The URL (a chat webhook's URL is itself a secret) is
never logged, only its host.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from scheduler.status import BatchStatus
from workers.settings import ConfigError
from workers.spending import money

logger = logging.getLogger(__name__)

TRIES = 3
TIMEOUT_S = 10.0
BACKOFF_S = (1.0, 3.0)
"""Pause before the second and third tries."""
EVENTS = {0: "finished", 3: "paused_budget"}
"""`run`'s exit code -> the event (`runner.EXIT_OK`, `runner.EXIT_BUDGET`); any other
code that ends a batch's run (rows failed, a halt) is `failed`."""


def check_url(url: str) -> str:
    """`--notify`'s URL, or a usage error when it is not http(s) with a host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("--notify needs an http(s) URL")
    return url


def summary(st: BatchStatus, event: str, wall_s: float, results: Path) -> dict[str, Any]:
    """The body posted for `event`."""
    failed = sum(st.failures.values())
    text = (f"piapi-bulk batch {st.id} {event.replace('_', ' ')}: {st.finished}/{st.total} "
            f"finished, {st.counts.get('completed', 0)} completed, {failed} failed, cost "
            f"{money(st.usd)}, {round(wall_s)}s")
    return {"batch": st.id, "event": event, "counts": st.counts, "failures": st.failures,
            "cost_usd": round(st.usd, 6), "wall_s": round(wall_s, 1),
            "results": str(results), "text": text}


def post(url: str, body: dict[str, Any], sleep: Callable[[float], None] = time.sleep) -> bool:
    """POST `body` as JSON, up to TRIES times (again after no answer, a 429 or a 5xx);
    True once the receiver accepted it (2xx)."""
    host = urlsplit(url).hostname
    for attempt in range(TRIES):
        if attempt:
            sleep(BACKOFF_S[attempt - 1])
        try:
            response = httpx.post(url, json=body, timeout=TIMEOUT_S, follow_redirects=False)
        except httpx.HTTPError as exc:
            logger.warning("notification to %s: no answer (%s)", host, type(exc).__name__)
            continue
        if response.is_success:
            return True
        logger.warning("notification to %s: HTTP %d", host, response.status_code)
        if response.status_code != 429 and response.status_code < 500:
            return False
    return False


def after_run(url: str | None, st: BatchStatus | None, code: int, wall_s: float,
              results: Path) -> None:
    """Notify `url` (if any) of how the batch's run ended, from `run`'s exit code."""
    if not url or st is None:
        return
    event = EVENTS.get(code, "failed")
    if post(url, summary(st, event, wall_s, results)):
        logger.info("notified %s: batch %s %s", urlsplit(url).hostname, st.id, event)

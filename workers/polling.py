"""When to poll a running task next: a bounded geometric back-off from its creation."""

from __future__ import annotations

FIRST_POLL_S = 1.0
"""First GET this long after the create."""
GROWTH = 1.5
"""Each wait is this much longer than the previous one..."""
MAX_INTERVAL_S = 30.0
"""...up to this, so a long video is still seen within half a minute of finishing."""


def next_poll_delay_s(polls: int) -> float:
    """Seconds from now to the next GET, after `polls` GETs that found the task running."""
    return min(MAX_INTERVAL_S, FIRST_POLL_S * GROWTH ** min(polls, 64))

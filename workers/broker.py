"""kombu's Redis transport, reusing one Redis client per channel for synchronous commands.

kombu (5.7) builds a new `redis.Redis` object for every acknowledgement and restore, and
with redis-py 8 each costs about a millisecond of CPU (it rebuilds the response-callback
table): measured as the largest single cost of a worker's message handling. A Redis
client over a connection pool is thread-safe, so the channel keeps one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import Any

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):  # type: ignore[misc]
    """A Redis channel whose synchronous client is built once."""

    @cached_property
    def _sync_client(self) -> Any:
        return self._create_client()

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        """The given client, or this channel's own."""
        yield client or self._sync_client


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    """kombu's Redis transport with the channel above."""

    Channel = Channel


TRANSPORT = f"{__name__}:Transport"

"""The dispatcher's leader lock in Redis: one dispatcher is active, the others stand by.

The lock holds the leader's token ("host:pid:hex", plus `SCOPED_SUFFIX` for a scoped one,
see `workers.keys`) and expires after `LOCK_TTL_S` unless renewed: a dispatcher that dies
or hangs loses it to a standby within that time.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import uuid

import redis

from workers.keys import LOCK_KEY, SCOPED_SUFFIX

logger = logging.getLogger(__name__)

LOCK_TTL_S = 10.0
"""A dispatcher that stops renewing its lock loses it after this long to a standby."""
LOCK_RENEW_S = 1.0
"""The leader renews its lock at most this often."""

# KEYS[1]: the lock; ARGV[1]: our token; ARGV[2]: TTL in ms.
# Extends the lock only while we still hold it; returns 1 when extended, 0 when lost.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# KEYS[1]: the lock; ARGV[1]: our token. Deletes the lock only if it is ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS[1]: the lock; ARGV[1]: "host:pid:". Deletes the lock if that process's token holds it.
_BREAK = """
local held = redis.call('GET', KEYS[1])
if held and string.sub(held, 1, string.len(ARGV[1])) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def token_prefix(pid: int, host: str | None = None) -> str:
    """The start of every token of dispatcher `pid` on `host` (this one by default)."""
    return f"{host or socket.gethostname()}:{pid}:"


def break_lock(client: redis.Redis, pid: int) -> bool:
    """Delete the lock if dispatcher `pid` of this host holds it; True when it did. Only for a
    process the caller knows is dead (it killed and reaped it): a live one would lead on
    without the lock until its next renewal failed (and its term would fence its writes)."""
    return bool(client.eval(_BREAK, 1, LOCK_KEY, token_prefix(pid)))


class LeaderLock:
    """One dispatcher's hold on the lock: taken when free, renewed while held, given up on
    a clean stop."""

    def __init__(self, client: redis.Redis, *, scoped: bool) -> None:
        self.client = client
        self.token = (f"{token_prefix(os.getpid())}{uuid.uuid4().hex[:8]}"
                      + (SCOPED_SUFFIX if scoped else ""))
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._renewed = -math.inf

    def try_lead(self) -> bool:
        """Take the lock if it is free (or keep it if ours)."""
        ttl_ms = int(LOCK_TTL_S * 1000)
        if self.client.set(LOCK_KEY, self.token, nx=True, px=ttl_ms):
            logger.info("dispatcher %s is now active", self.token)
            return True
        return bool(self._renew(keys=[LOCK_KEY], args=[self.token, ttl_ms]))

    def keep(self, leading: bool, now: float) -> bool:
        """Whether we lead at `now` (a monotonic time): the lock taken, or renewed when
        `LOCK_RENEW_S` has passed since it last was."""
        if leading and now - self._renewed < LOCK_RENEW_S:
            return True
        if not self.try_lead():
            if leading:
                logger.warning("dispatcher lock lost; standing by")
            return False
        self._renewed = now
        return True

    def release(self) -> None:
        """Give the lock up (on a clean stop) so a standby takes over at once."""
        try:
            self._release(keys=[LOCK_KEY], args=[self.token])
        except redis.RedisError:
            logger.warning("could not release the dispatcher lock; it expires by itself")

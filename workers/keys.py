"""Every Redis key the fleet's own processes share, with what it holds and who uses it.

All of it is advisory and rebuilt if Redis is flushed (the database is the record), except
that a new `EPOCH_KEY` voids the leases of the older epoch, which is its purpose. Celery's
own keys (the queues named in `workers/app.py`, kombu's unacked sets) are not listed here.
"""

from __future__ import annotations

LOCK_KEY = "piapi-bulk:dispatcher"
"""String, the dispatcher leader lock: "host:pid:hex" of the leader (plus `SCOPED_SUFFIX`),
with a TTL. Written by `scheduler/leader.py` (for the dispatcher); read by
`scheduler/services.py` (is a standing fleet running?), `scheduler/operator.py` (is any
dispatcher running?) and the chaos harness (which pid leads)."""
SCOPED_SUFFIX = ":scoped"
"""Ends the lock token of a scoped dispatcher (one a `run` started), so `run` can tell one
from a standing fleet's."""
EPOCH_KEY = "piapi-bulk:epoch"
"""String, the Redis epoch stamped on leases; set (NX) by the dispatcher when missing, so a
Redis that comes back empty voids every older lease. Read by the chaos harness."""
WAKE_KEY = "piapi-bulk:wake"
"""List of at most one entry: "look at the work now". Pushed by workers that free a slot
and by the webhook receiver; popped (BLPOP) by the dispatcher (`workers/fleet.py`)."""
STATS_PREFIX = "piapi-bulk:stats:"
"""Hash per Unix second (prefix + second): requests, rate 429s and concurrency 429s that
workers sent; read by the dispatcher's AIMD controller (`workers/fleet.py`)."""
CONC_429_KEY = "piapi-bulk:conc-429-total"
"""Integer, concurrency 429s ever: incremented by workers, read by the dispatcher."""
MODE_KEY = "piapi-bulk:poll-mode"
"""String, the poll mode (`workers.polling.PollMode`): set by the dispatcher, read by workers."""
RATE_KEY = "piapi-bulk:rate-eff"
"""Float, requests per second the token bucket grants fleet-wide right now (AIMD-adjusted):
set by the dispatcher, read by every `workers.ratelimit.Budget` as its override."""
RATE_BUCKET_KEY = "piapi-bulk:rate"
"""Hash (tokens, ts), the fleet-wide token bucket of `workers/ratelimit.py`: taken from by
workers and the dispatcher's account reads (`workers/runtime.py` builds it)."""
RUNS_KEY = "piapi-bulk:runs"
"""Hash: batch id -> Unix time until which a `run` claims it (renewed while it runs).
Written by `scheduler/runner.py`, read by a scoped dispatcher (`workers/fleet.py`)."""
REQUESTS_KEY = "piapi-bulk:requests"
"""Hash "endpoint status" -> PiAPI requests ever (status: the HTTP code, or `error` when no
answer came): added to by workers once per message (`workers/fleet.py`, counted by
`workers/metering.py`); read by `piapi-bulk web`'s /metrics."""
LATENCY_KEY = "piapi-bulk:latency"
"""Hash "endpoint le" -> requests whose latency fell in that histogram bucket (not
cumulative), and "endpoint sum_ms" -> summed latency in milliseconds: written and read like
`REQUESTS_KEY`."""
LIMITED_KEY = "piapi-bulk:429"
"""Hash scope (`rate`, `concurrency`) -> 429 answers ever: written and read like
`REQUESTS_KEY`."""
STANDBY_PREFIX = "piapi-bulk:standby:"
"""List per batch (prefix + batch id): ids of the batch's next queued rows, which a worker
whose poll freed a slot of that batch creates at once in that slot (`workers/handoff.py`).
Replaced by the dispatcher while it leads (with a short TTL, so a stopped dispatcher's list
lapses); popped by workers."""

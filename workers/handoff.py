"""Slot handoff: a worker whose poll sees a task end creates its batch's next row in that
slot at once, instead of leaving the slot for the dispatcher to notice, lease and send.

The refill chain it cuts (slot freed → wake-up → dispatcher pass → lease → Celery message →
claim → POST) costs tens of milliseconds and a dispatcher pass per freed slot; on tasks of a
fraction of a second that is a tenth of the slot time, and over a real network more.

The dispatcher stays the one place that decides how many slots there are. While it leads,
has rows waiting and is not over its limit, it keeps for each batch without controls a short
list of the batch's next queued rows in Redis (`publish`, replaced when it runs low, with a
TTL so that a stopped dispatcher's list lapses); otherwise it clears the lists. A worker
pops one id per slot its poll message frees (`take`) and claims that row (queued →
submitting, its attempt inserted) in the same transaction that records the task's end
(`workers.transitions.poll.record_and_hand_off`), then posts it as a `submit` message
would. So the count of tasks in flight is the same before and after that transaction, and
no dispatcher pass can see the slot free and fill it too. What keeps it safe:

- Exactly once: the claim is the same compare-and-set as a `submit` message's; an id that a
  message or another worker took meanwhile is not claimed, and the next one is tried.
- The limit: one claim per slot freed in that transaction, in the same batch and model (so
  the batch's own concurrency and PiAPI's per-family count are unchanged); never for an
  abandoned stuck task still watched (it still holds its slot, `workers.stuck`); never for a
  model whose slots PiAPI's in-flight count frees (`PollMode.LAZY`: the dispatcher may have
  refilled that slot from the count already).
- Controls: the claim checks the batch in the database (not done, cancelled, paused, under a
  budget or a deadline), so a list published before an operator acted claims nothing.
- The request budget: one token per handoff create, taken without waiting (none: that slot
  is freed as before) and given back when not used.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import redis

from workers.keys import STANDBY_PREFIX
from workers.polling import PollMode
from workers.transitions.poll import PollOutcome

STANDBY_ROWS = 16
"""Ids a batch's list holds when the dispatcher fills it..."""
REFILL_BELOW = 8
"""...which it does again when fewer than this are left."""
STANDBY_TTL_MS = 3000
"""A list lapses this long after it was last filled (its dispatcher may have stopped)."""


def key(batch_id: str) -> str:
    """The Redis list of a batch's standby rows."""
    return STANDBY_PREFIX + batch_id


def hands_off(outcome: PollOutcome, mode: PollMode) -> bool:
    """Whether the slot `outcome` frees may go straight to the batch's next row: it frees
    one (an abandoned task still watched does not), and the model's ends are not read from
    PiAPI's in-flight count (LAZY), which the dispatcher may already have refilled from."""
    return (outcome.frees_slot and outcome.watch_until is None and mode is not PollMode.LAZY
            and bool(outcome.target.batch_id))


def wanted(outcomes: Iterable[PollOutcome], eligible: set[int]) -> dict[str, int]:
    """Standby ids to pop per batch: one per eligible outcome (by job id)."""
    counts: dict[str, int] = {}
    for o in outcomes:
        if o.target.job_id in eligible:
            counts[o.target.batch_id] = counts.get(o.target.batch_id, 0) + 1
    return counts


def within(wants: Mapping[str, int], tokens: int) -> dict[str, int]:
    """`wants` cut down to `tokens` in all (batches in their order)."""
    out: dict[str, int] = {}
    for batch, n in wants.items():
        out[batch] = max(0, min(n, tokens))
        tokens -= out[batch]
    return out


def take(client: redis.Redis, wants: Mapping[str, int]) -> tuple[dict[str, list[int]], bool]:
    """Pop up to `wants[batch]` ids from each batch's list; also whether any list came up
    short or is now empty (the dispatcher should look: it refills lists)."""
    batches = [b for b, n in wants.items() if n > 0]
    if not batches:
        return {}, False
    pipe = client.pipeline(transaction=False)
    for batch in batches:
        pipe.lpop(key(batch), wants[batch])
        pipe.llen(key(batch))
    replies = pipe.execute()
    popped: dict[str, list[int]] = {}
    low = False
    for i, batch in enumerate(batches):
        ids = [int(v) for v in replies[2 * i] or []]
        popped[batch] = ids
        low = low or len(ids) < wants[batch] or int(replies[2 * i + 1]) < REFILL_BELOW
    return popped, low


def lengths(client: redis.Redis, batches: Sequence[str]) -> dict[str, int]:
    """How many ids each batch's list holds."""
    if not batches:
        return {}
    pipe = client.pipeline(transaction=False)
    for batch in batches:
        pipe.llen(key(batch))
    return {b: int(n) for b, n in zip(batches, pipe.execute(), strict=True)}


def publish(client: redis.Redis, lists: Mapping[str, Sequence[int]],
            clear: Iterable[str] = ()) -> None:
    """Replace each batch's list with `ids` (an empty one: removed) and remove the lists of
    the batches in `clear`, in one round trip."""
    pipe = client.pipeline(transaction=True)
    for batch, ids in lists.items():
        pipe.delete(key(batch))
        if ids:
            pipe.rpush(key(batch), *ids)
            pipe.pexpire(key(batch), STANDBY_TTL_MS)
    for batch in clear:
        pipe.delete(key(batch))
    pipe.execute()

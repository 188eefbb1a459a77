"""The dispatcher: feeds Celery only work that is runnable now, within the account's limits.

Each pass fills free concurrency slots with `submit` messages for queued jobs (oldest batch
first, manifest order) and sends `poll` messages for running jobs whose next poll is due
(and `watch` messages for abandoned stuck tasks due for a look, see `workers.stuck`).
It runs when woken (a worker freed a slot, a webhook made a job due) or when the next poll
falls due, so a freed slot is refilled within milliseconds. A row leased to be created
whose twin in another batch completed takes its task instead, and one whose twin is in
flight waits for it (`workers.transitions.reuse`). Once a second it also takes
back what dead workers left, adapts the limits to 429s (AIMD) and marks finished batches.

Free slots are counted from PiAPI's own in-flight count (/account/active_tasks) when the
account offers a plausible one, so a slot is refilled as soon as its task ends there, not
when a poll notices; otherwise from the database. One dispatcher is active at a time: it
holds a Redis lock that it renews every pass; a second one waits as a hot standby. On
taking the lock it starts a new term in the database, and every pass runs fenced by it
(`workers.fencing`): a leader paused past its lock's expiry that resumes mid-pass is
`Deposed` at its first transaction, sends nothing from that pass and stands by.

A *scoped* dispatcher (the one `piapi-bulk run` starts) creates tasks only for the batches
a run has claimed (`Fleet.claim`), so a run never spends on other batches in the database.
It still polls, reconciles and watches every task already in flight: those hold the
account's slots, cost nothing more to follow, and would otherwise keep the slots they hold
counted as taken.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path

import redis
from celery import Celery
from kombu.exceptions import OperationalError
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from scheduler.admission import Admission
from scheduler.leader import LeaderLock
from scheduler.slots import Account, RemoteSlots
from workers import durations, fencing, handoff, leases
from workers import transitions as tr
from workers.aimd import WINDOW_S, Aimd
from workers.app import (
    POLL_QUEUE,
    POLL_TASK,
    RECONCILE_TASK,
    SUBMIT_QUEUE,
    SUBMIT_TASK,
    WATCH_TASK,
)
from workers.db import exclusive
from workers.fleet import Fleet
from workers.halt import clear_halt, get_halt
from workers.keys import EPOCH_KEY
from workers.polling import PollMode
from workers.ratelimit import Budget
from workers.reconcile import records as ambiguous
from workers.states import AmbiguousPolicy
from workers.transitions import reuse

logger = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 5
"""Used only when neither --concurrency nor the account's own limit is known."""
ACCOUNT_REFRESH_S = 60.0
HALT_RECHECK_S = 60.0
"""While the fleet is halted, how often PiAPI is asked whether it accepts the key again."""
HOUSEKEEPING_S = 1.0
MIN_PASS_S = 0.01
SNAPSHOT_SOON_S = 0.1
"""Passes are at least this far apart, so one pass serves a burst of wake-ups together."""
PRUNE_EVERY_S = 300.0
MAX_POLLS_PER_PASS = 2000
MAX_RECONCILES_PER_PASS = 50
MAX_LOOKS_PER_PASS = 200
"""Looks at abandoned stuck tasks (`workers.stuck`) sent per pass at most."""
MAX_SLEEP_S = 1.0


@dataclass
class PassResult:
    """What one pass did (for logs and tests)."""

    limit: int = 0
    in_flight: int = 0
    submits: int = 0
    polls: int = 0
    expired: int = 0
    halted: str | None = None
    next_pass_s: float = MAX_SLEEP_S
    took_s: float = 0.0
    budget_bound: bool = False
    """Free slots were left unfilled because the request budget had no token for them."""
    twins: int = 0
    """Rows leased to be created that took a completed twin's task or wait for one in
    flight instead (`workers.transitions.reuse`): their slots are still free."""
    housekept: bool = False
    """This pass did the once-a-second housekeeping."""


def _plain(batch: leases.OpenBatch) -> bool:
    """A batch without the controls admission weighs per create (cancel, pause, budget,
    deadline): its freed slots may be handed to its next rows by workers."""
    return (batch.cancel_mode is None and batch.paused is None and batch.budget_usd is None
            and batch.deadline_at is None)


def by_batch(leased: leases.Leased) -> dict[str, list[int]]:
    """The leased ids grouped by their batch, in lease order."""
    groups: dict[str, list[int]] = {}
    for job_id, batch in leased.items():
        groups.setdefault(batch, []).append(job_id)
    return groups


def chunks(ids: Sequence[int], size: int, spread: int) -> list[list[int]]:
    """Split ids into messages: spread over `spread` consumers, at most `size` per message."""
    if not ids:
        return []
    per = max(1, min(size, math.ceil(len(ids) / max(spread, 1))))
    return [list(ids[i : i + per]) for i in range(0, len(ids), per)]


@dataclass
class Every:
    """A chore done every `period_s`: `due(now)` says whether it is time (and, when it is,
    starts the next period)."""

    period_s: float
    last: float = -math.inf

    def due(self, now: float) -> bool:
        if now - self.last < self.period_s:
            return False
        self.last = now
        return True


@dataclass(eq=False)
class Dispatcher:
    """The loop from DESIGN.md; `tick()` is one pass, `run()` loops while it leads.

    Built from the database, Redis and the Celery app, then its settings by keyword."""

    engine: Engine
    redis_client: redis.Redis
    app: Celery
    _: KW_ONLY
    lease_s: float
    concurrency: int | None = None
    """--concurrency: tasks in flight at most (None: the account's limit)."""
    account_limit: Callable[[], int | None] | None = None
    """Reads the account's concurrency limit (once a minute at most)."""
    account: Account | None = None
    """PiAPI's in-flight count (/account/active_tasks), or None not to ask for it."""
    rpm: int = 0
    """The request rate configured (requests a minute; 0: none)."""
    account_poll_min_s: float = 0.02
    budget: Budget | None = None
    """The fleet's request budget (token bucket), if any."""
    interval_s: float = MAX_SLEEP_S
    batch_size: int = 16
    """Ids per Celery message at most."""
    spread: int = 1
    """Consumers a pass's messages are spread over."""
    on_ambiguous: AmbiguousPolicy = AmbiguousPolicy.RECONCILE
    max_tries: int = 12
    scoped: bool = False
    """Create only for the batches a run claimed (see the module docstring)."""
    reuse_window_s: float = 72 * 3600.0
    handoff: bool = False
    """Keep the standby lists from which workers refill the slots their polls free
    (`workers.handoff`)."""
    clock: Callable[[], float] = time.time
    on_pass: Callable[[PassResult], None] | None = None
    """Called after every pass while leading (`scheduler.passstats`); None: nothing."""
    pause_file: Path | None = None
    """Test hook: when this file exists at the start of a pass (the lock just checked), the
    dispatcher removes it and stops itself (SIGSTOP), for the fencing test to resume it
    after a standby took over."""
    epoch: str = field(default="", init=False)
    """The Redis epoch, read at each housekeeping (see `current_epoch`)."""
    term: int | None = field(default=None, init=False)
    """Our leader term in the database while we lead (`workers.fencing`)."""

    def __post_init__(self) -> None:
        self.interval_s = min(self.interval_s, MAX_SLEEP_S)
        self.fleet = Fleet(self.redis_client, self.clock)
        self.admission = Admission(self.engine)
        rate = self.rpm / 60.0 if self.rpm else None
        # PiAPI's in-flight count is read at most once per ten requests' worth of the rate.
        snapshot_min_s = max(self.account_poll_min_s, 10.0 / rate if rate else 0.0)
        self.remote = RemoteSlots(self.engine, self.account,
                                  self.budget.spend if self.budget else None, self.clock,
                                  min_interval_s=snapshot_min_s)
        self.aimd = Aimd(rate, self.concurrency or DEFAULT_CONCURRENCY, self.clock())
        self.lock = LeaderLock(self.redis_client, scoped=self.scoped)
        fencing.guard(self.engine)
        self._account_reading = Every(ACCOUNT_REFRESH_S)
        self._account_value: int | None = None
        self._housekeeping = Every(HOUSEKEEPING_S)
        self._pruning = Every(PRUNE_EVERY_S)
        self._halt: str | None = None
        self._halt_seen: float | None = None
        """When this dispatcher last saw the halt first or asked PiAPI about it."""
        self._batches: list[leases.OpenBatch] = []
        self._retries = True
        self._backlog = True
        self._refusals = self.fleet.concurrency_refusals()
        self._standby: set[str] = set()
        """The batches whose standby list we keep."""

    @property
    def token(self) -> str:
        """What this dispatcher writes in the lock while it leads."""
        return self.lock.token

    # --- the Redis epoch ---------------------------------------------------------------
    def current_epoch(self) -> str:
        """The Redis epoch; a new one is made when Redis lost it (flushed or restarted)."""
        candidate = uuid.uuid4().hex[:16]
        if self.redis_client.set(EPOCH_KEY, candidate, nx=True):
            logger.info("new Redis epoch %s: leases of earlier epochs are void", candidate)
            return candidate
        value = self.redis_client.get(EPOCH_KEY)
        return value.decode() if isinstance(value, bytes) else str(value)

    # --- limits -----------------------------------------------------------------------
    def base_limit(self, now: float) -> int:
        """Tasks allowed in flight: the account's limit (cached), or --concurrency when it
        is lower (room left for other users of the account) or the account gives none;
        never more than the account allows (a --concurrency above it went over it)."""
        if self.account_limit and self._account_reading.due(now):
            try:
                value = self.account_limit()
            except Exception as exc:  # noqa: BLE001  any failure: keep the last known value
                logger.warning("could not read the account's concurrency limit: %s", exc)
            else:
                if value and value != self._account_value:
                    logger.info("account concurrency limit: %s", value)
                    if self.concurrency and self.concurrency > value:
                        logger.warning("--concurrency %d is above the account's limit %d: "
                                       "%d in flight at most", self.concurrency, value, value)
                    self._account_value = value
        if self.concurrency:
            return min(self.concurrency, self._account_value or self.concurrency)
        return self._account_value or DEFAULT_CONCURRENCY

    def halted(self, now: float) -> str | None:
        """Why the fleet is halted (None: it is not). While it is, PiAPI is asked every
        `HALT_RECHECK_S` whether it accepts the key (`/account/info`); when it does, the
        halt is lifted, so a standing fleet resumes by itself once the key is restored or
        the process that used a wrong one is gone (a create refused again halts it again:
        the creates of the messages a worker has in hand at worst, refused and unpaid, per
        check: a worker posts nothing of a message that reaches it after the halt)."""
        halt = get_halt(self.engine)
        if halt is None or self.account_limit is None:
            self._halt_seen = None
            return halt
        if self._halt_seen is None:
            self._halt_seen = now
        if now - self._halt_seen < HALT_RECHECK_S:
            return halt
        self._halt_seen = now
        try:
            self.account_limit()
        except Exception as exc:  # noqa: BLE001  any failure: it stays halted
            logger.warning("the fleet is halted (%s); PiAPI still refuses: %s", halt, exc)
            return halt
        clear_halt(self.engine)
        logger.warning("PiAPI accepts the key again: the fleet's halt (%s) is lifted", halt)
        return None

    # --- housekeeping, once a second --------------------------------------------------
    def housekeep(self, now: float) -> int:
        """Take back lost creates, resolve ambiguous rows, adapt limits, mark done batches."""
        self.epoch = self.current_epoch()
        expired = len(tr.expire_submitting(self.engine, now))
        if self.on_ambiguous == AmbiguousPolicy.FAIL:
            tr.resolve_ambiguous_as_failed(self.engine, now)
        elif self.on_ambiguous == AmbiguousPolicy.RETRY:
            reposted = ambiguous.repost_all(self.engine, now, self.max_tries)
            if reposted:
                logger.warning("%d row(s) with a lost create posted again (policy: retry)",
                               reposted)
        self._halt = self.halted(now)
        self.aimd.set_concurrency_ceiling(self.base_limit(now), now)
        window = self.fleet.window(WINDOW_S)
        before = (self.aimd.limits.rate_per_s, self.aimd.limits.concurrency)
        limits = self.aimd.observe(now, window.requests, window.rate_429)
        if (limits.rate_per_s, limits.concurrency) != before:
            logger.info("limits now: %s requests/s, %d in flight (last %ds: %d requests, "
                        "%d rate 429s, %d concurrency 429s)", limits.rate_per_s,
                        limits.concurrency, WINDOW_S, window.requests, window.rate_429,
                        window.conc_429)
        self.fleet.set_rate(limits.rate_per_s if self.aimd.rate_decreases else None)
        self.fleet.set_mode(PollMode.LAZY if self.remote.usable else PollMode.EAGER)
        for batch_id in leases.mark_done_batches(self.engine):
            logger.info("batch %s is done", batch_id)
        self._batches = leases.open_batches(self.engine)
        if self.scoped:
            claimed = self.fleet.claimed()
            self._batches = [b for b in self._batches if b.id in claimed]
        self.admission.refresh(self._batches, now, self.epoch)
        self._retries = leases.any_retry_wait(self.engine)
        self._backlog = True  # looked at again by the next pass that has free slots
        if self._pruning.due(now):
            durations.prune(self.engine)
        return expired

    # --- one pass -----------------------------------------------------------------------
    def tick(self) -> PassResult:
        """Fill free slots, send due polls; housekeeping when a second has passed."""
        now = self.clock()
        result = PassResult()
        occupancy = leases.occupancy(self.engine, now, self.epoch or self.current_epoch())
        housekept = self._housekeeping.due(now)
        if housekept:
            result.housekept = True
            result.expired = self.housekeep(now)
            occupancy = leases.occupancy(self.engine, now, self.epoch)
        refusals = self.fleet.concurrency_refusals()
        if refusals > self._refusals:
            self._refusals = refusals
            limits = self.aimd.concurrency_refused(now, occupancy.total - occupancy.creating)
            logger.info("PiAPI refused creates for too many tasks in flight; keeping at most "
                        "%d in flight for now", limits.concurrency)
        result.limit = min(self.base_limit(now), self.aimd.limits.concurrency)
        result.halted = self._halt
        result.in_flight = occupancy.total
        # PiAPI's own count is only worth asking for when a freed slot could be used.
        if result.halted is None and occupancy.total >= result.limit and self._backlog:
            result.in_flight = self.remote.estimate(now, occupancy, result.limit)
        with exclusive(self.engine):
            submit_ids: leases.Leased = {}
            free = result.limit - result.in_flight
            if result.halted is None and free > 0:
                submit_ids, found, granted = self._lease_slots(now, free, occupancy)
                # Rows reused or set waiting were work found too: more may follow at once.
                self._backlog = found >= granted
                result.budget_bound = granted < free
                result.twins = found - len(submit_ids)
            poll_ids = leases.lease_polls(self.engine, MAX_POLLS_PER_PASS, now, self.epoch,
                                          self.lease_s)
            settle_ids = (leases.lease_reconciles(self.engine, MAX_RECONCILES_PER_PASS, now,
                                                  self.epoch, self.lease_s)
                          if self.on_ambiguous == AmbiguousPolicy.RECONCILE else {})
            # Abandoned stuck tasks are looked at while some are watched, and once a second
            # for those whose watch bound just passed (their last look).
            watching = occupancy.abandoned > 0 or housekept
            look_ids = (leases.lease_looks(self.engine, MAX_LOOKS_PER_PASS, now, self.lease_s)
                        if watching else {})
            # When the next snapshot is near anyway, skip looking up the next due poll.
            soon = (self._full(result, len(submit_ids))
                    and self.remote.next_snapshot_in(now) < SNAPSHOT_SOON_S)
            due = None if soon else leases.next_due_at(self.engine, now, looks=watching)
        self._send(SUBMIT_TASK, SUBMIT_QUEUE, submit_ids)
        self._send(POLL_TASK, POLL_QUEUE, poll_ids)
        self._send(RECONCILE_TASK, POLL_QUEUE, settle_ids)
        self._send(WATCH_TASK, POLL_QUEUE, look_ids)
        self._keep_standby(now, result, set(submit_ids.values()))
        result.submits, result.polls = len(submit_ids), len(poll_ids)
        self.remote.dispatched(result.submits)
        result.next_pass_s = self._next_pass_s(now, result, due)
        result.took_s = self.clock() - now
        return result

    def _keep_standby(self, now: float, result: PassResult, leased: set[str]) -> None:
        """The standby lists of `workers.handoff`: each batch without controls gets its next
        waiting rows when its list runs low or this pass leased some of its rows (which may
        head its list); every list goes while the fleet is halted, over its limit (AIMD
        lowered it) or out of rows, and a batch's when it gains a control (or finishes).
        Workers check the batch in the database as they claim, too."""
        if not self.handoff:
            return
        keep = result.halted is None and result.in_flight <= result.limit and self._backlog
        batches = [b.id for b in self._batches if keep and _plain(b)]
        gone = self._standby.difference(batches)
        lists = {batch: leases.standby(self.engine, batch, handoff.STANDBY_ROWS, now,
                                       self.epoch, retries=self._retries)
                 for batch, n in handoff.lengths(self.redis_client, batches).items()
                 if n < handoff.REFILL_BELOW or batch in leased}
        if lists or gone:
            handoff.publish(self.redis_client, lists, gone)
        self._standby = {b for b in batches if lists.get(b) != []}

    def _next_pass_s(self, now: float, result: PassResult, due: float | None) -> float:
        wait = self.interval_s
        if due is not None:
            wait = min(wait, due - now)
        if self._full(result, result.submits):
            wait = min(wait, self.remote.next_snapshot_in(now))
        rate = self.budget.rate() if self.budget else None
        if result.budget_bound and rate:
            wait = min(wait, 1.0 / rate)  # the next token
        if result.twins:
            wait = 0.0  # those rows left their slots free: fill them now
        return max(MIN_PASS_S, wait)

    def _full(self, result: PassResult, submits: int) -> bool:
        """The account is full and more work waits: the next freed slot matters."""
        return (result.halted is None and self._backlog
                and result.in_flight + submits >= result.limit)

    def _lease_slots(self, now: float, free: int,
                     occupancy: leases.Occupancy) -> tuple[leases.Leased, int, int]:
        """Lease up to `free` creates, as many as the request budget allows right now;
        also how many rows were leased (twins resolved included) and how many creates the
        budget allowed."""
        granted = self.budget.take_now(free) if self.budget else free
        leased, found = self._lease_for_batches(now, granted, occupancy)
        if self.budget and granted > len(leased):
            self.budget.give_back(granted - len(leased))
        return leased, found, granted

    def _lease_for_batches(self, now: float, free: int,
                           occupancy: leases.Occupancy) -> tuple[leases.Leased, int]:
        """Creates leased batch by batch (oldest first), and how many rows were leased:
        rows whose twin completed or is in flight are not created (`resolve_twins`)."""
        leased: leases.Leased = {}
        found = 0
        for batch in self._batches:
            room = free - len(leased)
            if room <= 0:
                break
            if batch.concurrency:
                room = min(room, batch.concurrency - occupancy.by_batch.get(batch.id, 0))
            room = self.admission.room(batch, room, now)  # cancelled, deadline, budget
            got = leases.lease_submits(self.engine, batch.id, room, now, self.epoch,
                                       self.lease_s, retries=self._retries)
            found += len(got)
            create = reuse.resolve_twins(self.engine, got, now, self.reuse_window_s,
                                         epoch=self.epoch)
            if len(create) < len(got):
                self._retries = True  # some may now wait for a twin in retry_wait
            self.admission.took(batch.id, len(create))
            leased.update(dict.fromkeys(create, batch.id))
        return leased, found

    def _send(self, task: str, queue: str, leased: leases.Leased) -> None:
        """The leased ids as messages `[[ids], batch]`, one batch per message so that
        Flower's `args:<batch>` search and the message's summary speak of one batch (a pass
        that leases rows of several batches sends at most one more message per batch)."""
        for batch, ids in by_batch(leased).items():
            for part in chunks(ids, self.batch_size, self.spread):
                self.app.send_task(task, args=[part, batch], queue=queue)

    # --- the loop -----------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Wait for the lock, then pass after pass until `stop` is set or the lock is lost."""
        leading = False
        try:
            while not stop.is_set():
                try:
                    leading, wait = self._step(leading)
                    if leading:
                        self.fleet.wait(wait)
                    else:
                        stop.wait(1.0)
                except (redis.RedisError, OperationalError) as exc:  # kombu's: a publish
                    logger.warning("Redis unavailable (%s); retrying", exc)
                    leading = False
                    stop.wait(1.0)
                except DBAPIError as exc:
                    logger.warning("database unavailable (%s); retrying", exc.orig or exc)
                    stop.wait(1.0)
        finally:
            if leading:
                self.lock.release()

    def _step(self, leading: bool) -> tuple[bool, float]:
        if not self.lock.keep(leading, time.monotonic()):
            self.term = None
            return False, 1.0
        if not leading or self.term is None:
            self.term = fencing.take(self.engine, self.token)
            logger.info("dispatcher %s leads with term %d", self.token, self.term)
        self._pause_if_asked()
        try:
            with fencing.fenced(self.term):
                result = self.tick()
        except fencing.Deposed as exc:
            logger.warning("dispatcher %s deposed by term %d; standing by", self.token,
                           exc.current)
            self.term = None
            return False, 1.0
        if self.on_pass is not None:
            self.on_pass(result)
        if result.submits or result.polls or result.expired:
            logger.debug("pass: %s", result)
        return True, result.next_pass_s

    def _pause_if_asked(self) -> None:
        if self.pause_file is not None and self.pause_file.exists():
            self.pause_file.unlink()
            os.kill(os.getpid(), signal.SIGSTOP)

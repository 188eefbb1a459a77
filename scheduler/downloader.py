"""The download pool: output files of completed rows fetched into a destination on threads of
their own, apart from the fleet (PiAPI work never waits for a download), from the record.

It reads what to fetch from the database (`workers.downloads`), never from memory, so a
pool started again after any interruption carries on where the record says: files already
stored are not fetched again, and none is missed.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import httpx
from sqlalchemy.engine import Engine

from workers import downloads as rec
from workers.db import retry_transient
from workers.fetch import Destination, DestinationError, FetchError, Interrupted, fetch
from workers.retry import backoff_s
from workers.settings import ConfigError

logger = logging.getLogger(__name__)

MAX_TRIES = 5
"""Fetches of one file at most when they fail transiently (5xx, 429, network): with the
back-off (1, 2, 4, 8 s) about 15 s of trying, then the file fails with the last error."""
LEASE_S = 15.0
"""A file being fetched is the fetcher's for this long, renewed while bytes come
(`RENEW_EVERY_S`); a fetcher killed mid-way holds it no longer than this. Another process
may then take it over (the first one's records are refused)."""
RENEW_EVERY_S = 5.0
FEED_EVERY_S = 1.0
"""How often the pool looks for rows that completed."""
TICK_S = 0.5
"""How often the background feed starts due files (a look for completed rows every
`FEED_EVERY_S`)."""
FEED_OVERLAP_S = 10.0
"""Rows are looked for from this long before the last one seen: a row whose completion
committed late is not missed (and `finish` looks at every row once more anyway)."""
FEED_PAGE = 500
FEED_PAGES = 4
"""Pages of rows one look reads at most per batch, so a look never holds up the rest of
the feed for long (a resumed batch's backlog is read over several looks)."""
HTTP_TIMEOUT = httpx.Timeout(20.0, connect=10.0)
"""Per read, not per file: a large video streams for as long as bytes keep coming."""


def open_destination(url: str) -> Destination:
    """The `--download`/`--to` folder, created if needed; a ConfigError when it cannot be
    used (an unknown scheme, s3:// without s3fs, a folder that cannot be created, a host
    that cannot be reached)."""
    try:
        dest = Destination(url)
        dest.ensure()
    except (ImportError, ValueError, DestinationError, OSError) as exc:
        # OSError: a host that cannot be resolved or reached, a refused login (fsspec)
        raise ConfigError(f"cannot download to {url}: {exc}") from exc
    return dest


@dataclass
class DownloadReport:
    """How the files of the served batches stand at a destination."""

    done: int = 0
    waiting: int = 0
    failed: dict[str, int] = field(default_factory=dict)

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    def line(self, where: str) -> str:
        """One line: files kept, and failed ones by kind."""
        text = f"{self.done} output file{'s' if self.done != 1 else ''} kept in {where}"
        if self.failed:
            kinds = ", ".join(f"{k.replace('_', ' ')} {n}" for k, n in sorted(self.failed.items()))
            text += f"; {self.failed_total} not kept ({kinds}): each row's reason is in the results"
        if self.waiting:
            text += f"; {self.waiting} still to fetch"
        return text


class Downloader:
    """A bounded pool fetching the files of `batch_ids`' completed rows into `dest`.

    While a run goes on, `feed_in_background()` looks for newly completed rows and hands due
    files to the fetching threads, on a thread of its own: those looks read and write the
    database, and on SQLite a worker frozen inside a transaction holds every writer up
    until `run`'s stall watch restarts it, so the watch must never make them itself.
    `finish()` (once every row ended) stops that thread and waits until every file is
    stored or failed; `close()` stops, giving unfinished claims back to the record.
    `notify` receives the lines worth telling the user (a full disk, once), on the thread
    that calls `say_notices()`, `tick()` or `finish()`."""

    def __init__(self, engine: Engine, dest: Destination, batch_ids: Collection[str],
                 concurrency: int = 4, notify: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.dest = dest
        self.batch_ids = list(batch_ids)
        self.concurrency = concurrency
        self.notify = notify or (lambda line: logger.warning("%s", line))
        self.clock = clock
        self.stop = threading.Event()
        self.client = httpx.Client(timeout=HTTP_TIMEOUT, follow_redirects=True,
                                   limits=httpx.Limits(max_connections=concurrency))
        self.executor = ThreadPoolExecutor(concurrency, thread_name_prefix="download")
        self.running: set[Future[None]] = set()
        self.halted: str | None = None
        self.halted_kind = "destination"
        self._notices: list[str] = []
        self._lock = threading.Lock()
        self._cursor = {b: (-math.inf, 0) for b in self.batch_ids}
        self._newest = dict.fromkeys(self.batch_ids, -math.inf)
        """The latest `finished_at` seen per batch."""
        self._fed_at = -math.inf
        self._caught_up = False
        """True once a look read every batch to its end."""
        self._feeding = threading.Event()
        """Set to end the background feed."""
        self._feeder: threading.Thread | None = None

    def start(self) -> None:
        """Files that failed before (except those PiAPI no longer has) are tried again, and
        so are kept files gone from the destination or not of their recorded size; the
        temporary files of fetches killed mid-way are removed."""
        retry_transient(lambda: rec.reopen_failed(self.engine, self.dest.key, self.batch_ids,
                                                  self.clock()))
        listing = self.dest.listing()
        if listing is None:
            return
        now = self.clock()
        missing = retry_transient(lambda: rec.reopen_missing(
            self.engine, self.dest.key, self.batch_ids, listing, now))
        if missing:
            with self._lock:
                self._notices.append(f"{missing} kept file{'s' if missing != 1 else ''} no "
                                     f"longer in {self.dest.shown()} as kept: fetched again")
        for part in self.dest.stale_parts(listing, now):
            self.dest.remove(part)

    def feed_in_background(self) -> None:
        """Start the feed's own thread: failed files reopened (`start`), then a look every
        `TICK_S` until `finish()` or `close()`."""
        self._feeder = threading.Thread(target=self._feed_loop, name="download-feed",
                                        daemon=True)
        self._feeder.start()

    def _feed_loop(self) -> None:
        try:
            self.start()
            while not self._feeding.wait(TICK_S):
                self._step()
        except Exception:  # a bug: `finish()` looks at every row again
            logger.exception("the download feed stopped; the files are looked for at the end")

    def tick(self) -> None:
        """Record newly completed rows' files (about once a second), start due ones and say
        what is worth saying."""
        self._step()
        self._flush_notices()

    def say_notices(self) -> None:
        """Pass the lines worth telling the user to `notify`, on the calling thread."""
        self._flush_notices()

    def _step(self) -> None:
        if time.monotonic() - self._fed_at >= FEED_EVERY_S:
            self._fed_at = time.monotonic()
            retry_transient(self._feed)
        self._fill()

    def _feed(self) -> None:
        caught_up = True
        for batch_id in self.batch_ids:
            since, after = self._cursor[batch_id]
            for _ in range(FEED_PAGES):
                jobs = rec.new_completed(self.engine, batch_id, self.dest.key, since, after,
                                         FEED_PAGE)
                if jobs:
                    rec.add_files(self.engine, self.dest.key, jobs, self.clock())
                    since, after = jobs[-1].finished_at, jobs[-1].id
                    self._newest[batch_id] = max(self._newest[batch_id], since)
                if len(jobs) < FEED_PAGE:  # at the end: next time, from a little before
                    self._cursor[batch_id] = (self._newest[batch_id] - FEED_OVERLAP_S, 0)
                    break
            else:  # more to read: the next look goes on from here
                self._cursor[batch_id] = (since, after)
                caught_up = False
        self._caught_up = caught_up

    def _fill(self) -> None:
        self.running = {f for f in self.running if not f.done()}
        if self.halted or self.stop.is_set():
            return
        free = self.concurrency - len(self.running)
        claims = retry_transient(lambda: rec.claim(self.engine, self.dest.key, self.batch_ids,
                                                   self.clock(), free, LEASE_S))
        with self._lock:
            if self.stop.is_set():  # closed meanwhile: these claims lapse (LEASE_S)
                return
            for c in claims:
                future = self.executor.submit(self._work, c)
                future.add_done_callback(_log_crash)
                self.running.add(future)

    def _work(self, c: rec.DownloadClaim) -> None:
        try:
            if self._recover(c):
                return
            stored = fetch(self.client, c.url, self.dest, c.name, self._keeper(c))
            if not self._record(rec.record_stored, c, stored, self.clock()):
                self.dest.remove(stored.tmp)  # taken over meanwhile: the other one keeps it
                return
            self.dest.rename(stored.tmp, stored.file)
            self._record(rec.record_done, c, self.clock())
        except Interrupted:
            self._record(rec.release, c, self.clock())
        except DestinationError as exc:
            self._record(rec.record_failed, c, exc.kind, str(exc), self.clock())
            self._halt(exc)
        except FetchError as exc:
            now = self.clock()
            if exc.retryable and c.tries < MAX_TRIES:
                self._record(rec.record_retry, c, exc.kind, str(exc),
                             now + backoff_s(c.tries), now)
            else:
                tries = f" (after {c.tries} tries)" if exc.retryable else ""
                self._record(rec.record_failed, c, exc.kind, f"{exc}{tries}", now)

    def _keeper(self, c: rec.DownloadClaim) -> Callable[[], bool]:
        """Asked before each piece of a fetch: go on unless stopping; renews the lease now
        and then (and stops if the claim was taken over)."""
        renewed = time.monotonic()

        def keep_going() -> bool:
            nonlocal renewed
            if self.stop.is_set():
                return False
            if time.monotonic() - renewed < RENEW_EVERY_S:
                return True
            renewed = time.monotonic()
            return self._record(rec.renew, c, self.clock() + LEASE_S)

        return keep_going

    def _recover(self, c: rec.DownloadClaim) -> bool:
        """A file an earlier fetcher stored (size and hash recorded) is completed from the
        disk: found at its final name, or renamed from its temporary one."""
        if c.bytes is None or c.sha256 is None or c.file is None:
            return False
        if not self.dest.holds(c.file, c.bytes, c.sha256):
            if not (c.tmp and self.dest.holds(c.tmp, c.bytes, c.sha256)):
                return False
            self.dest.rename(c.tmp, c.file)
        self._record(rec.record_done, c, self.clock())
        return True

    def _record(self, move: Callable[..., bool], *args: object) -> bool:
        return retry_transient(lambda: move(self.engine, *args))

    def _halt(self, exc: DestinationError) -> None:
        """Stop claiming files for this run (and say so once): the next ones would fail
        the same way."""
        with self._lock:
            if self.halted:
                return
            self.halted, self.halted_kind = str(exc), exc.kind
            self._notices.append(f"{exc}: stopped downloading for this run; once that is "
                                 f"fixed, piapi-bulk download BATCH --to {self.dest.shown()} "
                                 "fetches the rest")

    def _flush_notices(self) -> None:
        with self._lock:
            notices, self._notices = self._notices, []
        for line in notices:
            self.notify(line)

    def finish(self, check: Callable[[], None] = lambda: None) -> DownloadReport:
        """Every row has ended: record their files (all of them, once more), fetch until
        each is stored or failed, and report. After a full disk, files not fetched fail
        with that reason. Setting `stop` ends it early; `check` is called once a turn and
        may raise to end it (`run` passes its stop request's check: Ctrl-C while the last
        files download)."""
        self._stop_feeding()
        self._cursor = {b: (-math.inf, 0) for b in self.batch_ids}
        self._fed_at = -math.inf
        self._caught_up = False
        told = False
        while not self.stop.is_set():
            check()
            if not self._caught_up:
                self._fed_at = -math.inf  # nothing else to do: read on at once
            self.tick()
            if self.halted and not self.running:
                retry_transient(lambda: rec.fail_waiting(
                    self.engine, self.dest.key, self.batch_ids, self.halted_kind,
                    f"not fetched: {self.halted}", self.clock()))
            report = self.report()
            if self._caught_up and not self.running and not report.waiting:
                return report
            if self._caught_up and not told:
                told = True
                self.notify(f"{report.waiting} output file(s) still to fetch into "
                            f"{self.dest.shown()}")
            if self.running:
                wait(self.running, timeout=FEED_EVERY_S, return_when=FIRST_COMPLETED)
            elif self._caught_up:  # a back-off, or another fetcher's lease
                self.stop.wait(FEED_EVERY_S / 4)
        return self.report()

    def report(self) -> DownloadReport:
        """Counts from the record."""
        found = retry_transient(lambda: rec.counts(self.engine, self.dest.key, self.batch_ids))
        failed = {k.split(":", 1)[1]: n for k, n in found.items() if k.startswith("failed:")}
        return DownloadReport(done=found.get(rec.DONE, 0), failed=failed,
                              waiting=found.get(rec.PENDING, 0) + found.get(rec.FETCHING, 0))

    def close(self) -> None:
        """Stop: fetches under way are abandoned (their temporary files removed, their
        claims given back) and the threads end. A background look blocked on the database
        is not waited for: it sees the stop when it returns, and starts nothing."""
        with self._lock:
            self.stop.set()
        self._feeding.set()
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.client.close()

    def _stop_feeding(self) -> None:
        self._feeding.set()
        if self._feeder is not None:
            self._feeder.join()
            self._feeder = None


def _log_crash(future: Future[None]) -> None:
    exc = future.exception()
    if exc is not None:  # a bug or a database gone for good: the claim's lease lapses
        logger.error("a download stopped unexpectedly: %r", exc)


def start_pool(engine: Engine, dest: Destination, batch_ids: Collection[str],
               concurrency: int, notify: Callable[[str], None]) -> Downloader:
    """A pool for `run --download`, feeding itself in the background (files that failed in
    an earlier run pending again first)."""
    pool = Downloader(engine, dest, batch_ids, concurrency, notify)
    pool.feed_in_background()
    return pool


def report_downloads(report: DownloadReport, dest: Destination, batch_id: str, code: int,
                     say: Callable[[str], None]) -> int:
    """At the end of `run`: say how the downloads went; the exit code (1 instead of 0 when
    some file could not be kept: the rows completed, but not all the run was asked to keep
    is there)."""
    say(report.line(dest.shown()))
    if report.failed_total:
        say(f"to try them again: piapi-bulk download {batch_id} --to {dest.shown()}")
        return 1 if code == 0 else code
    return code


def download_batch(engine: Engine, batch_id: str, to: str, concurrency: int,
                   say: Callable[[str], None]) -> int:
    """`piapi-bulk download BATCH --to DIR`: the batch's completed rows' files fetched into
    DIR (none already there again); 0 when every file is kept, 1 otherwise."""
    dest = open_destination(to)
    pool = Downloader(engine, dest, [batch_id], concurrency, say)
    try:
        pool.start()
        report = pool.finish()
    except KeyboardInterrupt:
        say("interrupted; the same command again fetches the rest")
        return 130
    finally:
        pool.close()
    say(report.line(dest.shown()))
    return 1 if report.failed_total else 0

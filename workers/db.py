"""Database engines and sessions: SQLite (WAL, busy timeout, immediate writes) or PostgreSQL."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlmodel import Session, create_engine

from workers import models  # noqa: F401  (registers the tables on SQLModel.metadata)

SQLITE_BUSY_TIMEOUT_MS = 60_000
"""How long a SQLite writer waits for the lock held by another process before failing."""
TRANSIENT_WAIT_S = 120.0
"""How long a record waits for a restarting database before giving up."""

logger = logging.getLogger(__name__)
T = TypeVar("T")


def is_transient(exc: BaseException) -> bool:
    """True for a database error that a retry can cure: the server restarting or
    unreachable, a connection dropped, a lock not granted in time."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def retry_transient(fn: Callable[[], T], *, wait_s: float = TRANSIENT_WAIT_S,
                    sleep: Callable[[float], None] = time.sleep,
                    clock: Callable[[], float] = time.monotonic) -> T:
    """`fn()`, run again while the database is restarting (at most `wait_s`).

    Only for transactions that are safe to run twice: every state change is a
    compare-and-set, so a transaction whose COMMIT did land before the connection broke
    changes nothing the second time.
    """
    deadline = clock() + wait_s
    delay = 0.1
    while True:
        try:
            return fn()
        except DBAPIError as exc:
            if not is_transient(exc) or clock() + delay > deadline:
                raise
            logger.warning("database unavailable (%s); retrying in %.1fs",
                           str(exc.orig or exc).splitlines()[0], delay)
            sleep(delay)
            delay = min(delay * 2, 5.0)


def normalise_url(url: str) -> str:
    """Use psycopg 3 for plain `postgresql://` URLs."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def is_sqlite(url: str) -> bool:
    """True for a SQLite URL."""
    return make_url(normalise_url(url)).get_backend_name() == "sqlite"


def make_engine(url: str, *, pool_size: int = 8) -> Engine:
    """An engine for `url`; SQLite gets WAL, a busy timeout and BEGIN IMMEDIATE writes.

    BEGIN IMMEDIATE takes the write lock at the start of a transaction, so two processes
    never deadlock upgrading read locks (SQLite would fail one of them at once instead of
    waiting for the busy timeout).
    """
    url = normalise_url(url)
    if is_sqlite(url):
        # A small pool: closing a SQLite connection checkpoints the WAL (~10 ms), far too
        # much to pay per transaction.
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            pool_size=pool_size, max_overflow=pool_size * 2,
        )
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        database = make_url(url).database
        if database and database != ":memory:":
            _GATES[engine] = SqliteGate(os.path.abspath(database))
        return engine
    # A fixed pool, no overflow: an overflow connection is closed when returned, so bursts
    # (a message's creates recorded side by side) opened and closed a PostgreSQL backend
    # each time (~700 backends forked in one benchmark run). Threads wait for a connection
    # instead; transactions are a few milliseconds.
    return create_engine(
        url, pool_size=pool_size * 2, max_overflow=0, pool_timeout=120, pool_pre_ping=True,
        pool_recycle=1800,
    )


def make_read_engine(url: str) -> Engine:
    """An engine for reading only (the run page, /metrics). On SQLite its reads take no
    write lock and pass no gate: WAL lets them run beside the fleet's writes, each
    statement on its own snapshot; `PRAGMA query_only` refuses any write."""
    url = normalise_url(url)
    if not is_sqlite(url):
        return make_engine(url, pool_size=2)
    engine = create_engine(url, connect_args={"check_same_thread": False,
                                              "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
                           pool_size=4, max_overflow=4)
    event.listen(engine, "connect", _sqlite_read_only)
    return engine


def _sqlite_read_only(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA query_only=ON")
    cur.close()


def _sqlite_on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see _sqlite_on_begin)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_on_begin(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_tables(engine: Engine) -> None:
    """Bring the database's schema to the newest migration (`workers.migrate.upgrade`):
    every process calls this on start-up; it is one read when nothing is to be done."""
    from workers.migrate import upgrade  # migrate needs this module's transactions

    upgrade(engine)


class SqliteGate:
    """Admits one transaction at a time to a SQLite file, across threads and processes.

    SQLite admits one writer at a time anyway; left to itself, a waiting writer sleeps in
    growing steps (1, 2, 5, 10 ... 100 ms) between retries, which adds tens of
    milliseconds to every contended transaction. Here threads queue on a lock and
    processes on an flock() of `<database>.lock`, and each is woken the moment the
    previous holder is done.
    """

    def __init__(self, path: str) -> None:
        self.path = path + ".lock"
        self._lock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None
        self._pid = 0

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # a forked child needs its own
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            self._pid = os.getpid()
        return self._fd

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold the gate for the duration of the block (re-entrant in one thread)."""
        with self._lock:
            if self._depth == 0:
                fcntl.flock(self._file(), fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fcntl.flock(self._file(), fcntl.LOCK_UN)


def exclusive(engine: Engine) -> contextlib.AbstractContextManager[None]:
    """Hold a SQLite database's gate across several short transactions (a no-op elsewhere):
    cheaper than handing it over between each. Never hold it across network calls."""
    return _gate(engine)


def _gate(engine: Engine) -> contextlib.AbstractContextManager[None]:
    gate = _GATES.get(engine)
    return gate.held() if gate is not None else contextlib.nullcontext()


@contextmanager
def session(engine: Engine) -> Iterator[Session]:
    """A session that commits when the block ends normally and rolls back otherwise.

    On SQLite, transactions pass one at a time through the engine's `SqliteGate`."""
    with _gate(engine), Session(engine, expire_on_commit=False) as s:
        try:
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """A Core connection in a transaction (committed at the end), for pre-built statements.

    Through the same gate as `session`."""
    with _gate(engine), engine.begin() as conn:
        yield conn


_GATES: weakref.WeakKeyDictionary[Engine, SqliteGate] = weakref.WeakKeyDictionary()

"""Fencing: a dispatcher that lost the lead cannot change jobs as if it still led.

The Redis lock (`scheduler.leader`) says who *should* lead, but a leader paused (SIGSTOP, a
long GC or swap stall, a VM frozen) past the lock's expiry resumes in the middle of a pass
believing it still leads while a standby does. So the database holds the leader's *term*
(`leader_term`, one row): a dispatcher that takes the lock raises it by one there
(`take`) and keeps the number it got. While it works as leader (`fenced(term)`), every
transaction its thread begins on a `guard`ed engine first reads that row and raises
`Deposed` unless it still holds its own term. The term cannot change under a transaction
that passed the check: on PostgreSQL the check first takes a shared transaction-level
advisory lock that `take` needs exclusively, so a standby's `take` waits for the
transaction to end (an advisory lock, not `SELECT ... FOR UPDATE`: a row lock would give
every read-only transaction of the dispatcher a transaction id and a WAL flush at commit);
on SQLite `BEGIN IMMEDIATE` (`workers.db`) already holds the database's only write lock
for the whole transaction. (So a leader paused *inside* a transaction holds the standby's
`take` up until it resumes and ends that transaction, which was legitimately its own; on
SQLite it holds every process up, as any process paused mid-transaction does.)

On PostgreSQL the check runs before the first statement of the transaction that can
change rows (anything but a plain `SELECT`: `INSERT`, `UPDATE`, `DELETE`, a `WITH`, a
`SELECT ... FOR UPDATE`), so every write of the pass is fenced: the leases, the expiry of
lost creates, the ambiguous resolutions and reposts, the batches marked done, admission
and twin resolution alike, and any added later. A read-only transaction (the occupancy
count, the next due time) is not checked: it changes nothing, and nothing is sent from a
pass but rows that a fenced write leased. That spares most of the dispatcher's
transactions two statements (issue 13: with the check at every `begin`, fencing roughly
tripled the statements of a pass). Reads earlier in a checked transaction ran before the
lock, but the check sees any term taken before it (each statement reads a fresh snapshot
under READ COMMITTED), and no term can be taken after it until the transaction ends. On
SQLite the check stays in the `begin` event, right after `BEGIN IMMEDIATE`, which holds
the only write lock for the whole transaction anyway. The term lives in the database, so
it survives a Redis restart and only ever grows.

Messages are sent only after the transactions that leased their rows committed. A
dispatcher paused between that commit and its sends delivers them late; they are still
harmless. A late message names rows leased under the old term with a lease that was
counted as occupied by the new leader until it expired. The worker's claim
(`workers.transitions.create.claim_many`) is a compare-and-set from queued or due
retry_wait to submitting: whichever message claims first creates, every later one (late
or the new leader's own) finds the row no longer due and does nothing, so no row is
created twice. A late poll, reconcile or look is an idempotent read of PiAPI whose
records are compare-and-sets too. What a late create message can still do, like any
message delayed past its lease (a backed-up queue), is start a create the new leader had
counted as free, so the limit may be passed by the rows of that one pass until the next
pass counts them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from workers.db import transaction
from workers.models import LEADER_TERM

_ROW = 1
PG_LOCK_KEY = 0x7069617069_0002
"""The PostgreSQL advisory lock of the term ("piapi" and 2; `workers.migrate` uses 1):
shared by fenced transactions, exclusive in `take`."""
_TERM: ContextVar[int | None] = ContextVar("piapi_bulk_leader_term", default=None)
"""The term the current thread works under as leader (None: not fenced)."""
_CHECK = "SELECT term, holder FROM leader_term WHERE id = 1"
_TAKE = (LEADER_TERM.update().where(LEADER_TERM.c.id == _ROW)
         .values(term=LEADER_TERM.c.term + 1)
         .returning(LEADER_TERM.c.term))


class Deposed(Exception):
    """The database holds a newer term than ours: another dispatcher leads now."""

    def __init__(self, mine: int, current: int, holder: str) -> None:
        super().__init__(f"term {mine} is over: {holder or 'another dispatcher'} "
                         f"leads with term {current}")
        self.mine = mine
        self.current = current
        self.holder = holder


def take(engine: Engine, holder: str, now: float | None = None) -> int:
    """Start a new term for `holder` (a lock token) and return it: one more than any before."""
    values: dict[str, Any] = {"holder": holder, "taken_at": time.time() if now is None else now}
    insert = (postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert)
    with transaction(engine) as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_LOCK_KEY})")
        # The row exists from the migration on; only a hand-emptied table lacks it.
        conn.execute(insert(LEADER_TERM).values(id=_ROW, term=0, **values)
                     .on_conflict_do_nothing(index_elements=["id"]))
        return int(conn.execute(_TAKE.values(**values)).scalar_one())


def current(engine: Engine) -> tuple[int, str]:
    """The term in the database and its holder."""
    with transaction(engine) as conn:
        row = conn.exec_driver_sql(_CHECK).first()
    return (int(row[0]), str(row[1])) if row else (0, "")


_CHECKED = "piapi_bulk_fence_checked"
"""`Connection.info` key: the term this connection's current transaction was checked
under (PostgreSQL; cleared when a transaction begins)."""
_READS = ("SELECT", "SHOW", "SAVEPOINT", "RELEASE", "ROLLBACK", "COMMIT", "BEGIN")
_LOCKING = (" FOR UPDATE", " FOR NO KEY UPDATE", " FOR SHARE", " FOR KEY SHARE")


def guard(engine: Engine) -> None:
    """Make `engine` check the term in every transaction begun inside `fenced`
    (idempotent): at `begin` on SQLite, before the first write on PostgreSQL."""
    if engine.dialect.name != "postgresql":
        if not event.contains(engine, "begin", _check):
            event.listen(engine, "begin", _check)
        return
    if not event.contains(engine, "begin", _forget):
        event.listen(engine, "begin", _forget)
        event.listen(engine, "before_cursor_execute", _check_before_write)


def writes(statement: str) -> bool:
    """Whether a SQL statement may change rows (or lock them to): all but plain reads."""
    head = statement.lstrip()[:9].upper()
    if not head.startswith(_READS):
        return True
    upper = statement.upper()
    return head.startswith("SELECT") and any(lock in upper for lock in _LOCKING)


@contextmanager
def fenced(term: int) -> Iterator[None]:
    """Within the block, this thread's transactions on a `guard`ed engine run only while
    the database still holds `term`; otherwise they raise `Deposed` before any statement."""
    token = _TERM.set(term)
    try:
        yield
    finally:
        _TERM.reset(token)


def _check(conn: Connection) -> None:
    """SQLite: at `begin`, inside the write lock `BEGIN IMMEDIATE` took."""
    mine = _TERM.get()
    if mine is None:
        return
    row = conn.exec_driver_sql(_CHECK).first()
    _compare(mine, row)


def _forget(conn: Connection) -> None:
    conn.info.pop(_CHECKED, None)


def _check_before_write(conn: Connection, cursor: Any, statement: str, parameters: Any,
                        context: Any, executemany: bool) -> None:
    """PostgreSQL: before the transaction's first statement that may change rows."""
    mine = _TERM.get()
    if mine is None or conn.info.get(_CHECKED) == mine or not writes(statement):
        return
    # On a cursor of its own (the statement's is about to be used); the lock first, in a
    # statement of its own, so the term is read on a snapshot taken after the lock.
    check = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        check.execute(f"SELECT pg_advisory_xact_lock_shared({PG_LOCK_KEY})")
        check.execute(_CHECK)
        row = check.fetchone()
    finally:
        check.close()
    _compare(mine, row)
    conn.info[_CHECKED] = mine


def _compare(mine: int, row: Any) -> None:
    term, holder = (int(row[0]), str(row[1])) if row else (0, "")
    if term != mine:
        raise Deposed(mine, term, holder)

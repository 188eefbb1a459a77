"""Bring a database's schema to the newest Alembic revision: once, under a lock; cheap when done.

Many processes start together (a `run` starts a dispatcher and workers, a fleet spans
hosts), and each upgrades on start-up. The upgrade runs in one transaction that first takes
a lock: a PostgreSQL advisory lock, or on SQLite the file's gate (`workers.db.exclusive`)
and `BEGIN IMMEDIATE`. Whoever waited reads the revision again and finds it at head. The
transaction also makes a failed upgrade leave the database as it was (DDL is transactional
on both). A database already at head costs one short read, before any lock.

A database made before Alembic (`create_tables` of an earlier version: tables, no
`alembic_version`) is stamped at the baseline and upgraded from there; the second revision
skips what such a database has already (see its docstring).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

from workers.db import exclusive, transaction

if TYPE_CHECKING:  # Alembic is imported only when there is something to upgrade
    from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")
"""Alembic's script folder (env.py and versions/), shipped in the wheel as packages."""
HEAD = "0004_priority"
"""The newest revision, written here so that a process starting on a database already at
head (every start but the first) reads one row and never imports Alembic, which parses
every revision file: a third of a second of each worker's and dispatcher's start-up.
tests/unit/test_migrate_head.py checks it against versions/."""
BASELINE = "0001_baseline"
"""The revision of the first release's schema: where a database made before Alembic starts."""
PG_LOCK_KEY = 0x7069617069_0001
"""The PostgreSQL advisory lock id of the upgrade ("piapi" and 1): any constant the
fleet's other advisory locks do not use."""

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Upgrade:
    """What `upgrade` did: the revision before (None: no schema; `legacy`: made before
    Alembic) and after."""

    before: str | None
    after: str
    legacy: bool = False

    @property
    def changed(self) -> bool:
        """True when a migration ran (or a database made before Alembic was adopted)."""
        return self.legacy or self.before != self.after

    def summary(self) -> str:
        """One line for `piapi-bulk db upgrade`."""
        if not self.changed:
            return f"already at head ({self.after})"
        start = ("a database made before migrations (taken as " + BASELINE + ")"
                 if self.legacy else self.before or "an empty database")
        return f"upgraded from {start} to {self.after}"


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration, in code (no alembic.ini): the script folder and, for
    env.py, the connection to run on."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head() -> str:
    """The newest revision (`HEAD`)."""
    return HEAD


def scripts_head() -> str | None:
    """The newest revision as Alembic reads it from versions/ (what `HEAD` must say)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current(engine: Engine) -> str | None:
    """The database's revision; None when it has no `alembic_version` (empty, or made
    before Alembic)."""
    with transaction(engine) as conn:
        return _revision(conn)


def upgrade(engine: Engine) -> Upgrade:
    """Bring the database to head (see the module docstring); safe to call from many
    processes at once, and cheap when there is nothing to do."""
    target = head()
    now = current(engine)
    if now == target:
        return Upgrade(now, target)
    with locked(engine) as conn:
        before = _revision(conn)
        if before == target:  # another process upgraded it while we waited
            return Upgrade(before, target)
        # Made by create_tables before Alembic; other tables (a shared database) do not count.
        legacy = before is None and inspect(conn).has_table("batches")
        from alembic import command

        config = alembic_config(conn)
        if legacy:
            command.stamp(config, BASELINE)
        command.upgrade(config, "head")
    done = Upgrade(before, target, legacy)
    logger.info("database %s", done.summary())
    return done


def _revision(conn: Connection) -> str | None:
    # What MigrationContext.get_current_revision reads, without its log lines per call.
    if not inspect(conn).has_table("alembic_version"):
        return None
    found = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    if len(found) > 1:
        raise RuntimeError(f"alembic_version holds several revisions: {found}")
    return found[0] if found else None


@contextmanager
def locked(engine: Engine) -> Iterator[Connection]:
    """A transaction holding the upgrade lock until it commits (or rolls back)."""
    if engine.dialect.name != "sqlite":
        with transaction(engine) as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY})
            yield conn
        return
    # Batch mode rebuilds a SQLite table by copy, drop and rename, which foreign keys
    # pointing at it (jobs -> batches) refuse while enforced: SQLite's own procedure turns
    # them off (outside a transaction: the pragma is a no-op inside one) and checks them
    # before committing.
    with exclusive(engine), engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        raw.execute("PRAGMA foreign_keys=OFF")
        try:
            with conn.begin():
                yield conn
                broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
                if broken:
                    raise RuntimeError(f"the upgrade broke foreign keys: {broken[:5]}")
        finally:
            raw.execute("PRAGMA foreign_keys=ON")

"""Alembic migrations on SQLite and PostgreSQL: an empty database and the first release's
schema (with rows, with and without `alembic_version`) reach head, which equals the models;
a failed upgrade changes nothing; two `piapi-bulk db upgrade` at once run it once; SQLite's
batch mode rebuilds a table others reference."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Text, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel

from tests.helpers import opened
from tests.integration.e2e import cli, db_env, piapi_bulk
from workers.db import transaction
from workers.migrate import BASELINE, alembic_config, current, head, locked, upgrade

OLD_TABLES = ("batches", "jobs", "attempts", "control")
"""The first release's tables."""

OLD_ROWS: dict[str, list[dict[str, Any]]] = {
    "batches": [
        {"id": "old", "content_hash": "h" * 64, "source": "m.csv", "default_model":
         "Qubico/joycaption", "default_task_type": "joycaption-beta-one", "created_at": 1.5,
         "ingested": True, "total": 2, "invalid": 0, "max_attempts": 3, "concurrency": 4,
         "done": False},
    ],
    "jobs": [
        {"id": 1, "batch_id": "old", "seq": 1, "line": 2, "row_key": "a", "model": None,
         "task_type": None, "input_json": '{"image": "https://x/a.png"}', "metadata_json":
         '{"note": "é"}', "state": "completed", "attempts": 1, "tries": 0, "task_id": "t-1",
         "remote_status": "completed", "next_at": None, "lease_until": None,
         "lease_epoch": "e1", "polls": 3, "poll_errors": 1, "created_at": 1.5,
         "submitted_at": 2.0, "finished_at": 9.25, "output_json": '{"text": "a cat"}',
         "usage_consume": 10_000_000_000, "usage_type": "point", "error_kind": None,
         "error_message": None},
        {"id": 2, "batch_id": "old", "seq": 2, "line": 3, "row_key": "b", "model": None,
         "task_type": None, "input_json": '{"image": "https://x/b.png"}', "metadata_json": None,
         "state": "queued", "attempts": 0, "tries": 0, "task_id": None, "remote_status": None,
         "next_at": None, "lease_until": None, "lease_epoch": None, "polls": 0,
         "poll_errors": 0, "created_at": 1.5, "submitted_at": None, "finished_at": None,
         "output_json": None, "usage_consume": None, "usage_type": None,
         "error_kind": None, "error_message": None},
    ],
    "attempts": [
        {"id": 1, "job_id": 1, "n": 1, "state": "completed", "task_id": "t-1",
         "started_at": 2.0, "ended_at": 9.25, "consume": 10_000_000_000, "error": None},
    ],
    "control": [{"key": "halt", "value": '{"reason": "key refused"}', "updated_at": 3.0}],
}
"""A few rows in every table, as the first release wrote them."""

NEW_DEFAULTS: dict[str, dict[str, Any]] = {
    "batches": {"budget_usd": None, "deadline_at": None, "cancel_mode": None,
                "cancelled_at": None, "paused": None, "service_mode": None, "on_stuck": None,
                "reuse": True},
    "jobs": {"unchecked": None, "service_mode": None, "posts": 0, "retry_base": 0,
             "reconcile_from": None, "fingerprint": None, "reused_from": None, "priority": 0},
    "attempts": {"watch_until": None, "next_at": None, "upload_urls": None},
    "control": {},
}
"""What the old rows hold in the columns added since (their server defaults, or NULL)."""


def to_revision(engine: Engine, revision: str) -> None:
    """Alembic's own upgrade to `revision`, without the lock (test set-up)."""
    with transaction(engine) as conn:
        command.upgrade(alembic_config(conn), revision)


def first_release(engine: Engine) -> None:
    """The first release's schema holding `OLD_ROWS`."""
    to_revision(engine, BASELINE)
    with transaction(engine) as conn:
        for table in OLD_TABLES:
            for row in OLD_ROWS[table]:
                names = ", ".join(f'"{k}"' for k in row)
                values = ", ".join(f":{k}" for k in row)
                conn.execute(text(f"INSERT INTO {table} ({names}) VALUES ({values})"), row)


def rows(conn: Connection, table: str) -> list[dict[str, Any]]:
    found = conn.execute(text(f"SELECT * FROM {table} ORDER BY 1")).mappings().all()
    # SQLite hands booleans back as 0/1
    return [{k: bool(v) if k in ("ingested", "done", "reuse") else v for k, v in r.items()}
            for r in found]


def schema_differences(engine: Engine) -> list[Any]:
    """Alembic's autogenerate comparison of the database with the models."""
    with transaction(engine) as conn:
        return list(compare_metadata(MigrationContext.configure(conn), SQLModel.metadata))


def partial_indexes(engine: Engine) -> set[str]:
    """The database's indexes with a WHERE (which compare_metadata does not look at)."""
    query = ("SELECT name, sql FROM sqlite_master WHERE type = 'index'"
             if engine.dialect.name == "sqlite" else
             "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'")
    with transaction(engine) as conn:
        return {name for name, sql in conn.execute(text(query)) if " WHERE " in (sql or "")}


MODEL_PARTIAL_INDEXES = {str(i.name) for t in SQLModel.metadata.sorted_tables for i in t.indexes
                         if i.dialect_options["postgresql"]["where"] is not None}


def assert_old_rows_intact(engine: Engine) -> None:
    with transaction(engine) as conn:
        for table in OLD_TABLES:
            expected = [{**row, **NEW_DEFAULTS[table]} for row in OLD_ROWS[table]]
            assert rows(conn, table) == expected, table


def test_an_empty_database_reaches_head_equal_to_the_models(database_url: str) -> None:
    with opened(database_url) as engine:
        done = upgrade(engine)
        assert (done.before, done.after, done.changed) == (None, head(), True)
        assert current(engine) == head()
        assert schema_differences(engine) == []
        assert partial_indexes(engine) == MODEL_PARTIAL_INDEXES != set()


def test_the_first_release_with_rows_reaches_head_keeping_them(database_url: str) -> None:
    with opened(database_url) as engine:
        first_release(engine)
        assert current(engine) == BASELINE
        done = upgrade(engine)
        assert (done.before, done.after, done.legacy) == (BASELINE, head(), False)
        assert_old_rows_intact(engine)
        assert schema_differences(engine) == []
        assert partial_indexes(engine) == MODEL_PARTIAL_INDEXES


def test_a_database_made_before_alembic_is_adopted(database_url: str) -> None:
    with opened(database_url) as engine:
        first_release(engine)
        with transaction(engine) as conn:  # create_tables made no alembic_version
            conn.execute(text("DROP TABLE alembic_version"))
        assert current(engine) is None
        done = upgrade(engine)
        assert (done.before, done.after, done.legacy) == (None, head(), True)
        assert "made before migrations" in done.summary()
        assert current(engine) == head()
        assert_old_rows_intact(engine)
        assert schema_differences(engine) == []


def test_a_failed_upgrade_leaves_the_database_as_it_was(database_url: str) -> None:
    with opened(database_url) as engine:
        first_release(engine)
        with transaction(engine) as conn:  # the upgrade's last index cannot be created
            conn.execute(text("CREATE INDEX ix_downloads_batch_state ON control (updated_at)"))
        with pytest.raises(Exception, match="ix_downloads_batch_state"):
            upgrade(engine)
        assert current(engine) == BASELINE
        with transaction(engine) as conn:
            assert set(inspect(conn).get_table_names()) == {*OLD_TABLES, "alembic_version"}
            assert "posts" not in {c["name"] for c in inspect(conn).get_columns("jobs")}
            for table in OLD_TABLES:
                assert rows(conn, table) == OLD_ROWS[table]
            conn.execute(text("DROP INDEX ix_downloads_batch_state"))
        assert upgrade(engine).after == head()  # once the obstacle is gone
        assert_old_rows_intact(engine)


@pytest.mark.integration
def test_two_upgrades_at_once_run_the_migrations_once(database_url: str,
                                                       tmp_path: Path) -> None:
    env = db_env(tmp_path, database_url)
    procs = [subprocess.Popen(cli("db", "upgrade"), env=env, cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    said = sorted(out.strip() for out, _err in outs)
    assert said == [f"already at head ({head()})",
                    f"upgraded from an empty database to {head()}"], outs
    with opened(database_url) as engine:
        assert current(engine) == head()


@pytest.mark.integration
def test_db_upgrade_at_head_changes_nothing(database_url: str, tmp_path: Path) -> None:
    with opened(database_url) as engine:
        first_release(engine)
        upgrade(engine)
        with transaction(engine) as conn:
            before = {t: rows(conn, t) for t in (*OLD_TABLES, "alembic_version")}
    env = db_env(tmp_path, database_url)
    done = piapi_bulk(tmp_path, env, "db", "upgrade")
    assert (done.returncode, done.stdout) == (0, f"already at head ({head()})\n"), done.stderr
    now = piapi_bulk(tmp_path, env, "db", "current")
    assert (now.returncode, now.stdout) == (0, f"{head()} (head)\n"), now.stderr
    with opened(database_url) as engine:
        with transaction(engine) as conn:
            assert {t: rows(conn, t) for t in before} == before
        assert schema_differences(engine) == []


def test_sqlite_batch_mode_rebuilds_a_referenced_table_in_the_upgrade_lock(
        sqlite_url: str) -> None:
    """What a future migration altering a column does on SQLite: copy, drop, rename
    `batches`, which jobs reference, keeping every row and the foreign key."""
    with opened(sqlite_url) as engine:
        first_release(engine)
        with locked(engine) as conn:
            ops = Operations(MigrationContext.configure(conn))
            with ops.batch_alter_table("batches", recreate="always") as batch:
                batch.alter_column("source", existing_type=Text(), nullable=True)
        with transaction(engine) as conn:
            assert [c["nullable"] for c in inspect(conn).get_columns("batches")
                    if c["name"] == "source"] == [True]
            for table in OLD_TABLES:
                assert rows(conn, table) == OLD_ROWS[table]
        with pytest.raises(IntegrityError), transaction(engine) as conn:  # enforced again
            conn.execute(text("UPDATE jobs SET batch_id = 'nope' WHERE id = 1"))

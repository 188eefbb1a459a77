"""Everything added between the first release and the move to Alembic (issues 5 to 13).

Columns on batches, jobs and attempts; the duration_samples and downloads tables; the
indexes the leases, reconciliation, the watch of abandoned tasks, reuse and the run page read.

A database made before Alembic (by `create_tables`, which created what the running version
had and then added what an older one lacked) may hold any part of this already: it is
stamped at the baseline and brought here, so each step is skipped when what it adds
exists. Every later migration can assume exactly this revision's shape.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002_to_issue_13"
down_revision: str | None = "0001_baseline"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
"""64-bit ids on PostgreSQL; INTEGER on SQLite, where only that type autoincrements."""


def new_columns() -> dict[str, list[sa.Column[Any]]]:
    """The columns added, by table: nullable or with a server default, so existing rows
    get a value (new objects each call: a column belongs to one table)."""
    return {
        "batches": [
            sa.Column("budget_usd", sa.Float(), nullable=True),
            sa.Column("deadline_at", sa.Float(), nullable=True),
            sa.Column("cancel_mode", sa.String(8), nullable=True),
            sa.Column("cancelled_at", sa.Float(), nullable=True),
            sa.Column("paused", sa.Text(), nullable=True),
            sa.Column("service_mode", sa.String(16), nullable=True),
            sa.Column("on_stuck", sa.String(8), nullable=True),
            # '1' rather than sa.true(): a constant, which SQLite can ADD in place (an
            # expression makes batch mode copy the table); PostgreSQL reads it as true.
            sa.Column("reuse", sa.Boolean(), server_default="1", nullable=False),
        ],
        "jobs": [
            sa.Column("unchecked", sa.Boolean(), nullable=True),
            sa.Column("service_mode", sa.String(16), nullable=True),
            sa.Column("posts", sa.Integer(), server_default="0", nullable=False),
            sa.Column("retry_base", sa.Integer(), server_default="0", nullable=False),
            sa.Column("reconcile_from", sa.Float(), nullable=True),
            sa.Column("fingerprint", sa.String(64), nullable=True),
            sa.Column("reused_from", sa.BigInteger(), nullable=True),
        ],
        "attempts": [
            sa.Column("watch_until", sa.Float(), nullable=True),
            sa.Column("next_at", sa.Float(), nullable=True),
            sa.Column("upload_urls", sa.Text(), nullable=True),
        ],
    }


INDEXES: list[tuple[str, str, list[str], str | None]] = [
    # (name, table, columns, partial index condition)
    ("ix_jobs_queued_seq", "jobs", ["batch_id", "seq"], "state = 'queued'"),
    ("ix_jobs_lease_until", "jobs", ["lease_until"], None),
    ("ix_jobs_fingerprint", "jobs", ["fingerprint"], None),
    ("ix_jobs_batch_finished", "jobs", ["batch_id", "finished_at"], "finished_at IS NOT NULL"),
    ("ix_attempts_started_at", "attempts", ["started_at"], None),
    ("ix_attempts_watched", "attempts", ["next_at"], "watch_until IS NOT NULL"),
    ("ix_attempts_abandoned", "attempts", ["job_id"], "state = 'abandoned'"),
    ("ix_duration_samples_kind", "duration_samples", ["model", "task_type", "id"], None),
    ("ix_downloads_job", "downloads", ["job_id"], None),
    ("ix_downloads_batch_state", "downloads", ["batch_id", "state", "next_at"], None),
]


def upgrade() -> None:
    """Add the columns, tables and indexes a database lacks."""
    for table, columns in new_columns().items():
        have = _columns(table)
        missing = [c for c in columns if c.name not in have]
        if missing:
            with op.batch_alter_table(table) as batch:
                for column in missing:
                    batch.add_column(column)
    tables = set(sa.inspect(op.get_bind()).get_table_names())
    if "duration_samples" not in tables:
        _create_duration_samples()
    if "downloads" not in tables:
        _create_downloads()
    for name, table, on, where in INDEXES:
        if name not in _indexes(table):
            partial = None if where is None else sa.text(where)
            op.create_index(name, table, on, sqlite_where=partial, postgresql_where=partial)


def _columns(table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)}


def _indexes(table: str) -> set[str]:
    return {str(i["name"]) for i in sa.inspect(op.get_bind()).get_indexes(table)}


def _create_duration_samples() -> None:
    op.create_table(
        "duration_samples",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("task_type", sa.String(64), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def _create_downloads() -> None:
    op.create_table(
        "downloads",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("job_id", ID, nullable=False),
        sa.Column("batch_id", sa.String(40), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("dest", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("file", sa.Text(), nullable=True),
        sa.Column("tmp", sa.Text(), nullable=True),
        sa.Column("bytes", sa.BigInteger(), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("error_kind", sa.String(16), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("tries", sa.Integer(), nullable=False),
        sa.Column("next_at", sa.Float(), nullable=False),
        sa.Column("lease_until", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("dest", "name", name="uq_downloads_dest_name"),
    )


def downgrade() -> None:
    """Not supported: it would drop columns and tables holding rows' data."""
    raise NotImplementedError("piapi-bulk does not downgrade a database: restore a backup")

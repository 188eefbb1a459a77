"""Baseline: the schema of the first release (commit f011c8d), written out so it never changes.

batches, jobs, attempts and control as `create_tables` first made them. The very first
commit (c6166f4) differed only in BIGINT ids on SQLite, which could not insert a row there
(SQLite autoincrements INTEGER keys only) and was replaced the same day, so no usable
database has that shape.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_baseline"
down_revision: str | None = None
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
"""64-bit ids on PostgreSQL; INTEGER on SQLite, where only that type autoincrements."""


def upgrade() -> None:
    """Create the four tables of the first release and their indexes."""
    op.create_table(
        "batches",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("default_model", sa.String(), nullable=True),
        sa.Column("default_task_type", sa.String(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("ingested", sa.Boolean(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("invalid", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=True),
        sa.Column("done", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_batches_content_hash", "batches", ["content_hash"], unique=True)
    op.create_table(
        "jobs",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("batch_id", sa.String(40), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("row_key", sa.Text(), nullable=False),
        sa.Column("model", sa.String(), nullable=True),
        sa.Column("task_type", sa.String(), nullable=True),
        sa.Column("input_json", sa.Text(), nullable=True),
        sa.Column("metadata_json", sa.Text(), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("tries", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.String(64), nullable=True),
        sa.Column("remote_status", sa.String(32), nullable=True),
        sa.Column("next_at", sa.Float(), nullable=True),
        sa.Column("lease_until", sa.Float(), nullable=True),
        sa.Column("lease_epoch", sa.String(32), nullable=True),
        sa.Column("polls", sa.Integer(), nullable=False),
        sa.Column("poll_errors", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("submitted_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("output_json", sa.Text(), nullable=True),
        sa.Column("usage_consume", sa.BigInteger(), nullable=True),
        sa.Column("usage_type", sa.String(16), nullable=True),
        sa.Column("error_kind", sa.String(32), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("batch_id", "seq", name="uq_jobs_batch_seq"),
    )
    op.create_index("ix_jobs_state_next", "jobs", ["state", "next_at"])
    op.create_index("ix_jobs_batch_state_seq", "jobs", ["batch_id", "state", "seq"])
    op.create_table(
        "attempts",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("job_id", ID, nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("task_id", sa.String(64), nullable=True),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("ended_at", sa.Float(), nullable=True),
        sa.Column("consume", sa.BigInteger(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", "n", name="uq_attempts_job_n"),
    )
    op.create_index("ix_attempts_job_id", "attempts", ["job_id"])
    op.create_index("ix_attempts_task_id", "attempts", ["task_id"])
    op.create_table(
        "control",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )


def downgrade() -> None:
    """Not supported: it would drop every table and the rows in them."""
    raise NotImplementedError("piapi-bulk does not downgrade a database: restore a backup")

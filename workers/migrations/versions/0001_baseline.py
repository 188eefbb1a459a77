"""Baseline: the schema of the first release (commit f011c8d), written out so it never changes.

batches, jobs, attempts and control as `create_tables` first made them. The very first
commit (c6166f4) differed only in BIGINT ids on SQLite, which could not insert a row there
(SQLite autoincrements INTEGER keys only) and was replaced the same day, so no usable
database has that shape.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from workers.migrations.schema import NO_DOWNGRADE, columns

revision = "0001_baseline"
down_revision: str | None = None
branch_labels = None
depends_on = None

BATCHES = """
    id                  str40
    content_hash        str64
    source              text
    default_model       str     null
    default_task_type   str     null
    created_at          float
    ingested            bool
    total               int
    invalid             int
    max_attempts        int
    concurrency         int     null
    done                bool
"""
JOBS = """
    id                  id
    batch_id            str40
    seq                 int
    line                int
    row_key             text
    model               str     null
    task_type           str     null
    input_json          text    null
    metadata_json       text    null
    state               str16
    attempts            int
    tries               int
    task_id             str64   null
    remote_status       str32   null
    next_at             float   null
    lease_until         float   null
    lease_epoch         str32   null
    polls               int
    poll_errors         int
    created_at          float
    submitted_at        float   null
    finished_at         float   null
    output_json         text    null
    usage_consume       bigint  null
    usage_type          str16   null
    error_kind          str32   null
    error_message       text    null
"""
ATTEMPTS = """
    id                  id
    job_id              id
    n                   int
    state               str16
    task_id             str64   null
    started_at          float
    ended_at            float   null
    consume             bigint  null
    error               text    null
"""
CONTROL = """
    key                 str64
    value               text
    updated_at          float
"""


def upgrade() -> None:
    """Create the four tables of the first release and their indexes."""
    op.create_table("batches", *columns(BATCHES), sa.PrimaryKeyConstraint("id"))
    op.create_index("ix_batches_content_hash", "batches", ["content_hash"], unique=True)
    op.create_table(
        "jobs", *columns(JOBS),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("batch_id", "seq", name="uq_jobs_batch_seq"),
    )
    op.create_index("ix_jobs_state_next", "jobs", ["state", "next_at"])
    op.create_index("ix_jobs_batch_state_seq", "jobs", ["batch_id", "state", "seq"])
    op.create_table(
        "attempts", *columns(ATTEMPTS),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", "n", name="uq_attempts_job_n"),
    )
    op.create_index("ix_attempts_job_id", "attempts", ["job_id"])
    op.create_index("ix_attempts_task_id", "attempts", ["task_id"])
    op.create_table("control", *columns(CONTROL), sa.PrimaryKeyConstraint("key"))


def downgrade() -> None:
    """Not supported: it would drop every table and the rows in them."""
    raise NotImplementedError(NO_DOWNGRADE)

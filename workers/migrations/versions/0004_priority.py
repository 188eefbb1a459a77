"""Longest expected rows first: `jobs.priority` and the queued rows' index in its order.

`jobs.priority` (`workers.expected`: a row's expected duration in whole seconds) is set at
ingest; rows already in the database get 0, all equal, so they keep manifest order. The
partial index of queued rows becomes (batch_id, priority DESC, seq), which the lease walks
in its own order (`workers.leases`); the (batch_id, seq) one it replaces served only that
lease (the other readers of queued rows use `ix_jobs_batch_state_seq`).

Each step is skipped when what it adds is there already (or what it drops is gone), like
0002 and 0003, so a database brought here from any earlier shape ends the same.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from workers.migrations.schema import NO_DOWNGRADE, columns

revision = "0004_priority"
down_revision: str | None = "0003_fencing"
branch_labels = None
depends_on = None

_QUEUED = "state = 'queued'"


def upgrade() -> None:
    """Add `jobs.priority` (0 for the rows there) and swap the queued rows' index."""
    inspector = sa.inspect(op.get_bind())
    if "priority" not in {c["name"] for c in inspector.get_columns("jobs")}:
        # A constant server default: SQLite adds the column in place, PostgreSQL without
        # rewriting the table.
        with op.batch_alter_table("jobs") as batch:
            for column in columns("priority int default=0"):
                batch.add_column(column)
    indexes = {str(i["name"]) for i in inspector.get_indexes("jobs")}
    if "ix_jobs_queued_priority" not in indexes:
        op.create_index("ix_jobs_queued_priority", "jobs",
                        ["batch_id", sa.text("priority DESC"), "seq"],
                        sqlite_where=sa.text(_QUEUED), postgresql_where=sa.text(_QUEUED))
    if "ix_jobs_queued_seq" in indexes:
        op.drop_index("ix_jobs_queued_seq", table_name="jobs")


def downgrade() -> None:
    """Not supported: piapi-bulk never downgrades a database."""
    raise NotImplementedError(NO_DOWNGRADE)

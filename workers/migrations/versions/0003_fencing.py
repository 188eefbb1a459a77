"""The dispatcher leader's term (`workers.fencing`): a one-row table, its row at term 0.

A database from before this revision had no fencing; its first dispatcher to lead takes
term 1. A database made before Alembic by a version that already had the table (stamped at
the baseline, then brought here like every such database, see 0002) keeps it: the table is
created only when missing, and its row only added when missing.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from workers.migrations.schema import NO_DOWNGRADE

revision = "0003_fencing"
down_revision: str | None = "0002_to_issue_13"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create `leader_term` with its one row (each only when missing)."""
    bind = op.get_bind()
    if "leader_term" in sa.inspect(bind).get_table_names():
        if bind.execute(sa.text("SELECT count(*) FROM leader_term WHERE id = 1")).scalar():
            return
        op.execute(sa.text("INSERT INTO leader_term (id, term, holder, taken_at) "
                           "VALUES (1, 0, '', 0.0)"))
        return
    table = op.create_table(
        "leader_term",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("term", sa.BigInteger(), nullable=False),
        sa.Column("holder", sa.Text(), nullable=False),
        sa.Column("taken_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(table, [{"id": 1, "term": 0, "holder": "", "taken_at": 0.0}])


def downgrade() -> None:
    """Not supported: piapi-bulk never downgrades a database."""
    raise NotImplementedError(NO_DOWNGRADE)

"""Everything added between the first release and the move to Alembic (issues 5 to 13).

Columns on batches, jobs and attempts; the duration_samples and downloads tables; the
indexes the leases, reconciliation, the watch of abandoned tasks, reuse and the run page read.

A database made before Alembic (by `create_tables`, which created what the running version
had and then added what an older one lacked) may hold any part of this already: it is
stamped at the baseline and brought here, so each step is skipped when what it adds
exists. Every later migration can assume exactly this revision's shape.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from workers.migrations.schema import NO_DOWNGRADE, columns

revision = "0002_to_issue_13"
down_revision: str | None = "0001_baseline"
branch_labels = None
depends_on = None

NEW_COLUMNS = {
    # Nullable or with a server default, so existing rows get a value.
    "batches": """
        budget_usd      float   null
        deadline_at     float   null
        cancel_mode     str8    null
        cancelled_at    float   null
        paused          text    null
        service_mode    str16   null
        on_stuck        str8    null
        # '1' rather than sa.true(): a constant, which SQLite can ADD in place (an
        # expression makes batch mode copy the table); PostgreSQL reads it as true.
        reuse           bool    default=1
    """,
    "jobs": """
        unchecked       bool    null
        service_mode    str16   null
        posts           int     default=0
        retry_base      int     default=0
        reconcile_from  float   null
        fingerprint     str64   null
        reused_from     bigint  null
    """,
    "attempts": """
        watch_until     float   null
        next_at         float   null
        upload_urls     text    null
    """,
}
"""The columns added, by table (`workers.migrations.schema.columns`)."""
DURATION_SAMPLES = """
    id              id
    model           str64
    task_type       str64
    duration_s      float
    at              float
"""
DOWNLOADS = """
    id              id
    job_id          id
    batch_id        str40
    n               int
    url             text
    dest            text
    name            text
    state           str16
    file            text    null
    tmp             text    null
    bytes           bigint  null
    sha256          str64   null
    error_kind      str16   null
    error           text    null
    tries           int
    next_at         float
    lease_until     float   null
    updated_at      float
"""


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
    for table, spec in NEW_COLUMNS.items():
        have = _columns(table)
        missing = [c for c in columns(spec) if c.name not in have]
        if missing:
            with op.batch_alter_table(table) as batch:
                for column in missing:
                    batch.add_column(column)
    tables = set(sa.inspect(op.get_bind()).get_table_names())
    if "duration_samples" not in tables:
        op.create_table("duration_samples", *columns(DURATION_SAMPLES),
                        sa.PrimaryKeyConstraint("id"))
    if "downloads" not in tables:
        op.create_table("downloads", *columns(DOWNLOADS), sa.PrimaryKeyConstraint("id"),
                        sa.UniqueConstraint("dest", "name", name="uq_downloads_dest_name"))
    for name, table, on, where in INDEXES:
        if name not in _indexes(table):
            partial = None if where is None else sa.text(where)
            op.create_index(name, table, on, sqlite_where=partial, postgresql_where=partial)


def _columns(table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)}


def _indexes(table: str) -> set[str]:
    return {str(i["name"]) for i in sa.inspect(op.get_bind()).get_indexes(table)}


def downgrade() -> None:
    """Not supported: it would drop columns and tables holding rows' data."""
    raise NotImplementedError(NO_DOWNGRADE)

"""Alembic's entry point: run the migrations on the connection `workers.migrate` hands over.

The connection is already in the transaction that holds the upgrade lock, so Alembic
neither opens nor commits one: the whole upgrade commits or rolls back as one.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from workers import models  # noqa: F401  (registers the tables on SQLModel.metadata)


def run_migrations(connection: Connection) -> None:
    """Run the pending migrations (the ones Alembic's command asked for) on `connection`."""
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        # SQLite alters little in place: a future migration that must rebuild a table gets
        # Alembic's "move and copy" batch mode (workers.migrate.locked makes that safe).
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


# Alembic runs this file with its context in place; imported on its own (the wheel's
# import check) it does nothing.
if hasattr(context, "config"):
    run_migrations(context.config.attributes["connection"])

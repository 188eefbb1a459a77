"""The record's Alembic migrations: `env.py` and `versions/` (run by `workers.migrate`)."""

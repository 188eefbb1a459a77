"""`workers.migrate.HEAD` names the newest revision in versions/: a process on a database
at head skips Alembic by trusting it, so a new revision that forgets to move it would never
be applied."""

from workers.migrate import HEAD, scripts_head


def test_head_names_the_newest_revision_in_versions() -> None:
    assert scripts_head() == HEAD

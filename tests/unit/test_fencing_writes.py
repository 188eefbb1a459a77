"""Which statements the PostgreSQL fence checks the term before (`workers.fencing.writes`):
everything that may change or lock rows; plain reads go unchecked."""

import pytest

from workers.fencing import writes


@pytest.mark.parametrize(("statement", "expected"), [
    ("SELECT count(*) FROM jobs WHERE state = %(s)s", False),
    ("  select id from jobs", False),
    ("SELECT term, holder FROM leader_term WHERE id = 1", False),
    ("SAVEPOINT sa_savepoint_1", False),
    ("RELEASE SAVEPOINT sa_savepoint_1", False),
    ("SHOW server_version", False),
    ("UPDATE jobs SET state = %(s)s WHERE id IN (1, 2)", True),
    ("INSERT INTO attempts (job_id) VALUES (%(j)s)", True),
    ("DELETE FROM duration_sample WHERE id < 5", True),
    ("WITH due AS (SELECT id FROM jobs) UPDATE jobs SET x = 1", True),
    ("SELECT id FROM jobs WHERE state = 'queued' FOR UPDATE SKIP LOCKED", True),
    ("SELECT id FROM jobs FOR NO KEY UPDATE", True),
    ("select id from batches for share", True),
    ("MERGE INTO jobs USING x ON true WHEN MATCHED THEN DELETE", True),
    ("TRUNCATE jobs", True),
])
def test_writes(statement: str, expected: bool) -> None:
    assert writes(statement) is expected

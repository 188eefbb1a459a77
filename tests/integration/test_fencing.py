"""Fencing of a deposed dispatcher (`workers.fencing`), on SQLite and PostgreSQL.

First each write path a dispatcher runs as leader, under a stale term (refused, nothing
changed) and under the current one (accepted); then two real dispatchers, the leader
stopped with SIGSTOP mid-pass until the standby has taken over, then resumed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from scheduler.admission import Admission
from tests.integration.e2e import add_batch, set_jobs
from workers import durations, fencing, leases, spending
from workers import transitions as tr
from workers.db import transaction
from workers.models import ATTEMPTS, BATCHES, JOBS
from workers.reconcile import records as ambiguous
from workers.transitions import operator, reuse

NOW = 1_000_000.0
EPOCH = "e1"

WritePath = Callable[[Engine, list[int]], Any]
WRITE_PATHS: dict[str, WritePath] = {
    "lease submits": lambda e, ids: leases.lease_submits(e, "b1", 5, NOW, EPOCH, 30.0),
    "lease polls": lambda e, ids: leases.lease_polls(e, 5, NOW, EPOCH, 30.0),
    "lease reconciles": lambda e, ids: leases.lease_reconciles(e, 5, NOW, EPOCH, 30.0),
    "lease looks": lambda e, ids: leases.lease_looks(e, 5, NOW, 30.0),
    "expire lost creates": lambda e, ids: tr.expire_submitting(e, NOW),
    "ambiguous as failed": lambda e, ids: tr.resolve_ambiguous_as_failed(e, NOW),
    "ambiguous reposted": lambda e, ids: ambiguous.repost_all(e, NOW, 12),
    "batches marked done": lambda e, ids: leases.mark_done_batches(e),
    "twins resolved": lambda e, ids: reuse.resolve_twins(e, ids[:1], NOW, 3600.0,
                                                         epoch=EPOCH),
    "cancel swept": lambda e, ids: operator.sweep_cancelled(e, "b1", NOW, "finish"),
    "admission": lambda e, ids: Admission(e).refresh(leases.open_batches(e), NOW, EPOCH),
    "budget pause": lambda e, ids: spending.set_paused(e, "b1", "over budget"),
    "durations pruned": lambda e, ids: durations.prune(e),
}


def _rows(engine: Engine) -> list[Any]:
    with transaction(engine) as conn:
        return [list(conn.execute(select(t).order_by(*t.primary_key.columns)).all())
                for t in (BATCHES, JOBS, ATTEMPTS)]


def _work_for_every_path(engine: Engine) -> list[int]:
    """Rows each path would change: one queued, one running and one ambiguous (both due),
    one submitting whose lease passed, and a batch with nothing left to run."""
    ids = add_batch(engine, "b1", rows=4)
    set_jobs(engine, ids[1], state="running", task_id="t2", next_at=NOW - 1)
    set_jobs(engine, ids[2], state="ambiguous", next_at=NOW - 1)
    set_jobs(engine, ids[3], state="submitting", lease_until=NOW - 1)
    done = add_batch(engine, "b2", rows=1)
    set_jobs(engine, *done, state="completed")
    return ids


@pytest.mark.parametrize("path", list(WRITE_PATHS))
def test_a_stale_term_is_refused_and_the_current_one_accepted(engine: Engine,
                                                              path: str) -> None:
    ids = _work_for_every_path(engine)
    fencing.guard(engine)
    old = fencing.take(engine, "host:1:old")
    new = fencing.take(engine, "host:2:new")
    assert new > old
    before = _rows(engine)
    with pytest.raises(fencing.Deposed) as refused, fencing.fenced(old):
        WRITE_PATHS[path](engine, ids)
    assert (refused.value.current, refused.value.holder) == (new, "host:2:new")
    assert _rows(engine) == before  # nothing written
    with fencing.fenced(new):
        WRITE_PATHS[path](engine, ids)
    assert fencing.current(engine) == (new, "host:2:new")


def test_the_current_term_changes_rows(engine: Engine) -> None:
    """Under its own term, the leader's passes do what they did unfenced."""
    ids = _work_for_every_path(engine)
    fencing.guard(engine)
    term = fencing.take(engine, "host:1:only")
    with fencing.fenced(term):
        assert leases.lease_submits(engine, "b1", 5, NOW, EPOCH, 30.0) == ids[:1]
        assert list(leases.lease_polls(engine, 5, NOW, EPOCH, 30.0)) == [ids[1]]
        assert tr.expire_submitting(engine, NOW) == [ids[3]]
        assert leases.mark_done_batches(engine) == ["b2"]


def test_terms_only_grow_and_unfenced_work_is_not_checked(engine: Engine) -> None:
    fencing.guard(engine)
    terms = [fencing.take(engine, f"host:{i}:x") for i in range(3)]
    assert terms == sorted(set(terms))
    # Outside `fenced` (workers, ingest, the standby's reads) nothing is checked.
    assert leases.open_batches(engine) == []

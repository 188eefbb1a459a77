"""Fencing of a deposed dispatcher (`workers.fencing`), on SQLite and PostgreSQL.

First each write path a dispatcher runs as leader, under a stale term (refused, nothing
changed) and under the current one (accepted); then two real dispatchers, the leader
stopped with SIGSTOP mid-pass until the standby has taken over, then resumed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select
from sqlalchemy.engine import Engine

from scheduler.admission import Admission
from tests.helpers import Emulator, MakeEmulator, Spawn, opened, wait_until
from tests.integration import e2e
from tests.integration.e2e import add_batch, set_jobs
from workers import durations, fencing, leases, spending
from workers import transitions as tr
from workers.db import transaction
from workers.keys import LOCK_KEY
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


READ_FIRST = {"twins resolved", "admission", "durations pruned"}
"""Paths that read first and write only what they found to change: here (no twin, no
budget, few samples) nothing, so on PostgreSQL, which checks before a transaction's first
write, a stale term is not even noticed, and nothing is written."""


@pytest.mark.parametrize("path", list(WRITE_PATHS))
def test_a_stale_term_is_refused_and_the_current_one_accepted(engine: Engine,
                                                              path: str) -> None:
    ids = _work_for_every_path(engine)
    fencing.guard(engine)
    old = fencing.take(engine, "host:1:old")
    new = fencing.take(engine, "host:2:new")
    assert new > old
    before = _rows(engine)
    if engine.dialect.name == "postgresql" and path in READ_FIRST:
        with fencing.fenced(old):  # it finds nothing to change, and writes nothing
            WRITE_PATHS[path](engine, ids)
    else:
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


def test_a_read_only_transaction_is_checked_only_on_sqlite(engine: Engine) -> None:
    """PostgreSQL checks before a transaction's first write (a pure read changes nothing
    and sends nothing); SQLite at `begin`, inside the write lock it holds anyway. Either
    way the first write under a stale term is refused."""
    _work_for_every_path(engine)
    fencing.guard(engine)
    old = fencing.take(engine, "host:1:old")
    fencing.take(engine, "host:2:new")
    with fencing.fenced(old):
        if engine.dialect.name == "postgresql":
            assert [b.id for b in leases.open_batches(engine)] == ["b1", "b2"]
        else:
            with pytest.raises(fencing.Deposed):
                leases.open_batches(engine)
        with pytest.raises(fencing.Deposed):
            leases.mark_done_batches(engine)
    assert leases.open_batches(engine)  # nothing was marked done


# --- two real dispatchers, the leader stopped past its lock and resumed ------------------

LIMIT = 4
"""--concurrency of both dispatchers: below the emulator's account limit of 8, so that the
emulator's peak in flight shows whether the fleet kept it."""


@pytest.fixture
def emu(make_emulator: MakeEmulator) -> Emulator:
    return make_emulator("--time-scale", "0.01", "--concurrency", "8")


def _stopped(pid: int) -> bool:
    """The process is stopped (SIGSTOP): state T in /proc."""
    return e2e.process_state(pid) == "T"


def _lock_token(client: redis.Redis) -> str | None:
    value = client.get(LOCK_KEY)
    return value.decode() if value else None


def _stop_at_next_pass(pause_file: Path, pid: int) -> None:
    """Ask a dispatcher to stop itself at the start of its next pass (right after it checked
    its lock, outside any transaction), and wait until it has."""
    pause_file.touch()
    wait_until(lambda: not pause_file.exists() and _stopped(pid), 60,
               what=f"dispatcher {pid} to stop itself")


def _leases(database_url: str) -> set[tuple[int, float]]:
    """Rows a dispatcher leased (lease_epoch is set only by a dispatcher's lease; a worker's
    claim and records clear it) and until when."""
    with opened(database_url) as engine, transaction(engine) as conn:
        return {(int(i), float(u)) for i, u in conn.execute(
            select(JOBS.c.id, JOBS.c.lease_until).where(JOBS.c.lease_epoch.is_not(None))).all()}


@contextmanager
def _continued_after(*procs: subprocess.Popen[bytes]) -> Iterator[None]:
    """SIGCONT these processes when the block ends, however it ends."""
    try:
        yield
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)


def test_a_leader_stopped_past_its_lock_and_resumed_is_fenced(
        tmp_path: Path, database_url: str, redis_url: str, emu: Emulator,
        spawn: Spawn) -> None:
    """The leader SIGSTOPs mid-pass; the standby takes the lock and a new term and leads;
    the old leader, resumed, is deposed at its first transaction: it leases, expires and
    sends nothing, and every row is still created exactly once within the limit."""
    rows = e2e.caption_rows(30)
    manifest = e2e.write_jsonl(tmp_path / "rows.jsonl", rows)
    client = redis.Redis.from_url(redis_url)
    env = e2e.run_env(tmp_path, emu, database_url, REDIS_URL=redis_url)
    submitted = e2e.piapi_bulk(tmp_path, env, "submit", str(manifest))
    assert submitted.returncode == 0, submitted.stderr
    batch = submitted.stdout.strip().splitlines()[-1]
    spawn(env, "worker", log="worker.log")
    procs = {}
    for name in ("d1", "d2"):
        proc = spawn({**env, "PIAPI_BULK_TEST_PAUSE_FILE": str(tmp_path / f"{name}.pause")},
                     "dispatcher", "--concurrency", str(LIMIT), log=f"{name}.log")
        procs[name] = proc
    try:
        wait_until(lambda: e2e.count_state(database_url, "completed") >= 10, 120,
                   what="10 completed rows")
        old_token = wait_until(lambda: _lock_token(client), 30, what="a leader")
        old = next(n for n, p in procs.items() if f":{p.pid}:" in old_token)
        new = next(n for n in procs if n != old)
        with _continued_after(procs[old]):
            _stop_at_next_pass(tmp_path / f"{old}.pause", procs[old].pid)
            # The standby takes the lock once it expires, and a newer term.
            new_token = wait_until(lambda: (t := _lock_token(client)) != old_token and t, 60,
                                   what="the standby to take the lock")
            assert f":{procs[new].pid}:" in new_token
            with opened(database_url) as engine:
                term, holder = wait_until(lambda: (c := fencing.current(engine))[1]
                                          == new_token and c, 30, what="the standby's term")
            # ... and leads: rows complete again (nothing was leased while no one led).
            done = e2e.count_state(database_url, "completed")
            wait_until(lambda: e2e.count_state(database_url, "completed") >= done + LIMIT, 120,
                       what="rows completed under the new leader")
            # The new leader pauses too, between passes, so that only the old one could
            # write now; then the old one resumes mid-pass.
            with _continued_after(procs[new]):
                _stop_at_next_pass(tmp_path / f"{new}.pause", procs[new].pid)
                leased = _leases(database_url)
                os.kill(procs[old].pid, signal.SIGCONT)
                # Fenced or not, it stands by after that pass ("lock lost" unfenced).
                wait_until(lambda: "; standing by" in (tmp_path / f"{old}.log").read_text(),
                           60, what="the old leader to stand by")
                # From the database: it leased nothing (no lease added or renewed) and took
                # no lost create back; the term is still the new leader's.
                assert _leases(database_url) <= leased
                assert e2e.count_state(database_url, "ambiguous") == 0
                with opened(database_url) as engine:
                    assert fencing.current(engine) == (term, holder)
                old_log = (tmp_path / f"{old}.log").read_text()
                assert (f"dispatcher {old_token} deposed by term {term}; standing by"
                        in old_log), old_log[-3000:]
        wait_until(lambda: e2e.count_state(database_url, "completed") == len(rows), 180,
                   what="every row completed")
    finally:
        client.close()
    assert (tmp_path / f"{old}.log").read_text().count("deposed by term") == 1
    assert re.search(rf"dispatcher {re.escape(new_token)} leads with term {term}\b",
                     (tmp_path / f"{new}.log").read_text())
    exported = e2e.piapi_bulk(tmp_path, env, "export", batch, "-o", "out.jsonl")
    assert exported.returncode == 0, exported.stderr
    results = e2e.read_results(tmp_path / "out.jsonl")
    ledger = {t["task_id"]: t for t in emu.ledger()}
    assert [r["id"] for r in results] == [r["id"] for r in rows]
    assert {r["status"] for r in results} == {"completed"}
    assert all(r["output"] == ledger[r["task_id"]]["output"] for r in results)
    stats = emu.stats()
    assert stats["max_creates_per_input"] == 1  # never created twice
    assert stats["creates"] == len(rows)
    assert stats["peak_in_flight"] <= LIMIT

"""A dead dispatcher's leader lock is given up by the run that killed it, so its replacement
leads at once instead of after the lock's TTL; no other holder's lock is touched."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import redis

from scheduler.leader import LeaderLock, break_lock, token_prefix
from scheduler.services import Child, release_dead_leader
from workers.keys import LOCK_KEY

HOST = socket.gethostname()


@pytest.mark.parametrize(
    ("held", "pid", "broken"),
    [
        (f"{HOST}:123:ab12cd34", 123, True),
        (f"{HOST}:123:ab12cd34:scoped", 123, True),
        (f"{HOST}:1234:ab12cd34", 123, False),  # another process whose pid starts alike
        (f"{HOST}:12:ab12cd34", 123, False),
        ("elsewhere:123:ab12cd34", 123, False),  # the same pid on another host
        (None, 123, False),
    ],
)
def test_only_the_dead_process_lock_is_broken(redis_url: str, held: str | None, pid: int,
                                              broken: bool) -> None:
    client = redis.Redis.from_url(redis_url)
    if held is not None:
        client.set(LOCK_KEY, held, px=10_000)
    assert break_lock(client, pid) is broken
    assert client.get(LOCK_KEY) == (None if broken or held is None else held.encode())


def test_a_lock_taken_by_a_leader_starts_with_its_prefix(redis_url: str) -> None:
    lock = LeaderLock(redis.Redis.from_url(redis_url), scoped=True)
    assert lock.try_lead()
    assert lock.token.startswith(token_prefix(os.getpid()))


@pytest.mark.integration
def test_a_child_killed_or_found_dead_reports_its_pid_before_it_starts_again(
        tmp_path: Path, redis_url: str) -> None:
    dead: list[int] = []
    child = Child("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], {},
                  tmp_path / "sleeper.log", after_death=dead.append).start()
    first = child.pid
    assert first is not None
    child.kill()
    assert dead == [first]
    child.start()
    second = child.pid
    assert second is not None
    child.kill()
    assert dead == [first, second]
    quitter = Child("quitter", [sys.executable, "-c", "pass"], {}, tmp_path / "q.log",
                    after_death=dead.append).start()
    assert quitter.proc is not None
    old = quitter.proc.pid
    quitter.proc.wait(timeout=30)
    assert quitter.revive()  # restarted, after reporting the one that exited
    assert dead == [first, second, old] and quitter.pid != old
    quitter.proc.wait(timeout=30)


def test_the_run_releases_its_dead_dispatcher_lock_and_no_other(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.set(LOCK_KEY, f"{HOST}:4242:ab12cd34:scoped", px=10_000)
    release_dead_leader(redis_url, 4243)
    assert client.get(LOCK_KEY) is not None
    release_dead_leader(redis_url, 4242)
    assert client.get(LOCK_KEY) is None
    release_dead_leader("redis://127.0.0.1:9/0", 4242)  # no Redis: nothing raised


def test_a_standing_dispatcher_is_told_from_a_runs_scoped_one(redis_url: str) -> None:
    """`run` names other open batches as run by the fleet only when the leader is a standing
    dispatcher (it serves every batch); a run's scoped one leaves them alone."""
    from scheduler.services import standing_dispatcher

    client = redis.Redis.from_url(redis_url)
    assert not standing_dispatcher(redis_url)
    client.set(LOCK_KEY, LeaderLock(client, scoped=True).token)
    assert not standing_dispatcher(redis_url)
    client.set(LOCK_KEY, LeaderLock(client, scoped=False).token)
    assert standing_dispatcher(redis_url)

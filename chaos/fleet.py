"""The supervisor's processes: piapi-bulk workers and dispatchers, and the private Redis.

Started through the benchmark's process helpers (`bench.procs`: PR_SET_PDEATHSIG, own
session, reaped by PID with wait4). Every kill is by the PID we started; a process that
exits without being killed is replaced and reported.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import redis

from bench.procs import Proc, Stack, start_redis, wait_for
from scheduler.services import cli_argv
from workers.keys import EPOCH_KEY, LOCK_KEY

KILL_REAP_S = 10.0


class Fleet:
    """Workers, dispatchers and Redis of one run, and the disruptions done to them."""

    def __init__(self, stack: Stack, env: dict[str, str], logs: Path, redis_url: str,
                 redis_proc: Proc, concurrency: int, worker_threads: int,
                 clock: Any = time.monotonic) -> None:
        self.stack, self.env, self.logs = stack, env, logs
        self.redis_url, self.redis_proc = redis_url, redis_proc
        self.concurrency, self.worker_threads = concurrency, worker_threads
        self.clock = clock
        self.workers: list[Proc] = []
        self.dispatchers: list[Proc] = []
        self._n = {"worker": 0, "dispatcher": 0}
        self.redis = redis.Redis.from_url(redis_url, socket_timeout=1, socket_connect_timeout=1)

    # --- starting -----------------------------------------------------------------------
    def _start(self, role: str, concurrency: int) -> Proc:
        """`piapi-bulk ROLE --concurrency N`, named `ROLE-<n>` with its own log."""
        self._n[role] += 1
        name = f"{role}-{self._n[role]}"
        return self.stack.add(Proc(name, role, cli_argv(role, "--concurrency", str(concurrency)),
                                   self.env, self.logs / f"{name}.log"))

    def start_worker(self) -> Proc:
        """One more `piapi-bulk worker` (not waited for: it joins when ready)."""
        proc = self._start("worker", self.worker_threads)
        self.workers.append(proc)
        return proc

    def start_dispatcher(self) -> Proc:
        """One more `piapi-bulk dispatcher` (it leads or stands by)."""
        proc = self._start("dispatcher", self.concurrency)
        self.dispatchers.append(proc)
        return proc

    # --- reading Redis ------------------------------------------------------------------
    def _get(self, key: str) -> str | None:
        try:
            value = self.redis.get(key)
        except redis.RedisError:
            return None
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    def lock_holder(self) -> tuple[str | None, int | None]:
        """The dispatcher lock's value and the pid in it (None when nobody holds it)."""
        value = self._get(LOCK_KEY)
        if not value:
            return None, None
        try:
            return value, int(value.split(":")[-2])
        except (IndexError, ValueError):
            return value, None

    def epoch(self) -> str | None:
        """The Redis epoch the dispatcher set (gone after Redis comes back empty)."""
        return self._get(EPOCH_KEY)

    def redis_answers(self) -> bool:
        """True when Redis answers a PING."""
        try:
            return bool(self.redis.ping())
        except redis.RedisError:
            return False

    # --- disruptions --------------------------------------------------------------------
    @staticmethod
    def _kill(proc: Proc) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(KILL_REAP_S)

    def kill_random_worker(self, rng: random.Random) -> dict[str, Any]:
        """SIGKILL a random live worker and start its replacement."""
        live = [p for p in self.workers if p.alive()]
        victim = rng.choice(live)
        self._kill(victim)
        self.workers.remove(victim)
        new = self.start_worker()
        return {"kind": "worker_sigkill", "target": victim.name, "pid": victim.pid,
                "replacement": new.name}

    def kill_active_dispatcher(self) -> dict[str, Any]:
        """SIGKILL the dispatcher holding the lock; start a new standby so two remain."""
        token, pid = self.lock_holder()
        victim = next((p for p in self.dispatchers if p.pid == pid and p.alive()), None)
        if victim is None:
            raise RuntimeError(f"the dispatcher lock ({token!r}) names no dispatcher of ours")
        self._kill(victim)
        self.dispatchers.remove(victim)
        new = self.start_dispatcher()
        return {"kind": "dispatcher_sigkill", "target": victim.name, "pid": victim.pid,
                "lock": token, "replacement": new.name}

    def restart_redis(self) -> dict[str, Any]:
        """SIGKILL redis-server and start an empty one on the same port (no persistence)."""
        port = int(self.redis_url.rsplit(":", 1)[1].split("/")[0])
        began = self.clock()
        self._kill(self.redis_proc)
        _, self.redis_proc = start_redis(self.stack, self.logs, port)
        down = self.clock() - began
        try:
            keys: int | None = int(self.redis.dbsize())  # our fleet may already be back
        except redis.RedisError:
            keys = None
        return {"kind": "redis_restart_flushed", "port": port, "down_s": round(down, 3),
                "keys_right_after_restart": keys}

    def restart_workers(self, reason: str) -> dict[str, Any]:
        """Stop every worker (SIGKILL) and start as many new ones."""
        old = [p for p in self.workers if p.alive()]
        for proc in old:
            self._kill(proc)
            self.workers.remove(proc)
        new = [self.start_worker().name for _ in old]
        return {"kind": "workers_restarted", "reason": reason,
                "stopped": [p.name for p in old], "started": new}

    def replace_exited(self) -> list[dict[str, Any]]:
        """Processes that exited on their own (not killed by us): replaced and reported."""
        events: list[dict[str, Any]] = []
        for pool, start in ((self.workers, self.start_worker),
                            (self.dispatchers, self.start_dispatcher)):
            for proc in [p for p in pool if not p.alive()]:
                pool.remove(proc)
                new = start()
                events.append({"kind": "unexpected_exit", "target": proc.name,
                               "exit_code": proc.returncode, "replacement": new.name,
                               "log_tail": proc.log_tail(8)})
        return events

    def wait_leader(self, timeout_s: float) -> None:
        """Until some dispatcher of ours holds the lock."""
        ours = {p.pid for p in self.dispatchers}
        wait_for(lambda: self.lock_holder()[1] in ours, timeout_s,
                 "a dispatcher to take the lock", 0.2)

    def stop(self) -> None:
        """Dispatchers first (so nothing new is sent), then workers; Redis stays up."""
        for proc in [*self.dispatchers, *self.workers]:
            proc.stop(10)
        self.redis.close()

"""CPU seconds and peak RSS of the processes a run started, sampled from /proc, plus Redis memory.

Processes exit during a run, so a sampler thread reads /proc every `interval_s` for each
process we started and every descendant it has, keeping the last value per process
(utime+stime from /proc/<pid>/stat, VmHWM from /proc/<pid>/status). For our direct children
the exact figures from `wait4` (see `procs.Proc`) take precedence when larger: they include
what happened after the last sample. PostgreSQL server backends serving the run's database
are sampled the same way and reported apart (they are not our processes, but they are work
our processes cause).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis

from bench.procs import PG_ADMIN_URL, Proc

CLK_TCK = os.sysconf("SC_CLK_TCK")
NOT_OURS = frozenset({"emulator", "postgres", "harness", "profiler"})
"""Roles measured but not counted in 'our' CPU and RSS: the stand-in for PiAPI, the DB server,
py-spy (bench.profile)."""


@dataclass
class ProcRecord:
    """The last sample of one process (identified by pid and start time)."""

    pid: int
    role: str
    root: int
    """The pid of the process we started that this one descends from (itself for a root)."""
    cpu_s: float = 0.0
    hwm_mb: float = 0.0


@dataclass
class _Stat:
    ppid: int
    cpu_s: float
    start: int


def read_stat(pid: int) -> _Stat | None:
    """ppid, utime+stime in seconds and start time (ticks) of `pid`, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    # fields[0] is state (field 3 of the man page): utime is field 14, stime 15, start 22.
    return _Stat(int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK, int(fields[19]))


def read_hwm_mb(pid: int) -> float:
    """VmHWM (peak resident set) of `pid` in MiB, 0 if unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def children_map() -> dict[int, list[int]]:
    """ppid -> child pids, for every process visible in /proc."""
    out: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            st = read_stat(int(entry.name))
            if st is not None:
                out.setdefault(st.ppid, []).append(int(entry.name))
    return out


@dataclass
class Sampler:
    """Samples our processes (and their descendants) and our database's backends."""

    interval_s: float = 0.5
    records: dict[tuple[int, int], ProcRecord] = field(default_factory=dict)
    roots: dict[int, str] = field(default_factory=dict)
    pg_database: str | None = None

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="bench-sampler", daemon=True)
        self._pg: psycopg.Connection[Any] | None = None

    def watch(self, proc: Proc) -> None:
        """Sample `proc` and its descendants from now on."""
        with self._lock:
            self.roots[proc.pid] = proc.role

    def start(self) -> None:
        """Start sampling in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Take a last sample and stop."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.sample()
        if self._pg is not None:
            with contextlib.suppress(Exception):
                self._pg.close()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            with contextlib.suppress(Exception):
                self.sample()

    def _pg_pids(self) -> list[int]:
        if not self.pg_database:
            return []
        try:
            if self._pg is None or self._pg.closed:
                self._pg = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
            rows = self._pg.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s",
                                    (self.pg_database,)).fetchall()
        except psycopg.Error:
            return []
        return [int(r[0]) for r in rows]

    def sample(self) -> None:
        """Read /proc once for every watched process."""
        with self._lock:
            roots = dict(self.roots)
        kids = children_map()
        todo = [(pid, role, pid) for pid, role in roots.items()]
        todo += [(pid, "postgres", pid) for pid in self._pg_pids()]
        seen: set[int] = set()
        while todo:
            pid, role, root = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            self._record(pid, role, root)
            todo.extend((child, role, root) for child in kids.get(pid, []))

    def _record(self, pid: int, role: str, root: int) -> None:
        st = read_stat(pid)
        if st is None:
            return
        hwm = read_hwm_mb(pid)
        with self._lock:
            rec = self.records.setdefault((pid, st.start), ProcRecord(pid, role, root))
            rec.cpu_s = max(rec.cpu_s, st.cpu_s)
            rec.hwm_mb = max(rec.hwm_mb, hwm)

    def measured_cpu_s(self) -> float:
        """CPU seconds of every process sampled so far, at its last sample."""
        with self._lock:
            return sum(r.cpu_s for r in self.records.values())

    def final_records(self, procs: list[Proc]) -> list[ProcRecord]:
        """One record per process, direct children corrected by their exact wait4 usage."""
        with self._lock:
            records = [ProcRecord(r.pid, r.role, r.root, r.cpu_s, r.hwm_mb)
                       for r in self.records.values()]
        for proc in procs:
            if proc.popen is None or proc.usage is None or proc.pid not in self.roots:
                continue
            mine = [r for r in records if r.pid == proc.pid and r.root == proc.pid]
            if mine:
                rec = mine[-1]
            else:
                rec = ProcRecord(proc.pid, proc.role, proc.pid)
                records.append(rec)
            # wait4 covers the child and its reaped descendants up to its exit.
            descendants = sum(r.cpu_s for r in records if r.root == proc.pid and r is not rec)
            rec.cpu_s = max(rec.cpu_s, proc.usage.cpu_s - descendants)
            rec.hwm_mb = max(rec.hwm_mb, proc.usage.maxrss_mb)
        return records


def summarise(records: list[ProcRecord]) -> dict[str, Any]:
    """CPU and peak RSS per role, and for 'ours' (every role but the emulator and the DB)."""
    roles: dict[str, dict[str, Any]] = {}
    for rec in records:
        r = roles.setdefault(rec.role, {"processes": 0, "cpu_s": 0.0, "peak_rss_mb_max": 0.0,
                                        "peak_rss_mb_sum": 0.0})
        r["processes"] += 1
        r["cpu_s"] += rec.cpu_s
        r["peak_rss_mb_max"] = max(r["peak_rss_mb_max"], rec.hwm_mb)
        r["peak_rss_mb_sum"] += rec.hwm_mb
    ours = [rec for rec in records if rec.role not in NOT_OURS]
    for r in roles.values():
        for key in ("cpu_s", "peak_rss_mb_max", "peak_rss_mb_sum"):
            r[key] = round(r[key], 3)
    return {
        "cpu_s": round(sum(rec.cpu_s for rec in ours), 3),
        "peak_rss_mb_max": round(max((rec.hwm_mb for rec in ours), default=0.0), 1),
        "peak_rss_mb_sum": round(sum(rec.hwm_mb for rec in ours), 1),
        "by_role": roles,
    }


def redis_memory(url: str) -> dict[str, float]:
    """used_memory and used_memory_peak of the Redis at `url`, in MiB."""
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        info = client.info("memory")
    finally:
        client.close()
    mib = 1024.0 * 1024.0
    return {"used_memory_mb": round(int(info["used_memory"]) / mib, 3),
            "used_memory_peak_mb": round(int(info["used_memory_peak"]) / mib, 3)}


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all cores, /proc/stat: not idle/iowait)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


class Interference:
    """How much CPU the machine spent, during a span, on processes this run did not measure.

    Busy time of the whole machine minus the CPU of every process the sampler watches
    (ours, the emulator, our database's backends) and of the harness. What is left is other
    people's work, kernel threads, PostgreSQL's shared background processes and backends too
    short-lived to be sampled: a large value means the run shared the machine.
    """

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler
        self.start = self._now()

    def _now(self) -> tuple[float, float, float]:
        self.sampler.sample()
        return time.monotonic(), machine_busy_s(), self.sampler.measured_cpu_s() + self_cpu_s()

    def figures(self) -> dict[str, float]:
        """Busy, unattributed CPU seconds and unattributed cores (average) since creation."""
        t1, busy1, measured1 = self._now()
        t0, busy0, measured0 = self.start
        busy, unattributed = busy1 - busy0, (busy1 - busy0) - (measured1 - measured0)
        span = max(t1 - t0, 1e-9)
        return {"machine_busy_cores": round(busy / span, 3),
                "unattributed_cpu_s": round(unattributed, 3),
                "unattributed_cores": round(unattributed / span, 3)}


def self_cpu_s() -> float:
    """CPU seconds this harness process has used so far (all its threads)."""
    t = os.times()
    return t.user + t.system

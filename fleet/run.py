"""One fleet run: the network and the services on it, the batch, the disruptions on their
schedule, then the results exported and the evidence read.

The harness observes from the bridge's address (it enters the switch namespace), never
from the machine's own network; every process runs in its host's namespace through
`ip netns exec`, started with the benchmark's helpers (PR_SET_PDEATHSIG, reaped by PID).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import redis

from bench.emu import Emu
from bench.manifests import captions_jsonl
from bench.procs import BenchError, Proc, Stack, wait_for
from bench.services import our_env, wait_workers_ready
from chaos.ending import Outcome as RunOutcome
from chaos.ending import Record, drain, read_evidence
from chaos.pg import PrivatePostgres
from chaos.watch import Db
from fleet.addresses import Layout, Place
from fleet.netns import SWITCH, in_ns
from fleet.plan import FLEET_ENV, Plan, Step, schedule
from fleet.topology import SLOW_API_END, SLOW_SWITCH_END, WORKER_HOSTS, Network
from scheduler.services import cli_argv, redis_server_argv
from workers.keys import LOCK_KEY

API_KEY = "fleet-key-not-a-secret-0123456789"
PG_PORT, REDIS_PORT, API_PORT = 5432, 6379, 8080
WORKERS_PER_HOST = 2
TICK_S = 0.5
FINISH_RESERVE_S = 40.0
CUT_WAIT_S = 60.0
"""The cut waits (the schedule sliding) at most this long for w1 to have a task in flight."""
STOP_S = 10.0
"""How long the fleet's processes have to stop on SIGTERM, all together."""


@dataclass
class Outcome(RunOutcome):
    """What the run did and saw: also the link emulator's counters and when w1 was cut off
    and back (wall clock, as the ledger's times)."""

    link: list[dict[str, Any]] = field(default_factory=list)
    cut_unix: float = 0.0
    back_unix: float = 0.0


class FleetRun:
    """Set up, drive and wind down one run (see the module docstring)."""

    def __init__(self, plan: Plan, layout: Layout, seed: int, workdir: Path,
                 deadline: float) -> None:
        self.plan, self.layout, self.seed = plan, layout, seed
        self.workdir, self.deadline = workdir, deadline
        self.logs = workdir / "logs"
        self.stack = Stack()
        self.net = Network(layout)
        self.out = Outcome()
        self.t0 = time.monotonic()
        self.procs: dict[str, list[Proc]] = {}
        self.pg: PrivatePostgres | None = None
        self.db: Db | None = None
        self.emu: Emu | None = None
        self.redis: redis.Redis | None = None
        self.link_proc: Proc | None = None

    def now(self) -> float:
        """Seconds since the fleet started."""
        return time.monotonic() - self.t0

    def log(self, text: str) -> None:
        """One progress line on stderr."""
        print(f"[fleet] {text}", file=sys.stderr, flush=True)

    # --- set-up -------------------------------------------------------------------------
    def _proc(self, host: str, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        proc = self.stack.add(Proc(f"{host}:{name}", name, in_ns(host, *argv), env,
                                   self.logs / f"{host}-{name}.log"))
        self.procs.setdefault(host, []).append(proc)
        return proc

    def build_network(self) -> None:
        """Hosts, bridge, veths; the impaired link (netem veth or the TAP forwarder)."""
        self.net.build()
        if self.net.netem:
            self.net.make_slow_veth()
        else:
            argv = ["ip", "netns", "exec", SWITCH, sys.executable, "-m", "fleet.linkemu",
                    SLOW_API_END, SLOW_SWITCH_END, "--delay-ms", f"{self.plan.delay_ms:g}",
                    "--jitter-ms", f"{self.plan.jitter_ms:g}", "--loss", f"{self.plan.loss:g}",
                    "--seed", str(self.seed)]
            env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
            self.link_proc = self.stack.add(Proc("linkemu", "linkemu", argv, env,
                                                 self.logs / "linkemu.log"))
            link = self.link_proc

            def ready() -> bool:
                if not link.alive():
                    raise BenchError(f"the link emulator exited:\n{link.log_tail()}")
                return '"ready"' in link.log_path.read_text()

            wait_for(ready, 30, "the link emulator's TAP devices", 0.05)
        self.net.attach_slow_link()

    def start_services(self) -> dict[str, str]:
        """PostgreSQL and Redis on `data`, the emulator on `api`; the workers' env."""
        lay = self.layout
        self.pg = PrivatePostgres(self.stack, self.logs, host=lay.address("postgres"), port=PG_PORT,
                                  wrap=in_ns("data"), trust=str(lay.subnet))
        self.pg.init()
        redis_dir = self.workdir / "redis"
        redis_dir.mkdir()
        # No protected mode: its clients are the other hosts, on the harness's bridge only.
        redis_at = lay.address("redis")
        self._proc("data", "redis", [*redis_server_argv(REDIS_PORT, redis_dir, bind=redis_at),
                                     "--protected-mode", "no"], dict(os.environ))
        redis_url = f"redis://{redis_at}:{REDIS_PORT}/0"
        self.redis = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
        client = self.redis
        wait_for(lambda: client.ping(), 20, "Redis on data", 0.05)
        self._proc("api", "emulator", cli_argv("emulator", "--host", "0.0.0.0", "--port",
                                               str(API_PORT), *self.plan.emulator_args(
                                                   self.seed)),
                   {**os.environ, "PIAPI_API_KEY": API_KEY})
        api = f"http://{lay.address('api')}:{API_PORT}"
        self.emu = Emu(api)
        emu = self.emu
        wait_for(lambda: emu.stats(), 60, "the emulator on api", 0.1)
        return self._env(api, redis_url)

    def _env(self, base_url: str, redis_url: str) -> dict[str, str]:
        assert self.pg is not None
        return our_env(api_key=API_KEY, base_url=base_url, database_url=self.pg.url,
                       redis_url=redis_url, run_dir=self.logs / "run", extra=FLEET_ENV)

    def setup(self) -> None:
        """The network, services, the batch (submitted from ctl1), workers, dispatchers."""
        began = time.monotonic()
        self.build_network()
        ctl_env = self.start_services()
        worker_env = {**ctl_env,
                      "PIAPI_BASE_URL": f"http://{self.layout.address('api_slow')}:{API_PORT}"}
        self.manifest = captions_jsonl(self.workdir / "fleet.jsonl", self.plan.rows,
                                       prefix="fleet")
        submit = self._proc("ctl1", "submit", cli_argv("submit", str(self.manifest)), ctl_env)
        if submit.wait(300) != 0:
            submit.stop(5)
            raise BenchError(f"submit failed:\n{submit.log_tail()}")
        assert self.pg is not None
        self.db = Db(self.pg.url)
        batches = self.db.batch_ids()
        if len(batches) != 1:
            raise BenchError(f"expected one batch after submit, found {batches}")
        self.batch_id = batches[0]
        workers = [self._proc(host, f"worker-{i}", cli_argv(
            "worker", "--concurrency", str(self.plan.worker_threads)), worker_env)
            for host in WORKER_HOSTS for i in range(1, WORKERS_PER_HOST + 1)]
        wait_workers_ready(ctl_env["REDIS_URL"], workers)
        self.env = ctl_env
        for host in ("ctl1", "ctl2"):
            self._proc(host, "dispatcher", cli_argv(
                "dispatcher", "--concurrency", str(self.plan.concurrency)), ctl_env)
            if host == "ctl1":
                wait_for(lambda: self.leader_host() == "ctl1", 60, "ctl1 to lead", 0.2)
        self.t0 = time.monotonic()  # the schedule starts once a dispatcher leads
        self.out.times["setup_s"] = round(self.t0 - began, 1)

    # --- observing ----------------------------------------------------------------------
    def leader_host(self) -> str | None:
        """The host whose dispatcher holds the lock (None: nobody, or unreadable)."""
        assert self.redis is not None
        try:
            value = self.redis.get(LOCK_KEY)
        except redis.RedisError:
            return None
        if not value:
            return None
        try:
            text = value.decode() if isinstance(value, bytes) else str(value)
            pid = int(text.split(":")[-2])
        except (IndexError, ValueError):
            return None
        return next((h for h, ps in self.procs.items() for p in ps
                     if p.role == "dispatcher" and p.pid == pid), None)

    # --- the disrupted run --------------------------------------------------------------
    def drive(self) -> None:
        """Until every row is terminal and every disruption done (or the deadline)."""
        assert self.db is not None
        steps = schedule(self.plan)
        stop_at = self.deadline - FINISH_RESERVE_S
        while True:
            t = self.now()
            progress = self.db.progress(self.batch_id)
            if steps and t >= steps[0].at:
                if self._step(steps[0]):
                    steps.pop(0)
                else:  # waiting for its condition: the rest of the schedule slides along
                    steps = [replace(s, at=s.at + TICK_S) for s in steps]
            if self.out.over(progress, t, settled=not steps, stop_at=stop_at, digits=1,
                             late="rows still active or disruptions pending after {t:.0f} s"):
                return
            self._replace_exited()
            time.sleep(max(0.0, TICK_S - (self.now() - t)))

    def _step(self, step: Step) -> bool:
        """Do one action; False when it must wait (e.g. the standby does not lead yet)."""
        event: dict[str, Any] = {"kind": step.kind, "what": step.what}
        if step.kind == "cut":
            busy = self._busy("w1")
            if busy == 0 and self.now() < step.at + CUT_WAIT_S:
                return False  # w1 has no task in flight yet: nothing to take over
            event["w1_tasks_in_flight"] = busy
        if step.kind in ("cut", "rejoin"):
            self.net.cut("w1", down=step.kind == "cut")
            if step.kind == "cut":
                self.out.cut_unix = time.time()
            else:
                self.out.back_unix = time.time()
        elif step.kind in ("impair", "heal"):
            self._impair(step.kind == "impair")
            event["how"] = "netem" if self.net.netem else "fleet.linkemu (no netem here)"
        elif step.kind == "partition":
            host = self.leader_host()
            if host is None:
                return False
            self.net.partition_from_redis(host, True)
            self.partitioned = (host, self.now())
            event["host"] = host
        elif step.kind == "unpartition":
            host = self.partitioned[0]
            leader = self.leader_host()
            if leader in (None, host) and time.monotonic() < self.deadline - FINISH_RESERVE_S - 5:
                return False
            self.net.partition_from_redis(host, False)
            part = next(e for e in self.out.events if e["kind"] == "partition")
            part["new_leader_host"] = leader
            part["takeover_s"] = self.takeover_s
            event["host"] = host
        self._record(event)
        return True

    def _busy(self, host: Place) -> int:
        """Tasks `host` created that no poll has yet seen end (the emulator's ledger)."""
        assert self.emu is not None
        addr = self.layout.address(host)
        return sum(1 for t in self.emu.ledger() if t.get("created_by") == addr
                   and not t.get("end_seen_at"))

    def _impair(self, on: bool) -> None:
        if self.net.netem:
            self.net.set_netem(on, self.plan.delay_ms, self.plan.jitter_ms, self.plan.loss)
        elif self.link_proc is not None:
            os.kill(self.link_proc.pid, signal.SIGUSR1 if on else signal.SIGUSR2)

    @property
    def takeover_s(self) -> float | None:
        """Seconds from the partition until the other host led (measured by `watch`)."""
        return getattr(self, "_takeover", None)

    def watch_takeover(self) -> None:
        """During the partition: note when a dispatcher on another host leads."""
        part = getattr(self, "partitioned", None)
        if part is None or self.takeover_s is not None:
            return
        leader = self.leader_host()
        if leader not in (None, part[0]):
            self._takeover = round(self.now() - part[1], 2)
            self.log(f"t={self.now():6.1f}s  {leader} leads ({self._takeover} s after the "
                     "partition)")

    def _replace_exited(self) -> None:
        self.watch_takeover()
        for host, procs in self.procs.items():
            for proc in [p for p in procs if p.role in ("worker", "dispatcher")
                         and not p.alive()]:
                procs.remove(proc)
                self._record({"kind": "unexpected_exit", "host": host, "name": proc.name,
                              "exit_code": proc.returncode, "log_tail": proc.log_tail(5)})
                new = self.stack.add(Proc(proc.name, proc.role, proc.argv, proc.env,
                                          proc.log_path))
                procs.append(new)

    def _record(self, event: dict[str, Any]) -> None:
        event = {"t": round(self.now(), 1), **event}
        self.out.events.append(event)
        self.log(f"t={event['t']:6.1f}s  {event['kind']}: "
                 + str(event.get("what") or json.dumps(event)[:160])
                 + (f" [{event['host']}]" if event.get("host") else ""))

    # --- the end ------------------------------------------------------------------------
    def finish(self) -> None:
        """Stop the fleet, let the emulator drain, export the results, read the evidence."""
        assert self.db is not None and self.emu is not None
        self._stop_fleet()
        drain(self.emu, self.plan.drain_s)
        results = self.workdir / "results.jsonl"
        export = self._proc("ctl1", "export", cli_argv("export", self.batch_id, "-o",
                                                       str(results)), self.env)
        self.out.evidence = read_evidence(export, results, Record(
            self.db, self.batch_id, self.manifest, self.emu, self.plan.concurrency))

    def _stop_fleet(self) -> None:
        """Every dispatcher and worker stopped together."""
        _stop_together([p for ps in self.procs.values() for p in ps
                        if p.role in ("dispatcher", "worker")])

    def close(self) -> None:
        """Stop every process we started (the fleet, the link, PostgreSQL, the rest; by PID)."""
        try:
            self._stop_fleet()
            if self.link_proc is not None and self.link_proc.alive():
                self.link_proc.stop(5)
                self.out.link = _json_lines(self.link_proc.log_path)
            for closer in (self.db, self.emu, self.redis):
                if closer is not None:
                    with contextlib.suppress(Exception):
                        closer.close()
            if self.pg is not None:
                self.pg.close()
            _stop_together(self.stack.procs)
        finally:
            self.stack.close()


def _stop_together(procs: list[Proc]) -> None:
    """SIGTERM every process at once, wait for them together (one cut off may wait on the
    network), SIGKILL what still runs after STOP_S; all reaped by PID."""
    live = [p for p in procs if p.alive()]
    for proc in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_S
    for proc in live:
        proc.wait(max(0.0, deadline - time.monotonic()))
        proc.stop(0.5)  # SIGKILL if still running, and reap


def _json_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    with contextlib.suppress(OSError):
        for text in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(text))
    return out


def run(plan: Plan, layout: Layout, seed: int, workdir: Path, deadline: float) -> Outcome:
    """One complete run (inside the switch namespace); never raises for a failed run."""
    fleet = FleetRun(plan, layout, seed, workdir, deadline)
    try:
        fleet.setup()
        fleet.drive()
        fleet.finish()
    except BenchError as exc:
        fleet.out.status, fleet.out.error = "error", str(exc)
    except Exception as exc:  # any failure of the run goes in its report
        fleet.out.status, fleet.out.error = "error", f"{type(exc).__name__}: {exc}"
    finally:
        fleet.close()
    return fleet.out

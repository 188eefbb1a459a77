"""`python -m fleet`: piapi-bulk on six hosts made of network namespaces (data, api, ctl1,
ctl2, w1, w2), disrupted (w1 cut off, latency and loss between the workers and api, the
active dispatcher's host partitioned from Redis) and checked against the emulator's ledger.

    python -m fleet [--quick] [--rows N] [--seed 7] [--keep-logs] [--out fleet/results]
    python -m fleet --cleanup      # remove what a killed run left (namespaces pbf-*)

Exit code 0 when every check passed, 1 when one failed, 2 when it cannot run here (one
line: not root, no `ip`, no /dev/net/tun, no PostgreSQL...), 130 when interrupted.
Whatever happens, every namespace, link and process it made is removed (finally, SIGINT,
SIGTERM and atexit all lead to the same idempotent teardown).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.procs import REPO, command_output
from chaos.checks import counts
from chaos.ending import raise_interrupt, save_report, utc_stamp, verdict
from chaos.pg import PgUnavailable
from chaos.pg import preflight as pg_preflight
from fleet import checks, netns
from fleet.addresses import Layout, NoFreeSubnet, choose_subnet, used_networks
from fleet.plan import FLEET_ENV, FULL, QUICK, describe, schedule
from fleet.run import Outcome, run
from fleet.topology import WORKER_HOSTS


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fleet", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="500 rows, shorter disruptions "
                   "(about 4 minutes; what CI runs)")
    p.add_argument("--rows", type=int, help="manifest rows (default 3000; --quick: 500)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--keep-logs", action="store_true", help="keep the logs of a passing run")
    p.add_argument("--out", type=Path, default=REPO / "fleet" / "results")
    p.add_argument("--cleanup", action="store_true", help="only remove leftovers of a "
                   f"killed run (namespaces and links named {netns.PREFIX}*, their processes)")
    args = p.parse_args(argv)
    if args.rows is not None and args.rows < 1:
        p.error("--rows must be positive")
    return args


def cannot_run() -> str | None:
    """Why the harness cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth, a bridge, TAP devices)"
    for tool in ("ip", "tc", "redis-server"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing (the impaired link needs TAP devices)"
    try:
        pg_preflight()
    except PgUnavailable as exc:
        return str(exc)
    return None


def teardown() -> None:
    """Remove everything with our prefix (idempotent; safe from any state)."""
    removed = netns.remove_all()
    if any(removed.values()):
        print(f"[fleet] removed {json.dumps(removed)}", file=sys.stderr, flush=True)


def _report(args: argparse.Namespace, out: Outcome, layout: Layout, started: str,
            elapsed: float) -> dict[str, Any]:
    plan = QUICK if args.quick else FULL
    doc: dict[str, Any] = {"pass": False, "status": out.status, "error": out.error,
                           "checks": [], "events": out.events}
    if out.evidence is not None:
        clients: dict[str, str] = {h: layout.address(h) for h in WORKER_HOSTS}
        doc["checks"] = checks.run_checks(out.evidence, out.events, clients, out.cut_unix,
                                          out.back_unix)
        doc["figures"] = {"results_by_status": counts(out.evidence.results, "status"),
                          "emulator_tasks": len(out.evidence.ledger),
                          "emulator_peak_in_flight": out.evidence.stats.get("peak_in_flight"),
                          "tasks_created_by": counts(out.evidence.ledger, "created_by")}
    doc["pass"] = out.status == "ok" and bool(doc["checks"]) and all(
        c["pass"] for c in doc["checks"])
    doc["figures"] = {**doc.get("figures", {}), "elapsed_s": round(elapsed, 1), **out.times,
                      "rows_by_state": out.final_counts}
    doc["impaired_link"] = out.link
    doc["meta"] = {"started_at": started, "quick": args.quick, "seed": args.seed,
                   "subnet": str(layout.subnet), "fleet_env": FLEET_ENV,
                   "plan": replace(plan, rows=args.rows or plan.rows).to_json(),
                   "git_commit": command_output(["git", "rev-parse", "HEAD"]),
                   "nproc": os.cpu_count(), "kernel": os.uname().release}
    return doc


def main(argv: list[str] | None = None) -> int:
    """One fleet run (or --cleanup); the exit code (see the module docstring)."""
    args = _args(sys.argv[1:] if argv is None else argv)
    why = cannot_run()
    if why:
        print(f"fleet: cannot run here: {why}", file=sys.stderr)
        return 2
    if args.cleanup:
        teardown()
        return 0
    if netns.ours():
        print(f"fleet: namespaces {', '.join(netns.ours())} exist (another run, or a killed "
              "one: python -m fleet --cleanup)", file=sys.stderr)
        return 2
    try:
        layout = Layout(choose_subnet(used_networks(netns.ip_json("addr"),
                                                    netns.ip_json("route"))))
    except NoFreeSubnet as exc:
        print(f"fleet: cannot run here: {exc}", file=sys.stderr)
        return 2
    plan = QUICK if args.quick else FULL
    plan = replace(plan, rows=args.rows or plan.rows)
    began = time.monotonic()
    started = utc_stamp()
    workdir = Path(tempfile.mkdtemp(prefix="piapi-fleet-"))
    os.chmod(workdir, 0o755)  # PostgreSQL (its own user) reads its folder inside
    print("\n".join(["[fleet] plan: " + line for line in describe(plan, schedule(plan))]
                    + [f"[fleet] subnet {layout.subnet} (checked against ip addr/route), "
                       f"work dir {workdir}"]), file=sys.stderr, flush=True)
    atexit.register(teardown)
    signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        netns.ip("netns", "add", netns.SWITCH)
        with netns.entered(netns.SWITCH):
            out = run(plan, layout, args.seed, workdir, began + plan.duration_limit_s)
    except KeyboardInterrupt:
        teardown()
        print(f"fleet: interrupted; everything it made is removed (logs in {workdir})",
              file=sys.stderr)
        return 130
    finally:
        teardown()
    doc = _report(args, out, layout, started, time.monotonic() - began)
    path = save_report(doc, args.out, started, workdir, args.keep_logs)
    print("[fleet] ledger checks:", file=sys.stderr)
    for check in doc["checks"]:
        print(checks.line(check), file=sys.stderr)
    print(verdict("fleet", doc, [out.error], path), file=sys.stderr, flush=True)
    return 0 if doc["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())

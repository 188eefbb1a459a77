"""The network the harness builds and removes: namespaces, a bridge, veth pairs, routes,
all named with one prefix, all through `ip` (iproute2).

The bridge lives in its own namespace (`<prefix>net`), so the machine's own namespace
gets no interface, address or route: nothing the hosts send can leave the namespaces made
here. The harness enters that namespace (`enter`, a `setns` of its threads) to observe
the run from the bridge's address, and leaves it before removing everything. `remove_all`
is idempotent and finds leftovers by the prefix alone (`python -m fleet --cleanup`).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

PREFIX = "pbf-"
SWITCH = f"{PREFIX}net"
"""The namespace holding the bridge (and the impaired link's far end)."""
BRIDGE = f"{PREFIX}br"
CLONE_NEWNET = 0x40000000
IP_TIMEOUT_S = 30.0


class NetError(Exception):
    """An `ip` command failed."""


def ip(*args: str, check: bool = True) -> str:
    """Run `ip ARGS`; its stdout (NetError with its stderr when it fails and `check`)."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S,
                          check=False)
    if check and done.returncode != 0:
        raise NetError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def ip_json(*args: str) -> list[dict[str, Any]]:
    """`ip -j ARGS` parsed."""
    out = ip("-j", *args)
    return list(json.loads(out)) if out.strip() else []


def ns(name: str) -> str:
    """A host's namespace name."""
    return f"{PREFIX}{name}"


def in_ns(name: str, *argv: str) -> list[str]:
    """argv running `argv` in host `name`'s namespace (ip execs it: the PID is its own)."""
    return ["ip", "netns", "exec", ns(name), *argv]


def ours() -> list[str]:
    """Namespaces with our prefix (ours, or a killed run's leftovers)."""
    return [line.split()[0] for line in ip("netns", "list").splitlines()
            if line.startswith(PREFIX)]


def _setns(path: str) -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NetError(f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


@contextlib.contextmanager
def entered(name: str) -> Iterator[None]:
    """The calling thread (and threads it starts) in namespace `name`, then back.

    Sockets keep the namespace they were made in, so connections opened inside stay there.
    """
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _setns(f"/var/run/netns/{name}")
        yield
    finally:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.setns(home, CLONE_NEWNET)
        os.close(home)


def kill_ns_processes(name: str) -> list[int]:
    """SIGKILL every process still in namespace `name` (all were started by a run of this
    harness: nothing else enters its namespaces); their PIDs."""
    pids = [int(p) for p in ip("netns", "pids", name, check=False).split()
            if p.isdigit() and int(p) != os.getpid()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def remove_all() -> dict[str, list[Any]]:
    """Remove every namespace (and so every link in it) and root-namespace link with our
    prefix, killing processes left in them; what was removed. Idempotent."""
    removed: dict[str, list[Any]] = {"namespaces": [], "links": [], "killed": []}
    for name in ours():
        removed["killed"] += kill_ns_processes(name)
        ip("netns", "del", name, check=False)
        removed["namespaces"].append(name)
    for link in ip_json("link", "show"):
        ifname = str(link.get("ifname", ""))
        if ifname.startswith(PREFIX):
            ip("link", "del", ifname, check=False)
            removed["links"].append(ifname)
    return removed

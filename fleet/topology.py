"""The hosts and their links: build them, disrupt them, heal them.

    data  PostgreSQL on one address, Redis on a second (so a host can lose Redis only)
    api   the emulator: a direct address (dispatchers, harness) and one behind the
          impaired link (workers)
    ctl1  the first dispatcher and `submit`;  ctl2  the standby dispatcher
    w1 w2 two worker processes each

Every host is a namespace with one veth to a bridge in the switch namespace; the
bridge's own address is where the harness observes from. The impaired link is a veth with
netem on both ends when this kernel has netem, else two TAP devices joined by
`fleet.linkemu`; `api` routes its answers to the workers' addresses over it, so only
worker ↔ api traffic crosses it.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from fleet.addresses import Layout, Place
from fleet.netns import BRIDGE, PREFIX, SWITCH, NetError, in_ns, ip, ns

ETH0: dict[str, tuple[Place, ...]] = {
    "data": ("postgres", "redis"), "api": ("api",),
    "ctl1": ("ctl1",), "ctl2": ("ctl2",), "w1": ("w1",), "w2": ("w2",),
}
"""Each host (in the order they are built) and the addresses on its eth0."""
HOSTS = tuple(ETH0)
WORKER_HOSTS: tuple[Place, ...] = ("w1", "w2")
SLOW_SWITCH_END = f"{PREFIX}tb"
SLOW_API_END = f"{PREFIX}ta"


def netem_works() -> bool:
    """True when `tc qdisc ... netem` can be added (tried on the switch namespace's lo)."""
    add = subprocess.run(["tc", "-n", SWITCH, "qdisc", "add", "dev", "lo", "root", "netem",
                          "delay", "1ms"], capture_output=True, timeout=10, check=False)
    if add.returncode != 0:
        return False
    subprocess.run(["tc", "-n", SWITCH, "qdisc", "del", "dev", "lo", "root"],
                   capture_output=True, timeout=10, check=False)
    return True


def sysctl(host: str, *settings: str) -> None:
    """Set sysctls in a host's namespace (net.* are per namespace)."""
    subprocess.run(in_ns(host, "sysctl", "-q", "-w", *settings), check=True, timeout=10,
                   capture_output=True)


@dataclass
class Network:
    """The built network (see the module docstring)."""

    layout: Layout
    netem: bool = False

    def build(self) -> None:
        """Namespaces, the bridge, one veth per host, addresses (the impaired link is
        `attach_slow_link`'s, once its far end exists); the switch namespace exists."""
        for host in HOSTS:
            ip("netns", "add", ns(host))
        ip("-n", SWITCH, "link", "set", "lo", "up")
        ip("-n", SWITCH, "link", "add", BRIDGE, "type", "bridge")
        ip("-n", SWITCH, "addr", "add", f"{self.layout.address('switch')}/{self.layout.prefix}",
           "dev", BRIDGE)
        ip("-n", SWITCH, "link", "set", BRIDGE, "up")
        for host in HOSTS:
            ip("-n", SWITCH, "link", "add", host, "type", "veth", "peer", "name", "eth0",
               "netns", ns(host))
            ip("-n", SWITCH, "link", "set", host, "master", BRIDGE, "up")
            ip("-n", ns(host), "link", "set", "lo", "up")
            for place in ETH0[host]:
                ip("-n", ns(host), "addr", "add", f"{self.layout.address(place)}/"
                   f"{self.layout.prefix}", "dev", "eth0")
            ip("-n", ns(host), "link", "set", "eth0", "up")
        self.netem = netem_works()

    def make_slow_veth(self) -> None:
        """netem kernels: the impaired link is a plain veth pair (netem added later)."""
        ip("-n", SWITCH, "link", "add", SLOW_SWITCH_END, "type", "veth", "peer", "name",
           SLOW_API_END)

    def attach_slow_link(self) -> None:
        """Move the link's api end into `api` as eth1 with the workers' address of the
        emulator, put its other end on the bridge, and route answers to workers over it."""
        lay = self.layout
        ip("-n", SWITCH, "link", "set", SLOW_API_END, "netns", ns("api"))
        ip("-n", ns("api"), "link", "set", SLOW_API_END, "name", "eth1")
        ip("-n", ns("api"), "addr", "add", f"{lay.address('api_slow')}/32", "dev", "eth1")
        ip("-n", ns("api"), "link", "set", "eth1", "up")
        ip("-n", SWITCH, "link", "set", SLOW_SWITCH_END, "master", BRIDGE, "up")
        # ARP answered only on the interface holding the address; no reverse-path filter
        # (answers to workers leave by eth1, their requests may come in by either).
        sysctl("api", "net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2",
               "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
               "net.ipv4.conf.eth0.rp_filter=0", "net.ipv4.conf.eth1.rp_filter=0")
        for host in WORKER_HOSTS:
            ip("-n", ns("api"), "route", "add", f"{lay.address(host)}/32", "dev", "eth1")

    def set_netem(self, on: bool, delay_ms: float, jitter_ms: float, loss: float) -> None:
        """netem kernels: impair (or heal) both ends of the slow link."""
        for where, dev in ((SWITCH, SLOW_SWITCH_END), (ns("api"), "eth1")):
            if on:
                subprocess.run(["tc", "-n", where, "qdisc", "replace", "dev", dev, "root",
                                "netem", "delay", f"{delay_ms:g}ms", f"{jitter_ms:g}ms",
                                "loss", f"{loss * 100:g}%"], check=True, timeout=10)
            else:
                subprocess.run(["tc", "-n", where, "qdisc", "del", "dev", dev, "root"],
                               check=False, timeout=10, capture_output=True)

    def cut(self, host: str, down: bool) -> None:
        """Take a host's link to the bridge down (cut off) or up again."""
        ip("-n", SWITCH, "link", "set", host, "down" if down else "up")

    def partition_from_redis(self, host: str, on: bool) -> None:
        """A `prohibit` route to Redis's address in `host` (PostgreSQL stays reachable)."""
        verb = "add" if on else "del"
        try:
            ip("-n", ns(host), "route", verb, "prohibit", f"{self.layout.address('redis')}/32")
        except NetError:
            if on:
                raise

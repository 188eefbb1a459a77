"""Where the fleet's hosts live: a private /24 that no address or route of this machine
overlaps, and each host's addresses in it (pure: the caller passes `ip -j addr` and
`ip -j route`).

The subnet exists only inside the namespaces the harness makes, but choosing one the
machine does not use keeps any address the hosts see unambiguous in logs and reports.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

CANDIDATES: tuple[str, ...] = (
    "10.213.47.0/24", "10.231.88.0/24", "172.29.213.0/24", "192.168.213.0/24",
    "10.147.3.0/24", "172.30.147.0/24",
)
"""Private ranges tried in order (RFC 1918; unusual octets, so rarely someone's LAN)."""


class NoFreeSubnet(Exception):
    """Every candidate overlaps something this machine uses."""


def used_networks(addrs: Sequence[Mapping[str, Any]],
                  routes: Sequence[Mapping[str, Any]]) -> list[ipaddress.IPv4Network]:
    """IPv4 networks of every address (`ip -j addr`) and route (`ip -j route`); the
    default route, which overlaps everything, is not a network anyone uses."""
    nets: list[ipaddress.IPv4Network] = []
    for link in addrs:
        for info in link.get("addr_info", []):
            if info.get("family") == "inet":
                nets.append(ipaddress.IPv4Network(
                    f"{info['local']}/{info.get('prefixlen', 32)}", strict=False))
    for route in routes:
        dst = str(route.get("dst", ""))
        if dst and dst != "default":
            net = ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False)
            if isinstance(net, ipaddress.IPv4Network):
                nets.append(net)
        gateway = route.get("gateway")
        if gateway and ":" not in str(gateway):
            nets.append(ipaddress.IPv4Network(f"{gateway}/32"))
    return nets


def choose_subnet(used: Iterable[ipaddress.IPv4Network],
                  candidates: Sequence[str] = CANDIDATES) -> ipaddress.IPv4Network:
    """The first candidate overlapping none of `used`."""
    taken = list(used)
    for text in candidates:
        net = ipaddress.IPv4Network(text)
        if not any(net.overlaps(other) for other in taken):
            return net
    raise NoFreeSubnet(f"every candidate subnet ({', '.join(candidates)}) overlaps an "
                       "address or route of this machine")


Place = Literal["switch", "postgres", "redis", "api", "api_slow", "ctl1", "ctl2", "w1", "w2"]

OFFSETS: dict[Place, int] = {
    "switch": 1,  # the bridge's own address: the harness's seat on the network
    "postgres": 10,  # `data`'s first address: PostgreSQL listens here
    "redis": 11,  # `data`'s second: Redis listens here (so a host can lose Redis only)
    "api": 20,  # `api`'s direct address: the dispatchers and the harness reach the emulator
    "api_slow": 21,  # `api` behind the impaired link: the workers reach the emulator here
    "ctl1": 31, "ctl2": 32, "w1": 41, "w2": 42,  # the one address of each of these hosts
}
"""Each address's place in the subnet (its n-th address)."""


@dataclass(frozen=True)
class Layout:
    """Each host's address(es) in the chosen subnet."""

    subnet: ipaddress.IPv4Network

    @property
    def prefix(self) -> int:
        """The prefix length of every address."""
        return self.subnet.prefixlen

    def address(self, place: Place) -> str:
        """The address of `place` (see `OFFSETS`)."""
        return str(self.subnet.network_address + OFFSETS[place])

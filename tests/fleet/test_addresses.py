"""The subnet choice: the first private candidate no address or route overlaps."""

from __future__ import annotations

import ipaddress
from typing import get_args

import pytest

from fleet.addresses import (
    OFFSETS,
    Layout,
    NoFreeSubnet,
    Place,
    choose_subnet,
    used_networks,
)

ADDRS = [
    {"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8},
                                   {"family": "inet6", "local": "::1", "prefixlen": 128}]},
    {"ifname": "eth0", "addr_info": [{"family": "inet", "local": "192.0.2.2",
                                      "prefixlen": 24}]},
]
ROUTES = [{"dst": "default", "gateway": "192.0.2.1", "dev": "eth0"},
          {"dst": "192.0.2.0/24", "dev": "eth0"}]


def test_this_machine_gets_the_first_candidate() -> None:
    net = choose_subnet(used_networks(ADDRS, ROUTES))
    assert net == ipaddress.IPv4Network("10.213.47.0/24")


def test_an_overlapping_address_or_route_skips_a_candidate() -> None:
    addrs = [*ADDRS, {"ifname": "wg0", "addr_info": [{"family": "inet", "local": "10.213.0.5",
                                                      "prefixlen": 16}]}]
    routes = [*ROUTES, {"dst": "10.231.0.0/16", "gateway": "192.0.2.9"}, {"dst": "172.29.213.7"}]
    assert choose_subnet(used_networks(addrs, routes)) == ipaddress.IPv4Network(
        "192.168.213.0/24")


def test_the_default_route_does_not_count_as_used() -> None:
    assert all(n.prefixlen > 0 for n in used_networks(ADDRS, ROUTES))


def test_nothing_free_is_an_error() -> None:
    with pytest.raises(NoFreeSubnet):
        choose_subnet([ipaddress.IPv4Network("10.0.0.0/8")], ["10.1.0.0/24"])


def test_layout_gives_each_host_its_own_address_and_data_two() -> None:
    lay = Layout(ipaddress.IPv4Network("10.213.47.0/24"))
    hosts = [lay.address(place) for place in get_args(Place)]
    assert len(set(hosts)) == len(hosts) == len(OFFSETS) == 9
    assert all(ipaddress.IPv4Address(a) in lay.subnet for a in hosts)
    assert lay.address("switch") == "10.213.47.1" and lay.address("w2") == "10.213.47.42"
    assert lay.prefix == 24

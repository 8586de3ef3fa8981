"""The lab's wiring: namespaces, one bridge per network, a veth per host and network.

Mininet's split: the namespace is the node, the veth is the link. The bridges
live in a lab-private namespace, so nothing in the root namespace can reach
the lab. Every object is an explicit pyroute2 netlink call, recorded in the
ledger before it exists.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from testbed.errors import LabError
from testbed.hosts.ledger import Ledger

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attachment:
    """One host's interface on one network."""

    host: str
    network: str
    netns: str
    ifname: str
    address: ipaddress.IPv4Interface
    outer_ifname: str


def create_netns(name: str, ledger: Ledger) -> None:
    """Create a network namespace with its loopback up."""
    ledger.record("netns", name=name)
    try:
        netns.create(name)
    except (OSError, NetlinkError) as e:
        raise LabError(f"cannot create network namespace {name}: {e}") from None
    with IPRoute(netns=name) as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        ipr.link("set", index=lo, state="up")


def remove_netns(name: str) -> None:
    if name in netns.listnetns():
        try:
            netns.remove(name)
        except (OSError, NetlinkError) as e:
            log.warning("removing netns %s: %s", name, e)


def add_bridge(bridge_ns: str, brname: str) -> None:
    with IPRoute(netns=bridge_ns) as ipr:
        ipr.link("add", ifname=brname, kind="bridge", br_forward_delay=0, br_stp_state=0)
        idx = ipr.link_lookup(ifname=brname)[0]
        ipr.link("set", index=idx, state="up")


def enslave(bridge_ns: str, brname: str, ifname: str) -> None:
    """Plug an existing interface of `bridge_ns` (a VM's tap) into bridge `brname`, up."""
    with IPRoute(netns=bridge_ns) as ipr:
        idx, br = ipr.link_lookup(ifname=ifname)[0], ipr.link_lookup(ifname=brname)[0]
        ipr.link("set", index=idx, master=br, state="up")


def attach(
    bridge_ns: str,
    brname: str,
    host_ns: str,
    outer: str,
    inner: str,
    address: ipaddress.IPv4Interface,
) -> None:
    """Plug `host_ns` into bridge `brname` with a veth named `inner` inside the host."""
    tmp = outer + "p"
    with IPRoute(netns=bridge_ns) as ipr:
        ipr.link("add", ifname=outer, kind="veth", peer={"ifname": tmp})
        o_idx = ipr.link_lookup(ifname=outer)[0]
        br_idx = ipr.link_lookup(ifname=brname)[0]
        ipr.link("set", index=o_idx, master=br_idx, state="up")
        p_idx = ipr.link_lookup(ifname=tmp)[0]
        ipr.link("set", index=p_idx, net_ns_fd=host_ns)
    with IPRoute(netns=host_ns) as ipr:
        idx = ipr.link_lookup(ifname=tmp)[0]
        ipr.link("set", index=idx, ifname=inner)
        ipr.addr("add", index=idx, address=str(address.ip), prefixlen=address.network.prefixlen)
        ipr.link("set", index=idx, state="up")


def interfaces(ns: str) -> dict[str, list[str]]:
    """Read back a namespace's interfaces and their IPv4 addresses."""
    out: dict[str, list[str]] = {}
    with IPRoute(netns=ns) as ipr:
        names = {link["index"]: link.get("ifname") for link in ipr.get_links()}
        for name in names.values():
            out[name] = []
        for a in ipr.get_addr(family=2):
            out[names[a["index"]]].append(f"{a.get('address')}/{a['prefixlen']}")
    return out


def attach_root(
    bridge_ns: str,
    brname: str,
    outer: str,
    inner: str,
    address: ipaddress.IPv4Interface,
    ledger: Ledger,
) -> None:
    """Plug the root namespace (the operator) into bridge `brname` with a veth named `inner`.

    Recorded as a root `link` before it exists; it also goes when the bridge's
    namespace goes (a veth pair dies with either end).
    """
    ledger.record("link", name=inner)
    with IPRoute() as ipr:
        ipr.link("add", ifname=inner, kind="veth", peer={"ifname": outer, "net_ns_fd": bridge_ns})
        idx = ipr.link_lookup(ifname=inner)[0]
        ipr.addr("add", index=idx, address=str(address.ip), prefixlen=address.network.prefixlen)
        ipr.link("set", index=idx, state="up")
    with IPRoute(netns=bridge_ns) as ipr:
        o_idx = ipr.link_lookup(ifname=outer)[0]
        br_idx = ipr.link_lookup(ifname=brname)[0]
        ipr.link("set", index=o_idx, master=br_idx, state="up")


def remove_root_link(name: str) -> None:
    with IPRoute() as ipr:
        for idx in ipr.link_lookup(ifname=name):
            try:
                ipr.link("del", index=idx)
            except NetlinkError as e:
                log.warning("removing link %s: %s", name, e)


def root_addresses() -> list[ipaddress.IPv4Interface]:
    """Every IPv4 address of the root namespace (to pick a subnet nobody uses)."""
    with IPRoute() as ipr:
        return [
            ipaddress.IPv4Interface(f"{a.get('address')}/{a['prefixlen']}")
            for a in ipr.get_addr(family=2)
        ]


def free_subnet(pool: ipaddress.IPv4Network, prefix: int, seed: int = 0) -> ipaddress.IPv4Network:
    """A /`prefix` of `pool` that no root address overlaps, tried from the `seed`th on (a
    lab's id spreads labs over the pool)."""
    nets = list(pool.subnets(new_prefix=prefix))
    used = root_addresses()
    for k in range(len(nets)):
        net = nets[(seed + k) % len(nets)]
        if not any(a.network.overlaps(net) for a in used):
            return net
    raise LabError(f"no free /{prefix} in {pool}: every one is on an interface here")

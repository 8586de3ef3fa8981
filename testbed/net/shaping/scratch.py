"""A throw-away network for the shaping tests and the bench: hosts on one bridge.

Not the lab (which owns real topologies): just enough of the same shape to exercise the
engines — one namespace per host, one namespace holding a Linux bridge, a veth per host
named after the network, 198.18.0.0/15 addresses. Everything is made with pyroute2 and
removed by `destroy()`; nothing touches the root namespace.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from dataclasses import dataclass, field
from typing import TypedDict, Unpack

from pyroute2 import IPRoute, netns

from testbed.hosts.nsexec import netns_path
from testbed.net.shaping.base import Direction, Endpoint

log = logging.getLogger(__name__)


class ScratchOptions(TypedDict, total=False):
    """What ScratchNet.create passes on besides the prefix."""

    network: str
    subnet: str
    names: tuple[str, ...]


@dataclass
class ScratchNet:
    """Hosts `names` on network `network`, each in namespace `<prefix>-<host>`."""

    prefix: str
    network: str = "lan"
    subnet: str = "198.18.250.0/24"
    names: tuple[str, ...] = ("client", "src", "dst")
    hosts: dict[str, Endpoint] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, prefix: str | None = None, **kw: Unpack[ScratchOptions]) -> ScratchNet:
        net = cls(prefix=prefix or f"tbsh{os.getpid()}", **kw)
        try:
            net._build()
        except BaseException:
            net.destroy()
            raise
        return net

    @property
    def bridge_ns(self) -> str:
        return f"{self.prefix}-br"

    def direction(self, src: str, dst: str) -> Direction:
        return Direction(self.network, self.hosts[src], self.hosts[dst])

    def _new_ns(self, name: str) -> None:
        if os.path.exists(netns_path(name)):
            netns.remove(name)  # a leftover from a crashed run of the same pid
        netns.create(name)
        self.namespaces.append(name)
        with IPRoute(netns=name, flags=0) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")

    def _build(self) -> None:
        addrs = list(ipaddress.IPv4Network(self.subnet).hosts())
        prefixlen = ipaddress.IPv4Network(self.subnet).prefixlen
        self._new_ns(self.bridge_ns)
        with IPRoute(netns=self.bridge_ns, flags=0) as br:
            br.link("add", ifname="br0", kind="bridge")
            br_idx = br.link_lookup(ifname="br0")[0]
            br.link("set", index=br_idx, state="up")
            for i, host in enumerate(self.names):
                ns = f"{self.prefix}-{host}"
                self._new_ns(ns)
                port = f"p-{host}"[:15]
                br.link("add", ifname=port, kind="veth", peer=self.network)
                br.link("set", index=br.link_lookup(ifname=port)[0], master=br_idx, state="up")
                peer = br.link_lookup(ifname=self.network)[0]
                with open(netns_path(ns)) as nsfd:
                    br.link("set", index=peer, net_ns_fd=nsfd.fileno())
                address = str(addrs[i])
                with IPRoute(netns=ns, flags=0) as h:
                    idx = h.link_lookup(ifname=self.network)[0]
                    h.addr("add", index=idx, address=address, prefixlen=prefixlen)
                    h.link("set", index=idx, state="up")
                self.hosts[host] = Endpoint(host, ns, self.network, address)
        log.debug("scratch net %s: %s", self.prefix, self.hosts)

    def destroy(self) -> None:
        for name in reversed(self.namespaces):
            try:
                netns.remove(name)
            except OSError as e:
                log.warning("could not remove namespace %s: %s", name, e)
        self.namespaces.clear()

    def __enter__(self) -> ScratchNet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

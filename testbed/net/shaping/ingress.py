"""One-ended shaping: what arrives on an interface, shaped on that host, through an ifb.

A lab engineer often controls only one end of a link (the hypervisor, not the
client's laptop). The direction peer -> here is then shaped on arrival: an ifb device
takes the interface's ingress (an `ingress` qdisc, and a u32 filter matching every IP
packet with a `mirred egress redirect` to the ifb), and the ifb holds the same egress
stack as a sender's interface (`egress.py`), its classes picked by the packet's
*source* address, the peer's. Everything through pyroute2.

Layout on the host (IF the interface, IFB its ifb, `<IF[:12]>ifb`)::

    IF:   ingress ffff:  u32 prio 1 match u32 0 0 -> mirred egress redirect dev IFB
    IFB:  7462: htb ... one class per peer, u32 match ip src PEER/32 (as egress.py)

The ifb is named after the interface, which carries the lab's id; `clear()` removes
the egress stack, the ingress qdisc and the ifb device.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from pyroute2 import IPRoute, NetNS
from pyroute2.netlink.exceptions import NetlinkError

from testbed.errors import CapabilityMissing, LabError
from testbed.net.shaping.base import CURRENT, netns_exists
from testbed.net.shaping.egress import Egress, Leaf

INGRESS_HANDLE = 0xFFFF0000  # ffff:
ETH_P_ALL = 0x0003
REDIRECT_PRIO = 1


def ifb_name(ifname: str) -> str:
    return f"{ifname[:12]}ifb"


class Ingress:
    """The ingress of (netns, ifname), shaped per peer (source address) on its ifb."""

    def __init__(self, netns: str, ifname: str) -> None:
        self.netns, self.ifname, self.ifb = netns, ifname, ifb_name(ifname)
        self.egress = Egress(netns, self.ifb, match="src")

    def __repr__(self) -> str:
        return f"Ingress({self.netns or 'here'}:{self.ifname} via {self.ifb})"

    def _ipr(self) -> AbstractContextManager[Any]:
        if not netns_exists(self.netns):
            raise LabError(f"network namespace {self.netns!r} does not exist")
        return IPRoute() if self.netns == CURRENT else NetNS(self.netns)

    def apply(self, wanted: dict[str, Leaf]) -> None:
        """Shape what each peer (by source address) sends to this interface."""
        if not wanted:
            self.clear()
            return
        self._redirect()
        self.egress.apply(wanted)

    def read(self) -> dict[str, Leaf | None]:
        with self._ipr() as ipr:
            if not ipr.link_lookup(ifname=self.ifb):
                return {}
        return self.egress.read()

    def _redirect(self) -> None:
        """The ifb, up, and every IP packet arriving on the interface redirected to it."""
        with self._ipr() as ipr:
            found = ipr.link_lookup(ifname=self.ifname)
            if not found:
                raise LabError(f"{self!r}: no interface {self.ifname!r}")
            index = found[0]
            if not ipr.link_lookup(ifname=self.ifb):
                try:
                    ipr.link("add", ifname=self.ifb, kind="ifb")
                except NetlinkError as e:
                    raise CapabilityMissing(
                        f"{self!r}: this kernel cannot make an ifb device ({e})",
                        hint="one-ended shaping needs ifb (ifb.ko), sch_ingress and act_mirred",
                    ) from None
            ifb = ipr.link_lookup(ifname=self.ifb)[0]
            ipr.link("set", index=ifb, state="up")
            if not any(q.get_attr("TCA_KIND") == "ingress" for q in ipr.get_qdiscs(index)):
                ipr.tc("add", "ingress", index, INGRESS_HANDLE)
            held = [
                f
                for f in ipr.get_filters(index, parent=INGRESS_HANDLE)
                if f.get_attr("TCA_KIND") == "u32" and (f["info"] >> 16) == REDIRECT_PRIO
            ]
            if not held:
                ipr.tc(
                    "add-filter",
                    "u32",
                    index,
                    parent=INGRESS_HANDLE,
                    prio=REDIRECT_PRIO,
                    protocol=ETH_P_ALL,  # pyroute2 puts it in network order
                    keys=["0x0/0x0+0"],
                    target=0x1,
                    action={
                        "kind": "mirred",
                        "direction": "egress",
                        "action": "redirect",
                        "ifindex": ifb,
                    },
                )

    def clear(self) -> None:
        """Remove the ifb's stack, the ingress qdisc and the ifb; the interface as it was."""
        if not netns_exists(self.netns):
            return
        with self._ipr() as ipr:
            found = ipr.link_lookup(ifname=self.ifname)
            if found and any(
                q.get_attr("TCA_KIND") == "ingress" for q in ipr.get_qdiscs(found[0])
            ):
                ipr.tc("del", "ingress", found[0], INGRESS_HANDLE)
            ifb = ipr.link_lookup(ifname=self.ifb)
            if ifb:
                ipr.link("del", index=ifb[0])

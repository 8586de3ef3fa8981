"""The sender's egress stack both engines share: root htb, one class per shaped peer.

Layout on one interface (handles in tc notation)::

    7462: htb default ffff
      7462:ffff  unshaped class (rate UNSHAPED_RATE_BIT, i.e. no limit in practice)
      7462:N     one class per shaped peer (rate = ceil = the profile's rate)
        N:       its leaf: netem (kernel engine) or pfifo with the profile's limit
      u32 prio 1 handle 800::N  match ip dst PEER/32 -> 7462:N

`apply()` reconciles what the kernel holds with what is wanted, touching only what
differs: a profile change is an in-place class/qdisc change, so a TCP flow through the
link keeps its queue. `read()` dumps the same objects back. Only pyroute2 netlink, no tc.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TypeVar

from pyroute2 import AsyncIPRoute
from pyroute2.netlink import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
)
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import (
    RTM_DELQDISC,
    RTM_DELTCLASS,
    RTM_DELTFILTER,
    RTM_GETQDISC,
    RTM_GETTCLASS,
    RTM_GETTFILTER,
    RTM_NEWQDISC,
    RTM_NEWTCLASS,
    RTM_NEWTFILTER,
)

from testbed.errors import CapabilityMissing, LabError
from testbed.hosts.nsexec import netns_path
from testbed.net.shaping import netlink as nl

log = logging.getLogger(__name__)

ROOT_MAJOR = 0x7462  # "tb": tells our root htb from anything else on the interface
DEFAULT_MINOR = 0xFFFF
FIRST_MINOR, LAST_MINOR = 0x10, 0xFFE
FILTER_PRIO = 1
UNSHAPED_RATE_BIT = 100 * 10**9  # above LinkProfile.MAX_RATE_BIT, so it reads back as None
BURST_SECONDS = 0.001  # htb burst: 1 ms at the class rate, at least a few full frames
MIN_BURST_BYTES = 4 * 1514

_REQ = NLM_F_REQUEST | NLM_F_ACK
_CREATE_OR_REPLACE = _REQ | NLM_F_CREATE | NLM_F_REPLACE
_DUMP = NLM_F_REQUEST | NLM_F_DUMP

T = TypeVar("T")


@dataclass(frozen=True)
class Pfifo:
    limit: int


Leaf = nl.NetemParams | Pfifo


@dataclass(frozen=True)
class PeerShape:
    """What one peer's class holds: rate (None = unshaped) and the leaf below it."""

    rate_bit: int | None
    leaf: Leaf


@dataclass
class EgressState:
    """The raw tc objects on one interface, as far as this module understands them."""

    root_kind: str | None = None
    ours: bool = False
    default_minor: int | None = None
    classes: dict[int, int] = field(default_factory=dict)  # minor -> rate_bit
    leaves: dict[int, tuple[int, str, Leaf | None]] = field(default_factory=dict)
    filters: dict[int, nl.U32Match] = field(default_factory=dict)  # u32 node -> match
    other_filters: int = 0

    def peers(self) -> dict[str, tuple[int, PeerShape | None]]:
        """dst address -> (class minor, shape or None if its class/leaf is foreign)."""
        out: dict[str, tuple[int, PeerShape | None]] = {}
        for node, m in self.filters.items():
            if m.dst is None or m.classid != nl.handle(ROOT_MAJOR, node):
                continue
            rate = self.classes.get(node)
            leaf = self.leaves.get(node, (0, "", None))[2]
            if rate is None or leaf is None:
                out[m.dst] = (node, None)
            else:
                out[m.dst] = (node, PeerShape(None if rate >= UNSHAPED_RATE_BIT else rate, leaf))
        return out


def burst_bytes(rate_bit: int) -> int:
    return max(int(rate_bit / 8 * BURST_SECONDS), MIN_BURST_BYTES)


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    """Run one netlink conversation to completion from synchronous code."""
    return asyncio.run(coro_fn())  # type: ignore[arg-type]


class Egress:
    """One sender interface (netns, ifname). Each call opens, uses and closes a socket.

    Keep one object per interface: netem never dumps its delay distribution table, so
    the object remembers which table it sent to each leaf (`read()` reports it from
    there, and a switch back to uniform recreates the qdisc instead of leaving the old
    table in place, which is what a netem change without a table would do).
    """

    def __init__(self, netns: str, ifname: str) -> None:
        self.netns, self.ifname = netns, ifname
        self.sent_tables: dict[int, tuple[int, ...]] = {}

    def __repr__(self) -> str:
        return f"Egress({self.netns}:{self.ifname})"

    # -- sync facade -------------------------------------------------------------------
    def read_state(self) -> EgressState:
        return run(lambda: self._session(self._read))

    def read(self) -> dict[str, PeerShape | None]:
        """dst -> shape held (None: a class or leaf this module did not make)."""
        out: dict[str, PeerShape | None] = {}
        for dst, (minor, shape) in self.read_state().peers().items():
            if shape is not None and isinstance(shape.leaf, nl.NetemParams):
                table = self.sent_tables.get(minor, ())
                shape = PeerShape(shape.rate_bit, replace(shape.leaf, dist_table=table))
            out[dst] = shape
        return out

    def apply(self, wanted: dict[str, PeerShape]) -> None:
        run(lambda: self._session(lambda ipr, idx: self._apply(ipr, idx, wanted)))

    def clear(self) -> None:
        """Remove our root htb (and everything under it); the interface's default returns."""
        run(lambda: self._session(self._clear, missing_ok=True))

    # -- netlink -----------------------------------------------------------------------
    async def _session(self, fn, missing_ok: bool = False):  # noqa: ANN001, ANN202
        if not os.path.exists(netns_path(self.netns)):
            if missing_ok:
                return None
            raise LabError(f"network namespace {self.netns!r} does not exist")
        async with AsyncIPRoute(netns=self.netns, flags=0) as ipr:
            links = await ipr.link_lookup(ifname=self.ifname)
            if not links:
                if missing_ok:
                    return None
                raise LabError(f"no interface {self.ifname!r} in namespace {self.netns!r}")
            return await fn(ipr, links[0])

    @staticmethod
    async def request(ipr: AsyncIPRoute, msg: nl.TcMsg, msg_type: int, flags: int) -> list:
        return [m async for m in await ipr.nlm_request(msg, msg_type, flags)]

    async def _read(self, ipr: AsyncIPRoute, index: int) -> EgressState:
        st = EgressState()
        root = nl.handle(ROOT_MAJOR)
        for raw in await self.request(ipr, nl.qdisc_ref(index, 0, 0), RTM_GETQDISC, _DUMP):
            if raw["index"] != index:
                continue
            kind = raw.get_attr("TCA_KIND")
            if raw["parent"] == nl.TC_H_ROOT:
                st.root_kind = kind
                st.ours = kind == "htb" and raw["handle"] == root
                if st.ours:
                    st.default_minor = nl.htb_default_minor(nl.reparse(raw))
            else:
                major, minor = nl.split_handle(raw["parent"])
                if major == ROOT_MAJOR:
                    st.leaves[minor] = (raw["handle"], kind, _leaf(nl.reparse(raw), kind))
        if not st.ours:
            return st
        for raw in await self.request(ipr, nl.class_ref(index, 0, 0), RTM_GETTCLASS, _DUMP):
            if raw["index"] == index and raw.get_attr("TCA_KIND") == "htb":
                major, minor = nl.split_handle(raw["handle"])
                if major == ROOT_MAJOR:
                    st.classes[minor] = nl.htb_class_rate_bit(nl.reparse(raw))
        for raw in await self.request(ipr, nl.qdisc_ref(index, 0, root), RTM_GETTFILTER, _DUMP):
            if raw.get_attr("TCA_KIND") != "u32":
                st.other_filters += 1
                continue
            m = nl.u32_match(nl.reparse(raw))
            if m is not None:
                st.filters[raw["handle"] & 0xFFF] = m
        return st

    async def _clear(self, ipr: AsyncIPRoute, index: int) -> None:
        st = await self._read(ipr, index)
        if st.ours:
            ref = nl.qdisc_ref(index, nl.handle(ROOT_MAJOR), nl.TC_H_ROOT)
            await self.request(ipr, ref, RTM_DELQDISC, _REQ)

    async def _apply(self, ipr: AsyncIPRoute, index: int, wanted: dict[str, PeerShape]) -> None:
        if not wanted:
            await self._clear(ipr, index)
            return
        root = nl.handle(ROOT_MAJOR)
        st = await self._read(ipr, index)
        if not st.ours or st.default_minor != DEFAULT_MINOR or st.other_filters:
            log.debug("%r: installing root htb over %s", self, st.root_kind)
            if st.ours:
                await self._clear(ipr, index)
            msg = nl.htb_qdisc(index, root, DEFAULT_MINOR)
            await self.request(ipr, msg, RTM_NEWQDISC, _CREATE_OR_REPLACE)
            st = EgressState(root_kind="htb", ours=True, default_minor=DEFAULT_MINOR)
        if st.classes.get(DEFAULT_MINOR) != UNSHAPED_RATE_BIT:
            await self._set_class(ipr, index, DEFAULT_MINOR, UNSHAPED_RATE_BIT)

        # 1. drop filters we do not want (or do not understand), then their classes
        keep: dict[str, int] = {}
        for node, m in st.filters.items():
            good = m.dst in wanted and m.classid == nl.handle(ROOT_MAJOR, node)
            if good and m.dst not in keep and m.prio == FILTER_PRIO:
                keep[m.dst] = node  # type: ignore[index]
                continue
            ref = nl.u32_filter_ref(index, root, m.prio, node)
            await self.request(ipr, ref, RTM_DELTFILTER, _REQ)
        for minor in list(st.classes):
            if minor != DEFAULT_MINOR and minor not in keep.values():
                await self.request(ipr, nl.class_ref(index, nl.handle(ROOT_MAJOR, minor), root),
                                RTM_DELTCLASS, _REQ)  # fmt: skip
                st.classes.pop(minor)
                st.leaves.pop(minor, None)

        # 2. classes and leaves first, filter last: a new peer's traffic finds a ready class
        free = (m for m in range(FIRST_MINOR, LAST_MINOR + 1) if m not in keep.values())
        for dst in sorted(wanted):
            shape = wanted[dst]
            minor = keep.get(dst)
            if minor is None:
                minor = next(free, None)
                if minor is None:
                    raise LabError(f"{self!r}: more than {LAST_MINOR - FIRST_MINOR} peers")
            rate = shape.rate_bit or UNSHAPED_RATE_BIT
            if st.classes.get(minor) != rate:
                await self._set_class(ipr, index, minor, rate)
            await self._set_leaf(ipr, index, minor, shape.leaf, st.leaves.get(minor))
            if dst not in keep:
                msg = nl.u32_dst_filter(
                    index, root, FILTER_PRIO, minor, dst, nl.handle(ROOT_MAJOR, minor)
                )
                await self.request(ipr, msg, RTM_NEWTFILTER, _REQ | NLM_F_CREATE | NLM_F_EXCL)

    async def _set_class(self, ipr: AsyncIPRoute, index: int, minor: int, rate: int) -> None:
        msg = nl.htb_class(
            index, nl.handle(ROOT_MAJOR, minor), nl.handle(ROOT_MAJOR), rate, burst_bytes(rate)
        )
        await self.request(ipr, msg, RTM_NEWTCLASS, _CREATE_OR_REPLACE)

    async def _set_leaf(
        self,
        ipr: AsyncIPRoute,
        index: int,
        minor: int,
        leaf: Leaf,
        current: tuple[int, str, Leaf | None] | None,
    ) -> None:
        hdl, parent = nl.handle(minor), nl.handle(ROOT_MAJOR, minor)
        netem = isinstance(leaf, nl.NetemParams)
        kind = "netem" if netem else "pfifo"
        if current is not None:
            cur_handle, cur_kind, cur_leaf = current
            stale_table = (
                netem
                and cur_kind == "netem"
                and not leaf.dist_table  # type: ignore[union-attr]
                and self.sent_tables.get(minor, None) != ()
            )
            if cur_handle == hdl and cur_kind == kind and not stale_table:
                if not netem and cur_leaf == leaf:
                    return
            elif cur_handle == hdl:
                # the kernel changes neither a qdisc's kind under the same handle nor
                # drops a netem table on change: delete, then create
                await self.request(ipr, nl.qdisc_ref(index, hdl, parent), RTM_DELQDISC, _REQ)
        if netem:
            msg = nl.netem_qdisc(index, hdl, parent, leaf)  # type: ignore[arg-type]
        else:
            msg = nl.pfifo_qdisc(index, hdl, parent, leaf.limit)  # type: ignore[union-attr]
        try:
            await self.request(ipr, msg, RTM_NEWQDISC, _CREATE_OR_REPLACE)
        except NetlinkError as e:
            if netem and e.code in (errno.ENOENT, errno.EOPNOTSUPP):
                raise CapabilityMissing(
                    f"the kernel in {self.netns} has no netem qdisc (sch_netem): {e}",
                    hint="use the userspace engine (select_engine('auto') picks it)",
                ) from None
            raise
        if netem:
            self.sent_tables[minor] = leaf.dist_table  # type: ignore[union-attr]


def _leaf(msg: nl.TcMsg, kind: str) -> Leaf | None:
    if kind == "netem":
        return nl.netem_params(msg)
    if kind == "pfifo":
        return Pfifo(nl.pfifo_limit(msg))
    return None

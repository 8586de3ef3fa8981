"""The sender's egress stack both engines share: root htb, one class per shaped peer.

Layout on one interface (handles in tc notation; N is the peer's class minor)::

    7462: htb default ffff                 classifies only: every class runs unlimited
      7462:ffff   unshaped traffic
      7462:N      one class per shaped peer, picked by
                  u32 prio 1 handle 800::N  match ip dst PEER/32 -> 7462:N
        leaf, one of:
        1N:  tbf rate R          the rate; cuts GSO packets into wire packets first
          4N:    pfifo limit L      (rate only)
          5N/6N: netem ...          (rate and delay, loss...: kernel engine)
        2N/3N: netem ...         (no rate: kernel engine)

The rate is a tbf, not the htb class, because tbf segments a 64 kB GSO packet into
wire packets before queueing it: a queue limit of 64 packets then means 64 wire packets
(at 1 Mbit/s an htb class with a pfifo of 64 GSO packets queued 1.8 s under TCP load).
netem under tbf is tc-netem(8)'s own recipe for rate plus delay.

`apply()` reconciles what the kernel holds with what is wanted, touching only what
differs: a profile change is an in-place qdisc change, so a TCP flow keeps its queue.
When a qdisc must be replaced by another (a kind change, or a netem whose distribution
table must go) the new one takes the other handle of its pair and is grafted in one
step: never a moment without a leaf. `read()` dumps the same objects back. Only
pyroute2 netlink, no tc.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar, overload

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
from testbed.net.shaping import netlink as nl
from testbed.net.shaping.base import CURRENT, netns_exists

log = logging.getLogger(__name__)

ROOT_MAJOR = 0x7462  # "tb": tells our root htb from anything else on the interface
DEFAULT_MINOR = 0xFFFF
FIRST_MINOR, LAST_MINOR = 0x10, 0xFFE
FILTER_PRIO = 1
UNSHAPED_RATE_BIT = 100 * 10**9  # every class: above LinkProfile.MAX_RATE_BIT
BURST_SECONDS = 0.001  # burst: 1 ms at the rate, and at least a few full frames
MIN_BURST_FRAMES = 4
# qdisc handle major = (slot << 12) | class minor
TBF, NETEM, PFIFO_CHILD, NETEM_CHILD = (1,), (2, 3), (4,), (5, 6)

_REQ = NLM_F_REQUEST | NLM_F_ACK
_CREATE_OR_REPLACE = _REQ | NLM_F_CREATE | NLM_F_REPLACE
_DUMP = NLM_F_REQUEST | NLM_F_DUMP

T = TypeVar("T")


@dataclass(frozen=True)
class Pfifo:
    limit: int


@dataclass(frozen=True)
class Tbf:
    """A rate, with the queue below it: pfifo (limit) or netem (delay... and limit)."""

    rate_bit: int
    child: Pfifo | nl.NetemParams


Leaf = nl.NetemParams | Tbf


@dataclass(frozen=True)
class Held:
    """One qdisc as dumped: handle, kind, and its parameters when we understand them."""

    handle: int
    kind: str
    value: Any  # NetemParams | Pfifo | int (a tbf's rate) | None


@dataclass
class EgressState:
    """The raw tc objects on one interface, as far as this module understands them."""

    root_kind: str | None = None
    ours: bool = False
    default_minor: int | None = None
    classes: dict[int, int] = field(default_factory=dict)  # minor -> rate_bit
    leaves: dict[int, Held] = field(default_factory=dict)  # class minor -> its qdisc
    children: dict[int, Held] = field(default_factory=dict)  # parent qdisc major -> child
    filters: dict[int, nl.U32Match] = field(default_factory=dict)  # u32 node -> match
    other_filters: int = 0

    def leaf(self, minor: int) -> Leaf | None:
        """The leaf under class `minor` (None if absent or not one this module makes)."""
        held = self.leaves.get(minor)
        if held is None:
            return None
        if held.kind == "netem":
            return held.value
        if held.kind == "tbf":
            child = self.children.get(held.handle >> 16)
            if child is not None and isinstance(child.value, Pfifo | nl.NetemParams):
                return Tbf(held.value, child.value)
        return None

    def peers(self) -> dict[str, tuple[int, Leaf | None]]:
        """dst address -> (class minor, its leaf or None if foreign)."""
        out: dict[str, tuple[int, Leaf | None]] = {}
        for node, m in self.filters.items():
            if m.dst is not None and m.classid == nl.handle(ROOT_MAJOR, node):
                out[m.dst] = (node, self.leaf(node))
        return out


def clear_all(egress: dict[tuple[str, str], Egress]) -> None:
    """Remove every stack in `egress` (what can be removed) and forget them all."""
    for eg in egress.values():
        try:
            eg.clear()
        except Exception as e:  # noqa: BLE001 - a close removes what it can
            log.warning("%r: could not clear: %s", eg, e)
    egress.clear()


def burst_bytes(rate_bit: int, mtu: int = 1500) -> int:
    return max(int(rate_bit / 8 * BURST_SECONDS), MIN_BURST_FRAMES * (mtu + 14))


def run(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run one netlink conversation to completion from synchronous code."""
    return asyncio.run(coro_fn())


def _major(slot: int, minor: int) -> int:
    return (slot << 12) | minor


class Egress:
    """One sender interface (netns, ifname). Each call opens, uses and closes a socket.

    Keep one object per interface: netem never dumps its delay distribution table, so
    the object remembers which table it sent to each netem (by handle); `read()` reports
    it from there, and a switch back to uniform grafts a fresh netem instead of keeping
    the old table, which is what a netem change without a table would do.
    """

    def __init__(self, netns: str, ifname: str, match: str = "dst") -> None:
        """`match`: which address picks a peer's class, "dst" (what this host sends to the
        peer) or "src" (on an ifb holding the interface's ingress: what the peer sends)."""
        self.netns, self.ifname, self.match = netns, ifname, match
        self.sent_tables: dict[int, tuple[int, ...]] = {}
        self._mtu = 1500

    def __repr__(self) -> str:
        return f"Egress({self.netns or 'here'}:{self.ifname})"

    # -- sync facade -------------------------------------------------------------------
    def read_state(self) -> EgressState:
        return run(lambda: self._session(self._read))

    def read(self) -> dict[str, Leaf | None]:
        """dst -> leaf held (None: a qdisc this module did not make)."""
        st = self.read_state()
        out: dict[str, Leaf | None] = {}
        for dst, (minor, leaf) in st.peers().items():
            if isinstance(leaf, nl.NetemParams):
                table = self.sent_tables.get(st.leaves[minor].handle, ())
                leaf = replace(leaf, dist_table=table)
            elif isinstance(leaf, Tbf) and isinstance(leaf.child, nl.NetemParams):
                table = self.sent_tables.get(st.children[st.leaves[minor].handle >> 16].handle, ())
                leaf = Tbf(leaf.rate_bit, replace(leaf.child, dist_table=table))
            out[dst] = leaf
        return out

    def apply(self, wanted: dict[str, Leaf]) -> None:
        run(lambda: self._session(lambda ipr, idx: self._apply(ipr, idx, wanted)))

    def clear(self) -> None:
        """Remove our root htb (and everything under it); the interface's default returns."""
        run(lambda: self._session(self._clear, missing_ok=True))

    # -- netlink -----------------------------------------------------------------------
    @overload
    async def _session(
        self, fn: Callable[..., Awaitable[T]], missing_ok: Literal[False] = False
    ) -> T: ...

    @overload
    async def _session(
        self, fn: Callable[..., Awaitable[T]], missing_ok: Literal[True]
    ) -> T | None: ...

    async def _session(
        self, fn: Callable[..., Awaitable[T]], missing_ok: bool = False
    ) -> T | None:
        if not netns_exists(self.netns):
            if missing_ok:
                return None
            raise LabError(f"network namespace {self.netns!r} does not exist")
        # CURRENT: this process's own namespace (an agent on its host), no NetNS helper
        ns = None if self.netns == CURRENT else self.netns
        async with AsyncIPRoute(netns=ns, flags=0) as ipr:
            links = [m async for m in await ipr.link("dump") if m.get("ifname") == self.ifname]
            if not links:
                if missing_ok:
                    return None
                where = f"namespace {self.netns!r}" if self.netns else "this host's namespace"
                raise LabError(f"no interface {self.ifname!r} in {where}")
            self._mtu = links[0].get("mtu") or 1500
            return await fn(ipr, links[0]["index"])

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
                continue
            held = Held(raw["handle"], kind, _value(nl.reparse(raw), kind))
            major, minor = nl.split_handle(raw["parent"])
            if major == ROOT_MAJOR:
                st.leaves[minor] = held
            elif minor == 1:
                st.children[major] = held
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
                if self.match == "src":  # the state speaks of peers: here, by source
                    m = replace(m, dst=m.src)
                st.filters[raw["handle"] & 0xFFF] = m
        return st

    async def _clear(self, ipr: AsyncIPRoute, index: int) -> None:
        st = await self._read(ipr, index)
        if st.ours:
            ref = nl.qdisc_ref(index, nl.handle(ROOT_MAJOR), nl.TC_H_ROOT)
            await self.request(ipr, ref, RTM_DELQDISC, _REQ)
        self.sent_tables.clear()

    async def _apply(self, ipr: AsyncIPRoute, index: int, wanted: dict[str, Leaf]) -> None:
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
            await self._set_class(ipr, index, DEFAULT_MINOR)

        # 1. drop filters we do not want (or do not understand), then their classes
        keep: dict[str, int] = {}
        for node, m in st.filters.items():
            good = m.dst in wanted and m.classid == nl.handle(ROOT_MAJOR, node)
            if good and m.dst is not None and m.dst not in keep and m.prio == FILTER_PRIO:
                keep[m.dst] = node
                continue
            ref = nl.u32_filter_ref(index, root, m.prio, node)
            await self.request(ipr, ref, RTM_DELTFILTER, _REQ)
        for minor in list(st.classes):
            if minor != DEFAULT_MINOR and minor not in keep.values():
                ref = nl.class_ref(index, nl.handle(ROOT_MAJOR, minor), root)
                await self.request(ipr, ref, RTM_DELTCLASS, _REQ)
                st.classes.pop(minor)
                st.leaves.pop(minor, None)

        # 2. classes and leaves first, filter last: a new peer's traffic finds a ready class
        free = (m for m in range(FIRST_MINOR, LAST_MINOR + 1) if m not in keep.values())
        for dst in sorted(wanted):
            found = keep.get(dst)
            if found is None:
                found = next(free, None)
                if found is None:
                    raise LabError(f"{self!r}: more than {LAST_MINOR - FIRST_MINOR} peers")
            minor = found
            if st.classes.get(minor) != UNSHAPED_RATE_BIT:
                await self._set_class(ipr, index, minor)
            await self._set_leaf(ipr, index, minor, wanted[dst], st)
            if dst not in keep:
                msg = nl.u32_dst_filter(
                    index,
                    root,
                    FILTER_PRIO,
                    minor,
                    dst,
                    nl.handle(ROOT_MAJOR, minor),
                    field=self.match,
                )
                await self.request(ipr, msg, RTM_NEWTFILTER, _REQ | NLM_F_CREATE | NLM_F_EXCL)

    async def _set_class(self, ipr: AsyncIPRoute, index: int, minor: int) -> None:
        rate = UNSHAPED_RATE_BIT
        msg = nl.htb_class(
            index, nl.handle(ROOT_MAJOR, minor), nl.handle(ROOT_MAJOR), rate, burst_bytes(rate)
        )
        await self.request(ipr, msg, RTM_NEWTCLASS, _CREATE_OR_REPLACE)

    async def _set_leaf(
        self, ipr: AsyncIPRoute, index: int, minor: int, want: Leaf, st: EgressState
    ) -> None:
        slot = nl.handle(ROOT_MAJOR, minor)
        cur = st.leaves.get(minor)
        if isinstance(want, nl.NetemParams):
            await self._put_netem(ipr, index, slot, minor, NETEM, want, cur)
            return
        tbf = nl.handle(_major(TBF[0], minor))
        limit = want.child.limit
        fresh = cur is None or cur.handle != tbf or cur.kind != "tbf"
        if fresh or (cur is not None and cur.value != want.rate_bit):
            # a new tbf makes a bytes fifo child from `limit` until ours is grafted below;
            # a changed one sets a pfifo child's limit (packets) from it
            msg = nl.tbf_qdisc(
                index, tbf, slot, want.rate_bit, burst_bytes(want.rate_bit, self._mtu),
                limit * (self._mtu + 14) if fresh else limit,
            )  # fmt: skip
            await self.request(ipr, msg, RTM_NEWQDISC, _CREATE_OR_REPLACE)
        under = nl.handle(tbf >> 16, 1)
        child = None if fresh else st.children.get(tbf >> 16)
        if isinstance(want.child, nl.NetemParams):
            await self._put_netem(ipr, index, under, minor, NETEM_CHILD, want.child, child)
            return
        hdl = nl.handle(_major(PFIFO_CHILD[0], minor))
        if child is None or child.handle != hdl or child.value != want.child:
            msg = nl.pfifo_qdisc(index, hdl, under, want.child.limit)
            await self.request(ipr, msg, RTM_NEWQDISC, _CREATE_OR_REPLACE)

    async def _put_netem(
        self,
        ipr: AsyncIPRoute,
        index: int,
        parent: int,
        minor: int,
        slots: tuple[int, ...],
        want: nl.NetemParams,
        cur: Held | None,
    ) -> None:
        handles = [nl.handle(_major(s, minor)) for s in slots]
        in_place = (
            cur is not None
            and cur.kind == "netem"
            and cur.handle in handles
            # netem keeps its old table on a change without one: graft a fresh netem
            and (want.dist_table or self.sent_tables.get(cur.handle) == ())
        )
        if in_place:
            assert cur is not None  # in_place says so
            hdl = cur.handle
            same = replace(cur.value, dist_table=want.dist_table) == want
            if same and self.sent_tables.get(hdl) == want.dist_table:
                return
        else:
            hdl = next(h for h in handles if cur is None or h != cur.handle)
            if want.duplicate_pct and cur is not None:
                # Linux (6.1.1xx, check_netem_in_tree) refuses a duplicating netem while
                # another netem is in the tree, the one it replaces too: remove that first
                await self.request(ipr, nl.qdisc_ref(index, cur.handle, parent), RTM_DELQDISC, _REQ)
        try:
            await self.request(ipr, nl.netem_qdisc(index, hdl, parent, want), RTM_NEWQDISC,
                               _CREATE_OR_REPLACE)  # fmt: skip
        except NetlinkError as e:
            if e.code in (errno.ENOENT, errno.EOPNOTSUPP):
                raise CapabilityMissing(
                    f"the kernel in {self.netns} has no netem qdisc (sch_netem): {e}",
                    hint="use the userspace engine (select_engine('auto') picks it)",
                ) from None
            if e.code == errno.EINVAL and want.duplicate_pct:
                raise LabError(
                    f"{self!r}: the kernel refuses a duplicating netem next to another netem "
                    "on the same interface (Linux >= 6.1.1xx: 'cannot mix duplicating netems "
                    "with other netems in tree')",
                    hint="shape duplicate on a link whose sender has no other netem peer, "
                    "or use the userspace engine",
                ) from None
            raise
        self.sent_tables[hdl] = want.dist_table


def _value(msg: nl.TcMsg, kind: str) -> Any:
    if kind == "netem":
        return nl.netem_params(msg)
    if kind == "pfifo":
        return Pfifo(nl.pfifo_limit(msg))
    if kind == "tbf":
        return nl.tbf_rate_bit(msg)
    return None

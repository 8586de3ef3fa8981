"""Does this kernel take a netem qdisc? Ask it, do not guess from the distribution.

`netem_available()` adds a netem qdisc to a veth in a scratch namespace (or in the
namespace given) and reads the answer: a kernel without sch_netem says "Specified qdisc
kind is unknown" (ENOENT). Its own module so that the kernel engine can ask without
importing the engine selection (detect.py), which imports the kernel engine.
"""

from __future__ import annotations

import errno
import logging
import os

from pyroute2 import AsyncIPRoute, netns
from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_NEWQDISC

from testbed.errors import LabError
from testbed.hosts.nsexec import netns_path
from testbed.net.shaping import netlink as nl
from testbed.net.shaping.egress import Egress, run

log = logging.getLogger(__name__)

_cache: dict[str | None, bool] = {}


def netem_available(netns_name: str | None = None) -> bool:
    """True if the kernel accepts a netem qdisc (tried on a temporary veth pair)."""
    if netns_name in _cache:
        return _cache[netns_name]
    scratch = None
    if netns_name is None:
        scratch = f"tbprobe-{os.getpid()}"
        if os.path.exists(netns_path(scratch)):
            netns.remove(scratch)
        netns.create(scratch)
    elif not os.path.exists(netns_path(netns_name)):
        raise LabError(f"network namespace {netns_name!r} does not exist")
    ns = scratch or netns_name
    assert ns is not None  # the scratch namespace when none was named
    try:
        err = run(lambda: _try_netem(ns))
    finally:
        if scratch:
            netns.remove(scratch)
    if err is not None and err.code not in (errno.ENOENT, errno.EOPNOTSUPP):
        raise LabError(f"netem probe in {ns}: unexpected answer {err}")
    if err is not None:
        log.info("netem is not available: %s", err)
    _cache[netns_name] = err is None
    return err is None


async def _try_netem(ns: str) -> NetlinkError | None:
    """Add a netem root qdisc on a temporary veth; None if the kernel took it."""
    a, b = f"tbnp{os.getpid() % 100000}a", f"tbnp{os.getpid() % 100000}b"
    async with AsyncIPRoute(netns=ns, flags=0) as ipr:
        await ipr.link("add", ifname=a, kind="veth", peer=b)
        try:
            idx = (await ipr.link_lookup(ifname=a))[0]
            msg = nl.netem_qdisc(idx, nl.handle(1), nl.TC_H_ROOT, nl.NetemParams(delay_ms=1))
            flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
            try:
                await Egress.request(ipr, msg, RTM_NEWQDISC, flags)
            except NetlinkError as e:
                return e
            return None
        finally:
            for idx in await ipr.link_lookup(ifname=a):
                await ipr.link("del", index=idx)

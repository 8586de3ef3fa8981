"""Which engine can run here: ask the kernel, do not guess from the distribution.

`netem_available()` adds a netem qdisc to a veth in a scratch namespace (or in the
namespace given) and reads the answer: a kernel without sch_netem says "Specified qdisc
kind is unknown" (ENOENT). `select_engine()` picks the kernel engine where netem works
and the userspace engine elsewhere, and says why in the log.
"""

from __future__ import annotations

import errno
import importlib.util
import logging
import os
import shutil
from pathlib import Path

from pyroute2 import AsyncIPRoute, netns
from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_NEWQDISC

from testbed.errors import CapabilityMissing, InputError, LabError
from testbed.hosts.ledger import Ledger
from testbed.hosts.nsexec import netns_path
from testbed.net.shaping import netlink as nl
from testbed.net.shaping.base import ShapingEngine
from testbed.net.shaping.egress import Egress, run

log = logging.getLogger(__name__)

ENGINES = ("auto", "kernel-netem", "userspace-nfqueue")
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


def userspace_missing() -> list[str]:
    """What the userspace engine needs and this machine lacks (empty when it can run)."""
    missing = []
    if importlib.util.find_spec("netfilterqueue") is None:
        missing.append("python package NetfilterQueue (pip install NetfilterQueue)")
    for tool, pkg in (("iptables", "iptables"), ("nsenter", "util-linux")):
        if shutil.which(tool) is None:
            missing.append(f"{tool} (apt-get install {pkg})")
    return missing


def select_engine(
    ledger: Ledger,
    state_dir: Path | None = None,
    *,
    engine: str = "auto",
    netns_name: str | None = None,
    here_only: bool = False,
) -> ShapingEngine:
    """The engine to use: "kernel-netem", "userspace-nfqueue" or "auto" (netem if it works).

    `here_only`: for a host's agent, see `ShapingEngine`.
    """
    from testbed.net.shaping.kernel import KernelNetemEngine
    from testbed.net.shaping.userspace import UserspaceEngine

    if engine not in ENGINES:
        raise InputError(f"unknown shaping engine {engine!r}; expected one of {', '.join(ENGINES)}")
    if engine in ("auto", "kernel-netem"):
        if netem_available(netns_name):
            return KernelNetemEngine(ledger, state_dir, here_only=here_only)
        if engine == "kernel-netem":
            raise CapabilityMissing(
                "this kernel has no netem qdisc (sch_netem), so the kernel engine cannot run",
                hint="use engine 'auto' or 'userspace-nfqueue'",
            )
        log.info("no netem in this kernel: using the userspace NFQUEUE engine")
    missing = userspace_missing()
    if missing:
        raise CapabilityMissing(
            "the userspace shaping engine needs: " + "; ".join(missing),
            hint="or run on a kernel with sch_netem",
        )
    return UserspaceEngine(ledger, state_dir, here_only=here_only)

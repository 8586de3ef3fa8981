"""What this kernel can do for shaping: qdisc kinds, ifb, NFQUEUE. Probed, not guessed.

Each probe runs in a scratch network namespace that is removed afterwards, so
nothing in the root namespace is touched. A missing qdisc answers ENOENT
("Specified qdisc kind is unknown").
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from testbed.hosts.nsexec import ns_argv
from testbed.net.shaping.detect import netem_available

QDISC_PROBES: dict[str, dict[str, Any]] = {  # netem: detect.netem_available, the engine's own
    "htb": {"default": 0},
    "tbf": {"rate": "1mbit", "burst": 10000, "latency": 50000},
    "ingress": {},
}


@dataclass(frozen=True)
class KernelCapabilities:
    qdiscs: dict[str, bool] = field(default_factory=dict)
    ifb: bool = False
    nfqueue: bool = False
    netns: bool = False
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def netem(self) -> bool:
        return self.qdiscs.get("netem", False)


@contextmanager
def scratch_netns() -> Iterator[str]:
    name = f"tbscratch{os.getpid()}"
    netns.create(name)
    try:
        yield name
    finally:
        netns.remove(name)


def _try_qdisc(ns: str, kind: str, args: dict[str, Any]) -> tuple[bool, str]:
    with IPRoute(netns=ns) as ipr:
        ipr.link("add", ifname=f"q{kind[:6]}", kind="veth", peer={"ifname": f"r{kind[:6]}"})
        idx = ipr.link_lookup(ifname=f"q{kind[:6]}")[0]
        handle = 0xFFFF0000 if kind == "ingress" else 0x10000
        try:
            ipr.tc("add", kind, index=idx, handle=handle, **args)
            return True, ""
        except NetlinkError as e:
            why = "qdisc kind unknown to this kernel" if e.code == errno.ENOENT else str(e)
            return False, why
        finally:
            ipr.link("del", index=idx)


def _try_ifb(ns: str) -> tuple[bool, str]:
    with IPRoute(netns=ns) as ipr:
        try:
            ipr.link("add", ifname="ifbprobe", kind="ifb")
            return True, ""
        except NetlinkError as e:
            return False, str(e)


def _try_nfqueue(ns: str) -> tuple[bool, str]:
    rule = ["-t", "raw", "-A", "PREROUTING", "-j", "NFQUEUE", "--queue-num", "0", "--queue-bypass"]
    try:
        res = subprocess.run(
            [*ns_argv(ns), "iptables", "-w", *rule], capture_output=True, text=True, timeout=10
        )
    except FileNotFoundError:
        return False, "iptables is not installed"
    return res.returncode == 0, res.stderr.strip()


@cache
def probe_kernel() -> KernelCapabilities:
    """Probe once per process."""
    errors: dict[str, str] = {}
    try:
        with scratch_netns() as ns:
            qdiscs = {}
            for kind, args in QDISC_PROBES.items():
                ok, why = _try_qdisc(ns, kind, args)
                qdiscs[kind] = ok
                if why:
                    errors[kind] = why
            qdiscs["netem"] = netem_available(ns)
            if not qdiscs["netem"]:
                errors["netem"] = "qdisc kind unknown to this kernel"
            ifb, why = _try_ifb(ns)
            if why:
                errors["ifb"] = why
            nfq, why = _try_nfqueue(ns)
            if why:
                errors["nfqueue"] = why
    except (OSError, NetlinkError) as e:
        return KernelCapabilities(errors={"netns": str(e)})
    return KernelCapabilities(qdiscs=qdiscs, ifb=ifb, nfqueue=nfq, netns=True, errors=errors)

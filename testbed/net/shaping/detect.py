"""Which engine can run here: ask the kernel, do not guess from the distribution.

`netem_available()` (netem_probe.py) asks the kernel for a netem qdisc;
`select_engine()` picks the kernel engine where netem works and the userspace engine
elsewhere, and says why in the log.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path

from testbed.errors import CapabilityMissing, InputError
from testbed.hosts.ledger import Ledger
from testbed.net.shaping.base import ShapingEngine
from testbed.net.shaping.netem_probe import netem_available

__all__ = ["ENGINES", "netem_available", "select_engine", "userspace_missing"]

log = logging.getLogger(__name__)

ENGINES = ("auto", "kernel-netem", "userspace-nfqueue")


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

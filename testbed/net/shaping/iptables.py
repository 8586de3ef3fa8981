"""NFQUEUE rules in a lab namespace's `raw PREROUTING`, through iptables in that namespace.

All rules live in one chain of ours (`TB-SHAPE`, jumped to from raw PREROUTING), one
rule per shaped incoming direction::

    -A TB-SHAPE -s SRC/32 -i IFNAME -j NFQUEUE --queue-num N --queue-bypass

iptables runs as `nsenter --net=/run/netns/NS -- iptables -w ...` for a named namespace.
The namespace CURRENT ("") is the one this process runs in: only a host's shaping agent
(`testbed.net.agent`) names it, and it runs on that host, inside the host's namespace.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from testbed.errors import CapabilityMissing, LabError
from testbed.net.shaping.base import enter_argv

CHAIN = "TB-SHAPE"
TABLE = "raw"


@dataclass(frozen=True)
class QueueRule:
    ifname: str
    src: str  # IPv4 address, no prefix
    queue: int

    def spec(self) -> list[str]:
        return [
            "-s", f"{self.src}/32", "-i", self.ifname,
            "-j", "NFQUEUE", "--queue-num", str(self.queue), "--queue-bypass",
        ]  # fmt: skip


def _run(netns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = [*enter_argv(netns), "iptables", "-w", "-t", TABLE, *args]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise CapabilityMissing(
            "iptables is not installed", hint="apt-get install iptables"
        ) from None
    if check and out.returncode != 0:
        where = netns or "this host's namespace"
        raise LabError(f"iptables in {where}: {' '.join(args)}: {out.stderr.strip()}")
    return out


def chain_exists(netns: str) -> bool:
    return _run(netns, "-S", CHAIN, check=False).returncode == 0


def ensure_chain(netns: str) -> None:
    if not chain_exists(netns):
        _run(netns, "-N", CHAIN)
    if _run(netns, "-C", "PREROUTING", "-j", CHAIN, check=False).returncode != 0:
        _run(netns, "-I", "PREROUTING", "1", "-j", CHAIN)


def list_rules(netns: str) -> list[QueueRule]:
    """The NFQUEUE rules our chain holds (empty if the chain does not exist)."""
    out = _run(netns, "-S", CHAIN, check=False)
    if out.returncode != 0:
        return []
    return [r for line in out.stdout.splitlines() if (r := parse_rule(line)) is not None]


def parse_rule(line: str) -> QueueRule | None:
    """`-A TB-SHAPE -s 198.18.0.2/32 -i lan -j NFQUEUE --queue-num 29697 --queue-bypass`."""
    tok = line.split()
    if len(tok) < 2 or tok[0] != "-A" or tok[1] != CHAIN:
        return None
    opts = dict(zip(tok[2::2], tok[3::2], strict=False))
    try:
        src = opts["-s"].removesuffix("/32")
        return QueueRule(ifname=opts["-i"], src=src, queue=int(opts["--queue-num"]))
    except (KeyError, ValueError):
        return None


def add_rule(netns: str, rule: QueueRule) -> None:
    ensure_chain(netns)
    _run(netns, "-A", CHAIN, *rule.spec())


def delete_rule(netns: str, rule: QueueRule) -> None:
    _run(netns, "-D", CHAIN, *rule.spec())


def remove_chain(netns: str) -> None:
    """Remove the jump, the rules and the chain (each step tolerates it being gone)."""
    while _run(netns, "-D", "PREROUTING", "-j", CHAIN, check=False).returncode == 0:
        pass
    _run(netns, "-F", CHAIN, check=False)
    _run(netns, "-X", CHAIN, check=False)

"""What a lab may leave on this machine, read from the system itself.

A snapshot before and after a test; the difference must be empty.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute, netns

from testbed.lab.state import ID_CLAIMS

WATCHED = ("libvirtd", "qemu-system-x86", "Xvfb", "remote-viewer", "iperf3", "delayline")


def _processes() -> set[tuple[int, str]]:
    out = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (d / "stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            continue
        if any(w in cmd for w in WATCHED) and "pytest" not in cmd:
            out.add((int(d.name), cmd[:120]))
    return out


def _root_links() -> set[str]:
    with IPRoute() as ipr:
        return {link.get("ifname") for link in ipr.get_links()}


def _mounts() -> set[str]:
    return {
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if "testbed" in line or "/run/netns/tb-" in line
    }


def root_listeners() -> frozenset[str]:
    """TCP/UDP sockets listening in the root network namespace (hex local address:port)."""
    out = set()
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = Path(f"/proc/net/{proto}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if proto.startswith("udp") or f[3] == "0A":  # 0A = LISTEN
                out.add(f"{proto} {f[1]}")
    return frozenset(out)


def _id_claims() -> frozenset[str]:
    return frozenset(p.name for p in ID_CLAIMS.iterdir()) if ID_CLAIMS.exists() else frozenset()


def _iptables_rules() -> int:
    try:
        res = subprocess.run(["iptables-save"], capture_output=True, text=True, timeout=20)
    except FileNotFoundError:
        return 0
    return sum(1 for line in res.stdout.splitlines() if line.startswith("-A"))


@dataclass(frozen=True)
class Snapshot:
    namespaces: frozenset[str]
    processes: frozenset[tuple[int, str]]
    links: frozenset[str]
    mounts: frozenset[str]
    iptables_rules: int
    state_files: frozenset[str]
    listeners: frozenset[str]
    id_claims: frozenset[str]

    @classmethod
    def take(cls, state_root: Path) -> Snapshot:
        files = (
            frozenset(str(p) for p in state_root.rglob("*")) if state_root.exists() else frozenset()
        )
        return cls(
            frozenset(n for n in netns.listnetns() if n.startswith("tb-")),
            frozenset(_processes()),
            frozenset(_root_links()),
            frozenset(_mounts()),
            _iptables_rules(),
            files,
            root_listeners(),
            _id_claims(),
        )

    def leaks_since(self, before: Snapshot) -> dict[str, object]:
        """Everything present now that was not before (empty dict: nothing leaked)."""
        out: dict[str, object] = {}
        for name in (
            "namespaces",
            "processes",
            "links",
            "mounts",
            "state_files",
            "listeners",
            "id_claims",
        ):
            new = getattr(self, name) - getattr(before, name)
            if new:
                out[name] = sorted(new)
        if self.iptables_rules > before.iptables_rules:
            out["iptables_rules"] = self.iptables_rules - before.iptables_rules
        return out


def lab_processes(lab_dir: Path, netns_names: list[str]) -> dict[int, tuple[int, str]]:
    """pid -> (start time, comm) of every process of one lab on this machine, zombies too:
    in one of its namespaces, or naming its folder on the command line."""
    inodes = set()
    for ns in netns_names:
        try:
            inodes.add(os.stat(f"/run/netns/{ns}").st_ino)
        except OSError:
            pass
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes()
            ino = os.stat(d / "ns" / "net").st_ino if inodes else None
        except OSError:
            continue
        if ino in inodes or f"{lab_dir}/".encode() in cmd:
            comm = stat.split("(", 1)[1].rsplit(")", 1)[0]
            out[int(d.name)] = (int(stat.rsplit(")", 1)[1].split()[19]), comm)
    return out


def still_there(procs: dict[int, tuple[int, str]]) -> list[str]:
    """Those of `procs` that still exist in any state (a zombie too): `pid comm state`."""
    left = []
    for pid, (start, comm) in procs.items():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[19]) == start:
            left.append(f"{pid} {comm} {fields[0]}")
    return sorted(left)

"""A real sshd in a scratch namespace, the root namespace playing the operator.

Shared by the tests of SSH hosts and of what runs over them: a veth joins the
root namespace to the scratch one, where sshd listens with key authentication
only. `ssh_lab(tmp, tag)` yields an SshLab and removes everything after.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest
from leaks import root_listeners
from pyroute2 import IPRoute, netns

from testbed.hosts.ledger import Ledger
from testbed.hosts.procs import stop_netns_processes, stop_recorded
from testbed.hosts.ssh import SshHost
from testbed.hosts.sshd import SSHD, Sshd, start_sshd
from testbed.net.links import create_netns, remove_netns

PORT = 2222


@dataclass
class SshLab:
    netns: str
    outer: str
    address: str  # sshd's address, inside the namespace
    absent: str  # an address on the same veth that nobody answers
    sshd: Sshd
    ledger: Ledger
    tmp: Path

    def host(self, **kw: object) -> SshHost:
        args: dict[str, object] = {
            "port": PORT,
            "key_file": self.sshd.client_key,
            "known_hosts": self.sshd.known_hosts,
            "state_dir": PurePosixPath(self.tmp / "remote"),
        }
        args.update(kw)
        return SshHost("hv1", str(args.pop("address", self.address)), **args)  # type: ignore[arg-type]


def _sshd_pids(state_dir: Path) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if str(state_dir) in cmd and "sshd" in cmd:
                out.append(int(d.name))
    return out


def _veth(near_ns: str | None, near_if: str, near: str, ns: str, addr: str, prefix: int) -> None:
    """A veth from `near_ns` (None: the root namespace) to `ns`'s eth0, addressed both ends."""
    with IPRoute() as ipr:
        ipr.link("add", ifname=near_if, kind="veth", peer={"ifname": "eth0", "net_ns_fd": ns})
        if near_ns is not None:
            ipr.link("set", index=ipr.link_lookup(ifname=near_if)[0], net_ns_fd=near_ns)
    for where, ifname, address in ((near_ns, near_if, near), (ns, "eth0", addr)):
        with IPRoute(**({"netns": where} if where else {})) as ipr:
            idx = ipr.link_lookup(ifname=ifname)[0]
            ipr.addr("add", index=idx, address=address, prefixlen=prefix)
            ipr.link("set", index=idx, state="up")


def hidden_address(tag: int = 0) -> str:
    """The address of the sshd `behind()` makes, for the front sshd's PermitOpen."""
    return f"198.19.253.{8 * ((os.getpid() * 4 + tag) % 32) + 2}"


@contextmanager
def ssh_lab(tmp: Path, tag: int = 0, permit_open: str | None = None) -> Iterator[SshLab]:
    """`tag` (0-3) keeps two fixtures of one test process apart; `permit_open` lets its
    sshd forward there (a jump host)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: makes a network namespace and runs sshd")
    if not SSHD.exists():
        pytest.skip("openssh-server is not installed")
    pid = os.getpid()
    ns, outer = f"tbssh{pid}t{tag}", f"tbs{pid}o{tag}"
    base = 8 * ((pid * 4 + tag) % 32)  # a /29 of 198.19.254.0/24 per test process and tag
    near, addr, absent = (f"198.19.254.{base + i}" for i in (1, 2, 3))
    ledger = Ledger(tmp / "ledger.jsonl")
    create_netns(ns, ledger)
    sshd: Sshd | None = None
    try:
        _veth(None, outer, near, ns, addr, 29)
        sshd = start_sshd(ns, addr, PORT, tmp / "sshd", ledger, permit_open=permit_open)
        yield SshLab(ns, outer, addr, absent, sshd, ledger, tmp)
    finally:
        for e in reversed(ledger.of_kind("process")):
            stop_recorded(e["pid"], e.get("start_time"))
        if sshd is not None:
            sshd.stop()
        stop_netns_processes(ns)  # sessions and detached processes left in the namespace
        with IPRoute() as ipr:
            for idx in ipr.link_lookup(ifname=outer):  # the kernel frees a netns lazily
                ipr.link("del", index=idx)
        remove_netns(ns)
    # only what is ours: other labs may come and go on this machine meanwhile
    assert ns not in netns.listnetns()
    with IPRoute() as ipr:
        assert ipr.link_lookup(ifname=outer) == []
    assert _sshd_pids(tmp / "sshd") == []
    port_hex = f":{PORT:04X}"
    assert not [x for x in root_listeners() if x.endswith(port_hex)], "sshd listened in root"


@contextmanager
def behind(front: SshLab, tag: int = 0) -> Iterator[SshLab]:
    """A second sshd in a namespace that only `front`'s namespace reaches (a veth between
    the two; no route from the root namespace): a host reached only through another."""
    pid = os.getpid()
    ns, near_if = f"tbhid{pid}t{tag}", f"tbh{pid}n{tag}"
    addr = hidden_address(tag)
    near = addr[: addr.rindex(".") + 1] + str(int(addr.rsplit(".", 1)[1]) - 1)
    tmp = front.tmp / "hidden"
    ledger = Ledger(tmp / "ledger.jsonl")
    create_netns(ns, ledger)
    sshd: Sshd | None = None
    try:
        _veth(front.netns, near_if, near, ns, addr, 30)
        sshd = start_sshd(ns, addr, PORT, tmp / "sshd", ledger)
        yield SshLab(ns, near_if, addr, near, sshd, ledger, tmp)
    finally:
        if sshd is not None:
            sshd.stop()
        stop_netns_processes(ns)
        remove_netns(ns)  # the veth goes with it
    assert ns not in netns.listnetns()
    assert _sshd_pids(tmp / "sshd") == []

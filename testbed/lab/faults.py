"""Faults injected into a running lab on purpose: kill one of its processes.

Each fault SIGKILLs exactly one kind of the lab's own processes, found through the
lab's record or its hosts (never by a name across the machine), and says what it
killed:

- `client`: the SPICE client (remote-viewer), through its SpiceClient;
- `dst-libvirtd` / `src-libvirtd`: a hypervisor's libvirtd (pid from the lab record);
- `src-qemu` / `dst-qemu`: the guest's QEMU on that side (during a migration the
  destination's is the one started with `-incoming`);
- `delay-line`: every userspace delay line of the lab's links (shaping then fails
  open: traffic passes unshaped, and the links' health says so);
- `dst-sshd` / `src-sshd`: on a lab driven over SSH (`drive: ssh`), the host's sshd
  and every session through it: the host is unreachable over SSH (connections reset,
  new ones refused), while what runs there (libvirtd, QEMU) keeps running.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from typing import Any, get_args

from testbed.errors import LabError
from testbed.lab.lab import Lab
from testbed.lab.links import LabLinks
from testbed.model.playbook.steps import FaultKill
from testbed.spice.client import SpiceClient

# the kinds a playbook can name (its `none` aside): defined once, in the model
FAULT_KINDS: tuple[str, ...] = tuple(k for k in get_args(FaultKill) if k != "none")


@dataclass
class FaultDone:
    kind: str
    host: str | None = None
    pids: list[int] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"killed": self.kind, "host": self.host, "pids": self.pids, **self.detail}


def _kill_on(lab: Lab, host: str, pids: list[int]) -> None:
    if not pids:
        raise LabError(f"nothing to kill on {host}")
    lab.hosts[host].run(["kill", "-KILL", *map(str, pids)], check=False)


def qemu_pids(lab: Lab, host: str, guest: str, *, incoming: bool) -> list[int]:
    """The guest's QEMU processes on `host` (with or without `-incoming`)."""
    name = lab.domain_name(guest)
    res = lab.hosts[host].run(["pgrep", "-a", "-f", f"guest={name},"], check=False)
    pids = []
    for line in res.stdout.splitlines():
        pid, _, cmd = line.partition(" ")
        if "qemu-system" in cmd and ("-incoming" in cmd) == incoming:
            pids.append(int(pid))
    return pids


def kill_client(client: SpiceClient | None) -> FaultDone:
    if client is None or not client.running():
        raise LabError("fault client: no client is running")
    pid = client.pid
    client.kill()
    return FaultDone("client", client.host.name, [pid] if pid else [])


def kill_libvirtd(lab: Lab, host: str) -> FaultDone:
    pid = int(lab.record.info["hosts"][host]["libvirtd_pid"])
    _kill_on(lab, host, [pid])
    return FaultDone(f"{host}-libvirtd" if host in ("src", "dst") else "libvirtd", host, [pid])


def kill_qemu(lab: Lab, host: str, guest: str, *, incoming: bool) -> FaultDone:
    pids = qemu_pids(lab, host, guest, incoming=incoming)
    _kill_on(lab, host, pids)
    return FaultDone("qemu", host, pids, {"guest": guest, "incoming": incoming})


def kill_delay_lines(links: LabLinks) -> FaultDone:
    health = links.health()
    pids = [int(e["pid"]) for e in health.get("delay_lines", []) if e.get("alive")]
    if not pids:
        raise LabError("fault delay-line: no delay line is running (shape a delay or loss first)")
    for pid in pids:
        os.kill(pid, signal.SIGKILL)  # delay lines run on this machine, in lab namespaces
    return FaultDone("delay-line", None, pids)


def kill_sshd(lab: Lab, host: str) -> FaultDone:
    """The lab's sshd of `host` and its sessions (children, SIGKILLed with it)."""
    if not lab.over_ssh:
        raise LabError(f"fault {host}-sshd: lab {lab.id} does not reach {host} over SSH")
    netns = lab.netns_of(host)
    entries = [e for e in lab.ledger.of_kind("process") if e.get("name") == f"sshd@{netns}"]
    if not entries:
        raise LabError(f"fault {host}-sshd: lab {lab.id} recorded no sshd for {host}")
    master = int(entries[-1]["pid"])
    pids = [master, *_descendants(master)]
    for pid in pids:  # the lab's own sshd, started on this machine in the host's netns
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return FaultDone(f"{host}-sshd" if host in ("src", "dst") else "sshd", host, pids)


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = open(f"/proc/{p}/task/{p}/children").read().split()
        except OSError:
            continue
        out += [int(k) for k in kids]
        todo += [int(k) for k in kids]
    return out

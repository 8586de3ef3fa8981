"""Boot the netem VM in a network namespace and reach it as an SSH host.

`start_netem_vm()` gives each VM its own host key and a client key (made here,
in the VM's state folder), writes them with the VM's NICs (MAC, name, address)
into a small second cpio archive appended to the image's rootfs (the kernel
unpacks both), and runs QEMU inside `netns` through that namespace's host,
recorded in the ledger like any lab process. QEMU makes one tap per NIC in
`netns` itself (so the taps go with the process); the caller plugs each into a
bridge there. The VM is therefore reached only through that namespace: nothing
outside the lab has a route to it. The first NIC carries SSH: `NetemVm.ssh_host()`
is a `kind: ssh` host whose key is checked against the known_hosts file written
here. The others are the VM's interfaces on a lab's networks, named after them.

Under TCG (this machine) the boot to sshd takes a few seconds; `boot_s` says.
"""

from __future__ import annotations

import gzip
import hashlib
import ipaddress
import logging
import shutil
import stat
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Literal

from pyroute2 import IPRoute

from testbed.errors import LabError
from testbed.hosts.base import Host, Process
from testbed.hosts.factory import namespace_host, ssh_machine
from testbed.hosts.ledger import Ledger, process_start_time
from testbed.hosts.procs import alive, stop_netns_processes, stop_recorded
from testbed.hosts.sshd import _keygen as sshd_keygen
from testbed.net.links import (
    add_bridge,
    attach_root,
    create_netns,
    enslave,
    free_subnet,
    remove_netns,
    remove_root_link,
)
from testbed.virt.image import _Cpio
from testbed.virt.netem_vm import NetemImage, build_netem_image

log = logging.getLogger(__name__)

READY = "TESTBED-NETEM-VM READY"
ERROR = "TESTBED-NETEM-VM ERROR"
REMOTE_STATE = PurePosixPath("/var/lib/testbed")
#: where scratch VMs take their /29 (the labs' management networks use 198.19.0.0/17)
SCRATCH_POOL = ipaddress.IPv4Network("198.19.253.0/24")


def vm_cmdline() -> str:
    """Serial console only, the short-boot options of the guest (`image.guest_cmdline`)."""
    return (
        "console=ttyS0,115200 quiet loglevel=3 edd=off mitigations=off 8250.nr_uarts=1 "
        "panic=-1 rdinit=/init"
    )


@dataclass(frozen=True)
class VmNic:
    """One NIC of the VM: QEMU's tap in the namespace, the VM's name for it, its address."""

    tap: str
    ifname: str
    address: ipaddress.IPv4Interface | None = None

    def mac(self, vm_name: str) -> str:
        """Stable per VM and NIC, locally administered (the VM's init finds the NIC by it)."""
        b = hashlib.sha256(f"{vm_name}/{self.ifname}".encode()).digest()
        return "52:54:00:{:02x}:{:02x}:{:02x}".format(*b[:3])


@dataclass
class NetemVm:
    """A running netem VM: QEMU's process in `netns`, its NICs (the first: SSH) and keys."""

    name: str
    netns: str
    nics: tuple[VmNic, ...]
    state_dir: Path
    pid: int
    start_time: int | None
    boot_s: float = 0.0

    @property
    def address(self) -> ipaddress.IPv4Interface:
        """The SSH address: the first NIC's."""
        addr = self.nics[0].address
        if addr is None:
            raise LabError(f"netem VM {self.name}: its first NIC (SSH) has no address")
        return addr

    @property
    def host_key(self) -> Path:
        return self.state_dir / "ssh_host_ed25519_key"

    @property
    def client_key(self) -> Path:
        return self.state_dir / "client_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.state_dir / "known_hosts"

    @property
    def console(self) -> Path:
        return self.state_dir / "console.log"

    def console_tail(self, lines: int = 5) -> str:
        try:
            text = self.console.read_text(errors="replace")
        except OSError:
            return "(no console output)"
        return " | ".join(line.strip() for line in text.splitlines()[-lines:] if line.strip())

    def ssh_host(self, name: str | None = None, connect_timeout: float = 20.0) -> Host:
        """The VM as a `kind: ssh` host: the lab's key, its host key checked, nothing added."""
        return ssh_machine(
            name or self.name,
            str(self.address.ip),
            key_file=self.client_key,
            known_hosts=self.known_hosts,
            state_dir=REMOTE_STATE,
            connect_timeout=connect_timeout,
        )

    def running(self) -> bool:
        return alive(self.pid) and process_start_time(self.pid) == self.start_time

    def stop(self, grace_s: float = 5.0) -> None:
        stop_recorded(self.pid, self.start_time, grace_s=grace_s)


def _keygen(path: Path, comment: str) -> str:
    """An ed25519 key pair at `path` (made once, as the lab's sshd makes its keys)."""
    sshd_keygen(path, comment)
    return path.with_suffix(".pub").read_text().strip()


def _overlay(vm: NetemVm, gateway: str | None) -> bytes:
    """The per-VM archive: host key, authorized_keys, net.conf (gzip'd newc cpio)."""
    host_pub = _keygen(vm.host_key, f"testbed-netem-vm@{vm.name}")
    client_pub = _keygen(vm.client_key, f"testbed-client@{vm.name}")
    vm.known_hosts.write_text(f"{vm.address.ip} {' '.join(host_pub.split()[:2])}\n")
    conf = f"TB_HOSTNAME={vm.name}\nTB_GATEWAY={gateway or ''}\n"
    nics = "".join(
        f"{n.mac(vm.name)} {n.ifname} {n.address.with_prefixlen if n.address else ''}\n"
        for n in vm.nics
    )
    cpio = _Cpio()
    cpio.add("etc/ssh/ssh_host_ed25519_key", stat.S_IFREG | 0o600, vm.host_key.read_bytes())
    cpio.add("etc/ssh/ssh_host_ed25519_key.pub", stat.S_IFREG | 0o644, host_pub.encode() + b"\n")
    cpio.add("root/.ssh/authorized_keys", stat.S_IFREG | 0o600, client_pub.encode() + b"\n")
    cpio.add("etc/testbed/net.conf", stat.S_IFREG | 0o644, conf.encode())
    cpio.add("etc/testbed/nics", stat.S_IFREG | 0o644, nics.encode())
    return gzip.compress(cpio.finish(), compresslevel=6, mtime=0)


def default_accel() -> Literal["kvm", "tcg"]:
    """What the guest image's accel probe found here (cached): KVM only where it boots."""
    from testbed.virt.accel import probe_accel
    from testbed.virt.image import build_guest_image

    return probe_accel(build_guest_image()[0]).kind


def qemu_argv(
    image: NetemImage, initrd: Path, vm: NetemVm, memory_mib: int, accel: str
) -> list[str]:
    """Headless, serial console to a file, a virtio NIC per tap QEMU makes."""
    nics: list[str] = []
    for i, nic in enumerate(vm.nics):
        nics += ["-netdev", f"tap,id=n{i},ifname={nic.tap},script=no,downscript=no"]
        nics += ["-device", f"virtio-net-pci,netdev=n{i},mac={nic.mac(vm.name)}"]
    return [
        "qemu-system-x86_64",
        "-accel", accel,
        "-cpu", "host" if accel == "kvm" else "max",
        "-smp", "1",
        "-m", str(memory_mib),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-serial", f"file:{vm.console}",
        "-kernel", str(image.kernel), "-initrd", str(initrd), "-append", vm_cmdline(),
        *nics,
    ]  # fmt: skip


def start_netem_vm(
    name: str,
    netns: str,
    nics: Sequence[VmNic],
    state_dir: Path,
    ledger: Ledger,
    wire: Callable[[str], None],
    *,
    gateway: str | None = None,
    image: NetemImage | None = None,
    accel: Literal["kvm", "tcg"] | None = None,
    memory_mib: int = 768,
    timeout_s: float = 120.0,
) -> NetemVm:
    """Boot the VM with a tap per NIC in `netns`; returns once its sshd answers.

    QEMU makes the taps; `wire(tap)` is called for each as soon as they exist (plug it
    into a bridge, bring it up). A VM that fails to boot is stopped before the error.
    """
    image = image or build_netem_image()[0]
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    state_dir.chmod(0o700)
    vm = NetemVm(name, netns, tuple(nics), state_dir, pid=0, start_time=None)
    initrd = state_dir / "initrd.gz"
    shutil.copyfile(image.rootfs, initrd)
    with open(initrd, "ab") as fh:
        fh.write(_overlay(vm, gateway))
    vm.console.unlink(missing_ok=True)
    host = namespace_host(f"netem-vm@{name}", netns, state_dir)
    start = time.monotonic()
    with open(state_dir / "qemu.log", "ab") as out:
        proc = host.popen(
            qemu_argv(image, initrd, vm, memory_mib, accel or default_accel()),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    vm.pid, vm.start_time = proc.pid, process_start_time(proc.pid)
    ledger.record("process", pid=vm.pid, start_time=vm.start_time, name=host.name, netns=netns)
    try:
        taps = [n.tap for n in vm.nics]
        _wait(vm, proc, lambda: _taps_exist(netns, taps), start + 30, "QEMU to make its taps")
        for tap in taps:
            wire(tap)
        _wait(vm, proc, lambda: READY in _read(vm.console), start + timeout_s, "sshd in the VM")
    except BaseException:
        vm.stop()
        raise
    vm.boot_s = time.monotonic() - start
    log.info("netem VM %s up in %s at %s in %.1f s", name, netns, vm.address.ip, vm.boot_s)
    return vm


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _taps_exist(netns: str, taps: list[str]) -> bool:
    with IPRoute(netns=netns) as ipr:
        return all(ipr.link_lookup(ifname=tap) for tap in taps)


def _wait(
    vm: NetemVm,
    proc: Process,
    done: Callable[[], bool],
    deadline: float,
    what: str,
) -> None:
    while not done():
        qemu_log = _read(vm.state_dir / "qemu.log").strip().splitlines()[-2:]
        if proc.poll() is not None:
            raise LabError(
                f"netem VM {vm.name}: QEMU exited ({proc.returncode}) waiting for {what}: "
                f"{' | '.join(qemu_log)} console: {vm.console_tail()}"
            )
        if ERROR in _read(vm.console):
            raise LabError(f"netem VM {vm.name}: its /init failed: {vm.console_tail()}")
        if time.monotonic() > deadline:
            raise LabError(f"netem VM {vm.name}: no {what} in time; console: {vm.console_tail()}")
        time.sleep(0.1)


@contextmanager
def scratch_netem_vm(tag: str, state_dir: Path) -> Iterator[tuple[NetemVm, Host]]:
    """A netem VM on a private bridge the root namespace alone reaches; all removed after.

    Namespace `tbnv<tag>` holds a bridge with the VM's tap and a veth whose other end
    (`tbnv<tag>o`, the subnet's first address) is in the root namespace; the VM has
    the second. The subnet is a /29 of SCRATCH_POOL that no root address overlaps (a
    VM still dying, or another session's, keeps its own). For tests and benches that
    need a real netem kernel here.
    """
    ns, outer = f"tbnv{tag}", f"tbnv{tag}o"[:15]
    net = free_subnet(SCRATCH_POOL, 29, seed=int(tag) if tag.isdigit() else 0)
    near, far = (ipaddress.IPv4Interface(f"{a}/{net.prefixlen}") for a in list(net.hosts())[:2])
    ledger = Ledger(Path(state_dir) / "ledger.jsonl")
    vm: NetemVm | None = None
    host: Host | None = None
    create_netns(ns, ledger)
    try:
        add_bridge(ns, "br0")
        attach_root(ns, "br0", "mgmt", outer, near, ledger)

        nic = VmNic("tap0", "eth0", far)
        vm = start_netem_vm(
            f"netem-{tag}", ns, [nic], Path(state_dir) / "vm", ledger, partial(enslave, ns, "br0")
        )
        host = vm.ssh_host()
        yield vm, host
    finally:
        if host is not None:
            host.close()
        if vm is not None:
            vm.stop()
        stop_netns_processes(ns)
        remove_root_link(outer)
        remove_netns(ns)

"""Guests as libvirt domains: the XML we define and the calls that start and watch them.

Guests are transient domains (createXML), so a crash leaves nothing defined.
The serial console goes to a file under /var/log/libvirt/qemu, which is private
per host, so after a migration the destination writes its own copy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import PurePath
from xml.sax.saxutils import escape, quoteattr

import libvirt

from testbed.errors import LabError
from testbed.hosts.base import Host
from testbed.virt.conn import open_conn

SERIAL_DIR = "/var/log/libvirt/qemu"
# the channels a guest's display has (no smartcard device, and the patched spice-server
# is built without smartcard support: QEMU refuses a security mode for it)
SPICE_CHANNELS = ("main", "display", "inputs", "cursor", "playback", "record", "usbredir")
DEFAULT_EMULATOR = "/usr/bin/qemu-system-x86_64"  # a host without `emulator:` runs this


@dataclass(frozen=True)
class DomainSpec:
    name: str
    memory_mib: int
    vcpus: int
    accel: str  # "kvm" or "tcg"
    emulator: str
    kernel: PurePath | None = None
    initrd: PurePath | None = None
    cmdline: str = ""
    disk: PurePath | None = None
    spice_ticket: str | None = None  # the display's password; None: no ticket (not for labs)
    spice_tls: bool = False  # every channel over TLS (the daemon has spice_tls = 1)

    @property
    def serial_path(self) -> str:
        return f"{SERIAL_DIR}/{self.name}-serial.log"


def domain_xml(spec: DomainSpec) -> str:
    dtype = "kvm" if spec.accel == "kvm" else "qemu"
    if spec.kernel:
        boot = (
            f"<kernel>{escape(str(spec.kernel))}</kernel>"
            f"<initrd>{escape(str(spec.initrd))}</initrd>"
            f"<cmdline>{escape(spec.cmdline)}</cmdline>"
        )
        disk = ""
    else:
        boot = "<boot dev='hd'/>"
        disk = (
            f"<disk type='file' device='disk'><driver name='qemu'/>"
            f"<source file='{escape(str(spec.disk))}'/><target dev='vda' bus='virtio'/></disk>"
        )
    # qemu64 without svm: host-model fails under this machine's nested KVM (LAB-NOTES.md)
    cpu = (
        (
            "<cpu mode='custom' match='exact' check='none'><model fallback='allow'>qemu64</model>"
            "<feature policy='disable' name='svm'/></cpu>"
        )
        if dtype == "kvm"
        else ""
    )
    # libvirt hands the ticket to QEMU as an encrypted secret, never on its command line
    ticket = f" passwd={quoteattr(spec.spice_ticket)}" if spec.spice_ticket else ""
    # TLS: every channel secure-only. The plain port stays, and answers a plain link with
    # "need secured" (the client then goes TLS): with no plain port at all, libvirt hands
    # client_migrate_info port -1, spice-server sends 65535, and spice-gtk's migration
    # session fails on it
    secure = "".join(f"\n      <channel name='{c}' mode='secure'/>" for c in SPICE_CHANNELS)
    channels = secure if spec.spice_tls else ""
    return f"""<domain type='{dtype}'>
  <name>{escape(spec.name)}</name>
  <memory unit='MiB'>{spec.memory_mib}</memory>
  <vcpu>{spec.vcpus}</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>{boot}</os>
  <features><acpi/></features>
  {cpu}
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{escape(spec.emulator)}</emulator>
    {disk}
    <serial type='file'><source path='{spec.serial_path}' append='on'/><target port='0'/></serial>
    <graphics type='spice' autoport='yes'{ticket}>
      <listen type='address'/>{channels}
    </graphics>
    <video><model type='qxl' ram='16384' vram='16384' vgamem='8192'/></video>
    <controller type='usb' model='qemu-xhci'/>
    <redirdev bus='usb' type='spicevmc'/>
    <channel type='spicevmc'><target type='virtio' name='com.redhat.spice.0'/></channel>
    <input type='tablet' bus='usb'/>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def destroy_by_name(uri: str, name: str) -> bool:
    """Destroy and undefine domain `name` on `uri` if it is there; False if unreachable."""
    try:
        conn = open_conn(uri)
    except libvirt.libvirtError:
        return False
    try:
        dom = conn.lookupByName(name)
        if dom.isActive():
            dom.destroy()
        if dom.isPersistent():
            dom.undefine()
    except libvirt.libvirtError:
        pass
    finally:
        conn.close()
    return True


def start_domain(conn: libvirt.virConnect, spec: DomainSpec) -> libvirt.virDomain:
    try:
        return conn.createXML(domain_xml(spec), 0)
    except libvirt.libvirtError as e:
        raise LabError(f"cannot start guest {spec.name}: {e}") from None


def wait_for_serial(
    host: Host, path: PurePath, marker: str, timeout_s: float, since: int = 0
) -> float:
    """Wait until `marker` is in the serial log on `host` after byte `since`; the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if marker.encode() in host.read_bytes(path, since):
            return time.monotonic() - t0
        time.sleep(0.1)
    raise LabError(
        f"guest did not print {marker!r} in {timeout_s:.0f} s (serial log: {path} on {host.name})"
    )


def heartbeats(host: Host, path: PurePath, since: int = 0) -> list[int]:
    """Sequence numbers of `HB <seq> <ms>` lines in a serial log on `host`, after byte `since`."""
    data = host.read_bytes(path, since).decode(errors="replace")
    out = []
    for line in data.splitlines():
        parts = line.strip().split()
        if len(parts) >= 2 and parts[0] == "HB" and parts[1].isdigit():
            out.append(int(parts[1]))
    return out

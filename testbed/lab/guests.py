"""Guests of a lab: start one on its hypervisor, migrate it, find where it runs.

Where a guest runs is recorded in lab.json, so a later `testbed` process (or
the teardown) knows which libvirtd holds it.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path, PurePath

from testbed.errors import InputError, LabError
from testbed.lab.lab import Lab
from testbed.lab.ticket import spice_ticket
from testbed.model.hostspec import SpiceServer
from testbed.model.result import SpiceServerLib
from testbed.virt.accel import READY_MARKER, probe_accel
from testbed.virt.domain import DEFAULT_EMULATOR, DomainSpec, start_domain, wait_for_serial
from testbed.virt.image import build_guest_image, guest_cmdline
from testbed.virt.migration import Migration, MigrationOptions
from testbed.virt.qemu_build import patched_emulator
from testbed.virt.qemu_maps import mapped_library

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunningGuest:
    name: str
    domain: str
    host: str
    serial: PurePath  # on the host where it started
    accel: str
    boot_s: float | None


def spice_server_of(lab: Lab, host: str, guest: str | None = None) -> SpiceServer:
    """The spice-server `host` runs (for `guest`): the scenario's choice, else the topology's."""
    chosen = lab.record.info.get("guests", {}).get(guest, {}).get("spice_server")
    return chosen or lab.topology.hosts[host].spice_server


def _know_emulator(lab: Lab, emulator: str) -> None:
    """Every hypervisor loads (or, the first time on this machine, probes) a scenario's own
    emulator's capabilities at once, now: else the source probes it under TCG at define
    (~3.7 s) and the destination again while the migration waits at 0 % (~4 s)."""
    hvs = lab.topology.hypervisors()
    with ThreadPoolExecutor(max_workers=len(hvs)) as pool:
        list(pool.map(lambda h: lab.libvirtd(h).know_capabilities(emulator), hvs))


def _emulator(lab: Lab, host: str, spice_server: SpiceServer | None = None) -> str:
    """The QEMU binary a guest on `host` runs: the patched build's wrapper, or the topology's."""
    field = f"hosts.{host}.emulator"
    choice = spice_server or lab.topology.hosts[host].spice_server
    if choice != "stock":
        field = f"hosts.{host}.spice_server"
        try:
            emu = str(patched_emulator(choice))
        except InputError as e:
            raise InputError(
                f"spice_server: {choice}: {e.message}",
                file=lab.topology.source,
                field=field,
                hint=e.hint,
            ) from None
    else:
        emu = lab.topology.hosts[host].emulator or DEFAULT_EMULATOR
    if not lab.hosts[host].which(emu):
        raise InputError(
            f"QEMU emulator {emu!r} not found on {host}",
            file=lab.topology.source,
            field=field,
            hint="the patched build is made on this machine by make setup"
            if field.endswith("spice_server")
            else None,
        )
    return emu


def _on_host(lab: Lab, host: str, path: Path) -> PurePath:
    """`path` (a guest kernel, initrd or disk of this machine) where `host` can read it.

    A namespace host shares this machine's files; an SSH host gets a copy in its
    state folder, sent once per lab (same name and size: already there).
    """
    return lab.hosts[host].stage(path)


def accel_for(lab: Lab, host: str) -> tuple[str, str]:
    """The accel a host's guests use and why: forced by the topology, or probed once.

    The probe boots a guest on this machine, which is what an embedded lab's hosts
    are (also when driven over SSH). A real SSH host gets KVM when it has /dev/kvm.
    """
    spec = lab.topology.hosts[host]
    if spec.accel != "auto":
        return spec.accel, "set in the topology"
    if not lab.on_this_machine(host):
        if lab.hosts[host].exists(PurePath("/dev/kvm")):
            return "kvm", f"{host} has /dev/kvm (set accel: tcg to avoid it)"
        return "tcg", f"{host} has no /dev/kvm"
    image, _ = build_guest_image()
    a = probe_accel(image, emulator=_emulator(lab, host))
    return a.kind, a.reason


def serial_path(lab: Lab, host: str, domain: str) -> PurePath:
    return lab.hosts[host].state_dir / "log" / "qemu" / f"{domain}-serial.log"


def start_guest(
    lab: Lab,
    name: str,
    *,
    dirty_rate: float | None = None,
    fill_mib: int | None = None,
    spice_server: SpiceServer | None = None,
    boot_timeout_s: float = 90,
) -> RunningGuest:
    """Start guest `name` on its hypervisor and wait for its boot marker.

    `spice_server` selects the spice-server of every hypervisor the guest runs on (the
    domain carries its emulator); without it each host's topology field does.
    """
    if name not in lab.topology.guests:
        raise InputError(
            f"no guest {name!r} in the topology (guests: "
            f"{', '.join(lab.topology.guests) or 'none'})"
        )
    g = lab.topology.guests[name]
    host = g.host
    accel, _why = accel_for(lab, host)
    emulator = _emulator(lab, host, spice_server)
    if spice_server is not None and spice_server != lab.topology.hosts[host].spice_server:
        _know_emulator(lab, emulator)
    domain = lab.domain_name(name)
    fill = g.fill if fill_mib is None else fill_mib
    dirty = g.dirty_rate if dirty_rate is None else dirty_rate
    common = DomainSpec(
        name=domain,
        memory_mib=g.memory,
        vcpus=g.vcpus,
        accel=accel,
        emulator=emulator,
        spice_ticket=spice_ticket(lab.dir),
        spice_tls=lab.topology.spice_tls,
    )
    if g.image == "default":
        image, _ = build_guest_image()
        spec = replace(
            common,
            kernel=_on_host(lab, host, image.kernel),
            initrd=_on_host(lab, host, image.initrd),
            cmdline=guest_cmdline(fill, dirty),
        )
    else:
        disk = Path(g.image)
        if not disk.exists():
            raise InputError(
                f"guest image {disk} does not exist",
                file=lab.topology.source,
                field=f"guests.{name}.image",
            )
        spec = replace(common, disk=_on_host(lab, host, disk))
    for hv in lab.topology.hypervisors():  # wherever it migrates, teardown finds it
        lab.ledger.record("domain", name=domain, host=hv, uri=lab.libvirtd(hv).uri)
    serial = serial_path(lab, host, domain)
    lab.hosts[host].run(["rm", "-f", str(serial)])
    lab.record.info.setdefault("guests", {})[name] = {"spice_server": spice_server}
    start_domain(lab.conn(host), spec)
    _set_location(lab, name, host)
    boot = None
    if g.image == "default":
        boot = wait_for_serial(lab.hosts[host], serial, READY_MARKER, boot_timeout_s)
    return RunningGuest(name, domain, host, serial, accel, boot)


def _set_location(lab: Lab, guest: str, host: str) -> None:
    lab.record.info.setdefault("guests", {}).setdefault(guest, {})["host"] = host
    lab.record.save()


def spice_server_mapped(lab: Lab, guest: str, host: str) -> SpiceServerLib | None:
    """Which libspice-server `guest`'s QEMU on `host` mapped; None when none runs it there."""
    found = mapped_library(lab.hosts[host], lab.domain_name(guest))
    if found is None:
        return None
    return SpiceServerLib(
        asked=spice_server_of(lab, host, guest),
        path=found.path,
        build_id=found.build_id,
        pid=found.pid,
        qemu=found.qemu,
    )


def location(lab: Lab, guest: str) -> str:
    try:
        return str(lab.record.info["guests"][guest]["host"])
    except KeyError:
        raise LabError(f"guest {guest} is not running in lab {lab.id}") from None


def migration_for(
    lab: Lab,
    guest: str,
    to: str,
    *,
    network: str = "migration",
    display_network: str = "display",
    bandwidth_mib: int | None = None,
    max_downtime_ms: float | None = None,
    auto_converge: bool = False,
    postcopy: bool = False,
    timeout_s: float = 300.0,
) -> Migration:
    """A Migration of `guest` to hypervisor `to` over `network`, not yet started."""
    src = location(lab, guest)
    if to not in lab.topology.hypervisors() or to == src:
        raise InputError(f"cannot migrate {guest} from {src} to {to!r}")
    net = network if network in lab.topology.networks else display_network
    opts = MigrationOptions(
        migrate_uri=f"tcp://{lab.address(to, net)}",
        bandwidth_mib=bandwidth_mib,
        # a playbook's duration may be fractional; libvirt takes whole milliseconds
        max_downtime_ms=None if max_downtime_ms is None else max(1, round(max_downtime_ms)),
        auto_converge=auto_converge,
        postcopy=postcopy,
        timeout_s=timeout_s,
    )
    chosen = lab.record.info.get("guests", {}).get(guest, {}).get("spice_server")
    dst_emulator = _emulator(lab, to, chosen)
    if dst_emulator != _emulator(lab, src, chosen):  # each host runs its own spice-server
        opts.dest_emulator = dst_emulator
    if opts.graphics_uri is None and display_network in lab.topology.networks:
        opts.graphics_uri = f"spice://{lab.address(to, display_network)}"
    return Migration(lab.conn(src), lab.conn(to), lab.domain_name(guest), opts)


def finish_migration(lab: Lab, guest: str, migration: Migration, to: str) -> None:
    """Record the guest's new home once the migration completed."""
    if migration.record.result == "completed":
        _set_location(lab, guest, to)

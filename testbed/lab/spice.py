"""The lab's SPICE side: where a guest's display is now, and a client on a client host.

The spice layer knows nothing of labs; this is where a lab's hosts, displays
and ledger are handed to it.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import libvirt

from testbed.errors import LabError
from testbed.lab.guests import location
from testbed.lab.lab import Lab
from testbed.lab.ticket import spice_ticket
from testbed.lab.tls import client_tls
from testbed.spice.client import SpiceClient


def spice_client(
    lab: Lab,
    out_dir: Path,
    *,
    client: str = "client",
    name: str = "remote-viewer",
    extra_args: tuple[str, ...] = (),
) -> SpiceClient:
    """A remote-viewer on `client`'s X display, recorded in the lab's ledger."""
    return SpiceClient(
        lab.hosts[client],
        lab.display(client),
        lab.ledger,
        out_dir,
        name=name,
        extra_args=extra_args,
        ticket=spice_ticket(lab.dir),
        tls=client_tls(lab.dir, lab.id) if lab.topology.spice_tls else None,
    )


@dataclass(frozen=True)
class GuestDisplay:
    """Where a guest's SPICE display listens now."""

    host: str
    address: str
    port: int | None  # None on a TLS-only display
    tls_port: int | None = None

    @property
    def uri(self) -> str:
        plain = f"spice://{self.address}" + (f":{self.port}" if self.port else "")
        return plain + (f"?tls-port={self.tls_port}" if self.tls_port is not None else "")


def _running_on(lab: Lab, host: str, domain: str, why: list[str]) -> libvirt.virDomain | None:
    """The domain if it runs on `host`; otherwise None, and what libvirt said in `why`."""
    try:
        dom = lab.conn(host).lookupByName(domain)
        state, _reason = dom.state()
    except libvirt.libvirtError as e:
        why.append(f"{host}: {e}")
        return None
    if state != libvirt.VIR_DOMAIN_RUNNING:
        why.append(f"{host}: {'paused' if state == libvirt.VIR_DOMAIN_PAUSED else state}")
        return None
    return dom


SWITCHOVER_WAIT_S = 15.0  # a guest paused on every host is mid-switchover: wait this long


def guest_display(lab: Lab, guest: str) -> GuestDisplay:
    """The SPICE address and port of `guest` on the hypervisor where it runs now.

    During a migration the destination holds a paused copy; the running one
    (the source, until the switchover) is the one a client should reach. At the
    switchover itself the guest is paused everywhere for a moment: wait until it runs
    on one side, rather than fail a client that connects just then.
    """
    deadline = time.monotonic() + SWITCHOVER_WAIT_S
    while True:
        try:
            return _display_now(lab, guest)
        except _PausedEverywhere as e:
            if time.monotonic() > deadline:
                raise LabError(str(e)) from None
            time.sleep(0.1)


class _PausedEverywhere(LabError):
    pass


def _display_now(lab: Lab, guest: str) -> GuestDisplay:
    domain = lab.domain_name(guest)
    try:
        first = [location(lab, guest)]
    except LabError:
        first = []
    why: list[str] = []
    for host in [*first, *(h for h in lab.topology.hypervisors() if h not in first)]:
        dom = _running_on(lab, host, domain, why)
        if dom is None:
            continue
        g = ET.fromstring(dom.XMLDesc(0)).find("./devices/graphics[@type='spice']")
        if g is None:
            raise LabError(f"guest {guest} on {host} has no SPICE display")
        port, tls_port = int(g.get("port", "-1")), int(g.get("tlsPort", "-1"))
        listen = g.find("listen")
        addr = g.get("listen") or (listen.get("address") if listen is not None else None)
        if lab.topology.spice_tls:
            if tls_port <= 0 or not addr:
                raise LabError(f"guest {guest} on {host}: SPICE has no TLS port or address yet")
            return GuestDisplay(host, addr, port if port > 0 else None, tls_port)
        if port <= 0 or not addr:
            raise LabError(f"guest {guest} on {host}: SPICE has no port or address yet ({port})")
        return GuestDisplay(host, addr, port)
    msg = f"guest {guest} is not running on any hypervisor of lab {lab.id} ({'; '.join(why)})"
    if why and all(w.endswith(": paused") for w in why):
        raise _PausedEverywhere(msg)
    raise LabError(msg)

"""The Lab: a topology made real on this machine, and the handle the runner drives.

`Lab.up` claims a lab id, records every resource in the ledger as it makes
it, and tears everything down again if any step fails, so a failed `up` leaves
nothing behind. `Lab.open` finds a running lab from its state directory.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from pathlib import Path

import libvirt

from testbed.errors import InputError, LabError, TestbedError
from testbed.hosts.display import XDisplay, start_xvfb
from testbed.hosts.ledger import Ledger
from testbed.hosts.local import LocalHost
from testbed.lab.state import LabRecord, list_labs, new_lab_dir, owner_fields, read_lab
from testbed.lab.teardown import teardown
from testbed.model.topology import Topology, load_topology
from testbed.net.links import Attachment, add_bridge, attach, create_netns
from testbed.virt.libvirtd import Libvirtd, LibvirtdConfig, new_host_uuid

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


class Lab:
    """A running lab: its hosts, their interfaces, their libvirtds and displays."""

    def __init__(self, record: LabRecord, topology: Topology) -> None:
        self.record = record
        self.topology = topology
        self.id = record.id
        self.dir = record.dir
        self.hosts: dict[str, LocalHost] = {
            name: LocalHost(name, self.netns_of(name), self.dir / "hosts" / name)
            for name in topology.hosts
        }
        self._conns: dict[str, libvirt.virConnect] = {}

    # names -----------------------------------------------------------------
    def netns_of(self, host: str) -> str:
        return f"tb-{self.id}-{host}"

    @property
    def bridge_netns(self) -> str:
        return f"tb-{self.id}-net"

    @property
    def ledger(self) -> Ledger:
        return self.record.ledger

    def domain_name(self, guest: str) -> str:
        return f"tb-{self.id}-{guest}"

    # addresses ---------------------------------------------------------------
    def attachments(self) -> list[Attachment]:
        out = []
        for ni, (nname, net) in enumerate(self.topology.networks.items()):
            for host in net.members:
                hi = list(self.topology.hosts).index(host)
                addr = self.topology.address(nname, host)
                out.append(
                    Attachment(
                        host=host,
                        network=nname,
                        netns=self.netns_of(host),
                        ifname=nname[:15],
                        address=ipaddress.IPv4Interface(f"{addr}/{net.subnet.prefixlen}"),
                        outer_ifname=f"tb{self.id}h{hi}n{ni}",
                    )
                )
        return out

    def attachment(self, host: str, network: str) -> Attachment:
        for a in self.attachments():
            if (a.host, a.network) == (host, network):
                return a
        raise KeyError(f"{host} is not on {network}")

    def address(self, host: str, network: str) -> str:
        return str(self.topology.address(network, host))

    def address_on_any(self, host: str, *networks: str) -> str | None:
        for n in networks:
            if n in self.topology.networks and host in self.topology.networks[n].members:
                return self.address(host, n)
        return None

    # daemons ---------------------------------------------------------------
    def libvirtd(self, host: str) -> Libvirtd:
        return Libvirtd(self.hosts[host])

    def conn(self, host: str) -> libvirt.virConnect:
        c = self._conns.get(host)
        if c is None or not c.isAlive():
            c = self.libvirtd(host).connect()
            self._conns[host] = c
        return c

    def display(self, host: str) -> XDisplay:
        d = self.record.info["hosts"][host].get("display")
        if not d:
            raise LabError(f"host {host} has no X display (is it a client?)")
        return XDisplay(number=d["number"], xauthority=Path(d["xauthority"]), pid=d["pid"])

    # lifecycle -------------------------------------------------------------
    @classmethod
    def up(
        cls, topology: Topology, *, progress: Progress = _quiet, lab_id: str | None = None
    ) -> Lab:
        remote = [n for n, h in topology.hosts.items() if h.kind != "local"]
        if remote:
            raise InputError(
                f"hosts {', '.join(remote)} are kind ssh; this version brings up only local "
                "labs (the SSH lab is not finished)",
                file=topology.source,
                field=f"hosts.{remote[0]}.kind",
            )
        lid, d = new_lab_dir(lab_id)
        record = LabRecord(
            lid,
            d,
            {
                "id": lid,
                "status": "starting",
                "topology": topology.source,
                "topology_name": topology.name,
                "created": time.time(),
                "hosts": {},
                **owner_fields(),
            },
        )
        record.save()
        lab = cls(record, topology)
        try:
            lab._build(progress)
        except BaseException:
            progress("failed; removing what was made")
            lab.close()
            teardown(record)
            raise
        record.info["status"] = "up"
        record.save()
        return lab

    def _build(self, progress: Progress) -> None:
        t0 = time.monotonic()
        progress("namespaces")
        create_netns(self.bridge_netns, self.ledger)
        for name in self.topology.hosts:
            create_netns(self.netns_of(name), self.ledger)
            self.record.info["hosts"][name] = {"netns": self.netns_of(name)}
        progress("networks")
        for nname in self.topology.networks:
            add_bridge(self.bridge_netns, self._bridge(nname))
        for a in self.attachments():
            attach(
                self.bridge_netns,
                self._bridge(a.network),
                a.netns,
                a.outer_ifname,
                a.ifname,
                a.address,
            )
        self.record.save()
        for name in self.topology.hypervisors():
            progress(f"libvirtd on {name}")
            host = self.hosts[name]
            host.state_dir.mkdir(parents=True, exist_ok=True)
            cfg = LibvirtdConfig(
                display_address=self.address_on_any(name, "display", *self.topology.networks),
                migration_address=self.address_on_any(name, "migration", *self.topology.networks),
                host_uuid=new_host_uuid(),
            )
            pid = Libvirtd(host).start(cfg, self.ledger)
            self.record.info["hosts"][name].update(libvirt_uri=Libvirtd(host).uri, libvirtd_pid=pid)
        for name in self.topology.clients():
            progress(f"X display on {name}")
            x = start_xvfb(self.hosts[name], self.hosts[name].state_dir, self.ledger)
            self.record.info["hosts"][name]["display"] = {
                "number": x.number,
                "xauthority": str(x.xauthority),
                "pid": x.pid,
            }
        self.record.info["up_seconds"] = round(time.monotonic() - t0, 3)
        self.record.save()

    def _bridge(self, network: str) -> str:
        return f"tb{self.id}-{network}"[:15]

    def close(self) -> None:
        """Drop libvirt connections (the lab keeps running)."""
        for c in self._conns.values():
            try:
                c.close()
            except libvirt.libvirtError:
                pass
        self._conns.clear()

    def down(self) -> list[str]:
        self.close()
        return teardown(self.record)

    @classmethod
    def open(cls, lab_id: str) -> Lab:
        d = read_lab(cls._dir_of(lab_id))
        src = d.info.get("topology")
        if not src:
            raise LabError(f"lab {lab_id} has no topology recorded; run `testbed down {lab_id}`")
        return cls(d, load_topology(src))

    @staticmethod
    def _dir_of(lab_id: str) -> Path:
        for rec in list_labs():
            if rec.id == lab_id:
                return rec.dir
        raise TestbedError(f"no lab {lab_id!r} (see `testbed status`)")

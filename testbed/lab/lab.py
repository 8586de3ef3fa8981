"""The Lab: a topology made real on this machine, and the handle the runner drives.

`Lab.up` claims a lab id, records every resource in the ledger as it makes
it, and tears everything down again if any step fails, so a failed `up` leaves
nothing behind. `Lab.open` finds a running lab from its state directory.

Three kinds of lab, one code path above this module (everything goes through
`Host`): the embedded lab (namespaces driven directly), the embedded lab
driven over SSH (`drive: ssh`: a real sshd in each namespace on a management
network that only the root namespace, the operator, reaches), and real
machines (`kind: ssh`).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePath, PurePosixPath

import libvirt

from testbed.errors import LabError, TestbedError
from testbed.hosts import factory
from testbed.hosts.base import Host
from testbed.hosts.display import XDisplay, existing_display, start_xvfb
from testbed.hosts.ledger import Ledger
from testbed.hosts.ssh import REMOTE_STATE
from testbed.hosts.sshd import start_sshd
from testbed.lab.state import LabRecord, list_labs, new_lab_dir, owner_fields, read_lab
from testbed.lab.teardown import teardown
from testbed.lab.tls import install_server_tls
from testbed.lab.vmhosts import boot_vms
from testbed.model.topology import Topology, load_topology
from testbed.net.links import (
    Attachment,
    add_bridge,
    attach,
    attach_root,
    create_netns,
    free_subnet,
)
from testbed.virt.domain import DEFAULT_EMULATOR
from testbed.virt.libvirtd import Libvirtd, LibvirtdConfig, new_host_uuid

log = logging.getLogger(__name__)
Progress = Callable[[str], None]

# the embedded SSH lab's management networks: a /28 of 198.19.0.0/17 per lab
MGMT_POOL = ipaddress.IPv4Network("198.19.0.0/17")
MGMT_PREFIX = 28


def _quiet(_msg: str) -> None:
    pass


class Lab:
    """A running lab: its hosts, their interfaces, their libvirtds and displays."""

    def __init__(self, record: LabRecord, topology: Topology) -> None:
        self.record = record
        self.topology = topology
        self.id = record.id
        self.dir = record.dir
        #: the namespaces of the embedded lab, driven directly (for wiring and daemons)
        self.namespaces: dict[str, Host] = factory.namespace_hosts(
            topology, self.netns_of, lambda name: self.dir / "hosts" / name
        )
        #: how every layer above reaches each host
        self.hosts: dict[str, Host] = {}
        for name in topology.hosts:
            info = record.info.get("hosts", {}).get(name, {})
            if "ssh" in info:
                self.hosts[name] = factory.host_from_record(name, info)
            elif name in self.namespaces:
                self.hosts[name] = self.namespaces[name]
        self._conns: dict[str, libvirt.virConnect] = {}

    @property
    def over_ssh(self) -> bool:
        """Whether hosts are driven over SSH (real machines, or the embedded lab's sshds)."""
        return self.topology.drive == "ssh" or not self.namespaces

    def on_this_machine(self, host: str) -> bool:
        """Whether `host` is a namespace of this machine (also when driven over SSH)."""
        return host in self.namespaces

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
        """Each host's interface on each network (an ssh host's come from its `interfaces`)."""
        out = []
        for ni, (nname, net) in enumerate(self.topology.networks.items()):
            for host in net.members:
                hi = list(self.topology.hosts).index(host)
                addr = self.topology.address(nname, host)
                spec = self.topology.hosts[host]
                remote = not self.on_this_machine(host)
                out.append(
                    Attachment(
                        host=host,
                        network=nname,
                        netns="" if remote else self.netns_of(host),
                        ifname=spec.interfaces.get(nname, nname[:15]) if remote else nname[:15],
                        address=ipaddress.IPv4Interface(f"{addr}/{net.subnet.prefixlen}"),
                        outer_ifname="" if remote else f"tb{self.id}h{hi}n{ni}",
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
        return Libvirtd(self.hosts[host], self.dir / "ssh")

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
        return XDisplay(number=d["number"], xauthority=PurePath(d["xauthority"]), pid=d["pid"])

    # lifecycle -------------------------------------------------------------
    @classmethod
    def up(
        cls,
        topology: Topology,
        *,
        progress: Progress = _quiet,
        lab_id: str | None = None,
        services: bool = True,
    ) -> Lab:
        """Bring `topology` up. `services=False` (a bare lab) wires the hosts (and starts
        their sshds with `drive: ssh`) but runs no libvirtd or X server: machines for
        another lab to use as `kind: ssh` hosts, e.g. an inventory's pool."""
        factory.check_one_kind(topology)
        lid, d = new_lab_dir(lab_id)
        record = LabRecord(
            lid,
            d,
            {
                "id": lid,
                "status": "starting",
                "topology": topology.source,
                "topology_name": topology.name,
                # as brought up: a pooled host bound to the machine it leased
                "topology_spec": topology.model_dump(
                    mode="json", by_alias=True, exclude_unset=True
                ),
                "created": time.time(),
                "services": services,
                "hosts": {},
                **owner_fields(),
            },
        )
        record.save()
        lab = cls(record, topology)
        try:
            lab._build(progress, services)
        except BaseException:
            progress("failed; removing what was made")
            lab.close()
            teardown(record)
            raise
        record.info["status"] = "up"
        record.save()
        return lab

    def _build(self, progress: Progress, services: bool = True) -> None:
        t0 = time.monotonic()
        if self.namespaces:
            self._wire(progress)
        if self.topology.booted():
            boot_vms(self, progress)
        if self.topology.drive == "ssh" and self.namespaces:
            self._start_sshds(progress)
        if not services:
            self.record.info["up_seconds"] = round(time.monotonic() - t0, 3)
            self.record.save()
            return
        # each host's own setup over its own connection, all hosts at once
        with ThreadPoolExecutor(max_workers=len(self.topology.hosts)) as pool:
            started = [pool.submit(self._host_services, n, progress) for n in self.topology.hosts]
            for done in started:
                done.result()
        self.record.save()
        self.record.info["up_seconds"] = round(time.monotonic() - t0, 3)
        self.record.save()

    def _host_services(self, name: str, progress: Progress) -> None:
        """Connect (ssh), send testbed's helpers, start libvirtd and/or the X display."""
        spec = self.topology.hosts[name]
        if not self.on_this_machine(name) and spec.boot is None:
            self._connect_ssh_host(name, progress)
        host = self.hosts[name]
        if self.over_ssh:
            progress(f"testbed's helpers to {name}")
            host.prepare()
            self.record.info["hosts"][name].update(host.to_record())
        if "hypervisor" in spec.roles:
            progress(f"libvirtd on {name}")
            host.makedirs(host.state_dir, mode=0o700)
            cfg = LibvirtdConfig(
                display_address=self.address_on_any(name, "display", *self.topology.networks),
                migration_address=self.address_on_any(name, "migration", *self.topology.networks),
                host_uuid=new_host_uuid(),
            )
            if self.topology.spice_tls:
                cfg.spice_tls_dir = host.state_dir / "spice-tls"
                if not cfg.display_address:
                    raise LabError(f"spice_tls: {name} has no display address to certify")
                install_server_tls(host, self.dir, self.id, cfg.display_address, cfg.spice_tls_dir)
            daemon = self.libvirtd(name)
            pid = daemon.start(cfg, self.ledger, emulator=spec.emulator or DEFAULT_EMULATOR)
            self.record.info["hosts"][name].update(libvirt_uri=daemon.uri, libvirtd_pid=pid)
        if "client" in spec.roles:
            progress(f"X display on {name}")
            if spec.x_display:
                x = existing_display(host, spec.x_display, spec.x_authority)
            else:
                x = start_xvfb(host, host.state_dir, self.ledger)
            self.record.info["hosts"][name]["display"] = {
                "number": x.number,
                "xauthority": str(x.xauthority),
                "pid": x.pid,
            }

    def _wire(self, progress: Progress) -> None:
        """Namespaces, one bridge per network, a veth per host and network."""
        progress("namespaces")
        create_netns(self.bridge_netns, self.ledger)
        for name in self.namespaces:
            create_netns(self.netns_of(name), self.ledger)
            self.record.info["hosts"][name] = {"netns": self.netns_of(name)}
        self.network_bridges(progress)
        for a in self.attachments():
            attach(
                self.bridge_netns,
                self.bridge(a.network),
                a.netns,
                a.outer_ifname,
                a.ifname,
                a.address,
            )
        self.record.save()

    def network_bridges(self, progress: Progress) -> None:
        """A bridge per network in the lab's own namespace."""
        progress("networks")
        for nname in self.topology.networks:
            add_bridge(self.bridge_netns, self.bridge(nname))

    def mgmt_network(
        self, hosts: int, progress: Progress
    ) -> tuple[str, list[ipaddress.IPv4Interface]]:
        """The operator's way in: a management bridge with a root veth; its bridge and an
        address for each of `hosts`."""
        progress("management network")
        net = self._mgmt_subnet()
        addrs = [ipaddress.IPv4Interface(f"{a}/{net.prefixlen}") for a in net.hosts()]
        if len(addrs) < hosts + 1:
            raise LabError(f"{hosts} hosts do not fit a /{MGMT_PREFIX}")
        bridge = self.bridge("mgmt")
        add_bridge(self.bridge_netns, bridge)
        root = addrs[0]
        attach_root(
            self.bridge_netns, bridge, f"tb{self.id}mgo", f"tb{self.id}mg", root, self.ledger
        )
        self.record.info["mgmt"] = {"subnet": str(net), "operator": str(root.ip)}
        return bridge, addrs[1 : hosts + 1]

    def _mgmt_subnet(self) -> ipaddress.IPv4Network:
        """A /28 for this lab's management network that no root address overlaps."""
        return free_subnet(MGMT_POOL, MGMT_PREFIX, seed=int(self.id, 16))

    def _start_sshds(self, progress: Progress) -> None:
        """The operator's way in: a management bridge, a root veth, an sshd per host."""
        bridge, addrs = self.mgmt_network(len(self.namespaces), progress)
        for i, ((name, ns), addr) in enumerate(zip(self.namespaces.items(), addrs, strict=True)):
            attach(self.bridge_netns, bridge, ns.netns, f"tb{self.id}m{i}", "mgmt", addr)
            progress(f"sshd on {name}")
            state = Path(ns.state_dir)
            sshd = start_sshd(ns.netns, addr.ip, 22, state / "sshd", self.ledger)
            host = factory.sshd_host(
                name,
                str(addr.ip),
                key_file=sshd.client_key,
                known_hosts=sshd.known_hosts,
                state_dir=state,
            )
            self.record.info["hosts"][name].update(host.to_record())
            self.hosts[name] = host
        self.record.save()

    def _connect_ssh_host(self, name: str, progress: Progress) -> None:
        """A real machine: check the connection, then make its state folder (recorded first)."""
        progress(f"SSH to {name}")
        # per host too: two topology hosts may be one machine (or share its files)
        state = PurePosixPath(REMOTE_STATE) / f"lab-{self.id}-{name}"
        host = factory.remote_host(name, self.topology, state_dir=state)
        host.run(["true"])  # a wrong key, host key or address fails here, before anything
        self.record.info["hosts"][name] = host.to_record()
        self.ledger.record("remote-dir", host=name, path=str(state))
        self.record.save()
        host.makedirs(state, mode=0o700)
        self.hosts[name] = host

    def bridge(self, network: str) -> str:
        """The name of `network`'s bridge in the lab's namespace."""
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
        spec = d.info.get("topology_spec")
        if spec is None:
            return cls(d, load_topology(src))
        topology = Topology.model_validate(spec)
        topology.source = src
        return cls(d, topology)

    @staticmethod
    def _dir_of(lab_id: str) -> Path:
        for rec in list_labs():
            if rec.id == lab_id:
                return rec.dir
        raise TestbedError(f"no lab {lab_id!r} (see `testbed status`)")

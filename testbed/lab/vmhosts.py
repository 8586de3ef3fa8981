"""Hosts the lab boots itself (`boot: netem-vm`): testbed's netem VM as a `kind: ssh` host.

The lab's own namespace holds a bridge per network and a management bridge whose
root veth is the operator's only way in. Each VM's QEMU runs in that namespace
(recorded in the ledger, so `testbed down` stops it) and plugs one tap into the
management bridge and one into each of its networks' bridges; inside, the NICs
are named after the networks. From then on the VM is an ssh host like a real
machine: the lab's client key, its host key (made for this lab) checked against
the known_hosts file the lab wrote, nothing added. The VMs boot at once.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from testbed.net.links import create_netns, enslave
from testbed.virt.netem_boot import VmNic, start_netem_vm
from testbed.virt.netem_vm import build_netem_image

if TYPE_CHECKING:
    from testbed.lab.lab import Lab


def vm_nics(lab: Lab, name: str, mgmt: ipaddress.IPv4Interface) -> list[tuple[VmNic, str]]:
    """The VM's NICs with the bridge each tap goes into: management first (SSH)."""
    topo = lab.topology
    hi = list(topo.hosts).index(name)
    out = [(VmNic(f"tb{lab.id}v{hi}m", "mgmt", mgmt), lab.bridge("mgmt"))]
    for ni, (nname, net) in enumerate(topo.networks.items()):
        if name in net.members:
            a = lab.attachment(name, nname)
            out.append((VmNic(f"tb{lab.id}v{hi}n{ni}", a.ifname, a.address), lab.bridge(nname)))
    return out


def boot_vms(lab: Lab, progress: Callable[[str], None]) -> None:
    """Boot every `boot:` host of the topology on the lab's networks, as ssh hosts."""
    names = lab.topology.booted()
    ns = lab.bridge_netns
    progress("netem VM image")
    image = build_netem_image()[0]  # built by `make setup`; found in the cache here
    create_netns(ns, lab.ledger)
    lab.network_bridges(progress)
    _, mgmt = lab.mgmt_network(len(names), progress)
    lab.record.save()

    def boot(name: str, addr: ipaddress.IPv4Interface) -> None:
        progress(f"netem VM {name}")
        nics = vm_nics(lab, name, addr)
        bridge_of = {nic.tap: bridge for nic, bridge in nics}
        vm = start_netem_vm(
            f"tb-{lab.id}-{name}",
            ns,
            [nic for nic, _ in nics],
            lab.dir / "hosts" / name,
            lab.ledger,
            lambda tap: enslave(ns, bridge_of[tap], tap),
            image=image,
        )
        host = vm.ssh_host(name)
        lab.record.info["hosts"][name] = {
            **host.to_record(),
            "vm": {"pid": vm.pid, "boot_s": round(vm.boot_s, 2), "console": str(vm.console)},
        }
        lab.hosts[name] = host

    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        for done in [pool.submit(boot, n, a) for n, a in zip(names, mgmt, strict=True)]:
            done.result()
    lab.record.save()

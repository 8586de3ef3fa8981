"""A bare embedded lab as an SSH site: its hosts written out as an inventory.

`testbed up T --bare --inventory FILE` wires the hosts of a `drive: ssh`
topology and starts their sshds, nothing else; FILE then lists them the way an
inventory lists real machines (address, key, known_hosts, each network's
interface and address; groups `hypervisors` and `clients` from their roles),
so topologies with `kind: ssh` hosts, `from_inventory` or `from_pool` run on
this machine exactly as on real hosts.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from testbed.errors import InputError
from testbed.lab.lab import Lab

GROUPS = {"hypervisor": "hypervisors", "client": "clients"}


def inventory_of(lab: Lab) -> dict[str, Any]:
    """The Ansible-style inventory of a lab driven over SSH (groups from the hosts' roles)."""
    if lab.topology.drive != "ssh":
        raise InputError(
            f"lab {lab.id} is not driven over SSH: only a `drive: ssh` topology's hosts can "
            "serve as SSH machines",
            file=lab.topology.source,
            field="drive",
        )
    groups: dict[str, dict[str, Any]] = {g: {"hosts": {}} for g in GROUPS.values()}
    for name, spec in lab.topology.hosts.items():
        ssh = lab.record.info["hosts"][name]["ssh"]
        nets = [n for n, net in lab.topology.networks.items() if name in net.members]
        host = {
            "address": ssh["address"],
            "port": ssh["port"],
            "user": ssh["user"],
            "key_file": ssh["key_file"],
            "known_hosts": ssh["known_hosts"],
            "python": sys.executable,  # this machine's: it has testbed's compiled modules
            "interfaces": {n: lab.attachment(name, n).ifname for n in nets},
            "addresses": {n: lab.address(name, n) for n in nets},
        }
        for role in spec.roles:
            groups[GROUPS[role]]["hosts"][f"{lab.id}-{name}"] = host
    return {"all": {"children": {g: v for g, v in groups.items() if v["hosts"]}}}


def write_inventory(lab: Lab, path: Path) -> Path:
    head = (
        f"# The hosts of bare lab {lab.id} ({lab.topology.name}), as SSH machines.\n"
        f"# Written by `testbed up --inventory`; gone with `testbed down {lab.id}`.\n"
    )
    path.write_text(head + yaml.safe_dump(inventory_of(lab), sort_keys=False))
    return path

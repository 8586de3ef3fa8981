"""Topology: what the lab is. Hosts, the networks between them, shaped links, guests.

A topology is YAML validated here; every error names the file, line, field,
what was expected and what was found. Cross references (a network member that
is not a host, a guest on a host that is not a hypervisor) are checked after
the schema, with the same precision.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator

from testbed.errors import InputError
from testbed.model.hostspec import SSH_FIELDS, HostSpec, Strict
from testbed.model.inventory import Inventory, load_inventory
from testbed.model.profile import LinkProfile
from testbed.model.units import parse_size_bytes
from testbed.model.yamlsrc import YamlDoc, dotted, load_yaml_file, validate

NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,9}$")
NAME_RULE = "a lowercase name of 1-10 letters/digits starting with a letter"
DEFAULT_SUBNETS = "198.18.0.0/15"


def _mib(value: Any) -> Any:
    """Guest sizes: a bare number is MiB; a string carries its unit ("256MiB", "1GiB")."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 256MiB")
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, str):
        return int(parse_size_bytes(value) // (1024 * 1024))
    raise ValueError("expected a size such as 256MiB")


MiB = Annotated[int, BeforeValidator(_mib)]


class NetworkSpec(Strict):
    subnet: ipaddress.IPv4Network
    members: list[str] = Field(min_length=2)
    addresses: dict[str, ipaddress.IPv4Address] = Field(default_factory=dict)
    profile: LinkProfile | None = Field(None, description="applies to every direction")


class LinkSpec(Strict):
    """A shaped direction between two members of one network."""

    network: str
    src: str = Field(alias="from")
    dst: str = Field(alias="to")
    both_ways: bool = False
    shape_at: str | None = Field(
        None,
        description="one of the link's two hosts: shape every direction of this link there "
        "(what it sends on its egress, what it receives on its ingress through an ifb), for "
        "a lab that controls only that end; the kernel engine",
    )
    profile: LinkProfile


class GuestSpec(Strict):
    host: str
    memory: MiB = 256
    vcpus: int = Field(1, ge=1, le=8)
    image: str = "default"
    fill: MiB = 64
    dirty_rate: float = Field(0.0, ge=0, description="MiB/s the guest rewrites")
    display: Literal["spice"] = "spice"

    @field_validator("memory")
    @classmethod
    def _memory_floor(cls, v: int) -> int:
        if v < 64:
            raise ValueError("guest memory must be at least 64 MiB")
        return v


class Topology(Strict):
    name: str
    hosts: dict[str, HostSpec] = Field(min_length=1)
    networks: dict[str, NetworkSpec] = Field(default_factory=dict)
    links: list[LinkSpec] = Field(default_factory=list)
    guests: dict[str, GuestSpec] = Field(default_factory=dict)
    inventory: Path | None = Field(None, description="Ansible-style file of ssh hosts")
    drive: Literal["direct", "ssh"] = Field(
        "direct",
        description="local hosts only: `ssh` drives each namespace host over SSH alone "
        "(a real sshd in each, keys made at `testbed up`)",
    )
    spice_tls: bool = Field(
        False,
        description="SPICE over TLS only: a CA and server certificates made per lab, the "
        "client verifying them (and the migration target's subject)",
    )
    source: str | None = Field(None, exclude=True)

    def hypervisors(self) -> list[str]:
        return [n for n, h in self.hosts.items() if "hypervisor" in h.roles]

    def clients(self) -> list[str]:
        return [n for n, h in self.hosts.items() if "client" in h.roles]

    def booted(self) -> list[str]:
        """The hosts the lab boots itself (`boot: netem-vm`)."""
        return [n for n, h in self.hosts.items() if h.boot is not None]

    def address(self, network: str, host: str) -> ipaddress.IPv4Address:
        """The host's address on `network`: the host's own, the network's explicit one, else
        .1, .2, ... in member order."""
        net = self.networks[network]
        own = self.hosts[host].addresses if host in self.hosts else {}
        if network in own:
            return own[network]
        if host in net.addresses:
            return net.addresses[host]
        taken = set(net.addresses.values()) | {
            h.addresses[network] for h in self.hosts.values() if network in h.addresses
        }
        candidates = (a for a in net.subnet.hosts() if a not in taken)
        for member in net.members:
            if member in net.addresses or network in self.hosts[member].addresses:
                continue
            addr = next(candidates)
            if member == host:
                return addr
        raise KeyError(f"{host} is not on {network}")


def _check_references(topo: Topology, doc: YamlDoc) -> None:
    def fail(msg: str, path: tuple[str | int, ...]) -> None:
        raise InputError(msg, file=doc.file, line=doc.line_of(path), field=dotted(path))

    for name, host in topo.hosts.items():
        if not NAME_RE.match(name):
            fail(f"host name must be {NAME_RULE} (found {name!r})", ("hosts", name))
        _check_host_kind(topo, name, host, fail)
    peers = any("peer" in h.roles for h in topo.hosts.values())
    if not topo.hypervisors() and (topo.guests or not peers):
        fail("needs at least one host with role 'hypervisor'", ("hosts",))
    _check_subnets(topo, fail)
    for nname, net in topo.networks.items():
        if not NAME_RE.match(nname):
            fail(f"network name must be {NAME_RULE} (found {nname!r})", ("networks", nname))
        if net.subnet.prefixlen > 29:
            fail(f"subnet {net.subnet} is too small", ("networks", nname, "subnet"))
        for i, m in enumerate(net.members):
            if m not in topo.hosts:
                fail(
                    f"member {m!r} is not a host (hosts: {', '.join(topo.hosts)})",
                    ("networks", nname, "members", i),
                )
        if len(set(net.members)) != len(net.members):
            fail("a host is listed twice", ("networks", nname, "members"))
        for member, addr in net.addresses.items():
            if member not in net.members:
                fail(
                    f"{member!r} is not a member of this network",
                    ("networks", nname, "addresses", member),
                )
            if addr not in net.subnet or addr in (
                net.subnet.network_address,
                net.subnet.broadcast_address,
            ):
                fail(
                    f"{addr} is not a host address of {net.subnet}",
                    ("networks", nname, "addresses", member),
                )
        if len(set(net.addresses.values())) != len(net.addresses):
            fail("two hosts share an address", ("networks", nname, "addresses"))
    for i, link in enumerate(topo.links):
        if link.network not in topo.networks:
            fail(
                f"no network {link.network!r} (networks: {', '.join(topo.networks)})",
                ("links", i, "network"),
            )
        members = topo.networks[link.network].members
        for key, member in (("from", link.src), ("to", link.dst)):
            if member not in members:
                fail(f"{member!r} is not a member of network {link.network!r}", ("links", i, key))
        if link.src == link.dst:
            fail("a link joins two different hosts", ("links", i))
        if link.shape_at is not None and link.shape_at not in (link.src, link.dst):
            fail(
                f"shape_at must be one of the link's hosts ({link.src} or {link.dst}), "
                f"found {link.shape_at!r}",
                ("links", i, "shape_at"),
            )
    for gname, guest in topo.guests.items():
        if not NAME_RE.match(gname):
            fail(f"guest name must be {NAME_RULE} (found {gname!r})", ("guests", gname))
        if guest.host not in topo.hypervisors():
            fail(
                f"{guest.host!r} is not a hypervisor "
                f"(hypervisors: {', '.join(topo.hypervisors())})",
                ("guests", gname, "host"),
            )
        if guest.fill >= guest.memory - 32:
            fail(
                f"fill {guest.fill} MiB leaves too little of {guest.memory} MiB for the guest",
                ("guests", gname, "fill"),
            )


# lab addresses: private (RFC 1918) or reserved for testing (RFC 2544, RFC 5737)
LAB_RANGES = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "192.0.2.0/24",
        "198.51.100.0/24",
        "203.0.113.0/24",
    )
)


def _check_subnets(topo: Topology, fail: Callable[[str, tuple[str | int, ...]], None]) -> None:
    """Subnets private or for testing, no two overlapping, every namespace host on a network."""
    seen: list[tuple[str, ipaddress.IPv4Network]] = []
    for nname, net in topo.networks.items():
        where = ("networks", nname, "subnet")
        if not any(net.subnet.subnet_of(r) for r in LAB_RANGES):
            fail(
                f"subnet {net.subnet} is not private or reserved for testing (use one in "
                f"{', '.join(str(r) for r in LAB_RANGES)})",
                where,
            )
        for other, sub in seen:
            if net.subnet.overlaps(sub):
                fail(f"subnet {net.subnet} overlaps network {other!r} ({sub})", where)
        seen.append((nname, net.subnet))
    for name, host in topo.hosts.items():
        # a machine reached over SSH has its own network; a namespace host has only the lab's
        if host.kind == "ssh":
            continue
        if not any(name in net.members for net in topo.networks.values()):
            fail(f"host {name!r} is on no network: add it to a network's members", ("hosts", name))


def _check_host_kind(
    topo: Topology, name: str, host: HostSpec, fail: Callable[[str, tuple[str | int, ...]], None]
) -> None:
    """SSH fields belong to ssh hosts; an ssh host has an address and an interface per network."""
    if host.from_inventory is not None and topo.inventory is None:
        where = ("hosts", name, "from_inventory")
        fail("from_inventory needs an inventory: PATH at the top of the topology", where)
    if host.kind == "local":
        for f in SSH_FIELDS:
            if f in host.model_fields_set:
                fail(f"{f} is only for hosts of kind ssh (this host is local)", ("hosts", name, f))
        return
    if host.from_pool is not None:
        if topo.inventory is None:
            fail("from_pool needs an inventory: PATH at the top of the topology", ("hosts", name))
        if host.from_inventory is not None or host.address is not None:
            fail(
                "a pooled host takes its address from the host it leases: drop "
                "from_inventory/address",
                ("hosts", name, "from_pool"),
            )
        return  # its interfaces and addresses come with the leased host
    if host.boot is not None:
        others = [n for n, h in topo.hosts.items() if h.boot is None]
        if others:
            fail(
                f"the lab boots {name} on networks of this machine that {others[0]} cannot "
                "join: a topology with boot: hosts has only boot: hosts",
                ("hosts", name, "boot"),
            )
    elif host.address is None:
        fail("an ssh host needs address (its name or IP for SSH)", ("hosts", name))
    gw = topo.hosts.get(host.gateway) if host.gateway is not None else None
    if host.gateway is not None and (gw is None or gw.kind != "ssh" or host.gateway == name):
        fail("gateway names another ssh host of this topology", ("hosts", name, "gateway"))
    for net, addr in host.addresses.items():
        if net not in topo.networks or name not in topo.networks[net].members:
            fail(f"{name!r} is not a member of network {net!r}", ("hosts", name, "addresses", net))
        if addr not in topo.networks[net].subnet:
            fail(
                f"{addr} is not in {net}'s subnet {topo.networks[net].subnet}",
                ("hosts", name, "addresses", net),
            )
    for net in host.interfaces:
        if net not in topo.networks:
            fail(
                f"no network {net!r} (networks: {', '.join(topo.networks) or 'none'})",
                ("hosts", name, "interfaces", net),
            )
        if name not in topo.networks[net].members:
            fail(f"{name!r} is not a member of network {net!r}", ("hosts", name, "interfaces", net))
    for nname, spec in topo.networks.items():
        if name in spec.members and nname not in host.interfaces and host.boot is None:
            fail(
                f"ssh host {name!r} is on network {nname!r}: say which interface "
                f"(interfaces: {{{nname}: IFNAME}})",
                ("hosts", name),
            )


def _merge_inventory(doc: YamlDoc, base: Path) -> None:
    """Fill hosts that say `from_inventory` from the inventory; their own fields win."""
    data = doc.data
    raw_inv, hosts = data.get("inventory"), data.get("hosts")
    if not isinstance(raw_inv, str) or not isinstance(hosts, dict):
        return  # absent, or wrong: the schema says so with the line

    inv_path = Path(raw_inv).expanduser()
    inv_path = inv_path if inv_path.is_absolute() else base / inv_path
    data["inventory"] = str(inv_path)
    inv = None
    for name, raw in hosts.items():
        if not isinstance(raw, dict):
            continue
        pool = raw.get("from_pool")
        if isinstance(pool, str):
            if inv is None:
                inv = _load_inventory_at(doc, inv_path)
            if not inv.groups.get(pool):
                path = ("hosts", name, "from_pool")
                raise InputError(
                    f"no hosts in group {pool!r} of inventory {inv.file} "
                    f"(groups: {', '.join(sorted(inv.groups))})",
                    file=doc.file,
                    line=doc.line_of(path),
                    field=dotted(path),
                )
            raw.setdefault("kind", "ssh")
            continue
        if not isinstance(raw.get("from_inventory"), str):
            continue
        if inv is None:
            inv = _load_inventory_at(doc, inv_path)
        ref = raw["from_inventory"]
        if ref not in inv.hosts:
            path = ("hosts", name, "from_inventory")
            raise InputError(
                f"no host {ref!r} in inventory {inv.file} (hosts: {', '.join(inv.hosts)})",
                file=doc.file,
                line=doc.line_of(path),
                field=dotted(path),
            )
        found = inv.host(ref)
        raw.setdefault("kind", "ssh")
        for key, value in found.items():
            if key == "interfaces" and isinstance(raw.get(key), dict):
                raw[key] = {**value, **raw[key]}
            else:
                raw.setdefault(key, value)


def _load_inventory_at(doc: YamlDoc, inv_path: Path) -> Inventory:

    if not inv_path.exists():
        raise InputError(
            f"no such inventory file {inv_path}",
            file=doc.file,
            line=doc.line_of(("inventory",)),
            field="inventory",
            hint="write one for your machines, or make one on this machine with "
            f"`testbed up topologies/site-local.yaml --bare --inventory {inv_path}`",
        )
    return load_inventory(inv_path)


def _resolve_paths(topo: Topology, base: Path) -> None:
    """Key and known_hosts paths: `~` expanded, relative ones from the topology's folder."""
    for host in topo.hosts.values():
        for f in ("key_file", "known_hosts"):
            p = getattr(host, f)
            if p is not None:
                p = p.expanduser()
                setattr(host, f, p if p.is_absolute() else base / p)


def load_topology(path: str | Path) -> Topology:
    doc = load_yaml_file(path)
    if not isinstance(doc.data, dict):
        raise InputError(
            "a topology is a mapping with name, hosts, networks", file=doc.file, line=1
        )
    base = Path(path).resolve().parent
    _merge_inventory(doc, base)
    topo = validate(Topology, doc)
    _check_references(topo, doc)
    _resolve_paths(topo, base)
    topo.source = str(path)
    return topo

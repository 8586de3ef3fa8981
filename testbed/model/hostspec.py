"""One host of a topology, as written: its kind, roles, and how to reach it over SSH.

Its own module so that the inventory (model/inventory.py), which holds the same SSH
fields, and the topology, which loads an inventory, do not import each other.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["BOOT_MADE", "IFNAME_RE", "SSH_FIELDS", "HostSpec", "SpiceServer", "Strict"]

#: which spice-server a hypervisor's QEMU loads: Debian's, testbed's bug 884631 build on
#: Debian's QEMU (patched), or that build on testbed's patched QEMU (patched-qemu: the
#: no-freeze variant, which holds the migration while a client connects)
SpiceServer = Literal["stock", "patched", "patched-qemu"]

#: what the lab makes for a host it boots (`boot:`), so a topology must not say it
BOOT_MADE = (
    "address", "port", "user", "key_file", "known_hosts", "sudo", "interfaces", "python",
    "x_display", "x_authority", "from_inventory", "from_pool", "gateway",
)  # fmt: skip


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


IFNAME_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")
SSH_FIELDS = (
    "address",
    "port",
    "user",
    "key_file",
    "known_hosts",
    "sudo",
    "interfaces",
    "addresses",
    "python",
    "x_display",
    "x_authority",
    "from_inventory",
    "from_pool",
    "gateway",
)


class HostSpec(Strict):
    """A host of the lab: `local` is a namespace on this machine, `ssh` a machine reached by SSH.

    Relative `key_file`/`known_hosts` paths are read from the topology file's folder.
    """

    kind: Literal["local", "ssh"] = "local"
    roles: list[Literal["hypervisor", "client", "peer"]] = Field(
        min_length=1,
        description="peer: on the lab's networks only (shaping, probes), no libvirtd or X",
    )
    boot: Literal["netem-vm"] | None = Field(
        None,
        description="kind ssh: the lab boots this machine itself, testbed's netem VM (Debian's "
        "cloud kernel, with sch_netem), on the lab's networks; its address and keys are the lab's",
    )
    libvirt_uri: str | None = None
    emulator: str | None = Field(
        None, description="QEMU binary, e.g. a build with a patched spice-server"
    )
    spice_server: SpiceServer = Field(
        "stock",
        description="patched: QEMU runs with the bug 884631 spice-server that make setup "
        "builds (its emulator wrapper); patched-qemu: the same spice-server on the patched "
        "QEMU of make build-qemu-fix; stock: the emulator's own",
    )
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    address: str | None = Field(None, min_length=1, pattern=r"^[^\s/@]+$")
    port: int = Field(22, ge=1, le=65535)
    user: str = Field("root", min_length=1, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
    key_file: Path | None = Field(None, description="private key; default ~/.ssh/id_ed25519")
    known_hosts: Path | None = Field(
        None, description="host keys are checked against it, never added (~/.ssh/known_hosts)"
    )
    sudo: bool = Field(False, description="prefix commands with sudo -n when user is not root")
    interfaces: dict[str, str] = Field(
        default_factory=dict, description="network name -> interface name on this host"
    )
    addresses: dict[str, ipaddress.IPv4Address] = Field(
        default_factory=dict,
        description="network name -> this host's address there (a real host's interface has one)",
    )
    python: str = Field(
        "python3", min_length=1, description="interpreter for testbed's helpers on an ssh host"
    )
    x_display: str | None = Field(
        None,
        pattern=r"^:[0-9]+$",
        description="a client's own X display (e.g. ':0'); without it testbed starts an Xvfb",
    )
    x_authority: PurePosixPath | None = Field(
        None, description="the Xauthority file of x_display, on the host"
    )
    from_pool: str | None = Field(
        None,
        description="an inventory group: each scenario leases a free host of it (pytest -n N)",
    )
    from_inventory: str | None = Field(
        None, description="take the fields above from this host of the topology's inventory"
    )
    gateway: str | None = Field(
        None, description="another ssh host of the topology to reach this one through (ProxyJump)"
    )

    @model_validator(mode="after")
    def _booted(self) -> HostSpec:
        if self.boot is None:
            return self
        if self.kind != "ssh":
            raise ValueError("boot: netem-vm makes an ssh host; add kind: ssh")
        if self.roles != ["peer"]:
            raise ValueError("a netem VM runs no libvirtd and no X server: its roles are [peer]")
        given = sorted(self.model_fields_set & set(BOOT_MADE))
        if given:
            raise ValueError(
                f"boot: netem-vm: the lab makes the VM's {', '.join(given)}; drop "
                + ("it" if len(given) == 1 else "them")
            )
        return self

    @model_validator(mode="after")
    def _one_emulator(self) -> HostSpec:
        if self.spice_server != "stock" and self.emulator is not None:
            raise ValueError(
                f"spice_server: {self.spice_server} runs the patched build's own emulator "
                "wrapper; drop emulator: or spice_server:"
            )
        return self

    @field_validator("interfaces")
    @classmethod
    def _ifnames(cls, v: dict[str, str]) -> dict[str, str]:
        for net, ifname in v.items():
            if not IFNAME_RE.match(ifname):
                raise ValueError(f"{net}: {ifname!r} is not an interface name (1-15 characters)")
        return v

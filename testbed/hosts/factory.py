"""Hosts from a topology or from a lab's record: the one place that names host classes.

Everything above hosts/ asks for a `Host` here and then uses only the protocol
(tests/test_layers.py checks that no module above names LocalHost or SshHost).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from testbed.errors import InputError, LabError
from testbed.hosts.base import Host
from testbed.hosts.local import LocalHost
from testbed.hosts.ssh import REMOTE_STATE, SshHost
from testbed.model.topology import Topology


def remote_names(topology: Topology) -> list[str]:
    """The hosts reached over SSH as real machines (kind ssh), in topology order."""
    return [n for n, h in topology.hosts.items() if h.kind == "ssh"]


def namespace_names(topology: Topology) -> list[str]:
    """The hosts that are namespaces of this machine (kind local), in topology order."""
    return [n for n, h in topology.hosts.items() if h.kind == "local"]


def check_one_kind(topology: Topology) -> None:
    """A lab is either namespaces on this machine or machines over SSH, not both."""
    remote = remote_names(topology)
    if remote and len(remote) != len(topology.hosts):
        local = next(n for n in topology.hosts if n not in remote)
        raise InputError(
            f"hosts {', '.join(remote)} are kind ssh but {local} is local: a lab is "
            "either namespaces on this machine or machines over SSH, not both",
            file=topology.source,
            field=f"hosts.{local}.kind",
        )


def namespace_hosts(
    topology: Topology, netns_of: Callable[[str], str], state_dir_of: Callable[[str], Path]
) -> dict[str, Host]:
    """The embedded lab's namespaces, driven directly through nsenter."""
    return {n: LocalHost(n, netns_of(n), state_dir_of(n)) for n in namespace_names(topology)}


def namespace_host(name: str, netns: str, state_dir: Path) -> Host:
    """One namespace of this machine as a host (e.g. to run a daemon there)."""
    return LocalHost(name, netns, state_dir)


def remote_host(
    name: str,
    topology: Topology,
    *,
    state_dir: PurePosixPath = REMOTE_STATE,
    connect_timeout: float = 10.0,
    _seen: tuple[str, ...] = (),
) -> Host:
    """A topology host of kind ssh, with its jump host (`gateway`) if it has one."""
    return _ssh_host(name, topology, state_dir, connect_timeout, _seen)


def _ssh_host(
    name: str, topology: Topology, state_dir: PurePosixPath, timeout: float, seen: tuple[str, ...]
) -> SshHost:
    spec = topology.hosts[name]
    gateway = None
    if spec.gateway is not None:
        if spec.gateway in seen:
            raise InputError(
                f"gateways go round in a circle: {' -> '.join((*seen, name, spec.gateway))}",
                file=topology.source,
                field=f"hosts.{name}.gateway",
            )
        gw_state = REMOTE_STATE / f"jump-{spec.gateway}"
        gateway = _ssh_host(spec.gateway, topology, gw_state, timeout, (*seen, name))
    return SshHost.from_spec(
        name, spec, state_dir=state_dir, connect_timeout=timeout, gateway=gateway
    )


def ssh_machine(
    name: str,
    address: str,
    *,
    key_file: Path,
    known_hosts: Path,
    state_dir: PurePosixPath = REMOTE_STATE,
    connect_timeout: float = 10.0,
) -> Host:
    """A machine reached by SSH as root with the given key, its host key checked."""
    return SshHost(
        name,
        address,
        key_file=key_file,
        known_hosts=known_hosts,
        state_dir=state_dir,
        connect_timeout=connect_timeout,
    )


def sshd_host(
    name: str, address: str, *, key_file: Path, known_hosts: Path, state_dir: Path
) -> Host:
    """A namespace of the embedded lab, driven over the sshd the lab runs in it."""
    return SshHost(
        name,
        address,
        port=22,
        user="root",
        key_file=key_file,
        known_hosts=known_hosts,
        state_dir=PurePosixPath(state_dir),
        # the same machine: testbed's own interpreter has the compiled modules
        python=sys.executable,
        ssh_config=Path("/dev/null"),
    )


def host_from_record(name: str, info: Mapping[str, Any], state_dir: Path | None = None) -> Host:
    """A host as a lab's lab.json records it (`info`: its entry under "hosts")."""
    if "ssh" in info:
        return SshHost.from_record(name, info["ssh"])
    if "netns" in info and state_dir is not None:
        return LocalHost(name, info["netns"], state_dir)
    raise LabError(f"no record of how to reach host {name}")


def remote_hosts_from_record(hosts: Mapping[str, Mapping[str, Any]]) -> dict[str, Host]:
    """The hosts of a lab's record that are reached over SSH."""
    return {n: SshHost.from_record(n, i["ssh"]) for n, i in hosts.items() if "ssh" in i}

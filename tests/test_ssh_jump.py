"""A host reached only through another (a jump host), and the user's ssh config.

Two real sshds: the front one in a namespace the root namespace reaches, the hidden
one in a namespace only the front namespace reaches (no route from here). Host keys
of both are checked against known_hosts, never added.
"""

from __future__ import annotations

import ipaddress
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest
from pyroute2 import IPRoute
from sshlab import PORT, SshLab, behind, hidden_address, ssh_lab

from testbed.errors import LabError
from testbed.hosts.ssh import SshHost

pytestmark = pytest.mark.lab  # two scratch sshds


@pytest.fixture(scope="module")
def labs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SshLab, SshLab]]:
    tmp = tmp_path_factory.mktemp("jump")
    with ssh_lab(tmp, permit_open=f"{hidden_address()}:{PORT}") as front:
        with behind(front) as hidden:
            yield front, hidden


def _hidden_host(front: SshLab, hidden: SshLab) -> SshHost:
    gateway = front.host()
    return SshHost(
        "hv2",
        hidden.address,
        port=PORT,
        key_file=hidden.sshd.client_key,
        known_hosts=hidden.sshd.known_hosts,
        state_dir=PurePosixPath(hidden.tmp / "remote"),
        gateway=gateway,
    )


def test_only_the_front_namespace_is_on_the_hidden_network(labs: tuple[SshLab, SshLab]) -> None:
    """No direct dial (that would leave the lab's networks): the root namespace has no
    interface on the hidden /30, the front namespace has one."""
    front, hidden = labs
    net = ipaddress.ip_network(f"{hidden.address}/30", strict=False)

    def on_net(ns: str | None) -> bool:
        with IPRoute(**({"netns": ns} if ns else {})) as ipr:
            addrs = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=socket.AF_INET)]
        return any(ipaddress.ip_address(a) in net for a in addrs)

    assert not on_net(None)
    assert on_net(front.netns)


def test_commands_processes_and_files_through_the_jump_host(
    labs: tuple[SshLab, SshLab], tmp_path: Path
) -> None:
    front, hidden = labs
    with _hidden_host(front, hidden) as h:
        # runs where the hidden sshd lives: its eth0 has the address we asked for
        assert hidden.address in h.run(["ip", "-4", "-o", "addr", "show", "eth0"]).stdout
        assert h.reached_as.endswith(f"via root@{front.address}:{PORT}")
        src = tmp_path / "blob"
        src.write_bytes(b"x" * 100_000)
        there = Path(hidden.tmp / "files" / "blob")
        h.put(src, there)
        h.get(there, tmp_path / "back")
        assert (tmp_path / "back").read_bytes() == src.read_bytes()
        proc = h.popen(["sleep", "300"])
        assert proc.poll() is None
        proc.stop(grace_s=2)
        assert proc.returncode == -15
        # OpenSSH (what libvirt's qemu+ssh uses) goes through the same jump, as strictly
        res = subprocess.run(h.argv(["hostname", "-I"]), capture_output=True, text=True, timeout=30)
        assert res.returncode == 0 and hidden.address in res.stdout, res.stderr


def test_an_unknown_jump_host_key_is_refused(labs: tuple[SshLab, SshLab], tmp_path: Path) -> None:
    front, hidden = labs
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    gateway = front.host(known_hosts=empty)
    h = SshHost(
        "hv2",
        hidden.address,
        port=PORT,
        key_file=hidden.sshd.client_key,
        known_hosts=hidden.sshd.known_hosts,
        gateway=gateway,
    )
    with pytest.raises(LabError, match=r"^hv1: host key of .* is not in known_hosts"):
        h.run(["true"])
    assert empty.read_text() == "", "a key was added"


def test_ssh_config_alias_user_identityfile_and_proxyjump(
    labs: tuple[SshLab, SshLab], tmp_path: Path
) -> None:
    front, hidden = labs
    known = tmp_path / "known_hosts"
    known.write_text(front.sshd.known_hosts.read_text() + hidden.sshd.known_hosts.read_text())
    # one key for both hosts, as a user's config has it
    hidden.sshd.authorized_keys.write_text(
        hidden.sshd.authorized_keys.read_text()
        + front.sshd.client_key.with_suffix(".pub").read_text()
    )
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host bastion\n  HostName {front.address}\n  Port {PORT}\n  User root\n"
        f"  IdentityFile {front.sshd.client_key}\n"
        f"Host hidden\n  HostName {hidden.address}\n  Port {PORT}\n  User root\n"
        f"  IdentityFile {front.sshd.client_key}\n  ProxyJump bastion\n"
    )
    h = SshHost("hv2", "hidden", known_hosts=known, ssh_config=config)
    assert (h.address, h.port, h.user, h.key_path()) == (
        hidden.address,
        PORT,
        "root",
        front.sshd.client_key,
    )
    assert h.gateway is not None and h.gateway.address == front.address
    with h:
        assert hidden.address in h.run(["hostname", "-I"]).stdout


def test_topology_gateway_names_another_ssh_host(tmp_path: Path) -> None:
    from testbed.errors import InputError
    from testbed.hosts.factory import remote_host
    from testbed.model.topology import load_topology

    def topo(gateway: str) -> Path:
        p = tmp_path / f"t-{gateway}.yaml"
        p.write_text(
            "name: jump\nhosts:\n"
            "  bastion:\n    kind: ssh\n    roles: [client]\n    address: 192.0.2.1\n"
            "    interfaces: {display: eth1}\n    addresses: {display: 198.18.1.1}\n"
            "    key_file: k\n"
            "  hv1:\n    kind: ssh\n    roles: [hypervisor]\n    address: 192.0.2.2\n"
            "    interfaces: {display: eth1}\n    addresses: {display: 198.18.1.2}\n"
            "    key_file: k\n"
            f"    gateway: {gateway}\n"
            "networks:\n  display:\n    subnet: 198.18.1.0/24\n    members: [bastion, hv1]\n"
        )
        return p

    with pytest.raises(InputError) as err:
        load_topology(topo("nosuch"))
    assert "gateway" in str(err.value) and "hv1" in str(err.value)
    t = load_topology(topo("bastion"))
    h = remote_host("hv1", t)
    assert h.reached_as == "ssh root@192.0.2.2:22 via root@192.0.2.1:22"
    assert "ProxyCommand=" in " ".join(h.argv(["true"]))

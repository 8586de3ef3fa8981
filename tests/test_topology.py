"""Topology loader: the shipped topology loads; bad input names file, line and field."""

from __future__ import annotations

import ipaddress
import subprocess
import textwrap
from pathlib import Path

import pytest
from pyroute2 import netns

from testbed.errors import InputError
from testbed.model.topology import load_topology

REPO = Path(__file__).resolve().parent.parent

GOOD = """\
name: t
hosts:
  src: {roles: [hypervisor]}
  dst: {roles: [hypervisor]}
  client: {roles: [client]}
networks:
  display:
    subnet: 198.18.1.0/24
    members: [client, src, dst]
  migration:
    subnet: 198.18.2.0/24
    members: [src, dst]
guests:
  vm: {host: src, memory: 256MiB, fill: 64MiB}
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "topo.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def error_of(tmp_path: Path, text: str) -> InputError:
    with pytest.raises(InputError) as ei:
        load_topology(write(tmp_path, text))
    return ei.value


def test_local_topology_loads() -> None:
    t = load_topology(REPO / "topologies" / "local.yaml")
    assert t.hypervisors() == ["src", "dst"]
    assert t.clients() == ["client"]
    assert t.guests["vm"].memory == 256
    for name, net in t.networks.items():
        assert net.subnet.subnet_of(ipaddress.ip_network("198.18.0.0/15")), name
    assert str(t.address("display", "client")) == "198.18.1.1"
    assert str(t.address("migration", "dst")) == "198.18.2.2"


def test_explicit_addresses_and_auto_ones_do_not_collide(tmp_path: Path) -> None:
    text = GOOD.replace(
        "members: [client, src, dst]",
        "members: [client, src, dst]\n    addresses: {src: 198.18.1.1}",
    )
    t = load_topology(write(tmp_path, text))
    addrs = {h: str(t.address("display", h)) for h in ("client", "src", "dst")}
    assert addrs["src"] == "198.18.1.1"
    assert len(set(addrs.values())) == 3


@pytest.mark.parametrize(
    ("old", "new", "line", "field", "words"),
    [
        (
            "  src: {roles: [hypervisor]}",
            "  src: {roles: [hypervisor], colour: red}",
            3,
            "hosts.src.colour",
            "Extra inputs are not permitted",
        ),
        ("roles: [client]", "roles: [printer]", 5, "hosts.client.roles[0]", "printer"),
        (
            "members: [client, src, dst]",
            "members: [client, src, dsx]",
            9,
            "networks.display.members[2]",
            "'dsx' is not a host",
        ),
        (
            "subnet: 198.18.2.0/24",
            "subnet: 198.18.2.0/33",
            11,
            "networks.migration.subnet",
            "198.18.2.0/33",
        ),
        ("memory: 256MiB", "memory: 256 parsecs", 14, "guests.vm.memory", "parsecs"),
        ("{host: src,", "{host: client,", 14, "guests.vm.host", "not a hypervisor"),
    ],
)
def test_bad_topology_names_line_and_field(
    tmp_path: Path, old: str, new: str, line: int, field: str, words: str
) -> None:
    assert old in GOOD
    e = error_of(tmp_path, GOOD.replace(old, new))
    msg = str(e)
    assert e.line == line, msg
    assert e.field == field, msg
    assert words in msg
    assert "topo.yaml" in msg


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    e = error_of(tmp_path, GOOD.replace("  dst: {roles: [hypervisor]}", "  dst: {roles: [hyp"))
    assert e.line is not None and 4 <= e.line <= 6
    assert "not valid YAML" in str(e)


def test_duplicate_key_and_empty_file(tmp_path: Path) -> None:
    e = error_of(
        tmp_path,
        GOOD.replace(
            "  client: {roles: [client]}", "  client: {roles: [client]}\n  src: {roles: [client]}"
        ),
    )
    assert "duplicate key 'src'" in str(e) and e.line == 6
    assert "empty" in str(error_of(tmp_path, "# nothing\n"))


def test_missing_file() -> None:
    with pytest.raises(InputError, match="no such file"):
        load_topology("/nonexistent/topo.yaml")


def test_cli_rejects_bad_topology_with_exit_2_and_creates_nothing(
    tmp_path: Path, needs_root: None
) -> None:
    before = set(netns.listnetns())
    bad = write(tmp_path, GOOD.replace("members: [src, dst]", "members: [src, nowhere]"))
    res = subprocess.run(
        [str(REPO / ".venv/bin/testbed"), "up", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2, res.stderr
    assert "topo.yaml:12" in res.stderr and "networks.migration.members[1]" in res.stderr
    assert "Traceback" not in res.stderr
    assert set(netns.listnetns()) == before


LINK = """links:
  - {network: display, from: client, to: dst, both_ways: true, shape_at: dst,
     profile: {delay: 50ms}}
"""


def test_shape_at_names_one_end_of_its_link(tmp_path: Path) -> None:
    t = load_topology(write(tmp_path, GOOD + LINK))
    assert t.links[0].shape_at == "dst"
    e = error_of(tmp_path, GOOD + LINK.replace("shape_at: dst", "shape_at: src"))
    assert e.field == "links[0].shape_at", str(e)
    assert "one of the link's hosts (client or dst)" in str(e)


NETEM_VMS = """\
name: v
hosts:
  a: {kind: ssh, boot: netem-vm, roles: [peer]}
  b: {kind: ssh, boot: netem-vm, roles: [peer]}
networks:
  wan: {subnet: 198.18.3.0/24, members: [a, b]}
"""


def test_the_shipped_netem_vm_topology_is_two_booted_peers() -> None:
    t = load_topology(REPO / "topologies/netem-vm.yaml")
    assert t.booted() == ["left", "right"] and not t.hypervisors() and not t.guests
    assert t.links[0].shape_at == "left" and t.links[0].both_ways


@pytest.mark.parametrize(
    ("edit", "field", "words"),
    [
        (("a: {kind: ssh, boot", "a: {boot"), "hosts.a", "add kind: ssh"),
        (("roles: [peer]}\n  b", "roles: [client]}\n  b"), "hosts.a", "its roles are [peer]"),
        (
            ("a: {kind: ssh,", "a: {kind: ssh, address: 10.0.0.1,"),
            "hosts.a",
            "makes the VM's address",
        ),
        (
            ("b: {kind: ssh, boot: netem-vm, roles: [peer]}", "b: {roles: [peer]}"),
            "hosts.a.boot",
            "only boot: hosts",
        ),
        (
            ("a: {kind: ssh, boot: netem-vm", "a: {kind: ssh, boot: qemu"),
            "hosts.a.boot",
            "netem-vm",
        ),
    ],
)
def test_a_booted_host_is_the_labs_to_make(
    tmp_path: Path, edit: tuple[str, str], field: str, words: str
) -> None:
    assert load_topology(write(tmp_path, NETEM_VMS)).booted() == ["a", "b"]
    e = error_of(tmp_path, NETEM_VMS.replace(*edit, 1))
    assert (e.field or "").startswith(field) and words in str(e), (e.field, str(e))


def test_peers_alone_need_no_hypervisor_but_guests_do(tmp_path: Path) -> None:
    e = error_of(tmp_path, NETEM_VMS + "guests:\n  vm: {host: a}\n")
    assert "hypervisor" in str(e)
    e = error_of(
        tmp_path,
        NETEM_VMS.replace("roles: [peer]", "roles: [client]").replace(
            "kind: ssh, boot: netem-vm, ", ""
        ),
    )
    assert "needs at least one host with role 'hypervisor'" in str(e)

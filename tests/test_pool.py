"""The host pool: disjoint leases across processes, waiting, and expiry after a crash."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbed.errors import LabError
from testbed.lab.pool import HostPool

HOSTS = {
    "hv1": ["hypervisor"],
    "hv2": ["hypervisor"],
    "hv3": ["hypervisor"],
    "hv4": ["hypervisor"],
    "cl1": ["client"],
    "cl2": ["client"],
}
NEED = {"hypervisor": 2, "client": 1}


def test_two_leases_are_disjoint_and_a_third_waits(tmp_path: Path) -> None:
    pool = HostPool(HOSTS, tmp_path)
    a = pool.lease(NEED, "gw0")
    b = pool.lease(NEED, "gw1")
    assert len(a.names) == len(b.names) == 3
    assert not set(a.names) & set(b.names)
    with pytest.raises(LabError, match="no free hosts"):
        pool.lease(NEED, "gw2", timeout_s=0.3, poll_s=0.05)
    a.release()
    c = pool.lease(NEED, "gw2", timeout_s=1)
    assert set(c.names) == set(a.names)
    assert pool.holders() == {**{h: "gw1" for h in b.names}, **{h: "gw2" for h in c.names}}


def test_more_than_the_pool_has_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="2 host\\(s\\) with role client, 3 asked"):
        HostPool(HOSTS, tmp_path).lease({"client": 3}, "gw0")


CHILD = """
import sys, time
from pathlib import Path
from testbed.lab.pool import HostPool
pool = HostPool({hosts!r}, Path(sys.argv[1]), ttl_s=1.5)
lease = pool.lease({need!r}, "crasher")
print(" ".join(lease.names), flush=True)
while True:
    time.sleep(0.3)
    lease.renew()
"""


def test_a_crashed_workers_lease_expires(tmp_path: Path) -> None:
    code = CHILD.format(
        hosts={"hv1": ["hypervisor"], "hv2": ["hypervisor"]}, need={"hypervisor": 2}
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().split() == ["hv1", "hv2"]
        pool = HostPool({"hv1": ["hypervisor"], "hv2": ["hypervisor"]}, tmp_path, ttl_s=1.5)
        time.sleep(2.0)  # longer than the ttl: the renewals keep the lease alive
        with pytest.raises(LabError, match="no free hosts"):
            pool.lease({"hypervisor": 1}, "gw1", timeout_s=0.2, poll_s=0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(5)
        t0 = time.monotonic()
        lease = pool.lease({"hypervisor": 2}, "gw1", timeout_s=5, poll_s=0.05)
        assert lease.names == ["hv1", "hv2"]
        assert time.monotonic() - t0 <= 1.6  # back once the dead worker's lease ran out
    finally:
        child.kill()
        child.wait(5)


# -- topologies bound to leased hosts (pure: an inventory, a topology, a lease dir) ---------
POOL_INVENTORY = """\
all:
  vars:
    key_file: lab_ed25519
    known_hosts: known_hosts
  children:
    hypervisors:
      vars:
        interfaces: {display: eno1, migration: eno2}
      hosts:
        hv1: {address: 192.0.2.11, addresses: {display: 198.18.1.11, migration: 198.18.2.11}}
        hv2: {address: 192.0.2.12, addresses: {display: 198.18.1.12, migration: 198.18.2.12}}
        hv3: {address: 192.0.2.13, addresses: {display: 198.18.1.13, migration: 198.18.2.13}}
    clients:
      hosts:
        cl1: {address: 192.0.2.21, interfaces: {display: eth0}, addresses: {display: 198.18.1.21}}
"""
POOL_TOPOLOGY = """\
name: pooled
inventory: inventory.yaml
hosts:
  src: {from_pool: hypervisors, roles: [hypervisor], accel: tcg}
  dst: {from_pool: hypervisors, roles: [hypervisor], accel: tcg}
  client: {from_pool: clients, roles: [client]}
networks:
  display: {subnet: 198.18.1.0/24, members: [client, src, dst]}
  migration: {subnet: 198.18.2.0/24, members: [src, dst]}
"""


def _pooled(tmp_path: Path, inventory: str = POOL_INVENTORY, topo: str = POOL_TOPOLOGY):
    from testbed.model.topology import load_topology

    (tmp_path / "inventory.yaml").write_text(inventory)
    (tmp_path / "pooled.yaml").write_text(topo)
    return load_topology(tmp_path / "pooled.yaml")


def test_a_leased_topology_takes_each_hosts_address_key_and_interfaces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from testbed.lab import pool as pool_mod

    monkeypatch.setattr(pool_mod, "POOL_LEASES", tmp_path / "leases")
    topo = _pooled(tmp_path)
    assert pool_mod.pooled_hosts(topo) == {
        "src": "hypervisors", "dst": "hypervisors", "client": "clients"
    }  # fmt: skip
    with pool_mod.leased(topo, owner="w0") as (a, chosen_a):
        assert chosen_a == {"src": "hv1", "dst": "hv2", "client": "cl1"}
        src = a.hosts["src"]
        assert (src.kind, src.address, src.accel, src.from_pool) == (
            "ssh",
            "192.0.2.11",
            "tcg",
            None,
        )
        assert src.key_file == tmp_path / "lab_ed25519"
        assert src.interfaces == {"display": "eno1", "migration": "eno2"}
        assert str(a.address("display", "src")) == "198.18.1.11"
        assert str(a.address("migration", "dst")) == "198.18.2.12"
        assert str(a.address("display", "client")) == "198.18.1.21"
        # a second worker waits: one client in the pool, and w0 holds it
        with pytest.raises(LabError, match="no free hosts"):
            with pool_mod.leased(topo, owner="w1", timeout_s=0.3):
                pass
    pool, _ = pool_mod.pool_of(topo)
    assert pool.holders() == {}  # released on exit


def test_a_pool_host_without_an_address_on_a_network_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from testbed.lab import pool as pool_mod

    monkeypatch.setattr(pool_mod, "POOL_LEASES", tmp_path / "leases")
    inv = POOL_INVENTORY.replace(", addresses: {display: 198.18.1.21}", "")
    topo = _pooled(tmp_path, inventory=inv)
    with pytest.raises(LabError, match=r"pool host cl1 \(for client\) has no interface or address"):
        with pool_mod.leased(topo, owner="w0"):
            pass
    assert pool_mod.pool_of(topo)[0].holders() == {}  # nothing held after the error


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("client: {from_pool: desks,", "no hosts in group 'desks'"),
        ("client: {from_pool: clients, address: 192.0.2.9,", "a pooled host takes its address"),
    ],
)
def test_bad_pool_references_name_their_line(tmp_path: Path, change: str, message: str) -> None:
    from testbed.errors import InputError

    topo = POOL_TOPOLOGY.replace("client: {from_pool: clients,", change)
    with pytest.raises(InputError, match=message) as err:
        _pooled(tmp_path, topo=topo)
    assert err.value.line == 6

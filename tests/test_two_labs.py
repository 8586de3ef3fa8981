"""Two labs side by side on one machine: ids, namespaces, addresses, ports and displays
never collide, and each migrates its own guest."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from leaks import Snapshot

from testbed.lab.guests import finish_migration, location, migration_for, start_guest
from testbed.lab.lab import Lab
from testbed.model.topology import load_topology

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.lab


def up_boot_migrate(lab: Lab) -> str:
    start_guest(lab, "vm", fill_mib=8)
    m = migration_for(lab, "vm", "dst")
    m.start()
    rec = m.wait(180)
    finish_migration(lab, "vm", m, "dst")
    assert rec.result == "completed", rec.error
    return location(lab, "vm")


def test_two_labs_side_by_side(needs_root: None, state_root: Path) -> None:
    before = Snapshot.take(state_root)
    topo = load_topology(REPO / "topologies" / "local.yaml")
    with ThreadPoolExecutor(2) as pool:
        labs = list(pool.map(lambda _: Lab.up(topo), range(2)))
    try:
        a, b = labs
        assert a.id != b.id
        assert not {a.netns_of(h) for h in a.hosts} & {b.netns_of(h) for h in b.hosts}
        assert a.libvirtd("src").socket != b.libvirtd("src").socket
        # the same addresses live in two isolated labs: each client reaches only its own
        for lab in labs:
            ping = lab.hosts["client"].run(
                ["ping", "-c", "1", "-W", "2", "198.18.1.3"], check=False
            )
            assert ping.returncode == 0
        with ThreadPoolExecutor(2) as pool:
            assert list(pool.map(up_boot_migrate, labs)) == ["dst", "dst"]
        assert [d.name() for d in a.conn("dst").listAllDomains()] == [a.domain_name("vm")]
        assert [d.name() for d in b.conn("dst").listAllDomains()] == [b.domain_name("vm")]
    finally:
        for lab in labs:
            lab.down()
    assert Snapshot.take(state_root).leaks_since(before) == {}

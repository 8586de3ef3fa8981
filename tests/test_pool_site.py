"""A host pool in use: two pytest-xdist workers lease disjoint hosts from an inventory.

The site is real SSH machines on this machine: a bare `drive: ssh` lab of six hosts
(topologies/site-local.yaml), each a namespace with its own sshd, written out as an
inventory. topologies/pooled.yaml takes src, dst and client `from_pool`; every
scenario leases three of the six for itself, runs on them over SSH as on real
hosts (libvirtd over qemu+ssh, Xvfb and remote-viewer there, the shaping agents)
and gives them back.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from leaks import Snapshot

from testbed.lab.lab import Lab
from testbed.lab.pool import pool_of
from testbed.lab.site import write_inventory
from testbed.model.topology import load_topology

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.lab

PLAYBOOK = """\
name: pooled-pair
description: the baseline twice, so two workers run at once
vars:
  bandwidth: 20
matrix:
  run: {a: {}, b: {}}
steps:
  - start_guest: {guest: vm}
  - connect_client: {client: client, guest: vm, when: before}
  - migrate: {guest: vm, to: dst, bandwidth: "{bandwidth}", wait: true, timeout: 180s}
  - expect: {outcome: seamless, usbredir: migrated, migration: completed}
"""


def test_two_workers_lease_disjoint_hosts_and_give_them_back(
    needs_root: None, tmp_path: Path, state_root: Path
) -> None:
    before = Snapshot.take(state_root)
    site = Lab.up(load_topology(REPO / "topologies" / "site-local.yaml"), services=False)
    try:
        inventory = write_inventory(site, tmp_path / "site.yaml")
        text = (REPO / "topologies" / "pooled.yaml").read_text()
        topo = tmp_path / "pooled.yaml"
        topo.write_text(text.replace("inventory: /tmp/site.yaml", f"inventory: {inventory}"))
        book = tmp_path / "pooled-pair.yaml"
        book.write_text(textwrap.dedent(PLAYBOOK))
        out = tmp_path / "runs"
        res = subprocess.run(
            [
                sys.executable, "-m", "pytest", str(book), "-n", "2", "-q",
                "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                "--testbed-topology", str(topo), "--testbed-out", str(out),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
        )  # fmt: skip
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
        scenarios = [
            s for f in out.glob("*/result.json") for s in json.loads(f.read_text())["scenarios"]
        ]
        assert len(scenarios) == 2 and all(s["passed"] for s in scenarios)
        leases = []
        for s in scenarios:
            (ev,) = [e for e in s["timeline"] if e["kind"] == "pool.lease"]
            leases.append((ev["at"], ev["at"] + s["duration_s"], set(ev["hosts"].values())))
            assert all("ssh root@198.19." in how for how in s["hosts"].values()), s["hosts"]
        (a0, a1, a), (b0, b1, b) = leases
        assert max(a0, b0) < min(a1, b1), "the two workers did not run at the same time"
        assert a.isdisjoint(b), (a, b)  # disjoint while both ran
        pool, _ = pool_of(load_topology(topo))
        assert pool.holders() == {}  # every lease given back
    finally:
        site.down()
    assert Snapshot.take(state_root).leaks_since(before) == {}

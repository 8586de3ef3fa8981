"""The embedded lab end to end: up, guest, live migration, down, and nothing left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from leaks import Snapshot, root_listeners

from testbed.lab.guests import finish_migration, location, migration_for, serial_path, start_guest
from testbed.lab.lab import Lab
from testbed.lab.state import list_labs
from testbed.lab.teardown import teardown
from testbed.model.topology import load_topology
from testbed.net.links import interfaces
from testbed.virt.domain import heartbeats

REPO = Path(__file__).resolve().parent.parent
TOPOLOGY = REPO / "topologies" / "local.yaml"
pytestmark = pytest.mark.lab


def test_up_migrate_down_leaves_nothing(needs_root: None, state_root: Path) -> None:
    before = Snapshot.take(state_root)
    listening_before = root_listeners()
    lab = Lab.up(load_topology(TOPOLOGY))
    try:
        # wiring: each host sees only its own networks, addressed from 198.18.0.0/15
        assert interfaces(lab.netns_of("client")).keys() == {"lo", "display"}
        assert interfaces(lab.netns_of("src"))["migration"] == ["198.18.2.1/24"]
        ping = lab.hosts["client"].run(["ping", "-c", "1", "-W", "2", "198.18.1.3"], check=False)
        assert ping.returncode == 0, ping.stdout
        # nothing the lab runs listens in the root namespace
        assert root_listeners() == listening_before

        guest = start_guest(lab, "vm")
        assert guest.boot_s is not None and guest.boot_s < 60
        time.sleep(1.0)
        assert len(heartbeats(lab.hosts[guest.host], guest.serial)) >= 10

        m = migration_for(lab, "vm", "dst", bandwidth_mib=100)
        assert m.options.migrate_uri == "tcp://198.18.2.2"
        assert m.options.graphics_uri == "spice://198.18.1.3"
        m.start()
        rec = m.wait(180)
        finish_migration(lab, "vm", m, "dst")
        assert rec.result == "completed", rec.error
        assert rec.bytes and rec.bytes > 64 * 2**20  # the filled memory really moved
        assert rec.downtime_ms is not None
        assert location(lab, "vm") == "dst"
        assert [d.name() for d in lab.conn("dst").listAllDomains()] == [guest.domain]
        assert lab.conn("src").listAllDomains() == []

        # the guest goes on running on dst: its serial heartbeat keeps counting
        dst_serial = serial_path(lab, "dst", guest.domain)
        first = heartbeats(lab.hosts["dst"], dst_serial)
        time.sleep(1.5)
        later = heartbeats(lab.hosts["dst"], dst_serial)
        assert first and later and later[-1] >= first[-1] + 15, (first[-3:], later[-3:])
    finally:
        lab.down()
    assert Snapshot.take(state_root).leaks_since(before) == {}
    assert teardown(lab.record) == []  # idempotent: a second down finds nothing


def test_killed_up_is_swept_by_down_all(needs_root: None, state_root: Path) -> None:
    """SIGKILL `testbed up` while it starts daemons; `down --all` still removes everything."""
    before = Snapshot.take(state_root)
    env = dict(os.environ)
    proc = subprocess.Popen(
        [sys.executable, "-m", "testbed", "up", str(TOPOLOGY)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    killed_mid_up = False
    while time.monotonic() < deadline:
        labs = [r for r in list_labs() if r.info.get("owner_pid") == proc.pid]
        if labs and any(e.kind == "process" for e in labs[0].ledger.entries()):
            proc.send_signal(signal.SIGKILL)
            killed_mid_up = labs[0].status != "up"
            break
        time.sleep(0.005)
    proc.wait(10)
    assert killed_mid_up, "the lab came up before it could be killed"
    orphan = [r for r in list_labs() if r.info.get("owner_pid") == proc.pid]
    assert orphan and orphan[0].orphaned
    res = subprocess.run(
        [sys.executable, "-m", "testbed", "down", "--all"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert Snapshot.take(state_root).leaks_since(before) == {}


def test_migration_timeout_aborts_and_leaves_the_guest_on_the_source(needs_root: None) -> None:
    lab = Lab.up(load_topology(TOPOLOGY))
    try:
        guest = start_guest(lab, "vm")
        m = migration_for(lab, "vm", "dst", bandwidth_mib=1, timeout_s=6)
        m.start()
        rec = m.wait()
        finish_migration(lab, "vm", m, "dst")
        assert rec.result == "aborted" and "timed out" in (rec.error or "")
        assert location(lab, "vm") == "src"
        src_doms = lab.conn("src").listAllDomains()
        assert [d.name() for d in src_doms] == [guest.domain] and src_doms[0].isActive()
        assert lab.conn("dst").listAllDomains() == []
        first = heartbeats(lab.hosts[guest.host], guest.serial)[-1]
        time.sleep(1.0)
        now = heartbeats(lab.hosts[guest.host], guest.serial)[-1]
        assert now > first  # still running where it was
    finally:
        lab.down()

"""Shaping on the embedded lab through the CLI, as a user does it: shape, links, probe, clear.

Also on the lab driven over SSH (ssh-local.yaml), where each host's agent shapes and
the probes run on the hosts themselves."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from leaks import Snapshot

from testbed.lab.lab import Lab
from testbed.model.topology import load_topology

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.lab


def tb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "testbed", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )


def probe(lab: str, src: str, dst: str) -> dict:
    res = tb("probe", src, dst, "--lab", lab, "--json", "--pings", "20", "--seconds", "2")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.mark.parametrize("topology", ["local", "ssh-local"])
def test_shape_links_probe_clear_on_the_lab(
    needs_root: None, state_root: Path, topology: str
) -> None:
    before = Snapshot.take(state_root)
    lab = Lab.up(load_topology(REPO / "topologies" / f"{topology}.yaml"))
    try:
        base = probe(lab.id, "client", "dst")["rtt_ms"]["avg"]
        assert base < 5
        res = tb("shape", "client", "dst", "--delay", "100ms", "--lab", lab.id)
        assert res.returncode == 0, res.stderr
        shaped = probe(lab.id, "client", "dst")
        assert 95 <= shaped["rtt_ms"]["avg"] <= 130
        assert probe(lab.id, "client", "src")["rtt_ms"]["avg"] < base + 5  # per peer
        rows = json.loads(tb("links", "--lab", lab.id, "--json").stdout)["rows"]
        assert [(r["src"], r["dst"]) for r in rows] == [("client", "dst")]
        assert "delay 100ms" in rows[0]["installed"] and rows[0]["engine"]
        if topology == "ssh-local":
            assert "agents on the hosts" in rows[0]["engine"], rows[0]
            # the SSH interface is never shaped: the lab's control connection stays fast
            mgmt = tb(
                "shape", "client", "dst", "--network", "mgmt", "--delay", "1s", "--lab", lab.id
            )
            assert mgmt.returncode == 2 and "mgmt" in mgmt.stderr, mgmt.stderr

        bad = tb("shape", "client", "dst", "--delay", "100xs", "--lab", lab.id)
        assert bad.returncode == 2 and "100xs" in bad.stderr and "Traceback" not in bad.stderr

        assert tb("shape", "client", "dst", "--clear", "--lab", lab.id).returncode == 0
        assert probe(lab.id, "client", "dst")["rtt_ms"]["avg"] < base + 5
    finally:
        lab.down()
    assert Snapshot.take(state_root).leaks_since(before) == {}


def test_topology_links_are_shaped_at_up(needs_root: None, tmp_path: Path) -> None:
    topo = (REPO / "topologies" / "local.yaml").read_text() + (
        "links:\n"
        "  - {network: display, from: client, to: dst, profile: {delay: 50ms, rate: 20mbit}}\n"
    )
    path = tmp_path / "shaped.yaml"
    path.write_text(topo)
    up = tb("up", str(path))
    assert up.returncode == 0, up.stderr
    lab_id = re.search(r"^lab ([0-9a-f]{4}) is up", up.stdout, re.M).group(1)
    try:
        rows = json.loads(tb("links", "--lab", lab_id, "--json").stdout)["rows"]
        assert len(rows) == 1 and "delay 50ms" in rows[0]["installed"]
        assert "rate 20mbit" in rows[0]["installed"]
        assert 45 <= probe(lab_id, "client", "dst")["rtt_ms"]["avg"] <= 70
    finally:
        assert tb("down", lab_id).returncode == 0

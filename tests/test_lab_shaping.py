"""Shaping on the embedded lab through the CLI, as a user does it: shape, links, probe, clear."""

from __future__ import annotations

import json
import os
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


def test_shape_links_probe_clear_on_the_lab(needs_root: None, state_root: Path) -> None:
    before = Snapshot.take(state_root)
    lab = Lab.up(load_topology(REPO / "topologies" / "local.yaml"))
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

        bad = tb("shape", "client", "dst", "--delay", "100xs", "--lab", lab.id)
        assert bad.returncode == 2 and "100xs" in bad.stderr and "Traceback" not in bad.stderr

        assert tb("shape", "client", "dst", "--clear", "--lab", lab.id).returncode == 0
        assert probe(lab.id, "client", "dst")["rtt_ms"]["avg"] < base + 5
    finally:
        lab.down()
    assert Snapshot.take(state_root).leaks_since(before) == {}

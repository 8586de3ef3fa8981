"""`testbed down` returns only once every process of the lab has exited and been reaped.

Real labs through the CLI: up, a guest (QEMU), down, and at once (no sleep) a look
for any process of that lab, zombies included. Then `testbed run` SIGKILLed at
random moments of a short playbook, `down --all`, and the same look. About 2 min.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from leaks import lab_processes, still_there
from pyroute2 import netns

from testbed.lab.state import list_labs

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.lab


def _testbed(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "testbed", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def _processes_of(lab_id: str) -> dict[int, tuple[int, str]]:
    (rec,) = [r for r in list_labs() if r.id == lab_id]
    nets = [e["name"] for e in rec.ledger.of_kind("netns")]
    return lab_processes(rec.dir, nets)


@pytest.mark.parametrize("topology", ["local.yaml", "ssh-local.yaml"])
def test_down_returns_when_every_process_is_reaped(
    needs_root: None, state_root: Path, topology: str
) -> None:
    up = _testbed("up", f"topologies/{topology}")
    assert up.returncode == 0, up.stdout + up.stderr
    (rec,) = [
        r
        for r in list_labs()
        if r.info.get("topology_name") == topology[:-5] and r.info.get("handed_over")
    ]
    try:
        st = json.loads(_testbed("status", "--json").stdout)
        assert [x["orphaned"] for x in st if x["id"] == rec.id] == [False], "handed over"
        if topology == "local.yaml":
            g = _testbed("guest", "start", "vm", "--lab", rec.id)
            assert g.returncode == 0, g.stdout + g.stderr
        procs = _processes_of(rec.id)
        comms = {c for _, c in procs.values()}
        assert {"libvirtd", "Xvfb"} <= comms, comms
        if topology == "local.yaml":
            assert any(c.startswith("qemu-system") for c in comms), comms
    finally:
        down = _testbed("down", rec.id)
    assert down.returncode == 0, down.stdout + down.stderr
    assert still_there(procs) == []  # at once: not even a <defunct>


def test_killed_run_at_random_moments_leaves_nothing_after_down_all(
    needs_root: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL `testbed run` (one short scenario) at random moments; after each, `status`
    calls the lab orphaned, and `down --all` (in a state root of this test's own) leaves
    no process, zombie, namespace or state of it."""
    root = tmp_path / "state"
    monkeypatch.setenv("TESTBED_STATE", str(root))  # for list_labs here and the CLI
    rng = random.Random(int(os.environ.get("KILL_SEED", "884631")))
    moments = sorted(rng.uniform(0.5, 18.0) for _ in range(10))
    for at in moments:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "testbed", "run", "playbooks/bug-884631.yaml"),
                *("-k", "late-client/fix-off", "--out", str(tmp_path / "runs")),
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + at
        procs: dict[int, tuple[int, str]] = {}
        while time.monotonic() < deadline and proc.poll() is None:
            for r in list_labs():
                procs.update(_processes_of(r.id))
            time.sleep(0.2)
        assert proc.poll() is None, f"the run ended before {at:.1f} s"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        mine = list_labs()
        for r in mine:  # processes started in the last moments, too
            procs.update(_processes_of(r.id))
        st = {x["id"]: x["orphaned"] for x in json.loads(_testbed("status", "--json").stdout)}
        assert st == {r.id: True for r in mine}, (at, st)
        down = _testbed("down", "--all")
        assert down.returncode == 0, down.stdout + down.stderr
        assert still_there(procs) == [], f"killed at {at:.1f} s"
        left = [n for n in netns.listnetns() for r in mine if n.startswith(f"tb-{r.id}-")]
        assert left == [], f"killed at {at:.1f} s"
        assert not (root / "labs").exists() or not any((root / "labs").iterdir())

"""topologies/netem-vm.yaml as a newcomer runs it: two netem VMs as a lab's ssh hosts.

The lab boots testbed's netem VM twice (Debian's cloud kernel, which has sch_netem and
ifb; this machine's kernel has neither) and drives each as a `kind: ssh` host. The
commands of the topology's header, through the real CLI: `testbed doctor --topology`
says the VMs shape with kernel-netem; `testbed up` shapes the one link at `left` alone
(egress, and ingress through an ifb), so `right` holds no qdisc of the lab; `testbed
probe` measures the asked RTT across the VMs' real netem; a live `testbed shape`
changes it; `testbed down` leaves nothing on this machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from leaks import Snapshot

from testbed.lab.lab import Lab

pytestmark = pytest.mark.lab  # boots QEMU

REPO = Path(__file__).resolve().parent.parent
TOPOLOGY = str(REPO / "topologies/netem-vm.yaml")


def tb(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [sys.executable, "-m", "testbed", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    assert res.returncode == 0, f"testbed {' '.join(args)}: {res.stdout[-800:]}{res.stderr[-2000:]}"
    return res


def rtt(lab_id: str) -> dict[str, float]:
    res = tb("probe", "left", "right", "--pings", "10", "--seconds", "2", "--json", "--lab", lab_id)
    data = json.loads(res.stdout)
    assert data["loss_pct"] == 0.0, data
    return data["rtt_ms"] | {"goodput": data["goodput_mbit"]}


def ours(leaks: dict[str, object], *marks: str) -> dict[str, object]:
    """What leaked that is this test's (other labs may come and go on a shared machine)."""
    out = {}
    for kind, found in leaks.items():
        mine = (
            [x for x in found if any(m in str(x) for m in marks)]
            if isinstance(found, list)
            else found
        )
        if mine:
            out[kind] = mine
    return out


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A state root of this test's own, for the CLI it runs and for Lab.open here."""
    if os.geteuid() != 0:
        pytest.skip("needs root: boots QEMU on taps in a network namespace")
    monkeypatch.setenv("TESTBED_STATE", str(tmp_path / "state"))
    return tmp_path / "state"


def test_doctor_up_probe_shape_down_on_the_netem_vms(state: Path) -> None:
    before = Snapshot.take(state)
    checks = json.loads(tb("doctor", "--topology", TOPOLOGY, "--json").stdout)["checks"]
    by = {c["name"]: c for c in checks if c["host"] == "left, right"}
    assert by["shaping engine"]["detail"] == "kernel-netem", checks
    assert by["sch_netem"]["ok"] and by["boot (sshd up)"]["ok"], checks
    doctor_vm = ("tbnv", "testbed-doctor-")
    assert ours(Snapshot.take(state).leaks_since(before), *doctor_vm) == {}  # its VM is gone

    up = tb("up", TOPOLOGY)
    lab_id = next(r["id"] for r in json.loads(tb("status", "--json").stdout))
    try:
        assert f"lab {lab_id} is up" in up.stdout
        lab = Lab.open(lab_id)
        left, right = lab.hosts["left"], lab.hosts["right"]
        # one-ended: both directions live on left (wan egress, wanifb for what it receives)
        held = left.run(["tc", "qdisc", "show"]).stdout
        assert "dev wan parent" in held and "netem" in held and "dev wanifb" in held, held
        assert "netem" not in right.run(["tc", "qdisc", "show"]).stdout
        links = json.loads(tb("links", "--json", "--lab", lab_id).stdout)["rows"]
        assert {(x["src"], x["dst"]) for x in links} == {("left", "right"), ("right", "left")}
        assert all(x["installed"].startswith("delay 20ms, rate 50mbit") for x in links), links
        assert all(x["engine"].startswith("kernel-netem") for x in links), links

        first = rtt(lab_id)  # 2 x 20 ms, on a real netem (TCG adds a few ms, never less)
        assert 40.0 <= first["min"] < 46.0, first
        assert first["goodput"] <= 50 * 1.02, first  # the tbf holds the rate

        tb("shape", "left", "right", "--delay", "50ms", "--both-ways", "--lab", lab_id)
        second = rtt(lab_id)
        assert 100.0 <= second["min"] < 106.0, second
    finally:
        down = tb("down", lab_id)
    assert f"lab {lab_id} removed" in down.stdout
    left_behind = Snapshot.take(state).leaks_since(before)
    assert ours(left_behind, f"tb-{lab_id}-", f"tb{lab_id}", str(state)) == {}
    assert not left_behind.get("iptables_rules") and not left_behind.get("state_files")

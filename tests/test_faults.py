"""Faults on purpose (playbooks/faults.yaml, and faults-ssh.yaml on ssh-local), each
against the real lab: every one ends in a verdict within a bound, with the right
outcome word, the guest running where libvirt says on exactly one host (the source
when the migration failed, the destination when it completed), no orphan QEMU, and
nothing left on the machine.

Each scenario runs on its own (`-k`), between two leak snapshots; only what carries
the scenario's own lab id counts as its leak, since other labs may run beside it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from leaks import Snapshot

from testbed.runner.plan import plan, run_plan

REPO = Path(__file__).resolve().parent.parent
PLAYBOOK = REPO / "playbooks" / "faults.yaml"
pytestmark = pytest.mark.lab

# scenario -> outcome, migration result, where the guest runs, most seconds from the
# fault to the verdict
CASES: dict[str, tuple[str, str, str, float]] = {
    "client-killed": ("lost", "completed", "dst", 40.0),
    "dst-libvirtd-killed": ("migration-failed", "failed", "src", 40.0),
    "src-qemu-killed": ("lost", "failed", "", 40.0),
    "delay-line-killed": ("seamless", "completed", "dst", 40.0),
    "network-cut-restored": ("seamless", "completed", "dst", 60.0),
    "network-cut-kept": ("migration-failed", "aborted", "src", 45.0),
    "dst-unreachable-over-ssh": ("migration-failed", "failed", "src", 40.0),
}
# the SSH fault needs a lab driven over SSH: its own playbook, on ssh-local
PLAYBOOK_OF = {"dst-unreachable-over-ssh": REPO / "playbooks" / "faults-ssh.yaml"}


def events(s: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e for e in s["timeline"] if e["kind"] == kind]


def own_leaks(leaks: dict[str, object], lab_id: str) -> dict[str, object]:
    """The leaks that name this lab (its namespaces, processes, state files, ...)."""
    out = {}
    for kind, items in leaks.items():
        if isinstance(items, list):
            mine = [x for x in items if lab_id in str(x)]
            if mine:
                out[kind] = mine
    return out


@pytest.fixture(scope="module", params=list(CASES))
def fault_run(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, state_root: Path
) -> tuple[str, dict[str, Any], dict[str, object]]:
    name = request.param
    out = tmp_path_factory.mktemp(f"faults-{name}")
    before = Snapshot.take(state_root)
    run_plan(plan([PLAYBOOK_OF.get(name, PLAYBOOK)], pattern=name), out)
    after = Snapshot.take(state_root)
    result = json.loads((out / "result.json").read_text())  # written, whatever happened
    (s,) = result["scenarios"]
    lab_id = events(s, "lab.up")[0]["lab"]
    return name, s, own_leaks(after.leaks_since(before), lab_id)


def test_verdict_outcome_and_migration(needs_root: None, fault_run: tuple) -> None:
    name, s, _ = fault_run
    outcome, migration, _, _ = CASES[name]
    assert s["error"] is None, s["error"]
    assert (s["outcome"], s["migration"]["result"]) == (outcome, migration), s["evidence"]
    assert s["passed"], s["failures"]
    if name == "delay-line-killed":  # shaping fails open, and the result says so
        health = events(s, "links.health")
        assert health and not health[-1]["ok"] and health[-1]["fail_mode"] == "open", health
        assert health[-1]["unshaped"], health[-1]


def test_guest_runs_on_exactly_one_host(needs_root: None, fault_run: tuple) -> None:
    name, s, _ = fault_run
    where = events(s, "guest.where")
    assert where, "the runner must say where the guest ended"
    want = CASES[name][2]
    assert where[-1]["runs_on"] == ([want] if want else []), where[-1]
    if name == "dst-libvirtd-killed":  # the client's destination QEMU was orphaned
        assert where[-1]["orphans_killed"], where[-1]
    if name == "dst-unreachable-over-ssh":  # and says so, rather than "absent"
        assert where[-1]["libvirt"]["dst"].startswith("unreachable"), where[-1]


def test_time_to_verdict(needs_root: None, fault_run: tuple) -> None:
    name, s, _ = fault_run
    fault = events(s, "fault") or [
        e for e in events(s, "link.shape") if e["network"] == "migration"
    ]
    outcome = events(s, "outcome")
    assert fault and outcome
    took = outcome[-1]["t"] - fault[0]["t"]
    assert took < CASES[name][3], f"{took:.1f} s from the fault to the verdict"
    if name == "client-killed":  # a dead client is judged at once, not waited for
        end = events(s, "migration.end")[-1]["t"]
        assert outcome[-1]["judged"] == "client-exited" and outcome[-1]["t"] - end < 2.0


def test_leaves_nothing(needs_root: None, fault_run: tuple) -> None:
    _, _, leaks = fault_run
    assert leaks == {}

"""The guard fails safe on a real lab: the destination libvirtd SIGKILLed during a hold.

A slow client (3 s one way to the destination) keeps the guard holding the
migration at 1 MiB/s; once the hold is on, the destination's libvirtd is killed.
The guard must notice (its connection closes) and release within a bound,
restoring the migration's own bandwidth, and say failed-released with the reason.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from testbed.model.playbook import parse_playbook
from testbed.model.topology import load_topology
from testbed.runner.result import ScenarioResult
from testbed.runner.scenario import ScenarioRun

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.lab
RELEASE_BOUND_S = 3.0

PLAYBOOK = """
name: guard-failsafe
steps:
  - shape: {from: client, to: dst, network: display, delay: 3000ms}
  - start_guest: {guest: vm, fill: 8MiB}
  - connect_client: {client: client, guest: vm, when: before}
  - migrate: {guest: vm, to: dst, bandwidth: 100, guard: true, wait: true, timeout: 120s}
"""


def _event(run: ScenarioRun, kind: str) -> dict | None:
    return next((e for e in run.timeline.to_json() if e["kind"] == kind), None)


def test_dead_destination_releases_the_hold(needs_root: None, tmp_path: Path) -> None:
    pb = parse_playbook(PLAYBOOK)
    scenario = pb.scenarios()[0]
    run = ScenarioRun(scenario, load_topology(REPO / "topologies" / "local.yaml"), tmp_path, print)
    box: dict[str, ScenarioResult] = {}
    t = threading.Thread(target=lambda: box.setdefault("r", run.run()), daemon=True)
    t.start()
    deadline = time.monotonic() + 150
    while _event(run, "guard.hold") is None:
        assert time.monotonic() < deadline, "the guard never held"
        assert t.is_alive(), "the scenario ended before the guard held"
        time.sleep(0.1)
    lab, watch = run.ctx.lab, run.ctx.watch
    assert lab is not None and watch is not None and watch.guard is not None
    pidfile = lab.libvirtd("dst").dir / "libvirtd.pid"
    pid = int(Path(str(pidfile)).read_text().strip())
    killed_at = run.timeline.now()
    os.kill(pid, signal.SIGKILL)
    t.join(300)
    assert not t.is_alive(), "the scenario never ended"
    guard = watch.guard.report
    assert guard.result == "failed-released", guard.to_json()
    assert "destination" in guard.reason, guard.reason
    release = _event(run, "guard.release")
    assert release is not None, run.timeline.to_json()
    assert release["why"].startswith("fail-safe:"), release
    print(f"guard released {release['t'] - killed_at:.3f} s after the kill: {guard.reason}")
    assert 0 <= release["t"] - killed_at < RELEASE_BOUND_S, (release, killed_at)
    # the migration's own bandwidth was restored on the source's job (the first
    # change is the hold at 1 MiB/s, the second the release back to 100)
    changes = [mib for _t, mib in watch.m.record.bandwidth_changes]
    assert changes[:3] == [100, 1, 100], changes


DOWNTIME_PLAYBOOK = """
name: guard-max-downtime
steps:
  - start_guest: {guest: vm, fill: 64MiB}
  - connect_client: {client: client, guest: vm, when: at 30%}
  - migrate: {guest: vm, to: dst, bandwidth: 10, guard: true, max_downtime: 300ms,
              wait: true, timeout: 240s}
  - expect: {outcome: seamless, usbredir: migrated, migration: completed}
"""


def test_max_downtime_is_restored_after_the_hold(needs_root: None, tmp_path: Path) -> None:
    """The bug: a playbook's max_downtime (a float) made the release raise TypeError,
    so the hold (1 MiB/s, 1 ms) stayed and 64 MiB took about 62 s instead of 20."""
    scenario = parse_playbook(DOWNTIME_PLAYBOOK).scenarios()[0]
    run = ScenarioRun(scenario, load_topology(REPO / "topologies" / "local.yaml"), tmp_path, print)
    result = run.run()
    assert result.error is None, result.error
    assert result.passed, result.failures
    assert result.guard is not None
    guard = result.guard.model_dump()  # the typed GuardReport, read as its JSON form
    assert guard["result"] == "released", guard
    release = next(a for a in guard["actions"] if a["action"] == "release")
    assert (release["bandwidth_mib"], release["downtime_ms"]) == (10, 300), release
    assert "restore_errors" not in release
    assert result.migration.duration_s is not None
    assert result.migration.duration_s < 40, result.migration

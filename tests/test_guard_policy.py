"""The guard's policy replayed on server events recorded in this project's own runs.

tests/data/guard/<scenario>/ holds a scenario's server-events.json (libvirt's
graphics and lifecycle events from both hypervisors) and guard.json (what the
live guard did, with `origin`: the migration's start on the events' clock)
from `testbed run playbooks/bug-884631.yaml`. The replay feeds the events to
GuardPolicy on a 0.1 s grid (the live guard's tick) and checks that it takes
the same actions at the same times; then it injects faults into the same
recordings and checks the fail-safe answers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from testbed.spice.events import ServerEvent
from testbed.spice.guard_policy import (
    FAILED_RELEASED,
    HELD,
    NOT_NEEDED,
    RELEASED,
    Action,
    GuardPolicy,
    observe,
)

DATA = Path(__file__).parent / "data" / "guard"
CLIENT = "198.18.1.1"  # the client's display address in topologies/local.yaml
TICK = 0.1
SCENARIOS = sorted(p.name for p in DATA.iterdir() if (p / "guard.json").exists())


def _load(name: str) -> tuple[list[ServerEvent], dict[str, Any]]:
    raw = json.loads((DATA / name / "server-events.json").read_text())
    events = [
        ServerEvent(
            **{
                **e,
                "local": tuple(e["local"]) if e["local"] else None,
                "remote": tuple(e["remote"]) if e["remote"] else None,
                "subject": tuple(tuple(x) for x in e["subject"]),
            }
        )
        for e in raw
    ]
    return events, json.loads((DATA / name / "guard.json").read_text())


def _recorded(guard: dict[str, Any], kind: str) -> list[float]:
    return [a["t"] for a in guard["actions"] if a["action"] == kind]


def replay(
    events: list[ServerEvent],
    guard: dict[str, Any],
    *,
    end_s: float,
    fault_at: float | None = None,
    fault: str = "the destination's libvirtd connection closed",
) -> tuple[GuardPolicy, list[Action]]:
    """Run the policy over the recording, ticking every 0.1 s until `end_s` (the
    migration's end, s since its start); transfer start comes from the recording
    (libvirt's job stats, which server events do not hold)."""
    origin = guard["origin"]
    transfer_at = _recorded(guard, "transfer-started")[0]
    policy = GuardPolicy()
    actions: list[Action] = []
    t = 0.0
    while t < end_s and not policy.settled:
        broken = fault_at is not None and t >= fault_at
        obs = observe(
            events,
            src="src",
            dst="dst",
            client_addr=CLIENT,
            now=origin + t,
            origin=origin,
            transferring=t >= transfer_at,
            fault=fault if broken else None,
        )
        actions += policy.step(obs)
        t = round(t + TICK, 6)
    actions += policy.migration_ended(end_s)
    return policy, actions


def _kinds(actions: list[Action]) -> list[str]:
    return [a.kind for a in actions]


def test_recordings_are_present() -> None:
    assert len(SCENARIOS) >= 2, f"recorded guard runs in {DATA}"


@pytest.mark.parametrize("name", SCENARIOS)
def test_replay_takes_the_recorded_actions_at_the_recorded_times(name: str) -> None:
    events, guard = _load(name)
    end = guard["migration_duration_s"]
    policy, actions = replay(events, guard, end_s=end)
    assert policy.result == guard["result"] == RELEASED
    want = [a["action"] for a in guard["actions"]]
    assert _kinds(actions) == want
    for a, rec in zip(actions, guard["actions"], strict=True):
        # the live guard ticks every 0.1 s plus the time its libvirt calls take
        assert a.t == pytest.approx(rec["t"], abs=0.35), (a, rec)
    assert policy.held_s == pytest.approx(guard["held_s"], abs=0.4)


def test_late_client_gets_client_migrate_info_again() -> None:
    events, guard = _load("late-client_fix-on")
    _, actions = replay(events, guard, end_s=guard["migration_duration_s"])
    kinds = _kinds(actions)
    # the client connected after the transfer began: hold, then resend at once
    assert kinds[:3] == ["transfer-started", "hold", "client_migrate_info"]
    assert actions[2].t == actions[1].t
    assert actions[1].on_src > 0 and actions[1].on_dst == 0


def test_slow_destination_waits_two_round_trips_before_release() -> None:
    events, guard = _load("slow-dst_fix-on")
    _, actions = replay(events, guard, end_s=guard["migration_duration_s"])
    assert "client_migrate_info" not in _kinds(actions)  # connected before: libvirt's was enough
    release = next(a for a in actions if a.kind == "release")
    assert release.on_dst >= release.on_src > 0
    assert "round trip there: 1" in release.why  # about 1 s one way in slow-dst


@pytest.mark.parametrize("name", SCENARIOS)
def test_fault_during_the_hold_releases_at_once(name: str) -> None:
    events, guard = _load(name)
    hold = _recorded(guard, "hold")[0]
    fault_at = round(hold + 0.2, 6)
    policy, actions = replay(events, guard, end_s=guard["migration_duration_s"], fault_at=fault_at)
    assert policy.result == FAILED_RELEASED
    assert "libvirtd connection closed" in policy.reason
    release = [a for a in actions if a.kind == "release"]
    assert len(release) == 1
    assert release[0].t == pytest.approx(fault_at, abs=TICK + 1e-6)
    assert release[0].why.startswith("fail-safe:")
    assert not policy.holding


@pytest.mark.parametrize("name", SCENARIOS)
def test_fault_before_any_hold_is_failed_with_nothing_to_release(name: str) -> None:
    events, guard = _load(name)
    policy, actions = replay(events, guard, end_s=guard["migration_duration_s"], fault_at=0.0)
    assert policy.result == FAILED_RELEASED
    assert _kinds(actions) == []


@pytest.mark.parametrize("name", SCENARIOS)
def test_a_hold_that_lasts_to_the_end_is_held(name: str) -> None:
    events, guard = _load(name)
    hold = _recorded(guard, "hold")[0]
    release = _recorded(guard, "release")[0]
    end = (hold + release) / 2  # the migration ends while the guard still holds
    policy, actions = replay(events, guard, end_s=end)
    assert policy.result == HELD
    assert _kinds(actions)[-1] == "held-to-end"
    assert policy.held_s == pytest.approx(end - hold, abs=0.25)


@pytest.mark.parametrize("name", SCENARIOS)
def test_a_migration_over_before_the_transfer_needs_nothing(name: str) -> None:
    events, guard = _load(name)
    transfer = _recorded(guard, "transfer-started")[0]
    policy, actions = replay(events, guard, end_s=transfer - 0.5)
    assert policy.result == NOT_NEEDED
    assert actions == []


def test_no_second_client_migrate_info_while_the_client_links_to_the_destination() -> None:
    """Over TLS at 1 s one way a client links its channels to the destination for about
    12 s; a resend at spice-server's 10 s would start a second MIGRATE_BEGIN during the
    first connect (spice-gtk then fails its migration session). The policy waits until
    the destination has seen nothing of the client for the resend interval."""
    from testbed.spice.guard_policy import Observation

    policy = GuardPolicy()
    seen: list[Action] = []

    def tick(t: float, on_dst: int, activity: float | None) -> None:
        o = Observation(
            t=t,
            transferring=True,
            on_src=5,
            on_dst=on_dst,
            client_first_src_t=-3.0,
            client_rtt_s=2.0,
            dst_activity_t=activity,
        )
        seen.extend(policy.step(o))

    tick(0.5, 0, None)  # transfer started, client on the source only: hold
    assert _kinds(seen) == ["transfer-started", "hold"]
    for i in range(1, 120):  # the client links one channel every ~2.4 s up to 12 s
        t = 0.5 + i * 0.1
        tick(t, 0, 0.5 + 2.4 * int((t - 0.5) / 2.4) if t < 12.5 else 12.5)
    assert "client_migrate_info" not in _kinds(seen)  # 12.4 s on hold, still linking
    for i in range(1, 120):  # then nothing from the client for over 10 s: resend
        tick(12.4 + i * 0.1, 0, 12.5)
    cmi = [a for a in seen if a.kind == "client_migrate_info"]
    assert len(cmi) == 1 and cmi[0].t > 22.5, cmi

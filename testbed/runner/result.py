"""What a run yields: one ScenarioResult per scenario, gathered in a RunResult.

These are the shapes `result.json` holds; the report layer reads them back as
plain JSON, so a report can be rebuilt from `result.json` alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class MigrationSummary:
    result: str | None = None
    duration_s: float | None = None
    downtime_ms: int | None = None
    bytes: int | None = None


@dataclass
class ClientSummary:
    connected_at_s: float | None = None  # seconds after the migration started
    connected_at_progress: float | None = None  # migration progress (%) when it connected
    # the longest gap between any two display changes around the switchover, whoever
    # stalled (guest or client): kept for comparison, the verdict reads frozen_ms
    unresponsive_ms: float | None = None
    usbredir: str | None = None
    # from the guest's heartbeat (spice/freeze.py): the longest stretch in the switchover
    # window (5 s before it until the client shows live frames again) where the client
    # kept an old frame although a newer one existed; its lag {p50, p99, max} once it showed
    # a frame; the lag at a frame change (idle); [[s since start, lag ms]] per 0.1 s (max)
    frozen_ms: float | None = None
    frozen: dict[str, float] | None = None  # {start_s, end_s, ms}
    freeze_window: list[float] | None = None  # [start_s, end_s]
    lag_ms: dict[str, float] | None = None
    base_lag_ms: float | None = None
    lag_trace: list[list[float]] = field(default_factory=list)


@dataclass
class GuestSummary:
    """Stretches with no new heartbeat emitted (downtime, TCG starvation, a paused guest)."""

    stall_ms: float | None = None  # the longest
    switchover_stall_ms: float | None = None  # the one that contains the switchover
    stalls: list[dict[str, float]] = field(default_factory=list)  # {start_s, end_s, ms}


@dataclass
class ScenarioResult:
    name: str
    params: dict[str, Any]
    expected: dict[str, Any]
    outcome: str | None = None
    passed: bool = False
    failures: list[str] = field(default_factory=list)
    error: str | None = None
    duration_s: float | None = None
    migration: MigrationSummary = field(default_factory=MigrationSummary)
    client: ClientSummary = field(default_factory=ClientSummary)
    guest: GuestSummary = field(default_factory=GuestSummary)
    guard: dict[str, Any] | None = None
    links: list[dict[str, Any]] = field(default_factory=list)
    hosts: dict[str, str] = field(default_factory=dict)  # host -> how it was reached
    evidence: list[str] = field(default_factory=list)
    artifacts: dict[str, str] = field(default_factory=dict)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    out_dir: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunResult:
    playbook: str
    topology: str
    started: float
    scenarios: list[ScenarioResult] = field(default_factory=list)
    ended: float | None = None
    out_dir: str | None = None

    @property
    def passed(self) -> bool:
        return bool(self.scenarios) and all(s.passed for s in self.scenarios)

    def to_json(self) -> dict[str, Any]:
        return {
            "playbook": self.playbook,
            "topology": self.topology,
            "started": self.started,
            "ended": self.ended,
            "passed": self.passed,
            "scenarios": [s.to_json() for s in self.scenarios],
        }

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
    unresponsive_ms: float | None = None
    usbredir: str | None = None


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

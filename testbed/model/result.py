"""What a run yields, as `result.json` holds it: a versioned, typed RunResult.

The runner fills it, writes it, and the report layer and the CLI read it back (from
`result.json` alone). `testbed schema result` prints its JSON Schema for dashboards.
SCHEMA_VERSION counts incompatible changes; a file of another version is refused with
a clear message rather than half read. Version 1 was the unversioned dict format.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from testbed.errors import InputError
from testbed.model.hostspec import SpiceServer
from testbed.model.outcome import MigrationResult, Observed, Outcome, UsbRedir, Verdict, verdict_of

SCHEMA_VERSION = 2


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Expected(_Part):
    """What the scenario's expect steps asked for; None is "not checked"."""

    outcome: Outcome | None = None
    usbredir: UsbRedir | None = None
    max_frozen_ms: float | None = None
    migration: MigrationResult | None = None

    def given(self) -> dict[str, Any]:
        """Only the fields that are checked, in field order."""
        return self.model_dump(exclude_none=True)


class MigrationSummary(_Part):
    result: MigrationResult | None = None
    duration_s: float | None = None
    downtime_ms: int | None = None
    bytes: int | None = None
    first_byte_s: float | None = None  # from the start until the job first moved data


class Stretch(_Part):
    """A span of the scenario, in seconds since it started."""

    start_s: float
    end_s: float
    ms: float


class LagStats(_Part):
    p50: float
    p99: float
    max: float


class ClientSummary(_Part):
    connected_at_s: float | None = Field(None, description="seconds after the migration started")
    connected_at_progress: float | None = Field(
        None, description="migration progress (%) when the client connected"
    )
    unresponsive_ms: float | None = Field(
        None,
        description="the longest gap between any two display changes around the switchover, "
        "whoever stalled (guest or client); kept for comparison, the verdict reads frozen_ms",
    )
    usbredir: UsbRedir | None = None
    frozen_ms: float | None = Field(
        None,
        description="from the guest's heartbeat: the longest stretch in the switchover window "
        "(5 s before it until the client shows live frames again) where the client kept an "
        "old frame although a newer one existed",
    )
    frozen: Stretch | None = Field(None, description="that longest freeze")
    freeze_window: list[float] | None = Field(None, description="[start_s, end_s]")
    lag_ms: LagStats | None = Field(None, description="the client's lag once it showed a frame")
    base_lag_ms: float | None = Field(None, description="the lag at a frame change, idle")
    lag_trace: list[list[float]] = Field(
        default_factory=list, description="[[s since start, lag ms]], the largest per 0.1 s"
    )


class SpiceServerLib(_Part):
    """The libspice-server a guest's QEMU mapped on one host, read from /proc/PID/maps."""

    asked: SpiceServer = Field(description="what the topology or the scenario selected")
    path: str | None = Field(None, description="the mapped file; None: QEMU mapped none")
    build_id: str | None = Field(None, description="its GNU build id (ELF note)")
    pid: int | None = None
    qemu: str | None = Field(
        None, description="the QEMU binary that mapped it (a patched build's for patched-qemu)"
    )


class GuestSummary(_Part):
    """Stretches with no new heartbeat emitted (downtime, TCG starvation, a paused guest),
    and which spice-server each host's QEMU ran."""

    stall_ms: float | None = Field(None, description="the longest")
    switchover_stall_ms: float | None = Field(None, description="the one at the switchover")
    stalls: list[Stretch] = Field(default_factory=list)
    spice_server: dict[str, SpiceServerLib] = Field(
        default_factory=dict, description="host -> the library its QEMU mapped"
    )


class GuardAction(BaseModel):
    """One thing spice_guard did, `t` seconds into the migration; details vary by action."""

    model_config = ConfigDict(extra="allow")

    t: float
    action: str


class GuardReport(_Part):
    result: str = Field(
        "watching",
        description="watching, not-needed, released, held, gave-up, failed-released "
        "(testbed.spice.guard_policy)",
    )
    reason: str = ""
    held_s: float = 0.0
    client_migrate_info_sent: int = 0
    origin: float = Field(0.0, description="the migration's start on the server events' clock")
    actions: list[GuardAction] = Field(default_factory=list)


class ScenarioResult(_Part):
    name: str
    params: dict[str, str] = Field(default_factory=dict)
    expected: Expected = Field(default_factory=Expected)
    outcome: Observed | None = None
    passed: bool = False
    failures: list[str] = Field(default_factory=list)
    error: str | None = None
    duration_s: float | None = None
    migration: MigrationSummary = Field(default_factory=MigrationSummary)
    client: ClientSummary = Field(default_factory=ClientSummary)
    guest: GuestSummary = Field(default_factory=GuestSummary)
    guard: GuardReport | None = None
    links: list[dict[str, str]] = Field(default_factory=list)
    hosts: dict[str, str] = Field(default_factory=dict, description="host -> how it was reached")
    evidence: list[str] = Field(default_factory=list)
    artifacts: dict[str, str] = Field(default_factory=dict)
    timeline: list[dict[str, Any]] = Field(
        default_factory=list, description="events: t (s since the start), kind, and details"
    )
    out_dir: str | None = None

    @property
    def verdict(self) -> Verdict:
        return verdict_of(self.passed, self.error)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class RunResult(_Part):
    schema_version: int = SCHEMA_VERSION
    playbook: str
    topology: str
    started: float
    ended: float | None = None
    scenarios: list[ScenarioResult] = Field(default_factory=list)
    out_dir: str | None = Field(None, exclude=True)

    @property
    def passed(self) -> bool:
        return bool(self.scenarios) and all(s.passed for s in self.scenarios)

    def to_json(self) -> dict[str, Any]:
        """result.json's data; `passed` (every scenario passed) is written for readers."""
        return {**self.model_dump(mode="json"), "passed": self.passed}


def result_schema() -> dict[str, Any]:
    """The JSON Schema of result.json, as `testbed schema result` prints it."""
    return RunResult.model_json_schema(mode="serialization")


def parse_result(data: Any, file: str | Path) -> RunResult:
    """A RunResult from result.json's data; another version or shape is an InputError."""
    if not isinstance(data, dict) or not isinstance(data.get("scenarios"), list):
        raise InputError(
            f"{file} is not a testbed result: expected a mapping with a 'scenarios' list",
            hint="result.json is what `testbed run` writes into its output directory",
        )
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        found = "none (an unversioned result of an older testbed)" if version is None else version
        raise InputError(
            f"{file}: result schema_version {found}; this testbed reads version {SCHEMA_VERSION}",
            hint="rerun the playbook with this testbed, or report it with the testbed that ran it",
        )
    data = {k: v for k, v in data.items() if k != "passed"}
    try:
        return RunResult.model_validate(data)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"])
        raise InputError(f"{file}: {where}: {err['msg']}: not a testbed result") from None


def load_result(path: str | Path) -> RunResult:
    """Read result.json; unreadable, not JSON, or another version is an InputError."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {p}: {e}") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{p}:{e.lineno}: not JSON ({e.msg})") from None
    return parse_result(data, p)

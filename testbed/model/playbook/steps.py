"""The step schema: each step kind a playbook may use, its fields, and their typed values.

Triggers (``at 30%``), wait conditions (``migration_progress >= 50``), durations and
sizes parse here; a step validates one scenario's values, after substitution (expand).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    model_validator,
)

from testbed.errors import InputError
from testbed.model import units
from testbed.model.hostspec import SpiceServer
from testbed.model.outcome import MigrationResult, Outcome, UsbRedir
from testbed.model.profile import LinkProfile
from testbed.model.pydantic_errors import input_keys

FaultKill = Literal[
    "none",
    "client",
    "dst-libvirtd",
    "src-libvirtd",
    "src-qemu",
    "dst-qemu",
    "delay-line",
    "dst-sshd",
    "src-sshd",
]

DEFAULT_TIMEOUT_MS = 300_000.0  # as the virt layer's MigrationOptions.timeout_s
MIN_TIMEOUT_MS = 1_000.0  # below this a timeout is a missing unit ("180" is 180 ms)


TRIGGER_GRAMMAR = (
    "before, after, 'at N%' (migration progress) or 'at DURATION' after the migration "
    "starts (e.g. 'at 3s')"
)
CONDITION_GRAMMAR = (
    "migration_done, client_connected, 'migration_progress >= N' (percent) or a "
    "duration such as '2s'"
)

_BARE_NUMBER = re.compile(r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)\s*$")


class Strict(BaseModel):
    """Unknown fields are errors: a misspelt field must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _choices(name: str, *more: str, **kw: Any) -> Any:
    """A field the user may spell several ways; the first spelling is the one errors use."""
    return Field(validation_alias=AliasChoices(name, *more), **kw)


# -- typed values -------------------------------------------------------------------------


def _duration(value: Any) -> float | None:
    """Durations in ms; a bare number is ms, as everywhere in testbed (units)."""
    return None if value is None else units.parse_duration_ms(value)


def _fill_mib(value: Any) -> int | None:
    """Guest sizes as in topologies: a bare number is MiB, a string carries its unit."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    return int(units.parse_size_bytes(value) // (1024 * 1024))


Ms = Annotated[float, BeforeValidator(_duration)]
OptionalMs = Annotated[float | None, BeforeValidator(_duration)]


def _unit_required(arg: str, text: object, grammar: str) -> None:
    """A bare number is ambiguous in a trigger or a wait (percent? seconds?): refuse it."""
    if _BARE_NUMBER.match(arg):
        raise ValueError(f"{arg.strip()!r} has no unit; expected {grammar}, found {text!r}")


def _percent(arg: str, text: object, grammar: str) -> float:
    try:
        pct = units.parse_percent(arg)
    except InputError:
        raise ValueError(f"expected {grammar}, found {text!r}") from None
    if pct > 100:
        raise ValueError(f"progress {pct}% is more than 100%, found {text!r}")
    return pct


def _time(arg: str, text: object, grammar: str) -> float:
    _unit_required(arg, text, grammar)
    try:
        return units.parse_duration_ms(arg)
    except InputError:
        raise ValueError(f"expected {grammar}, found {text!r}") from None


class Trigger(BaseModel):
    """When a client connects, counted from the next migration.

    ``before`` it starts, ``at 30%`` of its progress (value: percent), ``at 3s`` after it
    starts (value: ms), or ``after`` it ends.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["before", "progress", "time", "after"]
    value: float | None = None

    @classmethod
    def parse(cls, text: object) -> Trigger:
        if isinstance(text, Trigger):
            return text
        if not isinstance(text, str):
            raise ValueError(f"expected {TRIGGER_GRAMMAR}, found {text!r}")
        s = text.strip()
        if s in ("before", "after"):
            return cls(kind=s)
        m = re.fullmatch(r"at\s+(\S.*)", s)
        if not m:
            raise ValueError(f"expected {TRIGGER_GRAMMAR}, found {text!r}")
        arg = m.group(1).strip()
        if arg.endswith("%"):
            return cls(kind="progress", value=_percent(arg, text, TRIGGER_GRAMMAR))
        return cls(kind="time", value=_time(arg, text, TRIGGER_GRAMMAR))

    def __str__(self) -> str:
        if self.kind == "progress":
            return f"at {units.format_percent(self.value or 0)}"
        if self.kind == "time":
            return f"at {units.format_duration(self.value or 0)}"
        return self.kind


class Condition(BaseModel):
    """What a wait step waits for: an event, a migration progress (percent) or a time (ms)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["migration_done", "client_connected", "progress", "time"]
    value: float | None = None

    @classmethod
    def parse(cls, text: object) -> Condition:
        if isinstance(text, Condition):
            return text
        if not isinstance(text, str):
            raise ValueError(f"expected {CONDITION_GRAMMAR}, found {text!r}")
        s = text.strip()
        if s in ("migration_done", "client_connected"):
            return cls(kind=s)
        m = re.fullmatch(r"migration_progress\s*>=\s*(\S+?)\s*(%?)", s)
        if m:
            return cls(kind="progress", value=_percent(m.group(1) + "%", text, CONDITION_GRAMMAR))
        return cls(kind="time", value=_time(s, text, CONDITION_GRAMMAR))

    def is_event(self) -> bool:
        return self.kind != "time"

    def __str__(self) -> str:
        if self.kind == "progress":
            return f"migration_progress >= {units.format_percent(self.value or 0)}"
        if self.kind == "time":
            return units.format_duration(self.value or 0)
        return self.kind


When = Annotated[Trigger, BeforeValidator(Trigger.parse)]
Until = Annotated[Condition, BeforeValidator(Condition.parse)]


class Expectation(Strict):
    """What the verdict checks. None means "not checked"."""

    outcome: Outcome | None = None
    usbredir: UsbRedir | None = None
    # the longest client freeze around the switchover (result client.frozen_ms)
    max_frozen_ms: OptionalMs = _choices("max_frozen_ms", "max_frozen", default=None)
    migration: MigrationResult | None = None

    def is_empty(self) -> bool:
        return all(getattr(self, name) is None for name in Expectation.model_fields)


# -- steps ----------------------------------------------------------------------------------


class Step(Strict):
    """One thing a scenario does. `kind` is its key in the YAML; `where` is file:line: path."""

    kind: ClassVar[str] = ""
    _where: str = PrivateAttr(default="")

    @property
    def where(self) -> str:
        return self._where


class UpStep(Step):
    """Bring the lab up (the runner does it anyway; the step says when)."""

    kind: ClassVar[str] = "up"


class ShapeStep(Step):
    """Shape (or, with clear, unshape) one direction of a link, or both with both_ways."""

    kind: ClassVar[str] = "shape"

    src: str = Field(alias="from")
    dst: str = Field(alias="to")
    network: str
    both_ways: bool = False
    clear: bool = False
    profile: LinkProfile | None = None  # built from the profile fields; None with clear

    @model_validator(mode="after")
    def _coherent(self) -> ShapeStep:
        if self.src == self.dst:
            raise InputError(
                f"a link joins two different hosts (found {self.src!r} twice)", field="to"
            )
        if self.clear and self.profile is not None:
            raise InputError(
                "clear removes the shaping, so it takes no profile field", field="clear"
            )
        if not self.clear and self.profile is None:
            raise InputError(
                "clear is false and there is no profile field: the step would do nothing",
                field="clear",
            )
        return self


class StartGuestStep(Step):
    """Start a guest; fill, dirty_rate and spice_server override the topology's when given."""

    kind: ClassVar[str] = "start_guest"

    guest: str
    spice_server: SpiceServer | None = Field(
        None,
        description="the spice-server of every hypervisor this guest runs on in this "
        "scenario (stock, patched or patched-qemu), instead of each host's topology field",
    )
    fill_mib: Annotated[int | None, BeforeValidator(_fill_mib)] = _choices(
        "fill", "fill_mib", default=None, ge=0
    )
    dirty_rate: float | None = Field(None, ge=0, description="MiB/s the guest rewrites")


class ConnectClientStep(Step):
    """Connect a SPICE client to a guest, at a moment relative to the next migration."""

    kind: ClassVar[str] = "connect_client"

    client: str
    guest: str
    when: When = Trigger(kind="before")


class MigrateStep(Step):
    """Live-migrate a guest; wait=false returns at once so later steps run during it."""

    kind: ClassVar[str] = "migrate"

    guest: str
    to: str
    bandwidth_mib: int | None = _choices("bandwidth", "bandwidth_mib", default=None, ge=1)
    guard: bool = False
    wait: bool = True
    timeout_ms: Ms = _choices("timeout", "timeout_ms", default=DEFAULT_TIMEOUT_MS)
    max_downtime_ms: OptionalMs = _choices("max_downtime", "max_downtime_ms", default=None)
    auto_converge: bool = False
    postcopy: bool = False

    @model_validator(mode="after")
    def _timeout_floor(self) -> MigrateStep:
        _check_timeout(self.timeout_ms)
        return self


class WaitStep(Step):
    """Wait for an event (with a timeout) or for a time."""

    kind: ClassVar[str] = "wait"

    until: Until
    timeout_ms: OptionalMs = _choices("timeout", "timeout_ms", default=None)

    @model_validator(mode="after")
    def _timeout_fits(self) -> WaitStep:
        if not self.until.is_event():
            if self.timeout_ms is not None:
                raise InputError("a timed wait takes no timeout", field="timeout")
            return self
        if self.timeout_ms is None:
            self.timeout_ms = DEFAULT_TIMEOUT_MS
        _check_timeout(self.timeout_ms)
        return self


class FaultStep(Step):
    """Inject a fault: SIGKILL one of the lab's processes (`none` does nothing, so a
    matrix can leave the fault out)."""

    kind: ClassVar[str] = "fault"

    kill: FaultKill


class ExpectStep(Expectation, Step):
    """Expectations for the verdict; all expect steps of a scenario make `Scenario.expect`."""

    kind: ClassVar[str] = "expect"

    @model_validator(mode="after")
    def _something(self) -> ExpectStep:
        if self.is_empty():
            raise ValueError(
                "an expect step needs at least one of outcome, usbredir, max_frozen, migration"
            )
        return self


def _check_timeout(ms: float) -> None:
    if ms < MIN_TIMEOUT_MS:
        raise InputError(
            f"timeout {units.format_duration(ms)} is shorter than {units.format_duration(1000)}",
            field="timeout",
            hint="a bare number is milliseconds; write the unit, e.g. 180s",
        )


STEP_TYPES: dict[str, type[Step]] = {
    t.kind: t
    for t in (
        UpStep,
        ShapeStep,
        StartGuestStep,
        ConnectClientStep,
        MigrateStep,
        WaitStep,
        FaultStep,
        ExpectStep,
    )
}


PROFILE_KEYS = input_keys(LinkProfile)
STEP_KEYS: dict[str, dict[str, str]] = {
    kind: input_keys(t, skip=("profile",)) for kind, t in STEP_TYPES.items()
}
STEP_KEYS["shape"].update(PROFILE_KEYS)
PROFILE_SHORT = list(
    dict.fromkeys(
        min((k for k, f in PROFILE_KEYS.items() if f == name), key=len)
        for name in PROFILE_KEYS.values()
    )
)

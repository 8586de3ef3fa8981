"""A playbook as written (`PlaybookSpec`), and the scenarios it expands to (`Scenario`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from pydantic import Field

from testbed.model.playbook.steps import Expectation, Step, Strict


class ScenarioSpec(Strict):
    """An explicit scenario: a name and the variables it sets."""

    name: str
    vars: dict[str, Any] = Field(default_factory=dict)


class PlaybookSpec(Strict):
    """A playbook's fields as written; `Playbook` (load) adds the checks and expansion."""

    name: str
    description: str = ""
    topology: str | None = Field(None, description="default topology; the CLI may override")
    vars: dict[str, Any] = Field(default_factory=dict)
    matrix: dict[str, dict[str, dict[str, Any] | None]] = Field(default_factory=dict)
    name_format: str | None = None
    exclude: list[dict[str, str]] = Field(default_factory=list)
    extra_scenarios: list[ScenarioSpec] = Field(default_factory=list, alias="scenarios")
    steps: list[Any] = Field(min_length=1, description="one-key mappings, checked by kind")
    source: str | None = Field(None, exclude=True)

    def axes(self) -> dict[str, list[str]]:
        """Axis name -> its value names, in the order written."""
        return {axis: list(values) for axis, values in self.matrix.items()}


@dataclass(frozen=True)
class Scenario:
    """One run of a playbook: its name, the matrix values it took, its variables and steps."""

    name: str
    params: dict[str, str]
    vars: dict[str, Any]
    steps: list[Step]
    expect: Expectation | None

    @property
    def outcome(self) -> str | None:
        return self.expect.outcome if self.expect else None

    def keywords(self) -> list[str]:
        """What `-k` matches against: the name and every "axis=value"."""
        return [self.name, *(f"{a}={v}" for a, v in self.params.items())]


class ScenarioRow(NamedTuple):
    """One line of `testbed run --list`."""

    name: str
    params: dict[str, str]
    outcome: str | None


def scenario_rows(scenarios: Iterable[Scenario]) -> list[ScenarioRow]:
    return [ScenarioRow(s.name, dict(s.params), s.outcome) for s in scenarios]

"""The verdict: did every expectation of a scenario hold? Each miss says expected vs got."""

from __future__ import annotations

from testbed.model.playbook import Scenario
from testbed.runner.result import ScenarioResult


def judge(result: ScenarioResult, scenario: Scenario) -> None:
    """Fill `result.passed` and `result.failures` from the scenario's expectations."""
    failures: list[str] = []
    if result.error:
        failures.append(f"error: {result.error}")
    exp = scenario.expect
    mig = result.migration.result
    if exp is not None and exp.migration is not None:
        if mig != exp.migration:
            failures.append(f"migration: expected {exp.migration}, got {mig}")
    elif mig not in (None, "completed"):
        failures.append(f"migration: expected completed, got {mig}")
    if exp is not None:
        if exp.outcome is not None and result.outcome != exp.outcome:
            failures.append(f"outcome: expected {exp.outcome}, got {result.outcome}")
        if exp.usbredir is not None and result.client.usbredir != exp.usbredir:
            failures.append(f"usbredir: expected {exp.usbredir}, got {result.client.usbredir}")
        if exp.max_frozen_ms is not None:
            got = result.client.frozen_ms
            if got is None or got > exp.max_frozen_ms:
                failures.append(f"frozen_ms: expected at most {exp.max_frozen_ms:g}, got {got}")
    result.failures = failures
    result.passed = not failures

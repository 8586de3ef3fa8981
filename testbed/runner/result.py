"""What a run yields: the typed, versioned result model of testbed.model.result.

The runner fills a RunResult with one ScenarioResult per scenario and writes it as
`result.json`; the report layer reads it back with `load_result`.
"""

from testbed.model.result import (
    ClientSummary,
    GuestSummary,
    MigrationSummary,
    RunResult,
    ScenarioResult,
)

__all__ = ["ClientSummary", "GuestSummary", "MigrationSummary", "RunResult", "ScenarioResult"]
